"""A stream worker: owns some partitions of ``onramp.events`` and the state of every key in them.

Its loop: poll a batch -> hand each partition's records, in offset order, to that partition's
:class:`~ray_app.state.SessionShard` -> write late and rejected records to their topics and wait
for Kafka's acknowledgement -> now and then, checkpoint each partition's snapshot together with
its next offset. On start it loads each partition's last checkpoint and reads from exactly that
offset, so a worker killed at any point replays what its checkpoint had not covered and ends in
the same state (the state core is deterministic). The late and DLQ topics are at-least-once:
records written after the last checkpoint are written again on replay (same content and
``messageId``), while the counters, which live in the checkpointed state, stay exact.

**A record cannot stop the loop.** Whatever a record of ``onramp.events`` or ``onramp.decisions``
holds (a tombstone, bytes that are not UTF-8, JSON that is not an object, fields of the wrong
type, a value that makes validation or ``apply`` raise), the state core rejects it alone and the
worker writes it to the DLQ (schema ``onramp.dlq/1``: reason, field, message, its origin topic,
partition and offset, and the raw value, at most 32 KB, as text or ``rawBase64``); the offsets
move on. A worker that stopped on a record would be restarted onto the same record forever.

**No checkpoint runs ahead of Kafka.** The late, DLQ and reward records a poll produced are
acknowledged by Kafka before any checkpoint can cover that poll's offsets. If they are not (Kafka
down past the timeout), the loop stops with the error and nothing is checkpointed past the last
acknowledged poll: :meth:`StreamWorker.stop` first retries the unacknowledged records, and skips
its final checkpoint if they still are not acknowledged (or if the loop did not stop in time),
so the replay from the previous checkpoint writes them again.

**Refused checkpoints.** A partition whose checkpoint is refused (its signature does not verify,
it is unsigned, or it names a class outside the state: see :mod:`ray_app.stream.checkpoint`) is
*not started*: the worker runs its other partitions, logs the refusal at ERROR, and reports it in
``status()["refused"]`` (metric ``onramp_stream_checkpoint_refused_partitions``). Starting the
partition empty instead would silently lose its state (and replay only what Kafka still holds);
the files stay where they are, untouched, for the operator: restore the right key
(``stream.checkpoint_key``), or delete the partition's checkpoint files to start it empty.

``StreamWorker`` is a plain class; :mod:`ray_app.stream.supervisor` runs it as a Ray actor.
"""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import gc
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import orjson

from ray_app.config import Settings
from ray_app.heap import GC_THRESHOLDS
from ray_app.kafka.client import (
    Consumer,
    OutRecord,
    Producer,
    key_for_partition,
    make_consumer,
    make_producer,
)
from ray_app.records import RewardRecord
from ray_app.state import SessionShard
from ray_app.state.shard import SnapshotRefused
from ray_app.state.tick import LIVE_MS, TICK, tick_record, tick_time
from ray_app.stream.checkpoint import (
    STALE_TEMP_S,
    Checkpoint,
    CheckpointRefused,
    CheckpointStore,
    checkpoint_key,
)
from ray_app.stream.config import state_config
from ray_app.stream.outputs import dlq_record, late_record
from ray_app.stream.profile_socket import Address, ProfileServer, serve_profiles
from ray_app.stream.reader import NOT_HELD
from ray_app.stream.status import partition_status
from ray_app.stream.writer import CheckpointWriter, rebase_partitions
from ray_app.telemetry.tracing import make_tracing, now_ns, traceparent_of
from validation.columns import SampledChecks

__all__ = ["FRESHNESS_BUCKETS_MS", "StreamWorker", "state_config"]

log = logging.getLogger(__name__)

#: Upper bounds (ms) of the freshness histogram: receivedAt -> state applied. Fine enough
#: around the 250 ms objective (issue 18) to say which side of it a percentile falls.
FRESHNESS_BUCKETS_MS = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 75, 100, 125, 150, 200, 250, 300, 400, 500, 750,
    1000, 1500, 2000, 5000, 10000, 30000, 60000,
)  # fmt: skip


