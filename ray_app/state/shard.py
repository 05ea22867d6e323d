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

**No record can stop the partition.** A tombstone (a record without a value), bytes that are not
UTF-8, JSON that is not an object, a field of the wrong type, and any exception raised while one
record is validated or applied all make that record *rejected* (its reason code, the field when
known, a message), and processing goes on with the next one. The same holds for
:meth:`SessionShard.process_decisions` (counted in ``decisions_rejected``, by reason). A record
that fails the same way every time is rejected the same way on a replay, so the state stays
deterministic.

**Bounded profiles.** A profile is evicted once the watermark passes its last event time plus
``profile_idle_ttl_ms``; eviction is checked each time the watermark moves (per record, never per
batch), so it happens at the same record whatever the batch boundaries, and a replay from a
checkpoint evicts the same profiles. Deltas carry evictions. Per-profile caps (distinct event
names, trait keys, sessions: :class:`~ray_app.state.profile.ProfileConfig`) bound what one profile
holds. Evictions (``profiles_evicted``) and cap hits (``cap_hits``, by cap) are counted in the
checkpointed state.

**Snapshots are data, not code.** :meth:`SessionShard.restore` unpickles with an allowlist of the
state's own classes (the Python docs' "Restricting Globals"): a blob that names anything else
(``os.system``, ``builtins.eval``...) is refused with :class:`SnapshotRefused` before anything it
names is looked up. Checkpoints are also signed (HMAC-SHA256) by
:class:`~ray_app.stream.checkpoint.CheckpointStore`, which refuses a blob whose signature does
not verify before it gets here.

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

import heapq
import io
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson

from ray_app.collect.parse import iso_ms
from ray_app.records import RewardRecord
from ray_app.state import identity
from ray_app.state.dedupe import Deduplicator
from ray_app.state.event import Event, EventDecodeError, decode_record, event_from_record
from ray_app.state.identity import CONTROL_TYPES, Control, MergeOutcome
from ray_app.state.ordering import Reorderer
from ray_app.state.profile import Profile, ProfileConfig, apply, merge_into
from ray_app.state.rewards import NEGATIVE_EVENTS, LoggedOutcome, RewardJoin, decode_decision
from validation.reasons import ReasonCode

if TYPE_CHECKING:
    from validation.batch import BatchValidator, DataQuality

__all__ = [
    "PROCESSING_FAILED_REASON",
    "SNAPSHOT_VERSION",
    "BatchResult",
    "SessionShard",
    "ShardStats",
    "SnapshotRefused",
    "StateConfig",
]

#: 6: signed checkpoints, restricted unpickling, profile eviction and caps (5 and older are
#: refused: they were written unsigned).
SNAPSHOT_VERSION = 6
#: The reason a record is rejected with when validating or applying it raised (a value of a type
#: nothing checked for): the last-resort catch; the DLQ record's message names the error.
PROCESSING_FAILED_REASON = ReasonCode.UNPROCESSABLE
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
    profile_idle_ttl_ms: int = 30 * _DAY_MS
    """A profile is evicted once the watermark is this far past its last event time (an alias
    of a merged id, this far past the last record it forwarded)."""
    allow_known_merge: bool = False
    """Identity stitching may merge a known user (a profile with a ``userId``) into another."""
    profile: ProfileConfig = field(default_factory=ProfileConfig)


