"""Profile reads while the stream applies a long poll: a read waiting on the state lock gets it
at the next chunk boundary, not at the end of the poll (Python's lock is not fair: without the
handoff the stream thread, holding the GIL, takes the lock again for the next chunk before the
woken reader can run)."""

from __future__ import annotations

import threading
import time

from ray_app.stream import worker as worker_module
from tests.unit.test_stream_poison import _produce, _worker, good, twin  # noqa: F401

CHUNKS = 8


def test_a_read_waiting_on_the_lock_gets_it_at_the_next_chunk(twin, tmp_path, monkeypatch):  # noqa: F811
    # a generous wait, so that a loaded machine cannot make the handoff time out
    monkeypatch.setattr(worker_module, "_READERS_WAIT_S", 10.0)
    w, settings = _worker(tmp_path)
    n = worker_module._LOCK_CHUNK * CHUNKS
    _produce(twin, settings, settings.topics.events, [good(f"m{i}", i) for i in range(n)])
    shard = w.shards[0]
    process = shard.process
    started: list[int] = []
    answered: list[tuple[int, dict | None]] = []
    after_two: list[dict | None] = []
    reader: list[threading.Thread] = []

    def read() -> None:
        [profile] = w.profiles_of([(0, "u1")])
        answered.append((len(started), profile))

    class Busy:
        """The state lock, as a busy machine shows it to a reader: woken late (0.3 s), while
        the stream thread, which holds the GIL, would go on with the next chunks."""

        def __init__(self, lock: threading.Lock) -> None:
            self.lock = lock

        def __enter__(self) -> None:
            if threading.current_thread().name == "reader":
                time.sleep(0.3)
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    w._lock = Busy(w._lock)  # type: ignore[assignment]

    def chunk(*args, **kwargs):  # called under the state lock
        started.append(len(started))
        if len(started) == 2:  # a read arrives during the second chunk and waits on the lock
            reader.append(threading.Thread(target=read, name="reader"))
            reader[0].start()
            while not w._readers:
                pass
        if len(started) == 3:
            after_two.append(shard.profile("u1"))
        return process(*args, **kwargs)

    monkeypatch.setattr(shard, "process", chunk)
    w._process(w._consumer.poll(max_records=n))
    reader[0].join(timeout=30)
    assert len(started) == CHUNKS and w.next_offset[0] == n
    # answered between the second chunk and the third, from the state after two chunks
    [(chunks_started, profile)] = answered
    assert chunks_started == 2
    assert profile is not None and profile == after_two[0]
    assert profile != shard.profile("u1")  # the poll went on after the read


def test_the_stream_waits_for_queued_readers_only_and_only_so_long(twin, tmp_path, monkeypatch):  # noqa: F811
    w, _ = _worker(tmp_path)
    monkeypatch.setattr(worker_module, "_READERS_WAIT_S", 10.0)
    t = time.monotonic()
    w._let_readers_in()  # nobody waiting: no wait
    assert time.monotonic() - t < 1.0
    w._readers.append(None)  # a read holding the lock for 0.2 s
    threading.Timer(0.2, w._readers.pop).start()
    t = time.monotonic()
    w._let_readers_in()
    assert 0.15 < time.monotonic() - t < 5.0 and not w._readers
    monkeypatch.setattr(worker_module, "_READERS_WAIT_S", 0.1)
    w._readers.append(None)  # a read that never leaves: the stream goes on after the bound
    t = time.monotonic()
    w._let_readers_in()
    assert 0.05 < time.monotonic() - t < 5.0