#: ``sys.setswitchinterval`` in a stream worker's process (see :meth:`StreamWorker.start`).
SWITCH_INTERVAL_S = 0.0005
#: Records processed per hold of the state lock (bounds how long a profile read waits).
_LOCK_CHUNK = 256
#: Longest the stream thread waits between two chunks for the profile reads queued on the lock
#: (:meth:`StreamWorker._let_readers_in`), and how long it sleeps while it waits.
_READERS_WAIT_S = 0.005
_READERS_NAP_S = 0.00005
#: How long a poll's side outputs (late, DLQ, rewards) may take to be acknowledged.
_ACK_TIMEOUT_S = 60.0
#: Skipped offsets are fetched again at least this many times (over ``stream.skip_refetch_s``)
#: before they are taken as a hole in the partition (see :meth:`StreamWorker._in_order`).
_GAP_FETCHES = 3


class StreamWorker:
    """Consumes its partitions and keeps their state; see the module docstring.

    ``checkpoint_key`` signs and verifies the checkpoints; the supervisor resolves it once and
    passes it to every worker (None: resolve it here, from the settings). ``consumer``,
    ``producer`` and ``store`` replace the Kafka clients and checkpoint store built from the
    settings (the in-memory twins, in tests)."""

    def __init__(
        self,
        worker_id: str,
        settings: Settings,
        bootstrap: str,
        partitions: list[int],
        checkpoint_uri: str,
        checkpoint_key: bytes | None = None,
        *,
        consumer: Consumer | None = None,
        producer: Producer | None = None,
        store: CheckpointStore | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.topics = settings.topics
        if store is None:
            key = checkpoint_key or _resolve_key(settings, checkpoint_uri)
            # a write's temporary file is another's to remove only well past the time in which
            # a live writer is declared stuck and restarted (an hour was less than that with
            # stream.worker_start_timeout_s over 3600)
            stale = max(STALE_TEMP_S, 2 * stuck_write_s(settings))
            store = CheckpointStore(checkpoint_uri, key, settings.kafka.partitions, stale)
        self.store = store
        cfg = state_config(settings)
        # the batch checks, cross-checked with the declared pandera schema on a sample
        checks = SampledChecks.for_state(cfg)
        self.shards: dict[int, SessionShard] = {}
        self.next_offset: dict[int, int] = {}
        self.restored: dict[int, int] = {}
        self.refused: dict[int, str] = {}
        """Partition -> why its checkpoint was refused (the partition is not consumed)."""
        for p in sorted(partitions):
            try:
                ck = self.store.load(p)
                shard = None if ck is None else _restore(ck, self.store.uri, checks)
            except CheckpointRefused as exc:
                self.refused[p] = str(exc)
                log.error("%s; partition %d is NOT started (see ray_app.stream.worker)", exc, p)
                continue
            if ck is None or shard is None:
                self.shards[p], self.next_offset[p] = SessionShard(p, cfg, checks), 0
            else:
                # the checkpoint holds the config it was written under: this run's settings and
                # catalog (lateness, limits, step slots, negative events, caps) win
                changed = shard.reconfigure(cfg)
                if changed:
                    log.info("partition %d: restored under new settings: %s", p, ", ".join(changed))
                self.shards[p], self.next_offset[p] = shard, ck.next_offset
                self.restored[p] = ck.next_offset
        self.partitions = sorted(self.shards)
        self._consumer = consumer or make_consumer(bootstrap, settings.kafka)
        self._consumer.assign_at(
            {(self.topics.events, p): self.next_offset[p] for p in self.partitions}
            | {(self.topics.decisions, p): self.shards[p].decision_offset for p in self.partitions}
        )
        self._producer = producer or make_producer(bootstrap, settings.kafka)
        self._lock = threading.Lock()
        self._readers: deque[None] = deque()  # profile reads waiting for or holding the lock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty: set[int] = set()
        self._deltas: dict[int, int] = {}  # partition -> deltas written since its base
        self._writer = CheckpointWriter(self.store)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._owed: list[OutRecord] | None = []
        """Side outputs of applied records not yet acknowledged by Kafka: [] none; None unknown
        (a poll stopped half way), so no checkpoint may cover the current state."""
        self.checkpoints = 0
        self.checkpoints_skipped = 0
        self.freshness = [0] * (len(FRESHNESS_BUCKETS_MS) + 1)
        self.freshness_sum_ms = 0.0
        self.lag: dict[int, int] = {}
        self.redelivered: dict[int, int] = {}
        self.offset_gaps: dict[int, int] = {}
        self.fetched_again: dict[int, int] = {}
        """Per partition, since this worker started: records fetched again before the next
        offset (dropped), offsets taken as skipped, and reads started again at an offset a
        fetch skipped (see :meth:`_in_order`)."""
        self._gap_tries: dict[tuple[str, int], tuple[int, int, float]] = {}
        """(topic role, partition) -> (the first offset a fetch skipped, fetches again since,
        when first seen)."""
        self.error: str | None = None
        self._waiting_since: float | None = None  # when the loop began waiting on Kafka acks
        self.tracing = make_tracing(settings.telemetry, "stream")
        self.traced = 0
        self._profile_server: ProfileServer | None = None
        self._moved = dict.fromkeys(self.partitions, time.monotonic())
        """Partition -> when (monotonic) this worker last saw its event time move (or started)."""
        self._ticked: dict[int, float] = {}
        self.ticks: dict[int, int] = {}
        """Ticks Kafka acknowledged per partition since this worker started (:meth:`_tick_quiet`;
        counted on the producer's thread, read here)."""
        self.ticks_failed = 0
        """Ticks whose send failed (a later tick takes their place)."""
        self._tick_keys: dict[int, bytes] = {}

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> bool:
        if self._thread is None:
            # The state is millions of long-lived, acyclic objects (profiles, remembered ids):
            # with CPython's default thresholds (700, 10, 10) the collector keeps walking them
            # and finds nothing (a quarter of a worker's CPU in bench/stream.py). Young
            # collections every 50,000 allocations and old ones 100x rarer still free any
            # cycle; memory is reclaimed by reference counting as before.
            gc.set_threshold(*GC_THRESHOLDS)
            # A profile read's thread waits for the GIL each time it wakes (its socket, the
            # state lock) while this worker's loop runs: up to the switch interval each time
            # (CPython's 5 ms made a read of a few profiles take 5-10 ms).
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            self._thread = threading.Thread(
                target=self._run, name=f"onramp-{self.worker_id}", daemon=True
            )
            self._thread.start()
        if self._profile_server is None and self.settings.stream.profile_socket:
            self._profile_server = serve_profiles(self.profiles_of)
        return True

    def _run(self) -> None:
        s = self.settings.stream
        try:
            while not self._stop.is_set():
                records = self._consumer.poll(timeout_s=0.1, max_records=s.poll_max_records)
                if records:
                    self._process(records)
                self._tick_quiet()
                self._update_lag()
                if self._stop.is_set():
                    break  # stop() writes the final checkpoint (or decides not to)
                self._commit_written()  # offsets of checkpoints the writer has finished
                if self._dirty and (
                    self._since_checkpoint >= s.checkpoint_every_records
                    or time.monotonic() - self._last_checkpoint >= s.checkpoint_interval_s
                ):
                    self.checkpoint(wait=False)
        except Exception as exc:  # the supervisor sees the error and restarts the worker
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("worker %s stopped", self.worker_id)
        except BaseException as exc:  # SystemExit from a library: it ended the thread silently
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("worker %s stopped", self.worker_id)

    def _process(self, records: list[Any]) -> None:
        self._owed = None  # until this poll's outputs are built and acknowledged
        by_partition: dict[int, list[Any]] = {}
        decisions: dict[int, list[Any]] = {}
        for r in records:
            if r.partition not in self.shards:
                continue  # not ours (a refused partition is never assigned; defensive)
            if r.topic == self.topics.decisions:
                decisions.setdefault(r.partition, []).append(r)
            else:
                by_partition.setdefault(r.partition, []).append(r)
        by_partition = {
            p: self._in_order(p, recs, self.next_offset[p], "events")
            for p, recs in by_partition.items()
        }
        decisions = {
            p: self._in_order(p, recs, self.shards[p].decision_offset, "decisions")
            for p, recs in decisions.items()
        }
        outputs: list[OutRecord] = []
        # The lock is held per chunk, not per poll: profile reads (decisions waiting on them)
        # get in between. Only this thread checkpoints, so no checkpoint sees a half poll.
        for p, all_decisions in decisions.items():
            for start in range(0, len(all_decisions), _LOCK_CHUNK):
                recs = all_decisions[start : start + _LOCK_CHUNK]
                with self._lock:
                    result = self.shards[p].process_decisions(
                        [(r.key, r.value) for r in recs], recs[-1].offset + 1
                    )
                    self._dirty.add(p)
                self._let_readers_in()
                outputs += self._reward_records(result.rewards)
                outputs += self._identity_records(result.forward)
                for index, key, value, exc in result.rejected:
                    outputs.append(
                        OutRecord(self.topics.dlq, dlq_record(value, exc, recs[index]), key=key)
                    )
        for p, all_recs in by_partition.items():
            for start in range(0, len(all_recs), _LOCK_CHUNK):
                recs = all_recs[start : start + _LOCK_CHUNK]
                traces = None
                if self.tracing.enabled:
                    traces = [traceparent_of(r.headers) for r in recs]
                    traces = traces if any(traces) else None
                    started_ns = now_ns()
                with self._lock:
                    shard = self.shards[p]
                    event_time = shard.max_ts
                    result = shard.process(
                        [(r.key, r.value) for r in recs], traces, [r.timestamp_ms for r in recs]
                    )
                    if shard.max_ts != event_time:  # when event time moved, for ticks
                        self._moved[p] = time.monotonic()
                    self.next_offset[p] = recs[-1].offset + 1
                    self._dirty.add(p)
                    self._since_checkpoint += len(recs)
                self._let_readers_in()
                for index, key, value, why in result.late:
                    outputs.append(
                        OutRecord(self.topics.late, late_record(value, why, recs[index]), key=key)
                    )
                for index, key, value, exc in result.rejected:
                    outputs.append(
                        OutRecord(self.topics.dlq, dlq_record(value, exc, recs[index]), key=key)
                    )
                outputs += self._reward_records(result.rewards)
                outputs += self._identity_records(result.forward)
                if traces is not None:
                    outcomes = {i: "duplicate" for i in result.duplicate_indices}
                    outcomes.update((late[0], "late") for late in result.late)
                    outcomes.update((rej[0], "rejected") for rej in result.rejected)
                    try:
                        self.traced += self.tracing.consumed(recs, outcomes, started_ns, now_ns())
                    except Exception:  # telemetry never stops the stream
                        log.exception("tracing the consumed records failed")
                if result.received_ms:  # applied now: freshness up to this chunk's apply
                    now_ms = time.time() * 1000
                    for received in result.received_ms:
                        self._observe(now_ms - received)
        self._owed = outputs
        if outputs:  # acknowledged before any checkpoint can cover these offsets
            self._acknowledged(outputs)
        self._owed = []

    def _tick_quiet(self) -> None:
        """Write a tick (:mod:`ray_app.state.tick`) to each partition whose event time has not
        moved for ``stream.watermark_tick_s``, is live, and has something due by the time a tick
        would carry (:meth:`~ray_app.state.SessionShard.due_ms`); at most one a partition per
        that interval. Not waited on: the tick changes the state only when it is read back in
        offset order, so a lost one is only a later tick, and a replay reads what was written."""
        every = self.settings.stream.watermark_tick_s
        if not every:
            return
        now, wall_ms = time.monotonic(), int(time.time() * 1000)
        live_ms = max(self.settings.stream.allowed_lateness_ms, LIVE_MS)
        ticks, ticked = [], []
        for p in self.partitions:
            if now - self._moved[p] < every or now - self._ticked.get(p, -every) < every:
                continue
            shard = self.shards[p]  # only this thread changes it: read without the lock
            written, due = shard.clock_kafka_ms, shard.due_ms()
            if due is None or written is None or written - shard.max_ts > live_ms:
                continue  # nothing waits; no event time yet; or past times (a backfill)
            # never past the worker's own clock (a record stamped behind its event time, by a
            # clock behind the collector's, must not make a tick claim a time yet to come)
            at = min(tick_time(shard.max_ts, written, wall_ms), wall_ms)
            if at < due or at <= shard.max_ts:
                continue
            key = self._tick_keys.get(p)
            if key is None:
                key = key_for_partition(TICK, p, self.settings.kafka.partitions)
                self._tick_keys[p] = key
            ticks.append(OutRecord(self.topics.events, tick_record(at, p), key=key))
            self._ticked[p] = now
            ticked.append(p)
        if ticks:
            self._producer.send_many(ticks).add_done_callback(partial(self._ticks_settled, ticked))

    def _ticks_settled(self, partitions: list[int], future: cf.Future[Any]) -> None:
        """On the producer's thread: count the ticks Kafka acknowledged, or those that failed
        (the batch fails whole at its first error: some of it may have been written, so
        ``ticksWritten`` is then short, never over)."""
        error = future.exception()
        if error is not None:
            self.ticks_failed += len(partitions)
            log.warning("%d ticks were not written (others follow): %s", len(partitions), error)
            return
        for p in partitions:
            self.ticks[p] = self.ticks.get(p, 0) + 1

    def _acknowledged(self, outputs: list[OutRecord]) -> None:
        """Send side outputs and wait for Kafka's acknowledgement (at most
        :data:`_ACK_TIMEOUT_S`); how long the loop has waited shows in ``status()``
        (``waitingOnKafkaS``): a worker whose records stopped moving while its lag reads 0."""
        self._waiting_since = time.monotonic()
        try:
            self._producer.send_many(outputs).result(timeout=_ACK_TIMEOUT_S)
        finally:
            self._waiting_since = None

    def _in_order(self, p: int, recs: list[Any], expected: int, topic: str) -> list[Any]:
        """A partition's records of this poll from its next offset on, up to the first offset
        the fetch skipped.

        Records before the next offset were applied already (a client that fetched them again):
        they are dropped and counted in ``redelivered``. A skipped offset is first taken for a
        bad fetch, not for a hole in the partition: the records up to it are kept, the
        partition is read again from it (:meth:`_fetch_again`), and only a skip that every
        fetch repeats (:data:`_GAP_FETCHES` of them over at least ``stream.skip_refetch_s``, or
        one with that setting 0: a broker's transaction markers or compaction) is taken as a
        hole, counted in ``offsetGaps`` and logged. (A chaos run on the embedded broker once
        had a fetch hand over a partition from offset 4,492 when 3,049 was asked for; the 1,443
        records between were there when fetched again.)"""
        if recs and recs[0].offset < expected:
            kept = [r for r in recs if r.offset >= expected]
            self.redelivered[p] = self.redelivered.get(p, 0) + len(recs) - len(kept)
            log.warning(
                "worker %s: %s partition %d: %d records before the next offset %d delivered "
                "again; not applied twice",
                self.worker_id,
                topic,
                p,
                len(recs) - len(kept),
                expected,
            )
            recs = kept
        # contiguous from the next offset (not a count alone: a repeat and a gap add up)
        if [r.offset for r in recs] == list(range(expected, expected + len(recs))):
            return recs
        at = expected
        kept = []
        for r in recs:
            if r.offset < at:  # handed over twice in one fetch: applied once
                self.redelivered[p] = self.redelivered.get(p, 0) + 1
                continue
            if r.offset != at:
                if self._fetch_again(p, topic, r.topic, at, r.offset):
                    return kept
                self.offset_gaps[p] = self.offset_gaps.get(p, 0) + r.offset - at
                log.error(
                    "worker %s: %s partition %d: offsets %d to %d skipped (every fetch since "
                    "the first skipped them: transaction markers or compaction, else lost)",
                    self.worker_id,
                    topic,
                    p,
                    at,
                    r.offset - 1,
                )
            at = r.offset + 1
            kept.append(r)
        return kept

    def _fetch_again(self, p: int, topic: str, name: str, missing: int, got: int) -> bool:
        """Whether partition ``p`` of ``topic`` ("events" or "decisions", Kafka topic ``name``)
        is read again from offset ``missing`` (True), because a fetch handed over ``got``
        instead; False once fetches have skipped the same offsets :data:`_GAP_FETCHES` times
        over at least ``stream.skip_refetch_s``, or once with that setting 0 (the skip is then
        taken as a hole in the partition)."""
        now = time.monotonic()
        settle = self.settings.stream.skip_refetch_s
        tried = self._gap_tries.get((topic, p))
        if tried is None or tried[0] != missing:
            tried = (missing, 0, now)
        if tried[1] >= (_GAP_FETCHES if settle else 1) and now - tried[2] >= settle:
            del self._gap_tries[(topic, p)]
            return False
        self._gap_tries[(topic, p)] = (missing, tried[1] + 1, tried[2])
        self.fetched_again[p] = self.fetched_again.get(p, 0) + 1
        log.warning(
            "worker %s: %s partition %d: a fetch skipped offsets %d to %d; fetching again from %d",
            self.worker_id,
            topic,
            p,
            missing,
            got - 1,
            missing,
        )
        self._consumer.seek(name, p, missing)
        return True

    def _let_readers_in(self) -> None:
        """Between two chunks: wait until the profile reads queued on the state lock have had
        it (at most :data:`_READERS_WAIT_S`; the naps give the GIL away). Python's lock is not
        fair, and this thread holds the GIL when it lets go of the lock: on a busy machine a
        read woken by the release got the GIL only after this thread had taken the lock for
        the next chunk, and waited for a later chunk or the end of the poll, with the
        decisions waiting on it. Reads of 8 profiles every 2 ms while one worker applied a
        backlog of 63,000 events in one poll: p99 85-94 ms before, 12-13 ms with this and the
        0.5 ms switch interval (in one process, on the in-memory broker)."""
        if not self._readers:
            return
        deadline = time.monotonic() + _READERS_WAIT_S
        while self._readers and time.monotonic() < deadline:
            time.sleep(_READERS_NAP_S)

    def _settle(self) -> bool:
        """Whether the state may be checkpointed: every side output of what it applied is
        acknowledged. Retries owed outputs once (after the loop stopped on a failed send)."""
        if self._owed is None:
            return False
        if self._owed:
            try:
                self._acknowledged(self._owed)
            except Exception as exc:
                log.error(
                    "worker %s: %d late/DLQ/reward records still unacknowledged (%s)",
                    self.worker_id,
                    len(self._owed),
                    exc,
                )
                return False
            self._owed = []
        return True

    def _reward_records(self, rewards: list[RewardRecord]) -> list[OutRecord]:
        return [
            OutRecord(self.topics.rewards, orjson.dumps(r.to_json()), key=r.user_key.encode())
            for r in rewards
        ]

    def _identity_records(self, forward: list[tuple[str, bytes, bytes]]) -> list[OutRecord]:
        """Link, merge and forward records (:mod:`ray_app.state.identity`) to their topics."""
        topics = {"events": self.topics.events, "decisions": self.topics.decisions}
        return [OutRecord(topics[role], value, key=key) for role, key, value in forward]

    def _observe(self, ms: float) -> None:
        ms = max(ms, 0.0)  # a collector clock ahead of this host's: not less than no time
        self.freshness_sum_ms += ms
        self.freshness[bisect.bisect_left(FRESHNESS_BUCKETS_MS, ms)] += 1  # first bound >= ms

    def checkpoint(self, wait: bool = True, wait_commit: bool = False) -> int:
        """Snapshot every changed partition with its next offset and hand the blobs to the
        checkpoint writer (:mod:`ray_app.stream.writer`); returns how many partitions. With
        ``wait`` (the default; the loop passes False) the blobs are written, and the consumer
        group told their offsets, before it returns. Called on the loop's thread only (or after it
        stopped): the consumer is not thread-safe, and a base, pickled after the lock is
        released, is one moment of the state only because no other thread applies records.
        Writes nothing (returns 0) while the previous checkpoint is still being written and
        ``wait`` is False, or (counting ``checkpoints_skipped``) while side outputs of the state
        are unacknowledged."""
        per_base = self.settings.stream.checkpoint_deltas_per_base
        self._commit_written(wait_commit)
        if self._writer.busy():
            if not wait:
                return 0  # the loop comes back next round
            self._writer.flush()
        if not self._settle():
            self.checkpoints_skipped += 1
            log.error(
                "worker %s: checkpoint skipped: the state holds records whose late/DLQ/reward "
                "outputs Kafka has not acknowledged; the last checkpoint stands",
                self.worker_id,
            )
            return 0
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            saved = []
            rebase = rebase_partitions(dirty, self._deltas, per_base)
            later = []
            for p in sorted(dirty):
                if p in rebase:
                    later.append((p, self.shards[p].begin_snapshot(), self.next_offset[p]))
                    self._deltas[p] = 0
                else:
                    saved.append((p, self.shards[p].snapshot_delta(), self.next_offset[p], False))
                    self._deltas[p] += 1
            self._since_checkpoint = 0
            self._last_checkpoint = time.monotonic()
        # A base is pickled after the lock is released, but for its profiles, a slice at a time
        # under the lock with readers let in between (a read advances a profile's windows):
        # profile reads do not wait for a whole partition's profiles, ids and pending decisions.
        # Only this thread changes the state, and it applies nothing until the blob is done, so
        # the blob is still one moment of the state (ray_app.state.snapshot.begin_base).
        saved += [
            (p, finish(lambda: self._lock, self._let_readers_in), offset, True)
            for p, finish, offset in later
        ]
        if saved:
            self._writer.submit(saved)
        self.checkpoints += len(saved)
        if wait:
            self._writer.flush()
            self._commit_written(wait_commit)
        return len(saved)

    def _commit_written(self, wait: bool = False) -> None:
        """Tell the consumer group the offsets whose state is now durable (for monitoring lag
        with any Kafka tool; a restart resumes from the checkpoint, whatever the group says).
        Raises the error of a failed checkpoint write."""
        done = self._writer.written()
        if done:
            self._consumer.commit({(self.topics.events, p): o for p, o in done.items()}, wait=wait)

    def stop(self) -> dict[str, int]:
        """Stop the loop, checkpoint (only what Kafka acknowledged the outputs of), close;
        returns the next offsets (those checkpointed unless a checkpoint was skipped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._thread is not None and self._thread.is_alive():
            # still inside a poll (a send waiting on Kafka): its state is half done and the
            # consumer is not ours to use; the last checkpoint stands, the replay redoes the rest
            self.checkpoints_skipped += 1
            log.error(
                "worker %s: the loop did not stop in 30 s; no final checkpoint", self.worker_id
            )
        else:
            try:
                self.checkpoint(wait_commit=True)
            finally:  # a failed write (its error raised again here) must not leak the rest
                self._close()
            return {str(p): o for p, o in self.next_offset.items()}
        self._close()
        return {str(p): o for p, o in self.next_offset.items()}

    def _close(self) -> None:
        """Close the writer, the Kafka clients, tracing and the profile socket."""
        self._writer.close()
        self._consumer.close()
        self._producer.close()
        self.tracing.shutdown()
        if self._profile_server is not None:
            self._profile_server.close()

    def crash(self) -> None:
        """Stop as a killed process would: the loop ends, nothing is checkpointed or flushed
        (what a ``kill -9`` leaves; the in-process runtime's kill, for tests)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._writer.abandon()
        self._consumer.close()
        if self._profile_server is not None:
            self._profile_server.close()

    # -- reading -------------------------------------------------------------------------------

    def node_id(self) -> str | None:
        """The Ray node this worker runs on (None outside Ray)."""
        try:
            import ray

            return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        except Exception:
            return None

    def ping(self) -> str | None:
        """None when healthy, else the error that stopped the loop (or that it never ran), or a
        checkpoint file that has not been written in :func:`stuck_write_s` (the supervisor then
        restarts the worker from its last whole checkpoint; left alone, it went on applying
        records that no checkpoint would ever cover, its memory of them growing)."""
        if self.error is None and self._thread is None:
            return "not started"
        thread = self._thread
        if (
            self.error is None
            and thread is not None
            and not thread.is_alive()
            and not self._stop.is_set()
        ):
            return "the worker's loop ended without an error"  # never unread and healthy
        if self.error is None:
            taken = self._writer.writing_for()
            if taken > stuck_write_s(self.settings):
                return f"a checkpoint write to {self.store.uri} has not finished in {taken:.0f} s"
        return self.error

    def profile_address(self) -> Address | None:
        """(host, port, token) of this worker's profile socket (None: reads are actor calls)."""
        return None if self._profile_server is None else self._profile_server.address

    def profile(self, partition: int, user_key: str) -> dict[str, Any] | None:
        return self.profiles_of([(partition, user_key)])[0]

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """The state lock for a read from another thread (a profile read, the console's, the
        status and size of the supervisor's health checks), queued where the stream thread sees
        it between two chunks (:meth:`_let_readers_in`)."""
        self._readers.append(None)  # deque.append and pop are atomic
        try:
            with self._lock:
                yield
        finally:
            self._readers.pop()

    def profiles_of(self, keys: list[tuple[int, str]]) -> list[dict[str, Any] | None]:
        """Many (partition, user key) lookups in one call: one actor round trip for a batch."""
        with self._reading():
            out = []
            for partition, user_key in keys:
                shard = self.shards.get(partition)
                # a partition this worker does not hold: not "no such user" (see NOT_HELD)
                out.append({NOT_HELD: partition} if shard is None else shard.profile(user_key))
            return out

    def profiles(self, partition: int) -> dict[str, dict[str, Any]]:
        with self._reading():
            return self.shards[partition].profiles_as_dicts()

    def _update_lag(self) -> None:
        """Records per partition not yet taken: broker end offset - next offset. Runs on the
        loop's thread (Kafka consumers are not thread-safe). The embedded broker reports the
        start of its last batch + 1 as the end, so there it under-counts."""
        for p in self.partitions:
            hw = self._consumer.highwater(self.topics.events, p)
            if hw is not None:
                self.lag[p] = max(hw - self.next_offset[p], 0)

    def state_size(self) -> dict[str, int]:
        """Bytes of the snapshots of this worker's partitions and the users they hold."""
        with self._reading():
            return {
                "bytes": sum(len(sh.snapshot(rebase=False)) for sh in self.shards.values()),
                "users": sum(len(sh.profiles) for sh in self.shards.values()),
            }

    def refused_partitions(self) -> dict[int, str]:
        """Partition -> why its checkpoint was refused (those partitions are not consumed)."""
        return dict(self.refused)

    def status(self) -> dict[str, Any]:
        with self._reading():
            return {
                "worker": self.worker_id,
                "partitions": {
                    str(p): partition_status(
                        self.shards[p],
                        self.next_offset[p],
                        self.lag.get(p),
                        self.redelivered.get(p, 0),
                        self.offset_gaps.get(p, 0),
                        self.fetched_again.get(p, 0),
                        self.ticks.get(p, 0),
                    )
                    for p in self.partitions
                },
                "refused": {str(p): why for p, why in self.refused.items()},
                "restoredFrom": {str(p): o for p, o in self.restored.items()},
                "checkpoints": self.checkpoints,
                "checkpointsSkipped": self.checkpoints_skipped,
                "ticksFailed": self.ticks_failed,
                "traced": self.traced,
                "commitFailures": getattr(self._consumer, "commit_failures", 0),
                "freshnessBucketsMs": list(FRESHNESS_BUCKETS_MS),
                "freshnessCounts": list(self.freshness),
                "freshnessSumMs": self.freshness_sum_ms,
                "error": self.error,
                "waitingOnKafkaS": self._waiting_on_kafka_s(),
            }

    def _waiting_on_kafka_s(self) -> float:
        since = self._waiting_since
        return 0.0 if since is None else round(time.monotonic() - since, 1)


def _resolve_key(settings: Settings, checkpoint_uri: str) -> bytes:
    return checkpoint_key(settings.stream, checkpoint_uri)


def stuck_write_s(settings: Settings) -> float:
    """How long one checkpoint file may take to write before the worker reports itself
    unhealthy: as long as a start may take (``stream.worker_start_timeout_s``, which reads
    the same state back), and at least 20 checkpoint intervals."""
    s = settings.stream
    return max(s.worker_start_timeout_s, 20 * s.checkpoint_interval_s)


def _restore(ck: Checkpoint, uri: str, checks: SampledChecks | None = None) -> SessionShard:
    """The shard of a verified checkpoint; a snapshot the state core refuses (a class outside its
    allowlist, another snapshot version) is a refused checkpoint, naming the file."""
    try:
        return SessionShard.restore(ck.snapshot, ck.deltas, checks)
    except SnapshotRefused as exc:
        name = ck.files[exc.index] if exc.index < len(ck.files) else "?"
        raise CheckpointRefused(
            f"partition {ck.partition}: refused checkpoint {uri}/{name}: {exc}",
            partition=ck.partition,
            file=f"{uri}/{name}",
            reason="snapshot",
        ) from None
