"""One partition's state: the profiles of its users and the machinery in front of them.

``SessionShard.process`` takes records of one partition in offset order and, per record:

1. decodes it (a record that is not a normalized event is *rejected*, for the DLQ);
2. validates the decoded batch with pandera (:class:`validation.batch.BatchValidator`: event time
   in a sane range of ``receivedAt``, non-negative durations, known call types and step ids,
   a plausible per-user rate); a failing event is *rejected* too, with the check's reason code;
3. routes it to *late* if its event time is behind the watermark (``max event time - allowed
   lateness``, where each event counts with ``min(event time, receivedAt)``: a client clock
   ahead of the server's cannot move the watermark), whatever else is true of it;
4. drops it as a *duplicate* if its ``messageId`` was seen (see :mod:`ray_app.state.dedupe`);
5. otherwise passes it through the session reorder buffer and *applies* what that releases.

So every record is exactly one of applied, duplicate, late, rejected — or still buffered — and
the counters reconcile: ``records = applied + duplicates + late + rejected + buffered``.
Decisions depend only on the records and their order, never on a clock: replaying the same
records from a snapshot gives the same state, which is what exactly-once checkpoints rely on.

>>> shard = SessionShard(0, StateConfig(allowed_lateness_ms=60_000))
>>> rec = lambda mid, seq, t: (b"u1", ('{"messageId":"%s","type":"track","event":"Step Viewed",'
...     '"userKey":"u1","timestamp":"2026-01-01T00:%02d:00Z","receivedAt":"2026-01-01T00:%02d:00Z",'
...     '"sessionId":"s","seq":%d,"stepId":"role"}' % (mid, t, t, seq)).encode())
>>> r = shard.process([rec("a", 1, 2), rec("b", 0, 1), rec("b", 0, 1), rec("c", 2, 30)])
>>> (r.applied, r.duplicates, len(r.late), len(r.rejected))
(3, 1, 0, 0)
>>> r = shard.process([rec("d", 3, 5)])    # 00:05 is 25 min behind 00:30: late
>>> len(r.late), shard.profile("u1")["steps"]["role"]["views"]
(1, 3)
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ray_app.collect.parse import iso_ms
from ray_app.records import RewardRecord
from ray_app.state.dedupe import Deduplicator
from ray_app.state.event import Event, EventDecodeError, decode_event
from ray_app.state.ordering import Reorderer
from ray_app.state.profile import Profile, ProfileConfig, apply
from ray_app.state.rewards import NEGATIVE_EVENTS, RewardJoin
from validation.reasons import ReasonCode

if TYPE_CHECKING:
    from validation.batch import BatchValidator, DataQuality

__all__ = ["BatchResult", "SessionShard", "ShardStats", "StateConfig"]

SNAPSHOT_VERSION = 5
_DAY_MS = 86_400_000
_NO_WATERMARK = -(2**62)


@dataclass(frozen=True)
class StateConfig:
    """Semantics of the stream state; see each field."""

    allowed_lateness_ms: int = 5 * 60_000
    """Events more than this behind the latest event time of their partition are late."""
    dedupe_horizon_ms: int = 0
    """Ids are remembered until the watermark is this far past their event time (>= 0: exact)."""
    dedupe_max_ids: int = 2_000_000
    """Safety cap on remembered ids per partition."""
    reorder_max_buffer: int = 64
    """Most events one session may hold back while waiting for a missing ``seq``."""
    reorder_wait_ms: int = 2_000
    """Event time a session waits for a missing ``seq`` before giving up on it."""
    session_idle_ms: int = 30 * 60_000
    """A session's ordering cursor is dropped this long (event time) after its last event."""
    max_age_ms: int = 30 * _DAY_MS
    """Events whose time is more than this before their ``receivedAt`` are rejected."""
    max_future_ms: int = 5 * 60_000
    """...and those more than this after it."""
    known_steps: frozenset[str] | None = None
    """Step ids of the onboarding catalog; others are rejected (None: any step id)."""
    max_user_events_per_s: int = 50
    """More events from one user in one second of event time are rejected as implausible."""
    validate: bool = True
    """Run batch validation at all (off only to measure what it costs)."""
    attribution_window_ms: int = 300_000
    """Rewards: how long after a decision (event time) its outcome counts."""
    step_slots: frozenset[str] = frozenset({"next_step"})
    """Slots whose actions are steps (rewarded when that step is completed)."""
    negative_events: frozenset[str] = NEGATIVE_EVENTS
    """``track`` events that reward 0 at once (the catalog's ``negative_events``)."""
    profile: ProfileConfig = field(default_factory=ProfileConfig)


