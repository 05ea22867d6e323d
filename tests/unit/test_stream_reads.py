"""Profile reads while the stream applies a long poll: a read waiting on the state lock gets it
at the next chunk boundary, not at the end of the poll (Python's lock is not fair: without the
handoff the stream thread, holding the GIL, takes the lock again for the next chunk before the
woken reader can run)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ray_app.state import SessionShard
from ray_app.stream import worker as worker_module
from tests.unit.test_stream_poison import _produce, _worker, good

CHUNKS = 8

#: Every read another thread makes under the state lock: the decisions' profile reads, the
#: console's, and the supervisor's health checks (status and state size).
READS: dict[str, Callable[[Any], Any]] = {
    "profiles_of": lambda w: w.profiles_of([(0, "u1")])[0],
    "profiles": lambda w: w.profiles(0)["u1"],
    "status": lambda w: w.status()["partitions"]["0"],
    "state_size": lambda w: w.state_size(),
}


@pytest.mark.parametrize("kind", list(READS))
def test_a_read_waiting_on_the_lock_gets_it_at_the_next_chunk(twin, tmp_path, monkeypatch, kind):
    # a generous wait, so that a loaded machine cannot make the handoff time out
    monkeypatch.setattr(worker_module, "_READERS_WAIT_S", 10.0)
    w, settings = _worker(tmp_path)
    n = worker_module._LOCK_CHUNK * CHUNKS
    _produce(twin, settings, settings.topics.events, [good(f"m{i}", i) for i in range(n)])
    shard = w.shards[0]
    process = type(shard).process
    started: list[int] = []
    answered: list[tuple[int, dict | None]] = []
    after_two: list[dict | None] = []
    reader: list[threading.Thread] = []

    asked = threading.Event()

    def read() -> None:
        asked.set()
        answer = READS[kind](w)
        answered.append((len(started), answer))  # the chunks begun when it was answered

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

    def chunk(self, *args, **kwargs):  # called under the state lock
        started.append(len(started))
        if len(started) == 2:  # a read arrives during the second chunk and waits on the lock
            reader.append(threading.Thread(target=read, name="reader"))
            reader[0].start()
            asked.wait(timeout=10)
            # a read that queues does so before it reaches the lock; one that does not (the
            # paths that took the plain lock) is still on its way (0.3 s) when the poll goes on
            queued = time.monotonic() + 0.1
            while not w._readers and time.monotonic() < queued:
                time.sleep(0.001)
        if len(started) == 3:
            after_two.append(shard.profile("u1"))
        return process(self, *args, **kwargs)

    # on the class: a shard holding a local function could not be pickled (state_size snapshots)
    monkeypatch.setattr(type(shard), "process", chunk)
    w._process(w._consumer.poll(max_records=n))
    reader[0].join(timeout=30)
    assert len(started) == CHUNKS and w.next_offset[0] == n
    # answered between the second chunk and the third, from the state after two chunks
    [(chunks_started, answer)] = answered
    assert chunks_started == 2
    if kind == "profiles_of":
        assert answer is not None and answer == after_two[0]
        assert answer != shard.profile("u1")  # the poll went on after the read


def test_the_stream_waits_for_queued_readers_only_and_only_so_long(twin, tmp_path, monkeypatch):
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


def test_a_base_checkpoint_holds_the_lock_a_slice_of_profiles_at_a_time_and_not_for_the_join(
    twin,
    tmp_path,
    monkeypatch,
):
    """A base checkpoint takes the state lock for a slice of profiles at a time, letting reads in
    after each, and pickles the reward join (every pending decision) without it, so profile
    reads do not wait for a whole partition; what is restored is the state of that moment,
    pending decisions and profiles alike."""
    from ray_app.state import snapshot
    from ray_app.state.profile import Profile
    from ray_app.state.rewards import RewardJoin
    from ray_app.stream.checkpoint import CheckpointStore
    from tests.unit.test_stream_poison import KEY, decision

    monkeypatch.setattr(snapshot, "PROFILE_SLICE", 2)
    w, settings = _worker(tmp_path)
    events = [good(f"m{i}", i, user=f"u{i % 5}") for i in range(20)]
    _produce(twin, settings, settings.topics.events, events)
    _produce(
        twin,
        settings,
        settings.topics.decisions,
        [decision(decisionId=f"d{i}", userKey="u1") for i in range(50)],
    )
    w._process(w._consumer.poll(max_records=1_000))
    assert len(w.shards[0].profiles) == 5
    held: list[tuple[str, bool]] = []
    getstate, profile_state = RewardJoin.__getstate__, Profile.__getstate__
    let_in = w._let_readers_in

    def join_state(self: RewardJoin) -> dict[str, Any]:
        held.append(("join", w._lock.locked()))
        return getstate(self)

    def profile_getstate(self: Profile) -> Any:
        held.append(("profile", w._lock.locked()))
        return profile_state(self)

    def readers_in() -> None:
        held.append(("readers", w._lock.locked()))
        let_in()

    monkeypatch.setattr(RewardJoin, "__getstate__", join_state)
    monkeypatch.setattr(Profile, "__getstate__", profile_getstate)
    monkeypatch.setattr(w, "_let_readers_in", readers_in)
    assert w.checkpoint() == 1  # the partition's first: a base
    # 5 profiles in slices of 2 under the lock, readers let in after each, the join without it
    assert held == (
        [("profile", True)] * 2 + [("readers", False)]
        + [("profile", True)] * 2 + [("readers", False)]
        + [("profile", True), ("readers", False), ("join", False)]
    )  # fmt: skip
    ck = CheckpointStore(tmp_path / "ckpt", KEY).load(0)
    assert ck is not None and not ck.deltas
    restored = SessionShard.restore(ck.snapshot, ck.deltas)
    assert set(restored.rewards.pending) == {f"d{i}" for i in range(50)}
    assert restored.profiles_as_dicts() == w.shards[0].profiles_as_dicts()
    w.stop()
