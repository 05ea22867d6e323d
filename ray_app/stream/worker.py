"""A stream worker: owns some partitions of ``onramp.events`` and the state of every key in them.

Its loop: poll a batch -> hand each partition's records, in offset order, to that partition's
:class:`~ray_app.state.SessionShard` -> write late and rejected records to their topics and wait
for Kafka's acknowledgement -> now and then, checkpoint each partition's snapshot together with
its next offset. On start it loads each partition's last checkpoint and reads from exactly that
offset, so a worker killed at any point replays what its checkpoint had not covered and ends in
the same state (the state core is deterministic). The late and DLQ topics are at-least-once:
records written after the last checkpoint are written again on replay (same content and
``messageId``), while the counters, which live in the checkpointed state, stay exact.

``StreamWorker`` is a plain class; :mod:`ray_app.stream.supervisor` runs it as a Ray actor.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson

from ray_app.config import Settings
from ray_app.kafka.client import OutRecord, make_consumer, make_producer
from ray_app.records import RewardRecord
from ray_app.state import SessionShard, StateConfig
from ray_app.state.profile import ProfileConfig
from ray_app.stream.checkpoint import CheckpointStore
from ray_app.telemetry.tracing import make_tracing, now_ns, traceparent_of

__all__ = ["FRESHNESS_BUCKETS_MS", "StreamWorker", "state_config"]

log = logging.getLogger(__name__)

#: Upper bounds (ms) of the freshness histogram: receivedAt -> state applied.
FRESHNESS_BUCKETS_MS = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 2000, 5000, 10000, 30000, 60000,
)  # fmt: skip


#: Records processed per hold of the state lock (bounds how long a profile read waits).
_LOCK_CHUNK = 256


def state_config(settings: Settings) -> StateConfig:
    """The state core's semantics from the settings (and the onboarding catalog: its step ids
    for validation, its step slots for rewards)."""
    from ray_app.catalog import load_catalog

    s = settings.stream
    catalog = load_catalog(settings.decide.catalog_path)
    return StateConfig(
        allowed_lateness_ms=s.allowed_lateness_ms,
        reorder_max_buffer=s.reorder_max_buffer,
        reorder_wait_ms=s.reorder_wait_ms,
        max_age_ms=int(s.max_event_age_s * 1000),
        max_future_ms=int(s.max_event_future_s * 1000),
        max_user_events_per_s=s.max_user_events_per_s,
        attribution_window_ms=int(s.attribution_window_s * 1000),
        step_slots=frozenset(n for n, slot in catalog.slots.items() if slot.kind == "step"),
        negative_events=frozenset(catalog.negative_events),
        known_steps=frozenset(catalog.known_steps) if s.validate_steps else None,
        profile=ProfileConfig(session_gap_ms=s.session_gap_ms),
    )


class StreamWorker:
    """Consumes its partitions and keeps their state; see the module docstring."""

    def __init__(
        self,
        worker_id: str,
        settings: Settings,
        bootstrap: str,
        partitions: list[int],
        checkpoint_uri: str,
    ) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.topics = settings.topics
        self.partitions = sorted(partitions)
        self.store = CheckpointStore(checkpoint_uri)
        cfg = state_config(settings)
        self.shards: dict[int, SessionShard] = {}
        self.next_offset: dict[int, int] = {}
        self.restored: dict[int, int] = {}
        for p in self.partitions:
            ck = self.store.load(p)
            if ck is None:
                self.shards[p], self.next_offset[p] = SessionShard(p, cfg), 0
            else:
                self.shards[p], self.next_offset[p] = (
                    SessionShard.restore(ck.snapshot, ck.deltas),
                    ck.next_offset,
                )
                self.restored[p] = ck.next_offset
        self._consumer = make_consumer(bootstrap, settings.kafka)
        self._consumer.assign_at(
            {(self.topics.events, p): self.next_offset[p] for p in self.partitions}
            | {(self.topics.decisions, p): self.shards[p].decision_offset for p in self.partitions}
        )
        self._producer = make_producer(bootstrap, settings.kafka)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty: set[int] = set()
        self._deltas: dict[int, int] = {}  # partition -> deltas written since its base
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.checkpoints = 0
        self.freshness = [0] * (len(FRESHNESS_BUCKETS_MS) + 1)
        self.freshness_sum_ms = 0.0
        self.lag: dict[int, int] = {}
        self.error: str | None = None
        self.tracing = make_tracing(settings.telemetry, "stream")
        self.traced = 0

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> bool:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"onramp-{self.worker_id}", daemon=True
            )
            self._thread.start()
        return True

    def _run(self) -> None:
        s = self.settings.stream
        try:
            while not self._stop.is_set():
                records = self._consumer.poll(timeout_s=0.1, max_records=s.poll_max_records)
                if records:
                    self._process(records)
                self._update_lag()
                if self._dirty and (
                    self._since_checkpoint >= s.checkpoint_every_records
                    or time.monotonic() - self._last_checkpoint >= s.checkpoint_interval_s
                ):
                    self.checkpoint()
        except Exception as exc:  # the supervisor sees the error and restarts the worker
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("worker %s stopped", self.worker_id)

    def _process(self, records: list[Any]) -> None:
        by_partition: dict[int, list[Any]] = {}
        decisions: dict[int, list[Any]] = {}
        for r in records:
            if r.topic == self.topics.decisions:
                decisions.setdefault(r.partition, []).append(r)
            else:
                by_partition.setdefault(r.partition, []).append(r)
        outputs: list[OutRecord] = []
        now_ms = time.time() * 1000
        # The lock is held per chunk, not per poll: profile reads (decisions waiting on them)
        # get in between. Only this thread checkpoints, so no checkpoint sees a half poll.
        for p, recs in decisions.items():
            with self._lock:
                result = self.shards[p].process_decisions(
                    [(r.key, r.value) for r in recs], recs[-1].offset + 1
                )
                self._dirty.add(p)
            outputs += self._reward_records(result.rewards)
            for index, key, value, exc in result.rejected:
                outputs.append(
                    OutRecord(self.topics.dlq, _dlq_record(value, exc, recs[index]), key=key)
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
                    result = self.shards[p].process([(r.key, r.value) for r in recs], traces)
                    self.next_offset[p] = recs[-1].offset + 1
                    self._dirty.add(p)
                    self._since_checkpoint += len(recs)
                for index, key, value, why in result.late:
                    outputs.append(
                        OutRecord(self.topics.late, _late_record(value, why, recs[index]), key=key)
                    )
                for index, key, value, exc in result.rejected:
                    outputs.append(
                        OutRecord(self.topics.dlq, _dlq_record(value, exc, recs[index]), key=key)
                    )
                outputs += self._reward_records(result.rewards)
                if traces is not None:
                    outcomes = {i: "duplicate" for i in result.duplicate_indices}
                    outcomes.update((late[0], "late") for late in result.late)
                    outcomes.update((rej[0], "rejected") for rej in result.rejected)
                    self.traced += self.tracing.consumed(recs, outcomes, started_ns, now_ns())
                for received in result.received_ms:
                    self._observe(now_ms - received)
        if outputs:  # acknowledged before any checkpoint can cover these offsets
            self._producer.send_all(outputs).result(timeout=60)

    def _reward_records(self, rewards: list[RewardRecord]) -> list[OutRecord]:
        return [
            OutRecord(self.topics.rewards, orjson.dumps(r.to_json()), key=r.user_key.encode())
            for r in rewards
        ]

    def _observe(self, ms: float) -> None:
        self.freshness_sum_ms += ms
        for i, bound in enumerate(FRESHNESS_BUCKETS_MS):
            if ms <= bound:
                self.freshness[i] += 1
                return
        self.freshness[-1] += 1

    def checkpoint(self, wait_commit: bool = False) -> int:
        """Write every changed partition's snapshot with its next offset, then commit those
        offsets to the consumer group; returns how many partitions. Called on the loop's thread
        (or after it stopped): the consumer is not thread-safe."""
        per_base = self.settings.stream.checkpoint_deltas_per_base
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            saved = []
            for p in sorted(dirty):
                n = self._deltas.get(p)
                if n is None or n >= per_base:  # a base first, and every per_base deltas
                    saved.append((p, self.shards[p].snapshot(), self.next_offset[p], True))
                    self._deltas[p] = 0
                else:
                    saved.append((p, self.shards[p].snapshot_delta(), self.next_offset[p], False))
                    self._deltas[p] = n + 1
            self._since_checkpoint = 0
            self._last_checkpoint = time.monotonic()
        for p, snap, offset, full in saved:
            if full:
                self.store.save(p, snap, offset)
            else:
                self.store.save_delta(p, snap, offset)
        self.checkpoints += len(saved)
        # Only now, with the state durable, tell the group: its offsets are for monitoring lag
        # with any Kafka tool; a restart resumes from the checkpoint, whatever the group says.
        self._consumer.commit(
            {(self.topics.events, p): offset for p, _, offset, _ in saved}, wait=wait_commit
        )
        return len(saved)

    def stop(self) -> dict[str, int]:
        """Stop the loop, checkpoint, close; returns the offsets checkpointed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.checkpoint(wait_commit=True)
        self._consumer.close()
        self._producer.close()
        self.tracing.shutdown()
        return {str(p): o for p, o in self.next_offset.items()}

    # -- reading -------------------------------------------------------------------------------

    def node_id(self) -> str | None:
        """The Ray node this worker runs on (None outside Ray)."""
        try:
            import ray

            return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        except Exception:
            return None

    def ping(self) -> str | None:
        """None when healthy, else the error that stopped the loop."""
        return self.error

    def profile(self, partition: int, user_key: str) -> dict[str, Any] | None:
        with self._lock:
            shard = self.shards.get(partition)
            return None if shard is None else shard.profile(user_key)

    def profiles_of(self, keys: list[tuple[int, str]]) -> list[dict[str, Any] | None]:
        """Many (partition, user key) lookups in one call: one actor round trip for a batch."""
        with self._lock:
            out = []
            for partition, user_key in keys:
                shard = self.shards.get(partition)
                out.append(None if shard is None else shard.profile(user_key))
            return out

    def profiles(self, partition: int) -> dict[str, dict[str, Any]]:
        with self._lock:
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
        with self._lock:
            return {
                "bytes": sum(len(sh.snapshot(rebase=False)) for sh in self.shards.values()),
                "users": sum(len(sh.profiles) for sh in self.shards.values()),
            }

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "worker": self.worker_id,
                "partitions": {
                    str(p): {
                        "nextOffset": self.next_offset[p],
                        "buffered": self.shards[p].buffered,
                        "watermark": self.shards[p].watermark,
                        "lag": self.lag.get(p),
                        **self.shards[p].stats.as_dict(),
                        "quality": self.shards[p].quality.as_dict(),
                        "rejectedByReason": dict(self.shards[p].rejected_by_reason),
                        "decisionOffset": self.shards[p].decision_offset,
                        **self.shards[p].rewards.stats(),
                    }
                    for p in self.partitions
                },
                "restoredFrom": {str(p): o for p, o in self.restored.items()},
                "checkpoints": self.checkpoints,
                "traced": self.traced,
                "commitFailures": getattr(self._consumer, "commit_failures", 0),
                "freshnessBucketsMs": list(FRESHNESS_BUCKETS_MS),
                "freshnessCounts": list(self.freshness),
                "freshnessSumMs": self.freshness_sum_ms,
                "error": self.error,
            }


def _origin(rec: Any) -> dict[str, Any]:
    return {"stage": "stream", "topic": rec.topic, "partition": rec.partition, "offset": rec.offset}


def _late_record(value: bytes, why: dict[str, Any], rec: Any) -> bytes:
    try:
        event: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        event = value.decode("utf-8", "replace")
    return orjson.dumps({"schema": "onramp.late/1", **why, "event": event, "origin": _origin(rec)})


def _dlq_record(value: bytes, exc: Any, rec: Any) -> bytes:
    return orjson.dumps(
        {
            "schema": "onramp.dlq/1",
            "reason": exc.reason.value,
            "field": exc.field,
            "message": exc.message,
            "rawText": value.decode("utf-8", "replace")[:32_768],
            "rawSize": len(value),
            "origin": _origin(rec),
        }
    )