@dataclass
class ShardStats:
    """Running totals of one partition since its state began (they survive checkpoints)."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class BatchResult:
    """What one call to :meth:`SessionShard.process` did."""

    applied: int = 0
    duplicates: int = 0
    late: list[tuple[int, bytes | None, bytes, dict[str, Any]]] = field(default_factory=list)
    """(index in the batch, key, value, why) of every late record."""
    rejected: list[tuple[int, bytes | None, bytes, EventDecodeError]] = field(default_factory=list)
    """(index in the batch, key, value, error) of every record that is not an event."""
    received_ms: list[int] = field(default_factory=list)
    """``receivedAt`` of every applied event, for freshness."""
    users: set[str] = field(default_factory=set)
    rewards: list[RewardRecord] = field(default_factory=list)
    """Reward records decided by this batch (see :mod:`ray_app.state.rewards`)."""
    duplicate_indices: list[int] = field(default_factory=list)
    """Indices of the duplicates (kept only when ``traces`` were given, for their spans)."""


class SessionShard:
    """The state of one partition: per-user profiles, dedupe, ordering, watermark."""

    def __init__(self, partition: int, config: StateConfig | None = None) -> None:
        self.partition = partition
        self.config = config or StateConfig()
        self.profiles: dict[str, Profile] = {}
        self.dedupe = Deduplicator(self.config.dedupe_horizon_ms, self.config.dedupe_max_ids)
        self.order = Reorderer(self.config.reorder_max_buffer, self.config.session_idle_ms)
        self.max_ts = _NO_WATERMARK
        self.watermark = _NO_WATERMARK
        self.stats = ShardStats()
        self.quality = _new_quality()
        self.rejected_by_reason: dict[str, int] = {}
        self.rates: dict[str, tuple[int, int]] = {}
        """user -> (second of event time, events in it so far), for the rate check."""
        self._rates_pruned_at = 0
        self._validator: BatchValidator | None = None
        self._touched: set[str] = set()
        """Users whose profile changed since the last snapshot (what a delta must carry)."""
        self.rewards = RewardJoin(
            self.config.attribution_window_ms, self.config.step_slots, self.config.negative_events
        )
        self.decision_offset = 0
        """Next offset of this partition of ``onramp.decisions`` (checkpointed with the state)."""

    @property
    def validator(self) -> BatchValidator:
        if self._validator is None:
            from validation.batch import BatchValidator

            c = self.config
            self._validator = BatchValidator(
                c.max_age_ms, c.max_future_ms, c.known_steps, c.max_user_events_per_s
            )
        return self._validator

    # -- processing ------------------------------------------------------------------------

    def process(
        self,
        records: Iterable[tuple[bytes | None, bytes]],
        traces: Sequence[str | None] | None = None,
    ) -> BatchResult:
        """Apply records of this partition, in offset order; ``traces`` (aligned with the
        records, when tracing is on) are their ``traceparent`` headers."""
        out = BatchResult()
        lateness = self.config.allowed_lateness_ms
        wait = min(self.config.reorder_wait_ms, lateness)
        decoded: list[tuple[int, bytes | None, bytes, Event]] = []
        for index, (key, value) in enumerate(records):
            self.stats.records += 1
            try:
                trace = traces[index] if traces is not None else None
                decoded.append((index, key, value, decode_event(value, trace)))
            except EventDecodeError as exc:
                self._reject(out, index, key, value, exc)
        failed = self._validate(decoded) if self.config.validate and decoded else {}
        for n, (index, key, value, event) in enumerate(decoded):
            if n in failed:
                self._reject(out, index, key, value, failed[n])
                continue
            if event.ts < self.watermark:
                self.stats.late += 1
                out.late.append(
                    (
                        index,
                        key,
                        value,
                        {
                            "reason": "late",
                            "watermark": self.watermark,
                            "behindMs": self.watermark - event.ts,
                            "allowedLatenessMs": lateness,
                        },
                    )
                )
                continue
            if self.dedupe.seen(event.message_id, event.ts):
                self.stats.duplicates += 1
                out.duplicates += 1
                if traces is not None:
                    out.duplicate_indices.append(index)
                continue
            # the watermark follows event time only as far as the server's own clock: a client
            # that stamps its events in the future (up to max_future_ms passes validation) must
            # not make everybody else's events late
            trusted = event.ts if event.ts <= event.received else event.received
            if trusted > self.max_ts:
                self.max_ts = trusted
                self.watermark = self.max_ts - lateness
            released = self.order.offer(event)
            released += self.order.advance(self.watermark, self.max_ts - wait)
            for e in released:
                self._apply(e, out)
        self.dedupe.advance(self.watermark)
        out.rewards += self.rewards.advance(self.watermark)
        if out.rejected and len(out.rejected) > 1:
            out.rejected.sort(key=lambda r: r[0])
        return out

    def process_decisions(
        self, records: Iterable[tuple[bytes | None, bytes]], next_offset: int
    ) -> BatchResult:
        """Take records of this partition of ``onramp.decisions`` (in offset order) into the
        reward join; ``next_offset`` is checkpointed with the state. Rewards already decided by
        the profile or the watermark come back at once; malformed records are rejected."""
        out = BatchResult()
        for index, (key, value) in enumerate(records):
            try:
                record = orjson.loads(value)
                if not isinstance(record, dict):
                    raise EventDecodeError(
                        ReasonCode.NOT_AN_OBJECT, None, "decision record is not an object"
                    )
                if "chosen" in record and record["chosen"] is None:
                    continue  # nothing was shown: nothing to reward
                out.rewards += self.rewards.offer_decision(record, self.watermark)
            except orjson.JSONDecodeError as exc:
                out.rejected.append(
                    (index, key, value, EventDecodeError(ReasonCode.INVALID_JSON, None, str(exc)))
                )
            except EventDecodeError as exc:
                out.rejected.append((index, key, value, exc))
        self.decision_offset = next_offset
        return out

    def _reject(
        self, out: BatchResult, index: int, key: bytes | None, value: bytes, exc: EventDecodeError
    ) -> None:
        self.stats.rejected += 1
        reason = exc.reason.value
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        out.rejected.append((index, key, value, exc))

    def _validate(
        self, decoded: list[tuple[int, bytes | None, bytes, Event]]
    ) -> dict[int, EventDecodeError]:
        """Position in ``decoded`` -> why it fails batch validation."""
        from validation.batch import FIELD_OF

        cols: dict[str, list[Any]] = {
            "ts": [], "received": [], "kind": [], "step_id": [], "duration_ms": [],
            "user_rate": [], "segment": [],
        }  # fmt: skip
        rates = self.rates
        for _, _, _, e in decoded:
            cols["ts"].append(e.ts)
            cols["received"].append(e.received)
            cols["kind"].append(e.kind)
            cols["step_id"].append(e.step_id)
            d = e.properties.get("durationMs")
            cols["duration_ms"].append(
                d if isinstance(d, int | float) and not isinstance(d, bool) else None
            )
            second = e.ts // 1000
            last = rates.get(e.user_key)
            n = last[1] + 1 if last is not None and last[0] == second else 1
            rates[e.user_key] = (second, n)
            cols["user_rate"].append(n)
            seg = e.traits.get("segment")
            if seg is None:
                p = self.profiles.get(e.user_key)
                seg = p.traits.get("segment") if p is not None else None
            cols["segment"].append(seg if isinstance(seg, str) else None)
        if len(rates) > 2 * self._rates_pruned_at + 10_000:
            horizon = self.watermark // 1000
            self.rates = {u: r for u, r in rates.items() if r[0] >= horizon}
            self._rates_pruned_at = len(self.rates)
        reasons = self.validator.failures_columns(cols, self.quality)
        out: dict[int, EventDecodeError] = {}
        for n, reason in reasons.items():
            e = decoded[n][3]
            out[n] = EventDecodeError(
                reason, FIELD_OF.get(reason), _explain(reason, e, self.config)
            )
        return out

    def _apply(self, event: Event, out: BatchResult) -> None:
        profile = self.profiles.get(event.user_key)
        if profile is None:
            profile = self.profiles[event.user_key] = Profile(event.user_key, self.config.profile)
        apply(profile, event)
        self._touched.add(event.user_key)
        if event.kind == "track" and self.rewards.is_outcome(event.name):
            echo = event.properties.get("decisionId")
            out.rewards += self.rewards.on_outcome(
                event.user_key,
                event.name or "",
                event.step_id,
                event.ts,
                echo if isinstance(echo, str) else None,
            )
        self.stats.applied += 1
        out.applied += 1
        out.received_ms.append(event.received)
        out.users.add(event.user_key)

    # -- reading ---------------------------------------------------------------------------

    def profile(self, user_key: str) -> dict[str, Any] | None:
        """The user's profile as of the watermark, or None if this partition never saw them."""
        p = self.profiles.get(user_key)
        if p is None:
            return None
        p.advance(self.watermark)
        return p.as_dict()

    def profiles_as_dicts(self) -> dict[str, dict[str, Any]]:
        """Every profile (canonical form), e.g. to compare two runs."""
        return {k: self.profile(k) or {} for k in sorted(self.profiles)}

    @property
    def buffered(self) -> int:
        return self.order.buffered

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self, rebase: bool = True) -> bytes:
        """The whole state as bytes (to be written atomically with the consumed offsets).
        Later :meth:`snapshot_delta` calls are relative to this one unless ``rebase`` is False
        (e.g. to measure the state's size)."""
        added = self.dedupe.added
        self.dedupe.added = []
        join_changes = self.rewards.take_delta()
        state = {k: v for k, v in self.__dict__.items() if k not in _NOT_PICKLED}
        data = pickle.dumps((SNAPSHOT_VERSION, "base", state), protocol=pickle.HIGHEST_PROTOCOL)
        if rebase:
            self._touched = set()
        else:
            self.dedupe.added = added
            self.rewards.added, self.rewards.removed = join_changes[0], join_changes[1]
            self.rewards.decided_added, self.rewards.forgotten = join_changes[2], join_changes[3]
        return data

    def snapshot_delta(self) -> bytes:
        """What changed since the previous snapshot or delta: the profiles of the users touched,
        the ids remembered, and the small rest of the state (watermark, counters, reorder
        buffers). Costs in proportion to the change, not to the state."""
        touched, self._touched = self._touched, set()
        meta = {k: v for k, v in self.__dict__.items() if k not in _NOT_IN_DELTA}
        delta = (
            meta,
            {u: self.profiles[u] for u in touched},
            self.dedupe.take_added(),
            self.dedupe.evicted_early,
            self.rewards.take_delta(),
        )
        return pickle.dumps((SNAPSHOT_VERSION, "delta", delta), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, data: bytes, deltas: Iterable[bytes] = ()) -> SessionShard:
        """The shard a :meth:`snapshot` and the deltas taken after it describe."""
        _, kind, state = _load(data)
        if kind != "base":
            raise ValueError("restore() needs a base snapshot first, then its deltas")
        shard = cls.__new__(cls)
        shard.__dict__.update(state)
        shard._validator = None
        shard._touched = set()
        for d in deltas:
            _, kind, (meta, profiles, added, evicted, join) = _load(d)
            if kind != "delta":
                raise ValueError("a base snapshot where a delta was expected")
            shard.__dict__.update(meta)
            shard.profiles.update(profiles)
            shard.dedupe.replay(added, shard.watermark, evicted)
            shard.rewards.apply_delta(join)
        return shard


