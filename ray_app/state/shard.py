"""One partition's state: the profiles of its users and the machinery in front of them.

``SessionShard.process`` takes records of one partition in offset order and, per record:

1. decodes it (a record that is not a normalized event is *rejected*, for the DLQ);
2. validates the decoded batch with the shard's injected ``checks`` (the stream injects pandera's
   :class:`validation.batch.BatchValidator`: event time in a sane range of ``receivedAt``,
   non-negative durations, known call types and step ids, a plausible per-user rate); a failing
   event is *rejected* too, with the check's reason code;
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

**Snapshots are data, not code** (:mod:`ray_app.state.snapshot`): restored with an allowlist of
the state's own classes, and signed by :class:`~ray_app.stream.checkpoint.CheckpointStore`.
Identity stitching (links, merges, forwarded events) is :mod:`ray_app.state.stitching`.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, cast

import orjson

from ray_app.records import RewardRecord
from ray_app.state import identity, snapshot
from ray_app.state.checks import (
    PROCESSING_FAILED_REASON,
    BatchCheck,
    BatchChecks,
    failed_error,
)
from ray_app.state.config import ShardStats, StateConfig
from ray_app.state.dedupe import Deduplicator
from ray_app.state.event import Event, RecordRejected, decode_record, event_from_record
from ray_app.state.identity import CONTROL_TYPES, Control, forwarded_id
from ray_app.state.ordering import Reorderer
from ray_app.state.profile import Profile, apply
from ray_app.state.rewards import RewardJoin, decode_decision
from ray_app.state.snapshot import SNAPSHOT_VERSION, Finish, SnapshotRefused
from ray_app.state.stitching import (
    MAX_HOPS,
    NO_EVENT,
    Stitching,
    event_previous_id,
    loop_error,
)
from ray_app.state.tick import TICK, decode_tick

__all__ = [
    "PROCESSING_FAILED_REASON",
    "SNAPSHOT_VERSION",
    "BatchResult",
    "SessionShard",
    "ShardStats",
    "SnapshotRefused",
    "StateConfig",
]

_DAY_MS = 86_400_000
_NO_WATERMARK = -(2**62)


@dataclass
class BatchResult:
    """What one call to :meth:`SessionShard.process` did."""

    applied: int = 0
    duplicates: int = 0
    late: list[tuple[int, bytes | None, bytes, dict[str, Any]]] = field(default_factory=list)
    """(index in the batch, key, value, why) of every late record."""
    rejected: list[tuple[int, bytes | None, bytes | None, RecordRejected]] = field(
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


class SessionShard(BatchChecks, Stitching):
    """The state of one partition: per-user profiles, dedupe, ordering, watermark."""

    clock_kafka_ms: int | None = None  # snapshots written before ticks have none
    _stamps: Sequence[int] | None = None  # the batch's Kafka timestamps, while it is processed

    def __init__(
        self, partition: int, config: StateConfig | None = None, checks: BatchCheck | None = None
    ) -> None:
        self.partition = partition
        self.config = config or StateConfig()
        self.checks = checks
        """Batch validation (None: none); not part of the state, so not in snapshots."""
        self.profiles: dict[str, Profile] = {}
        self.dedupe = Deduplicator(self.config.dedupe_horizon_ms, self.config.dedupe_max_ids)
        self.order = Reorderer(self.config.reorder_max_buffer, self.config.session_idle_ms)
        self.max_ts = _NO_WATERMARK
        self.watermark = _NO_WATERMARK
        self.stats = ShardStats()
        self.quality = checks.new_quality() if checks is not None else None
        self.rejected_by_reason: dict[str, int] = {}
        self.rates: dict[str, tuple[int, int]] = {}
        """user -> (second of event time, events in it so far), for the rate check."""
        self._rates_pruned_at = 0
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
        self.clock_kafka_ms: int | None = None
        """When the record that last moved ``max_ts`` was written: its Kafka timestamp (its
        producer's clock), see :meth:`_take` and :mod:`ray_app.state.tick`. A function of
        the records like the rest of the state; it only times ticks."""

    # -- processing ------------------------------------------------------------------------

    def process(
        self,
        records: Iterable[tuple[bytes | None, bytes | None]],
        traces: Sequence[str | None] | None = None,
        stamps: Sequence[int] | None = None,
    ) -> BatchResult:
        """Apply records of this partition, in offset order; ``traces`` (aligned with the
        records, when tracing is on) are their ``traceparent`` headers, ``stamps`` their Kafka
        timestamps (they time ticks: :attr:`clock_kafka_ms`). A value of None is a tombstone
        (rejected)."""
        out = BatchResult()
        self._stamps = stamps
        decoded: list[tuple[int, bytes | None, bytes, Event]] = []
        controls: dict[int, Control] = {}
        """Position in ``decoded`` -> the link, merge or forward record it is (its Event slot
        holds the forwarded event, or a placeholder)."""
        for index, (key, value) in enumerate(records):
            self.stats.records += 1
            try:
                trace = traces[index] if traces is not None else None
                d = decode_record(value)
                if d.get("type") == TICK:  # the time, from the worker (ray_app.state.tick)
                    at = decode_tick(d)
                    controls[len(decoded)] = Control(TICK, "", "", "", at, d)
                    decoded.append((index, key, cast(bytes, value), NO_EVENT))
                    continue
                if d.get("type") in CONTROL_TYPES:
                    control = identity.decode_control(d)
                    e = NO_EVENT
                    if control.kind == identity.FORWARD:
                        self.stats.relayed += 1
                        e = identity.event_from_json(d.get("event"), control.user_key)
                    controls[len(decoded)] = control
                else:
                    e = event_from_record(d, trace)
                decoded.append((index, key, cast(bytes, value), e))  # decoded: not None
            except RecordRejected as exc:
                self._reject(out, index, key, value, exc)
            except Exception as exc:  # anything else about this one record: it alone is rejected
                self._reject(out, index, key, value, failed_error(exc))
        failed: dict[int, RecordRejected] = {}
        if self.checks is not None and len(decoded) > len(controls):
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
                elif c.kind == TICK:
                    if c.body.get("partition", self.partition) == self.partition:
                        self._advance_to(c.ts, index, key, value, out, origin)
                    # a tick is the worker's clock, not a record of the stream's: outside
                    # ``records`` (one for another partition, with the topic's partitions not
                    # the settings', is counted and moves nothing here)
                    self.stats.records -= 1
                    self.stats.ticks += 1
                else:
                    self._link(c, out) if c.kind == identity.LINK else self._merge(c, out)
                    self.stats.control += 1
            except RecordRejected as exc:  # a malformed identity record: its own reason
                self._reject(out, index, key, value, exc)
            except Exception as exc:
                self._reject(out, index, key, value, failed_error(exc))
        self._stamps = None
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
        # a forwarded copy is a new record for its target: the partition that sent it on saw
        # the original's id (the same partition, when both ids hash to it)
        seen_id = event.message_id if forwarded is None else forwarded_id(event, forwarded)
        if self.dedupe.seen(seen_id, event.ts):
            self.stats.duplicates += 1
            out.duplicates += 1
            if traced:
                out.duplicate_indices.append(index)
            return
        # the watermark follows event time only as far as the server's own clock: a client
        # that stamps its events in the future (up to max_future_ms passes validation) must
        # not make everybody else's events late
        trusted = event.ts if event.ts <= event.received else event.received
        moved = False
        if trusted > self.max_ts:  # (inline: most events of a live stream move it)
            moved = self._clock(trusted)
            stamps = self._stamps
            # when it was written (clock_kafka_ms): its record's Kafka timestamp; an event
            # forwarded from a merged id (written again by the partition that forwarded it,
            # maybe while it caught up with a backlog), or one without a timestamp: receivedAt
            stamp = stamps[index] if stamps is not None and forwarded is None else 0
            self.clock_kafka_ms = stamp if stamp > 0 else event.received
        if forwarded is not None:
            if forwarded.body.get("hops", 0) >= MAX_HOPS:
                raise loop_error(forwarded)
            released = [event]
        else:
            released = self.order.offer(event)
        self._release(released, moved, index, key, value, out, origin, event, forwarded)

    def _advance_to(
        self,
        at: int,
        index: int,
        key: bytes | None,
        value: bytes,
        out: BatchResult,
        origin: dict[int, tuple[int, bytes | None, bytes]],
    ) -> None:
        """A tick of time ``at``: the watermark moves as an event of that time would move it,
        and what that releases is applied; nothing else."""
        before = self.max_ts
        moved = self._clock(at)
        if self.max_ts != before and self.clock_kafka_ms is not None:
            # written when its time was read: the gap between event time and the time records
            # are written stays as the events left it, whatever the tick's trip through Kafka
            # (a broker's LogAppendTime) or the records after it in the chunk
            self.clock_kafka_ms += self.max_ts - before
        self._release([], moved, index, key, value, out, origin, None, None)

    def _clock(self, trusted: int) -> bool:
        """Event time reached ``trusted``: move ``max_ts`` and the watermark (never back: a
        restart with a longer allowed lateness pulled it back at the next event, and copies of
        events dedupe had already forgotten were applied again) and evict what the watermark
        passed. Whether the watermark moved."""
        if trusted <= self.max_ts:
            return False
        self.max_ts = trusted
        moved = False
        if self.max_ts - self.config.allowed_lateness_ms > self.watermark:
            self.watermark = self.max_ts - self.config.allowed_lateness_ms
            moved = True
        self._evict()
        return moved

    def _release(
        self,
        released: list[Event],
        moved: bool,
        index: int,
        key: bytes | None,
        value: bytes,
        out: BatchResult,
        origin: dict[int, tuple[int, bytes | None, bytes]],
        event: Event | None,
        forwarded: Control | None,
    ) -> None:
        """Apply ``released`` and what the reorder buffer gives up on at the current time; close
        the windows the watermark passed if it ``moved``."""
        lateness = self.config.allowed_lateness_ms
        released += self.order.advance(
            self.watermark, self.max_ts - min(self.config.reorder_wait_ms, lateness)
        )
        for e in released:
            try:
                self._apply(
                    e, out, forwarded.other if forwarded is not None and e is event else None
                )
            except Exception as exc:
                # the record that carried ``e`` (this batch), else the one that released it
                i, k, v = origin.get(id(e), (index, e.user_key.encode(), _event_bytes(e)))
                self._reject(out, i, k, v, failed_error(exc, e.message_id))
        if moved:
            # windows close at the record that moved the watermark past them (every event below
            # it is applied by now), not at the end of the batch: where a worker cuts its batches
            # (timing) decided whether a later record's outcome (a merge's) still counted, and a
            # replay could reward a decision otherwise
            self.dedupe.advance(self.watermark)
            out.rewards += self.rewards.advance(self.watermark)

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
        # an alias's entry is the time it expires, its last forwarded record's + the TTL
        heap, ttl = self._alias_expiry, self.config.profile_idle_ttl_ms
        while heap and heap[0][0] < self.watermark:
            expires, old = heapq.heappop(heap)
            alias = self.aliases.get(old)
            if alias is not None and alias[1] + ttl == expires:
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
                    if not isinstance(hops, int) or hops >= MAX_HOPS:
                        raise loop_error(None)
                    # refuse garbage here; a repeat of one decided here before the merge (a
                    # client's retry) is a repeat, not a new decision for the surviving id
                    d = decode_decision(record, self.rewards.step_slots)
                    if self.rewards.knows(d.decision_id):
                        self.rewards.repeated += 1
                        continue
                    # a copy for the surviving id's join; readers of the topic (report, console,
                    # audit, replay) count the original and read the copy as the merge it is
                    fwd = {
                        **record,
                        "userKey": alias[0],
                        "hops": hops + 1,
                        "forwardedFrom": record.get("forwardedFrom", user),
                    }
                    out.forward.append(("decisions", alias[0].encode(), orjson.dumps(fwd)))
                    continue
                out.rewards += self.rewards.offer_decision(record, self.watermark)
            except Exception as exc:
                err = exc if isinstance(exc, RecordRejected) else failed_error(exc)
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
        exc: RecordRejected,
    ) -> None:
        self.stats.rejected += 1
        reason = exc.reason.value
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        out.rejected.append((index, key, value, exc))

    def _apply(self, event: Event, out: BatchResult, origin: str | None = None) -> None:
        """Apply ``event`` to its profile (``origin``: the id it was sent with, when it was
        forwarded here), or send it on to the id its own was merged into."""
        alias = self.aliases.get(event.user_key)
        if alias is not None:  # merged into another id: its profile is there
            self._forward(event, alias, out)
            return
        profile = self.profiles.get(event.user_key)
        if profile is None:
            profile = self.profiles[event.user_key] = Profile(event.user_key, self.config.profile)
        self._touched.add(event.user_key)  # first: a delta carries even a half-applied event
        last = profile.last_seen
        apply(profile, event, self.cap_hits, origin)
        if profile.last_seen != last and profile.last_seen is not None:
            heapq.heappush(self._expiry, (profile.last_seen, event.user_key))
            if len(self._expiry) > 2 * len(self.profiles) + 256:
                self._compact_expiry()
        if event.kind == "track" and self.rewards.is_outcome(event.name):
            echo = event.properties.get("decisionId")
            out.rewards += self.rewards.on_outcome(
                profile.user_key,  # the profile's own str: a snapshot stores it once
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

    # -- the time ------------------------------------------------------------------------

    def due_ms(self) -> int | None:
        """The earliest event time whose record would release something waiting here: close a
        pending decision's window (reward 0, ``timeout``) or give up on a reorder buffer's gap.
        None: nothing waits on the watermark. A quiet partition gets a tick of that time or
        later from its worker (:mod:`ray_app.state.tick`).

        >>> shard = SessionShard(0, StateConfig(allowed_lateness_ms=1_000))
        >>> shard.due_ms() is None
        True
        """
        lateness = self.config.allowed_lateness_ms
        due: int | None = None
        join = self.rewards
        if join.pending and join.closing:  # the head may be decided already: a tick clears it
            due = join.closing[0][0] + lateness + 1
        waiting = self.order.waiting
        if waiting:
            gap = waiting[0][0] + min(self.config.reorder_wait_ms, lateness) + 1
            due = gap if due is None else min(due, gap)
        return due

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
        return snapshot.dump_base(self, rebase)

    def begin_snapshot(self) -> Finish:
        """:meth:`snapshot` in two steps: this call marks the moment (later deltas start here);
        the call it returns (``hold``: the context each slice of profiles is pickled in,
        ``between``: what runs after each) pickles the state and gives the bytes. Nothing may
        be applied until it has (see :func:`~ray_app.state.snapshot.begin_base`)."""
        return snapshot.begin_base(self, rebase=True)

    def snapshot_delta(self) -> bytes:
        """What changed since the previous snapshot or delta: the profiles of the users touched,
        the ids remembered, and the small rest of the state (watermark, counters, reorder
        buffers). Costs in proportion to the change, not to the state."""
        return snapshot.dump_delta(self)

    @classmethod
    def restore(
        cls, data: bytes, deltas: Iterable[bytes] = (), checks: BatchCheck | None = None
    ) -> SessionShard:
        """The shard a :meth:`snapshot` and the deltas taken after it describe, validating with
        ``checks`` from now on (snapshots do not hold the validator). Raises
        :class:`SnapshotRefused` (with the blob's ``index``: 0 the base, 1... the deltas) for a
        blob that names a class outside the state's allowlist, is not a snapshot of this version,
        or does not unpickle."""
        shard = cls.__new__(cls)
        snapshot.load_into(shard, data, deltas)
        shard.checks = checks
        if shard.quality is None and checks is not None:
            shard.quality = checks.new_quality()
        shard._compact_expiry()
        return shard

    def reconfigure(self, config: StateConfig) -> list[str]:
        """Go on under ``config`` (the settings and catalog of this run) instead of the one the
        checkpoint was written under; returns the names of the fields that changed. Lateness,
        limits, the reward join's window, step slots and negative events, and every profile's
        caps follow it from the next record on; the watermark never moves back (a longer
        lateness takes effect as event time moves on).

        >>> shard = SessionShard(0, StateConfig(allowed_lateness_ms=60_000))
        >>> restored = SessionShard.restore(shard.snapshot())
        >>> restored.reconfigure(StateConfig(allowed_lateness_ms=5_000))
        ['allowed_lateness_ms']
        >>> restored.config.allowed_lateness_ms, restored.reconfigure(restored.config)
        (5000, [])
        """
        old = self.config
        changed = [
            f.name for f in fields(StateConfig) if getattr(old, f.name) != getattr(config, f.name)
        ]
        if not changed:
            return changed
        self.config = config
        self.dedupe.horizon_ms, self.dedupe.max_ids = (
            config.dedupe_horizon_ms,
            config.dedupe_max_ids,
        )
        self.order.max_buffer, self.order.idle_ms = (
            config.reorder_max_buffer,
            config.session_idle_ms,
        )
        join = self.rewards
        join.window_ms, join.step_slots = config.attribution_window_ms, config.step_slots
        join.negative_events = config.negative_events
        if self.max_ts != _NO_WATERMARK:
            self.watermark = max(self.watermark, self.max_ts - config.allowed_lateness_ms)
        if config.profile != old.profile:
            for profile in self.profiles.values():  # a restore reconfigures them again
                profile.config = config.profile
        if config.profile_idle_ttl_ms != old.profile_idle_ttl_ms:
            self.rebuild_alias_expiry()  # its entries are last time + the TTL
        return changed


def _event_bytes(e: Event) -> bytes:
    """An event as JSON, for a DLQ record when its own record is in an earlier batch."""
    return orjson.dumps({f: getattr(e, f) for f in e.__dataclass_fields__}, default=str)
