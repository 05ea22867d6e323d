"""Checkpoint writes off the processing thread (:mod:`ray_app.stream.writer`): in order, the
offsets of what is durable handed back for the commit, a failed write stops the writer and
reaches the loop, and a slow store no longer holds up the records behind it."""

from __future__ import annotations

import threading
import time

import pytest

from ray_app.kafka.client import Record
from ray_app.stream.checkpoint import CheckpointStore
from ray_app.stream.worker import StreamWorker
from ray_app.stream.writer import CheckpointWriter
from tests.conftest import make_settings
from tests.unit.test_stream_poison import KEY, _produce, _worker, good


class _SlowStore(CheckpointStore):
    """A store whose writes take ``delay`` seconds (an fsync on a busy disk, an S3 PUT)."""

    delay = 0.0
    fail_on: int | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[tuple[int, int, str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def save(self, partition, snapshot, next_offset):
        self._slow(partition, next_offset, "base")
        super().save(partition, snapshot, next_offset)

    def save_delta(self, partition, delta, next_offset):
        self._slow(partition, next_offset, "delta")
        super().save_delta(partition, delta, next_offset)

    def _slow(self, partition, offset, kind):
        self.gate.wait()
        time.sleep(self.delay)
        if self.fail_on is not None and offset == self.fail_on:
            raise OSError("disk full")
        self.writes.append((partition, offset, kind))


def test_writes_are_in_order_and_the_durable_offsets_come_back(tmp_path) -> None:
    store = _SlowStore(tmp_path, KEY)
    w = CheckpointWriter(store)
    w.submit([(0, b"base-0", 5, True), (1, b"base-1", 7, True)])
    w.submit([(0, b"delta-0", 9, False)])
    assert w.flush(5)
    assert store.writes == [(0, 5, "base"), (1, 7, "base"), (0, 9, "delta")]
    assert w.written() == {0: 9, 1: 7} and w.written() == {}
    w.close()


def test_a_failed_write_stops_the_writer_and_reaches_the_loop(tmp_path) -> None:
    store = _SlowStore(tmp_path, KEY)
    store.fail_on = 9
    w = CheckpointWriter(store)
    w.submit([(0, b"b", 5, True)])
    w.submit([(0, b"d1", 9, False)])
    w.submit([(0, b"d2", 11, False)])  # must not follow the missing delta
    w.flush(5)
    with pytest.raises(OSError, match="disk full"):
        w.written()
    assert store.writes == [(0, 5, "base")]
    with pytest.raises(OSError):
        w.submit([(0, b"d3", 12, False)])


def test_abandon_drops_what_is_queued_like_a_killed_process(tmp_path) -> None:
    store = _SlowStore(tmp_path, KEY)
    store.gate.clear()  # the first write hangs until the gate opens
    w = CheckpointWriter(store)
    w.submit([(0, b"b", 5, True)])
    time.sleep(0.05)
    w.submit([(0, b"d", 9, False)])
    w.abandon()
    store.gate.set()
    time.sleep(0.2)
    assert store.writes == [(0, 5, "base")]  # the one being written finished; the queued did not


def test_the_loop_goes_on_while_a_slow_checkpoint_is_written(twin, tmp_path) -> None:
    """The worker's loop checkpoints without waiting: records keep being applied while the
    store takes its time, and the checkpoint, once written, covers what it snapshotted."""
    w, settings = _worker(tmp_path)
    store = _SlowStore(tmp_path / "slow", KEY)
    store.delay = 0.5
    w.store = store
    w._writer = CheckpointWriter(store)
    _produce(twin, settings, settings.topics.events, [good(f"a{n}", n) for n in range(5)])
    w._process(w._consumer.poll(max_records=100))
    started = time.monotonic()
    assert w.checkpoint(wait=False) == 1
    _produce(twin, settings, settings.topics.events, [good(f"b{n}", 5 + n) for n in range(5)])
    w._process(w._consumer.poll(max_records=100))
    assert time.monotonic() - started < 0.4  # did not wait for the store
    assert w.checkpoint(wait=False) == 0  # the previous one is still being written
    assert w.shards[0].stats.applied + w.shards[0].buffered == 10
    assert w.checkpoint() == 1  # waits: both are durable now
    assert store.writes == [(0, 5, "base"), (0, 10, "delta")]
    assert CheckpointStore(tmp_path / "slow", KEY).load(0).next_offset == 10


def test_a_checkpoint_write_that_never_finishes_makes_the_worker_unhealthy(
    twin,
    tmp_path,
    monkeypatch,
) -> None:
    """A store that never answers (a hung mount, a PUT without a deadline): the loop went on
    applying records no checkpoint would cover, its memory of them growing, while ping() said
    healthy. Past stuck_write_s the worker says so, and the supervisor restarts it from its
    last whole checkpoint."""
    import ray_app.stream.worker as worker_module

    w, settings = _worker(tmp_path)
    store = _SlowStore(tmp_path / "stuck", KEY)
    store.gate.clear()  # the write hangs until the gate opens
    w.store = store
    w._writer = CheckpointWriter(store)
    w._thread = threading.current_thread()  # started, as far as ping() is concerned
    _produce(twin, settings, settings.topics.events, [good(f"a{n}", n) for n in range(5)])
    w._process(w._consumer.poll(max_records=100))
    assert w.checkpoint(wait=False) == 1
    time.sleep(0.2)
    assert w.ping() is None  # a write in progress is no trouble yet
    monkeypatch.setattr(worker_module, "stuck_write_s", lambda settings: 0.1)
    assert "has not finished in" in (w.ping() or "")
    store.gate.set()
    assert w._writer.flush(5) and w.ping() is None


def test_partitions_due_together_rebase_one_checkpoint_apart(twin, tmp_path) -> None:
    """A worker's partitions come due for a full snapshot together; they rebase one checkpoint
    apart (a base of every partition at once held the loop for their sum), and what the store
    holds (a base and its deltas, however many) restores the same state."""
    settings = make_settings(
        ONRAMP_KAFKA__TOPIC_PREFIX="rebase",
        ONRAMP_KAFKA__PARTITIONS="2",
        ONRAMP_STREAM__CHECKPOINT_DELTAS_PER_BASE="2",
    )
    store = _SlowStore(tmp_path / "ckpt", KEY)
    w = StreamWorker("w0", settings, "in-memory", [0, 1], str(tmp_path / "ckpt"), KEY, store=store)
    w._writer = CheckpointWriter(store)
    topic = settings.topics.events
    parts = twin.topics.setdefault(topic, [[] for _ in range(twin.partitions)])
    rounds = []
    for n in range(12):
        for p in (0, 1):
            parts[p].append(
                Record(topic, p, len(parts[p]), b"u%d" % p, good(f"m{p}-{n}", n, f"u{p}"))
            )
        w._process(w._consumer.poll(max_records=100))
        before = len(store.writes)
        assert w.checkpoint() == 2
        rounds.append(sorted(p for p, _, kind in store.writes[before:] if kind == "base"))
    assert rounds[0] == [0, 1]  # no base yet: both
    assert all(len(r) <= 1 for r in rounds[1:]), rounds
    for p in (0, 1):  # each still rebases about every per_base + 1 checkpoints
        assert sum(p in r for r in rounds[1:]) >= 3, rounds
    again = StreamWorker("w1", settings, "in-memory", [0, 1], str(tmp_path / "ckpt"), KEY)
    for p in (0, 1):
        assert again.next_offset[p] == 12
        assert again.shards[p].profiles_as_dicts() == w.shards[p].profiles_as_dicts()


def test_a_loop_that_ends_on_system_exit_makes_the_worker_unhealthy(
    twin,
    tmp_path,
) -> None:
    """A SystemExit raised in the loop (a library calling sys.exit) ended the thread without
    an error or a log line, and ping() said healthy while the worker's partitions went unread."""
    w, _ = _worker(tmp_path)

    def exit_now(**_: object) -> list[Record]:
        raise SystemExit(3)

    w._consumer.poll = exit_now  # type: ignore[method-assign]
    w._thread = threading.Thread(target=w._run)
    w._thread.start()
    w._thread.join(5)
    assert w.ping() == "SystemExit: 3"
    w.error = None  # however it ended: a loop that is gone while not stopping is unhealthy
    assert "ended" in (w.ping() or "")


def test_a_write_is_not_taken_as_left_behind_before_it_could_be_declared_stuck(
    twin,
    tmp_path,
) -> None:
    """A temporary file was removed after an hour, where a live write is declared stuck (and
    its worker restarted) only after stream.worker_start_timeout_s: with that over an hour, a
    second worker's store deleted the file a live write was still writing."""
    import os

    from ray_app.stream.worker import stuck_write_s

    (tmp_path / "ckpt").mkdir()
    writing = tmp_path / "ckpt" / ".tmp-slow-write"
    writing.write_bytes(b"x")
    now = time.time()
    os.utime(writing, (now - 3_700, now - 3_700))  # past the hour, within the stuck bound
    w, settings = _worker(tmp_path, ONRAMP_STREAM__WORKER_START_TIMEOUT_S="7200")
    assert stuck_write_s(settings) == 7200
    assert writing.exists() and w.store.stale_temp_s == 2 * 7200