_NOT_PICKLED = frozenset({"_validator", "_touched"})
_NOT_IN_DELTA = _NOT_PICKLED | {"profiles", "dedupe", "rewards"}


def _load(data: bytes) -> tuple[int, str, Any]:
    loaded = pickle.loads(data)
    if not isinstance(loaded, tuple) or loaded[0] != SNAPSHOT_VERSION or len(loaded) != 3:
        version = loaded[0] if isinstance(loaded, tuple) and loaded else "?"
        raise ValueError(f"snapshot version {version}; this Onramp reads {SNAPSHOT_VERSION}")
    return loaded  # type: ignore[no-any-return]


def _new_quality() -> DataQuality:
    from validation.batch import DataQuality

    return DataQuality()


def _explain(reason: Any, e: Event, c: StateConfig) -> str:
    from validation.reasons import ReasonCode

    if reason == ReasonCode.TIMESTAMP_OUT_OF_RANGE:
        return (
            f"event time {iso_ms(e.ts)} is {(e.ts - e.received) / 1000:+.1f} s from receivedAt "
            f"{iso_ms(e.received)}; allowed {-c.max_age_ms / 1000:+.0f} s to "
            f"{c.max_future_ms / 1000:+.0f} s"
        )
    if reason == ReasonCode.NEGATIVE_DURATION:
        return f"durationMs {e.properties.get('durationMs')} < 0"
    if reason == ReasonCode.UNKNOWN_STEP:
        return f"step {e.step_id!r} is not in the onboarding catalog"
    if reason == ReasonCode.UNKNOWN_TYPE:
        return f"type {e.kind!r} is not a Segment call type"
    if reason == ReasonCode.IMPLAUSIBLE_RATE:
        return (
            f"more than {c.max_user_events_per_s} events from {e.user_key!r} "
            f"in the second of {iso_ms(e.ts)}"
        )
    return str(reason)