@dataclass
class ShardStats:
    """Running totals of one partition since its state began (they survive checkpoints)."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: int = 0
    forwarded: int = 0
    """Events of merged ids sent on to the id they were merged into (counted again there)."""
    control: int = 0
    """Link and merge records taken (identity stitching: :mod:`ray_app.state.identity`)."""
    relayed: int = 0
    """Forwarded events received from other partitions (each is then one of applied,
    duplicate, late or rejected here). Records a client wrote = records - control - relayed."""

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass
class BatchResult:
    """What one call to :meth:`SessionShard.process` did."""

    applied: int = 0
    duplicates: int = 0
    late: list[tuple[int, bytes | None, bytes, dict[str, Any]]] = field(default_factory=list)
    """(index in the batch, key, value, why) of every late record."""
    rejected: list[tuple[int, bytes | None, bytes | None, EventDecodeError]] = field(
        default_factory=list
    )
    """(index in the batch, key, value, error) of every record that is not an event (value None:
    a tombstone)."""
    received_ms: list[int] = field(default_factory=list)
    """``receivedAt`` of every applied event, for freshness."""
    users: set[str] = field(default_factory=set)
    rewards: list[RewardRecord] = field(default_factory=list)
    """Reward records decided by this batch (see :mod:`ray_app.state.rewards`)."""
    duplicate_indices: list[int] = field(default_factory=list)
    """Indices of the duplicates (kept only when ``traces`` were given, for their spans)."""
    forward: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    """(``"events"`` or ``"decisions"``, key, value) of the link, merge and forward records this
    batch asks for (:mod:`ray_app.state.identity`): written like the other side outputs."""


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
        self.decisions_rejected: dict[str, int] = {}
        """Records of ``onramp.decisions`` rejected (to the DLQ), by reason."""
        self.profiles_evicted = 0
        """Profiles dropped because the watermark passed their last event + the idle TTL."""
        self.cap_hits: dict[str, int] = {}
        """Keys a profile cap dropped, by cap (``event_names``, ``traits``, ``sessions``)."""
        self._expiry: list[tuple[int, str]] = []
        """(last event time, user): candidates for eviction. Entries go stale lazily (checked
        against the profile when popped); rebuilt from the profiles on restore, never pickled."""
        self.aliases: dict[str, tuple[str, int]] = {}
        """Merged id -> (the id it was merged into, last event time it forwarded)."""
        self.identity: dict[str, int] = {}
        """Link and merge outcomes (:class:`~ray_app.state.identity.MergeOutcome`) -> count."""
        self._alias_expiry: list[tuple[int, str]] = []
        self._aliases_touched: set[str] = set()

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
        records: Iterable[tuple[bytes | None, bytes | None]],
        traces: Sequence[str | None] | None = None,
    ) -> BatchResult:
        """Apply records of this partition, in offset order; ``traces`` (aligned with the
        records, when tracing is on) are their ``traceparent`` headers. A value of None is a
        tombstone (rejected)."""
        out = BatchResult()
        decoded: list[tuple[int, bytes | None, bytes, Event]] = []
        controls: dict[int, Control] = {}
        """Position in ``decoded`` -> the link, merge or forward record it is (its Event slot
        holds the forwarded event, or a placeholder)."""
        for index, (key, value) in enumerate(records):
            self.stats.records += 1
            try:
                trace = traces[index] if traces is not None else None
                d = decode_record(value)
                if d.get("type") in CONTROL_TYPES:
                    control = identity.decode_control(d)
                    e = _NO_EVENT
                    if control.kind == identity.FORWARD:
                        self.stats.relayed += 1
                        e = identity.event_from_json(d.get("event"), control.user_key)
                    controls[len(decoded)] = control
                else:
                    e = event_from_record(d, trace)
                decoded.append((index, key, cast(bytes, value), e))  # decoded: not None
            except EventDecodeError as exc:
                self._reject(out, index, key, value, exc)
            except Exception as exc:  # anything else about this one record: it alone is rejected
                self._reject(out, index, key, value, _failed(exc))
        failed: dict[int, EventDecodeError] = {}
        if self.config.validate and len(decoded) > len(controls):
            # forwarded events were validated where they were first taken
            plain = [n for n in range(len(decoded)) if n not in controls]
            checked = self._validate_safely([decoded[n] for n in plain])
            failed = {plain[m]: err for m, err in checked.items()}
        origin = {id(e): (index, key, value) for index, key, value, e in decoded}
        for n, (index, key, value, event) in enumerate(decoded):
            if n in failed:
                self._reject(out, index, key, value, failed[n])
                continue
            try:
                c = controls.get(n)
                if c is None:
                    self._take(event, index, key, value, out, traces is not None, origin)
                elif c.kind == identity.FORWARD:
                    self._take(event, index, key, value, out, traces is not None, origin, c)
                else:
                    self._link(c, out) if c.kind == identity.LINK else self._merge(c, out)
                    self.stats.control += 1
            except EventDecodeError as exc:  # a malformed identity record: its own reason
                self._reject(out, index, key, value, exc)
            except Exception as exc:
                self._reject(out, index, key, value, _failed(exc))
        self.dedupe.advance(self.watermark)
        out.rewards += self.rewards.advance(self.watermark)
        if out.rejected and len(out.rejected) > 1:
            out.rejected.sort(key=lambda r: r[0])
        return out

    def _take(
        self,
        event: Event,
        index: int,
        key: bytes | None,
        value: bytes,
        out: BatchResult,
        traced: bool,
        origin: dict[int, tuple[int, bytes | None, bytes]],
        forwarded: Control | None = None,
    ) -> None:
        """Route one decoded, validated event: late, duplicate, or on to the reorder buffer
        and the profiles. A ``forwarded`` event (its id was merged into this one) was ordered
        by the partition it came from: it skips the reorder buffer."""
        lateness = self.config.allowed_lateness_ms
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
            return
        if self.dedupe.seen(event.message_id, event.ts):
            self.stats.duplicates += 1
            out.duplicates += 1
            if traced:
                out.duplicate_indices.append(index)
            return
        # the watermark follows event time only as far as the server's own clock: a client
        # that stamps its events in the future (up to max_future_ms passes validation) must
        # not make everybody else's events late
        trusted = event.ts if event.ts <= event.received else event.received
        if trusted > self.max_ts:
            self.max_ts = trusted
            self.watermark = self.max_ts - lateness
            self._evict()
        if forwarded is not None:
            if forwarded.body.get("hops", 0) >= _MAX_HOPS:
                raise _loop(forwarded)
            released = [event]
        else:
            released = self.order.offer(event)
        released += self.order.advance(
            self.watermark, self.max_ts - min(self.config.reorder_wait_ms, lateness)
        )
        for e in released:
            try:
                self._apply(e, out)
            except Exception as exc:
                # the record that carried ``e`` (this batch), else the one that released it
                i, k, v = origin.get(id(e), (index, e.user_key.encode(), _event_bytes(e)))
                self._reject(out, i, k, v, _failed(exc, e.message_id))

    def _evict(self) -> None:
        """Drop the profiles whose last event the watermark has passed by the idle TTL."""
        heap = self._expiry
        horizon = self.watermark - self.config.profile_idle_ttl_ms
        while heap and heap[0][0] < horizon:
            last, user = heapq.heappop(heap)
            p = self.profiles.get(user)
            if p is None or p.last_seen != last:
                continue  # stale: the profile was evicted already, or has newer events
            del self.profiles[user]
            self._touched.add(user)  # a delta carries the eviction
            self.profiles_evicted += 1
        heap = self._alias_expiry
        while heap and heap[0][0] < horizon:
            last, old = heapq.heappop(heap)
            alias = self.aliases.get(old)
            if alias is not None and alias[1] == last:
                del self.aliases[old]
                self._aliases_touched.add(old)

    def _compact_expiry(self) -> None:
        """Rebuild the lazy eviction heap once stale entries outnumber live ones."""
        self._expiry = [
            (p.last_seen, u) for u, p in self.profiles.items() if p.last_seen is not None
        ]
        heapq.heapify(self._expiry)

    def process_decisions(
        self, records: Iterable[tuple[bytes | None, bytes | None]], next_offset: int
    ) -> BatchResult:
        """Take records of this partition of ``onramp.decisions`` (in offset order) into the
        reward join; ``next_offset`` is checkpointed with the state. Rewards already decided by
        the profile or the watermark come back at once; malformed records (tombstones, not
        JSON objects, any field missing or of the wrong type) are rejected, never raised."""
        out = BatchResult()
        for index, (key, value) in enumerate(records):
            try:
                record = decode_record(value, "decision record")
                if "chosen" in record and record["chosen"] is None:
                    continue  # nothing was shown: nothing to reward
                user = record.get("userKey")
                alias = self.aliases.get(user) if isinstance(user, str) else None
                if alias is not None:  # made for an id merged into another: its join is there
                    hops = record.get("hops", 0)
                    if not isinstance(hops, int) or hops >= _MAX_HOPS:
                        raise _loop(None)
                    decode_decision(record, self.rewards.step_slots)  # refuse garbage here
                    fwd = {**record, "userKey": alias[0], "hops": hops + 1}
                    out.forward.append(("decisions", alias[0].encode(), orjson.dumps(fwd)))
                    continue
                out.rewards += self.rewards.offer_decision(record, self.watermark)
            except Exception as exc:
                err = exc if isinstance(exc, EventDecodeError) else _failed(exc)
                reason = err.reason.value
                self.decisions_rejected[reason] = self.decisions_rejected.get(reason, 0) + 1
                out.rejected.append((index, key, value, err))
        self.decision_offset = next_offset
        return out

    def _reject(
        self,
        out: BatchResult,
        index: int,
        key: bytes | None,
        value: bytes | None,
        exc: EventDecodeError,
    ) -> None:
        self.stats.rejected += 1
        reason = exc.reason.value
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        out.rejected.append((index, key, value, exc))

    def _validate_safely(
        self, decoded: list[tuple[int, bytes | None, bytes, Event]]
    ) -> dict[int, EventDecodeError]:
        """:meth:`_validate`, and if the batch as a whole raises, each event on its own: an
        event that raises alone is rejected, the others are validated as usual (a failed
        attempt leaves the per-user rates as they were, so no event counts twice)."""
        try:
            return self._validate(decoded)
        except Exception:
            out: dict[int, EventDecodeError] = {}
            for n, item in enumerate(decoded):
                try:
                    failed = self._validate([item])
                except Exception as exc:
                    out[n] = _failed(exc)
                else:
                    if failed:
                        out[n] = failed[0]
            return out

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
        batch: dict[str, tuple[int, int]] = {}  # kept apart until validation went through
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
            last = batch.get(e.user_key) or rates.get(e.user_key)
            n = last[1] + 1 if last is not None and last[0] == second else 1
            batch[e.user_key] = (second, n)
            cols["user_rate"].append(n)
            seg = e.traits.get("segment")
            if seg is None:
                p = self.profiles.get(e.user_key)
                seg = p.traits.get("segment") if p is not None else None
            cols["segment"].append(seg if isinstance(seg, str) else None)
        reasons = self.validator.failures_columns(cols, self.quality)
        rates.update(batch)
        if len(rates) > 2 * self._rates_pruned_at + 10_000:
            horizon = self.watermark // 1000
            self.rates = {u: r for u, r in rates.items() if r[0] >= horizon}
            self._rates_pruned_at = len(self.rates)
        out: dict[int, EventDecodeError] = {}
        for n, reason in reasons.items():
            e = decoded[n][3]
            out[n] = EventDecodeError(
                reason, FIELD_OF.get(reason), _explain(reason, e, self.config)
            )
        return out

    def _apply(self, event: Event, out: BatchResult) -> None:
        alias = self.aliases.get(event.user_key)
        if alias is not None:  # merged into another id: its profile is there
            self._forward(event, alias, out)
            return
        profile = self.profiles.get(event.user_key)
        if profile is None:
            profile = self.profiles[event.user_key] = Profile(event.user_key, self.config.profile)
        self._touched.add(event.user_key)  # first: a delta carries even a half-applied event
        last = profile.last_seen
        apply(profile, event, self.cap_hits)
        if profile.last_seen != last and profile.last_seen is not None:
            heapq.heappush(self._expiry, (profile.last_seen, event.user_key))
            if len(self._expiry) > 2 * len(self.profiles) + 256:
                self._compact_expiry()
        if event.kind == "track" and self.rewards.is_outcome(event.name):
            echo = event.properties.get("decisionId")
            out.rewards += self.rewards.on_outcome(
                event.user_key,
                event.name or "",
                event.step_id,
                event.ts,
                echo if isinstance(echo, str) else None,
            )
        if event.kind in ("identify", "alias"):
            old = event.anonymous_id if event.kind == "identify" else event_previous_id(event)
            if old and old != event.user_key:
                self._ask_merge(profile, old, event, out)
        self.stats.applied += 1
        out.applied += 1
        out.received_ms.append(event.received)
        out.users.add(event.user_key)

    # -- identity stitching (see ray_app.state.identity) -------------------------------------

    def _count(self, outcome: MergeOutcome) -> None:
        self.identity[outcome.value] = self.identity.get(outcome.value, 0) + 1

    def _ask_merge(self, profile: Profile, old: str, event: Event, out: BatchResult) -> None:
        """``event`` says ``old`` is this user too: ask ``old``'s partition for its state."""
        if profile.config.max_merges == 0:
            return  # stitching is off
        links = profile.links or frozenset()
        if old in links or old in (profile.merged_from or ()):
            return  # asked already (every identify of a signed-in user names its anonymous id)
        if len(links) >= profile.config.max_merges:
            self._count(MergeOutcome.CAP)
            return
        profile.links = links | {old}
        out.forward.append(("events", *identity.link_record(old, event.user_key, event)))

    def _forward(self, event: Event, alias: tuple[str, int], out: BatchResult) -> None:
        target, last = alias
        if event.ts > last:
            self.aliases[event.user_key] = (target, event.ts)
            self._aliases_touched.add(event.user_key)
            heapq.heappush(
                self._alias_expiry, (event.ts + self.config.profile_idle_ttl_ms, event.user_key)
            )
        key, value = identity.forward_record(target, event)
        out.forward.append(("events", key, value))
        self.stats.forwarded += 1

    def _link(self, c: Control, out: BatchResult) -> None:
        """A link record (keyed by the old id): seal the old id's state and send it on."""
        old, new = c.user_key, c.other
        alias = self.aliases.get(old)
        if alias is not None or old == new:
            same = old == new or (alias is not None and alias[0] == new)
            self._count(MergeOutcome.DUPLICATE if same else MergeOutcome.CONFLICT)
            return
        profile = self.profiles.get(old)
        if profile is not None:
            if new in (profile.merged_from or ()):  # new was merged into old: a cycle
                self._count(MergeOutcome.CONFLICT)
                return
            if profile.user_id is not None and not self.config.allow_known_merge:
                self._count(MergeOutcome.REFUSED_KNOWN)
                return
            del self.profiles[old]
            self._touched.add(old)
        decisions, outcomes = self.rewards.detach(old)
        self.aliases[old] = (new, c.ts)
        self._aliases_touched.add(old)
        heapq.heappush(self._alias_expiry, (c.ts + self.config.profile_idle_ttl_ms, old))
        key, value = identity.merge_record(
            old,
            new,
            c,
            profile,
            [_decision_json(d) for d in decisions],
            [list(o) for o in outcomes],
        )
        out.forward.append(("events", key, value))

    def _merge(self, c: Control, out: BatchResult) -> None:
        """A merge record (keyed by the surviving id): fold the old id's state in, once."""
        new, old = c.user_key, c.other
        hops = c.body.get("hops", 0)
        if not isinstance(hops, int) or hops >= _MAX_HOPS:
            raise _loop(c)
        alias = self.aliases.get(new)
        if alias is not None:  # the surviving id was itself merged on: follow the chain
            body = {**c.body, "userKey": alias[0], "hops": hops + 1}
            out.forward.append(("events", alias[0].encode(), orjson.dumps(body)))
            return
        profile = self.profiles.get(new)
        if profile is not None and old in (profile.merged_from or ()):
            self._count(MergeOutcome.DUPLICATE)
            return
        # decode all of it before changing anything: a bad record merges nothing (DLQ)
        state = c.body.get("profile")
        source = None if state is None else identity.profile_from_state(state, self.config.profile)
        raw = c.body.get("decisions") or []
        if not isinstance(raw, list):
            raise EventDecodeError(ReasonCode.INVALID_FIELD, "decisions", "expected a list")
        decisions = [decode_decision(d, self.rewards.step_slots) for d in raw]
        outcomes = [_logged_outcome(o) for o in c.body.get("outcomes") or []]
        if profile is None:
            profile = self.profiles[new] = Profile(new, self.config.profile)
        self._touched.add(new)
        if source is not None:
            merge_into(profile, source, self.cap_hits)
        profile.merged_from = (profile.merged_from or frozenset()) | {old}
        if profile.last_seen is not None:
            heapq.heappush(self._expiry, (profile.last_seen, new))
        out.rewards += self.rewards.adopt(new, decisions, outcomes, self.watermark)
        self._count(MergeOutcome.MERGED)

    # -- reading ---------------------------------------------------------------------------

    def profile(self, user_key: str) -> dict[str, Any] | None:
        """The user's profile as of the watermark, or None if this partition never saw them."""
        p = self.profiles.get(user_key)
        if p is None:
            alias = self.aliases.get(user_key)
            # merged into another id: where to read it (ProfileReader follows this)
            return None if alias is None else {"userKey": user_key, "mergedInto": alias[0]}
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
            self._aliases_touched = set()
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
        aliases, self._aliases_touched = self._aliases_touched, set()
        delta = (
            meta,
            {u: self.profiles.get(u) for u in touched},  # None: evicted
            self.dedupe.take_added(),
            self.dedupe.evicted_early,
            self.rewards.take_delta(),
            {a: self.aliases.get(a) for a in aliases},  # None: expired
        )
        return pickle.dumps((SNAPSHOT_VERSION, "delta", delta), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, data: bytes, deltas: Iterable[bytes] = ()) -> SessionShard:
        """The shard a :meth:`snapshot` and the deltas taken after it describe. Raises
        :class:`SnapshotRefused` (with the blob's ``index``: 0 the base, 1... the deltas) for a
        blob that names a class outside the state's allowlist, is not a snapshot of this version,
        or does not unpickle."""
        _, kind, state = _load(data, 0)
        if kind != "base":
            raise SnapshotRefused(0, "restore() needs a base snapshot first, then its deltas")
        shard = cls.__new__(cls)
        shard.aliases, shard.identity = {}, {}  # snapshots from before identity stitching
        shard.__dict__.update(state)
        shard._validator = None
        shard._touched = set()
        shard._aliases_touched = set()
        for i, d in enumerate(deltas, start=1):
            _, kind, body = _load(d, i)
            if kind != "delta":
                raise SnapshotRefused(i, "a base snapshot where a delta was expected")
            meta, profiles, added, evicted, join, *more = body
            for old, alias in (more[0] if more else {}).items():
                if alias is None:
                    shard.aliases.pop(old, None)
                else:
                    shard.aliases[old] = alias
            shard.__dict__.update(meta)
            for user, profile in profiles.items():
                if profile is None:
                    shard.profiles.pop(user, None)
                else:
                    shard.profiles[user] = profile
            shard.dedupe.replay(added, shard.watermark, evicted)
            shard.rewards.apply_delta(join)
        shard._compact_expiry()
        ttl = shard.config.profile_idle_ttl_ms
        shard._alias_expiry = [(last + ttl, old) for old, (_, last) in shard.aliases.items()]
        heapq.heapify(shard._alias_expiry)
        return shard


_NOT_PICKLED = frozenset({"_validator", "_touched", "_expiry", "_alias_expiry", "_aliases_touched"})
_NOT_IN_DELTA = _NOT_PICKLED | {"profiles", "dedupe", "rewards", "aliases"}
#: Most times one record is forwarded along a chain of merged ids (a loop stops here, to the DLQ).
_MAX_HOPS = 8
#: The Event slot of a link or merge record in ``process`` (never applied).
_NO_EVENT = Event("", "", "", None, 0, 0)


def event_previous_id(e: Event) -> str | None:
    """An alias call's ``previousId`` (events restored from older snapshots lack the slot)."""
    return getattr(e, "previous_id", None)


def _loop(c: Control | None) -> EventDecodeError:
    what = "a decision" if c is None else f"a {c.kind} record of {c.other!r}"
    return EventDecodeError(
        ReasonCode.IDENTITY_LOOP,
        "hops",
        f"{what} was forwarded {_MAX_HOPS} times along merged ids (a loop): not applied",
    )


def _decision_json(d: Any) -> dict[str, Any]:
    """A pending decision as the decision record :func:`decode_decision` reads back."""
    return {
        "decisionId": d.decision_id,
        "userKey": d.user_key,
        "slot": d.slot,
        "chosen": d.action,
        "actionIndex": d.action_index,
        "arm": d.arm,
        "propensity": d.propensity,
        "features": list(d.features),
        "timestamp": iso_ms(d.decided_at),
        "modelVersion": d.model_version,
        "candidates": None if d.candidates is None else list(d.candidates),
    }


def _logged_outcome(o: Any) -> LoggedOutcome:
    ok = (
        isinstance(o, list)
        and len(o) == 6
        and all(isinstance(v, int) and not isinstance(v, bool) for v in o[:2])
        and all(isinstance(v, bool) for v in o[2:4])
        and all(v is None or isinstance(v, str) for v in o[4:])
    )
    if not ok:
        raise EventDecodeError(
            ReasonCode.INVALID_FIELD,
            "outcomes",
            "expected [seq, ts, positive, onboarding, step, echo]",
        )
    return LoggedOutcome(*o)


class SnapshotRefused(ValueError):
    """A snapshot blob that :meth:`SessionShard.restore` will not load; ``index`` says which
    (0: the base, n: the n-th delta)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(index, message)
        self.index = index
        self.message = message

    def __str__(self) -> str:
        return self.message


#: (module, name) of every class a snapshot may name: the state's own classes. Containers (dict,
#: list, tuple, set, frozenset) and scalars are pickle opcodes and need no entry.
ALLOWED_CLASSES = frozenset(
    {
        ("ray_app.state.dedupe", "Deduplicator"),
        ("ray_app.state.event", "Event"),
        ("ray_app.state.ordering", "Reorderer"),
        ("ray_app.state.ordering", "SessionCursor"),
        ("ray_app.state.profile", "Profile"),
        ("ray_app.state.profile", "ProfileConfig"),
        ("ray_app.state.profile", "StepStats"),
        ("ray_app.state.rewards", "LoggedOutcome"),
        ("ray_app.state.rewards", "PendingDecision"),
        ("ray_app.state.rewards", "RewardJoin"),
        ("ray_app.state.shard", "ShardStats"),
        ("ray_app.state.shard", "StateConfig"),
        ("ray_app.state.windows", "SessionWindows"),
        ("ray_app.state.windows", "TumblingCounts"),
        ("validation.batch", "DataQuality"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
)


class _StateUnpickler(pickle.Unpickler):
    """Unpickles only :data:`ALLOWED_CLASSES` ("Restricting Globals", in the pickle docs)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_CLASSES:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which is not a class of the stream state "
                "(refused without loading it)"
            )
        return super().find_class(module, name)


def _load(data: bytes, index: int) -> tuple[int, str, Any]:
    what = "the base snapshot" if index == 0 else f"delta {index}"
    try:
        loaded = _StateUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError...: bytes we do not load
        raise SnapshotRefused(index, f"{what} does not load: {exc}") from None
    if not isinstance(loaded, tuple) or len(loaded) != 3 or loaded[0] != SNAPSHOT_VERSION:
        version = loaded[0] if isinstance(loaded, tuple) and loaded else "?"
        raise SnapshotRefused(
            index, f"{what} is snapshot version {version}; this Onramp reads {SNAPSHOT_VERSION}"
        )
    return loaded


def _failed(exc: Exception, message_id: str | None = None) -> EventDecodeError:
    """A record that raised something other than a decode error while it was taken."""
    about = f" (event {message_id!r})" if message_id else ""
    text = f"{type(exc).__name__}: {exc}"
    return EventDecodeError(
        PROCESSING_FAILED_REASON, None, f"could not be processed{about}: {text[:500]}"
    )


def _event_bytes(e: Event) -> bytes:
    """An event as JSON, for a DLQ record when its own record is in an earlier batch."""
    return orjson.dumps({f: getattr(e, f) for f in e.__dataclass_fields__}, default=str)


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
