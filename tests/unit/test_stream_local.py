"""The supervisor and its workers in this process, on the in-memory broker (``LocalRuntime``):
chaos (workers killed mid-stream), a rescale and the reward join, as fast unit tests. The same
scenarios run against the real broker and Ray in tests/integration (test_stream_chaos.py,
test_rewards_stream.py); these check the supervisor's and the worker's logic without them."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time

import pytest

from ray_app.config import SimSettings
from ray_app.kafka.client import OutRecord
from ray_app.kafka.memory import InMemoryBroker, InMemoryProducer
from ray_app.sim import TrafficPlan
from ray_app.state import SessionShard
from ray_app.stream import StreamSupervisor, placement, state_config
from ray_app.stream.runtime import LocalRuntime
from tests.conftest import make_settings
from tests.unit.test_rewards import _scenario

PARTITIONS = 4


def _supervisor(broker, tmp_path, **env) -> StreamSupervisor:
    settings = make_settings(
        None,
        ONRAMP_KAFKA__PARTITIONS=str(PARTITIONS),
        ONRAMP_STREAM__CHECKPOINT_INTERVAL_S="0.05",
        ONRAMP_STREAM__POLL_MAX_RECORDS="200",
        **env,
    )
    return StreamSupervisor(
        settings,
        "in-memory",
        workers=2,
        checkpoint_uri=str(tmp_path / "ckpt"),
        monitor_interval_s=0.05,
        runtime=LocalRuntime(broker),
    )


def _kill_and_wait(sup: StreamSupervisor, index: int) -> None:
    before = sup.restarts
    sup.kill(index)
    deadline = time.monotonic() + 30
    while sup.restarts == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sup.restarts == before + 1, "the supervisor did not restart the killed worker"


def test_wait_for_gives_up_on_a_stall_but_not_on_a_slow_drain(tmp_path):
    broker = InMemoryBroker(partitions=PARTITIONS)
    plan = TrafficPlan.build(SimSettings(users=40, seed=5))
    records = plan.normalized(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    sup = _supervisor(broker, tmp_path).start()
    topic = sup.settings.topics.events
    producer = InMemoryProducer(broker)
    try:
        producer.send_all([OutRecord(topic, v, key=k) for k, v in records]).result(5)
        began = time.monotonic()  # more records than were sent: they never come
        totals = sup.wait_for(len(records) + 1, timeout_s=30, stall_s=1.0)
        assert totals["records"] == len(records)
        assert time.monotonic() - began < 10, "a stall returns after stall_s, not the timeout"

        def drip() -> None:  # a slow drain: a record every half second, under stall_s each
            for k, v in records[:6]:
                time.sleep(0.5)
                producer.send_all([OutRecord(topic, v, key=k)]).result(5)

        dripping = threading.Thread(target=drip)
        dripping.start()
        totals = sup.wait_for(len(records) + 6, timeout_s=30, stall_s=1.0)
        dripping.join()
        assert totals["records"] == len(records) + 6  # waited through the slow drain
    finally:
        sup.stop()


def test_status_and_ping_answer_at_once_while_a_worker_is_being_replaced(tmp_path):
    """A restart holds the supervisor's lock while the replacement starts (20-25 s under
    load): status (scrapes, the console) must not wait for it, and ping (the deployment's health
    check) must not fail for it, or Serve replaces every actor for one dead worker."""
    broker = InMemoryBroker(partitions=PARTITIONS)
    sup = _supervisor(broker, tmp_path).start()
    started = sup._started
    entered, releasing = threading.Event(), threading.Event()

    def slow_start(launched):
        entered.set()  # the restart holds the supervisor's lock from here
        releasing.wait(10)  # the replacement takes its time to start
        return started(launched)

    sup._started = slow_start
    try:
        sup.kill(0)
        assert entered.wait(5), "the supervisor did not begin the restart"
        began = time.monotonic()
        with pytest.raises(Exception, match="killed"):  # the dead worker, at once
            sup.status()
        assert sup.ping() is None
        assert time.monotonic() - began < 1.0, "status and ping waited for the restart"
        releasing.set()
        deadline = time.monotonic() + 10
        while sup.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sup.restarts == 1 and len(sup.status()) == 2
    finally:
        releasing.set()
        sup.stop()


def test_kills_and_a_rescale_keep_state_exact_in_process(tmp_path):
    broker = InMemoryBroker(partitions=PARTITIONS)
    plan = TrafficPlan.build(SimSettings(users=300, seed=4, duplicate_share=0.05))
    records = plan.normalized(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    sup = _supervisor(broker, tmp_path).start()
    topic = sup.settings.topics.events
    producer = InMemoryProducer(broker)
    rng = random.Random(2)
    try:
        size = len(records) // 4 + 1
        for n, start in enumerate(range(0, len(records), size)):
            wave = records[start : start + size]
            producer.send_all([OutRecord(topic, v, key=k) for k, v in wave]).result(5)
            time.sleep(rng.uniform(0.01, 0.05))
            if n == 2:
                sup.rescale(3)
            else:
                _kill_and_wait(sup, rng.randrange(sup.n_workers))
        totals = sup.wait_for(len(records), timeout_s=60)
        assert totals["records"] == len(records), totals
        assert sup.restarts == 3 and sup.generation == 1 and sup.n_workers == 3
        assert totals["control"] > 0, "sign-ups merged anonymous profiles meanwhile"
        assert (
            totals["applied"] + totals["duplicates"] + totals["late"] + totals["rejected"]
            + totals["buffered"] + totals["forwarded"] - totals["relayed"]
        ) == len(records)  # fmt: skip
        live = sup.profiles()
    finally:
        sup.stop()
    reference = {}
    for p in range(PARTITIONS):  # one ordered pass over what each partition holds
        shard = SessionShard(p, state_config(sup.settings))
        shard.process([(r.key, r.value) for r in broker.topics[topic][p]])
        reference.update(shard.profiles_as_dicts())
    assert len(live) == len(reference) >= 250
    assert live == reference


def test_the_reward_join_is_exact_across_kills_in_process(tmp_path):
    broker = InMemoryBroker(partitions=PARTITIONS)
    sup = _supervisor(
        broker,
        tmp_path,
        ONRAMP_STREAM__ALLOWED_LATENESS_MS="10000",
        ONRAMP_STREAM__REORDER_WAIT_MS="0",
        ONRAMP_STREAM__ATTRIBUTION_WINDOW_S="30",
    ).start()
    topics = sup.settings.topics
    events, decisions, expected = _scenario(users=300, spacing_ms=200)
    ticks = [
        (k.encode(), v.replace(b'"ticker"', f'"{k}"'.encode()))
        for k in (f"ticker-{p}" for p in range(16))
        for _, v in events
        if b'"ticker"' in v
    ]
    body = [kv for kv in events if b'"ticker"' not in kv[1]]
    producer = InMemoryProducer(broker)
    rng = random.Random(5)
    try:
        half, dhalf = len(body) // 2, len(decisions) // 2
        for ev, dec in ((body[:half], decisions[:dhalf]), (body[half:], decisions[dhalf:])):
            producer.send_all(
                [OutRecord(topics.decisions, v, key=k) for k, v in dec]
                + [OutRecord(topics.events, v, key=k) for k, v in ev]
            ).result(5)
            time.sleep(rng.uniform(0.01, 0.05))
            _kill_and_wait(sup, rng.randrange(sup.n_workers))
        producer.send_all([OutRecord(topics.events, v, key=k) for k, v in ticks]).result(5)
        sup.wait_for(len(body) + len(ticks), timeout_s=60)
        deadline = time.monotonic() + 30
        decided = 0
        while time.monotonic() < deadline:
            status = sup.status()
            decided = sum(p["rewards"] for w in status for p in w["partitions"].values())
            if decided >= len(expected):
                break
            time.sleep(0.05)
        assert decided == len(expected)  # the state counted each decision once
    finally:
        sup.stop()
    seen: dict[str, tuple] = {}
    for r in broker.records(topics.rewards):  # at least once: copies are identical
        rec = json.loads(r.value)
        value = (rec["reward"], rec["outcome"])
        assert seen.setdefault(rec["decisionId"], value) == value, "two different rewards"
    assert seen == expected


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_every_partition_has_exactly_one_owner(workers):
    owners = placement.assign_partitions(8, workers)
    assert sorted(p for ps in owners for p in ps) == list(range(8))
    for w, ps in enumerate(owners):
        assert all(placement.owner_index(p, workers) == w for p in ps)


def test_moves_even_out_the_spread_one_at_a_time():
    nodes = ["a", "b", "c"]
    worker_nodes: list[str | None] = ["a"] * 5
    moves = 0
    while (move := placement.next_move(nodes, worker_nodes)) is not None:
        i, src, dst = move
        assert worker_nodes[i] == src and src != dst
        worker_nodes[i] = dst
        moves += 1
    counts = sorted(worker_nodes.count(n) for n in nodes)
    assert counts == [1, 2, 2] and moves == 3
    assert placement.least_loaded(nodes, worker_nodes, index=0, avoid="a") in ("b", "c")
    kept, suspects = placement.usable(nodes, {"b": 100.0, "c": 0.0}, now=120.0)
    assert kept == ["a", "c"] and suspects == {"b": 100.0}  # b lost a worker 20 s ago


class _FlakyRuntime(LocalRuntime):
    """Fails the next ``fail[method]`` calls of a method as a Ray timeout does (WorkerGone);
    keeps every handle it spawned."""

    def __init__(self, broker: InMemoryBroker) -> None:
        super().__init__(broker)
        self.fail: dict[str, int] = {}
        self.spawned: list = []

    def spawn(self, *args):  # type: ignore[no-untyped-def]
        handle = super().spawn(*args)
        self.spawned.append(handle)
        return handle

    def call(self, handle, method, *args, timeout=30.0):  # type: ignore[no-untyped-def]
        from ray_app.stream.runtime import WorkerGone

        if self.fail.get(method):
            self.fail[method] -= 1
            raise WorkerGone(f"GetTimeoutError: {method} timed out")
        return super().call(handle, method, *args, timeout=timeout)


def _running(rt: _FlakyRuntime) -> list:
    return [
        h for h in rt.spawned
        if not h.dead and h.worker._thread is not None and h.worker._thread.is_alive()
    ]  # fmt: skip


def _flaky_supervisor(
    tmp_path, partitions: int, workers: int
) -> tuple[_FlakyRuntime, StreamSupervisor]:
    """A started supervisor on a :class:`_FlakyRuntime` (its monitor idle: tests call check)."""
    broker = InMemoryBroker(partitions=partitions)
    settings = make_settings(None, ONRAMP_KAFKA__PARTITIONS=str(partitions))
    rt = _FlakyRuntime(broker)
    sup = StreamSupervisor(settings, "in-memory", workers=workers,
                           checkpoint_uri=str(tmp_path / "ck"), monitor_interval_s=3600,
                           runtime=rt).start()  # fmt: skip
    return rt, sup


def test_a_replacement_whose_start_fails_halfway_is_killed_not_left_running(tmp_path):
    """A call after the replacement's start times out (on Ray the worker runs on): the
    supervisor kills it before the next check starts another, so one loop owns the partitions
    (two used to, every side output written twice)."""
    rt, sup = _flaky_supervisor(tmp_path, partitions=2, workers=1)
    try:
        sup.kill(0)
        rt.fail["refused_partitions"] = 1
        with pytest.raises(Exception, match="timed out"):
            sup.check()
        assert sup.check() == 1
        assert len(_running(rt)) == 1 and _running(rt)[0] is sup.workers[0]
    finally:
        sup.stop()
    assert _running(rt) == []


def test_workers_a_failed_rescale_never_started_are_restarted(tmp_path):
    """A rescale whose first worker fails to start: the workers launched after it were never
    started yet answered ping as healthy, so their partitions were never read. They are killed
    (and say "not started" if asked), and the next check restarts them."""
    rt, sup = _flaky_supervisor(tmp_path, partitions=4, workers=2)
    try:
        rt.fail["start"] = 2  # worker 0's start, on its node and again elsewhere
        with pytest.raises(Exception, match="timed out"):
            sup.rescale(2)
        assert sup.check() == 2
        assert sup.check() == 0
        running = _running(rt)
        assert sorted(p for h in running for p in h.worker.partitions) == [0, 1, 2, 3]
        assert all(rt.call(w, "ping") is None for w in sup.workers)
    finally:
        sup.stop()


def test_a_restart_under_new_settings_restores_the_state_under_them(tmp_path):
    # a checkpoint holds the config it was written under; the settings and catalog of the run
    # that restores it must win (a lateness, a step slot, a cap changed in between)
    broker = InMemoryBroker(partitions=PARTITIONS)
    plan = TrafficPlan.build(SimSettings(users=40, seed=6))
    records = plan.normalized(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    sup = _supervisor(broker, tmp_path, ONRAMP_STREAM__ALLOWED_LATENESS_MS="300000").start()
    try:
        producer = InMemoryProducer(broker)
        topic = sup.settings.topics.events
        producer.send_all([OutRecord(topic, v, key=k) for k, v in records]).result(5)
        sup.wait_for(len(records), timeout_s=60)
    finally:
        sup.stop()
    again = _supervisor(
        broker,
        tmp_path,
        ONRAMP_STREAM__ALLOWED_LATENESS_MS="30000",
        ONRAMP_STREAM__MAX_MERGES_PER_PROFILE="0",
    ).start()
    try:
        workers = [h.worker for h in again.workers]
        shards = [s for w in workers for s in w.shards.values()]
        assert len(shards) == PARTITIONS and all(w.restored for w in workers), (
            "restored from the checkpoints"
        )
        want = state_config(again.settings)
        assert want.allowed_lateness_ms == 30_000
        assert all(s.config == want for s in shards)
        assert all(p.config.max_merges == 0 for s in shards for p in s.profiles.values())
        # a partition a worker does not hold is not "no such user" there
        from ray_app.stream.reader import NOT_HELD

        other = next(p for p in range(PARTITIONS) if p not in workers[0].shards)
        assert workers[0].profiles_of([(other, "u1")]) == [{NOT_HELD: other}]
    finally:
        again.stop()


def test_a_worker_start_may_take_as_long_as_the_setting_says(tmp_path):
    """A worker restores its partitions before its start answers: the start was given 60 s
    (120 s elsewhere), fixed, and one that took longer was killed and begun again from scratch,
    for ever. It is given stream.worker_start_timeout_s."""
    broker = InMemoryBroker(partitions=PARTITIONS)
    sup = _supervisor(broker, tmp_path, ONRAMP_STREAM__WORKER_START_TIMEOUT_S="900")
    waited: list[float] = []
    real = sup.runtime.call

    def call(handle, method, *args, timeout=30.0):
        if method == "start":
            waited.append(timeout)
        return real(handle, method, *args, timeout=timeout)

    sup.runtime.call = call  # type: ignore[method-assign]
    sup.start()
    try:
        assert waited == [900.0, 900.0]
    finally:
        sup.stop()


def test_routes_answer_while_a_restart_holds_the_supervisors_lock(tmp_path):
    """A restart holds the supervisor's lock while the replacement restores its partitions (up
    to stream.worker_start_timeout_s): every profile read's routes waited as long."""
    import threading

    broker = InMemoryBroker(partitions=PARTITIONS)
    sup = _supervisor(broker, tmp_path)
    sup.start()
    held, release = threading.Event(), threading.Event()

    def restart_in_progress() -> None:
        with sup._lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=restart_in_progress)
    t.start()
    try:
        assert held.wait(10)
        got: list = []
        reader = threading.Thread(target=lambda: got.append(sup.routes(addresses=True)))
        reader.start()
        reader.join(5)  # the lock is still held: routes must not wait for it
        assert got, "routes() waited for the supervisor's lock"
        partitions, workers, addresses = got[0]
        assert partitions == PARTITIONS and len(workers) == len(addresses) == 2
        # status() needs no lock either, and carries the monitor's topic check for /metrics
        assert [st["topicProblem"] for st in sup.status()] == [None, None]
    finally:
        release.set()
        t.join()
        sup.stop()


def test_metrics_never_count_down_when_a_worker_replays_from_its_checkpoint(tmp_path):
    """A worker restored after a crash counts again the records after its checkpoint: its
    checkpointed counters go down, then up again. Prometheus reads a counter that goes down as
    a reset and counts its whole value again (a spike of every record since the partition began,
    at every restart). /metrics reports each at its highest; status() keeps the state's own."""
    from ray_app.telemetry.stream import stream_metrics_text

    sup = _supervisor(InMemoryBroker(partitions=PARTITIONS), tmp_path)

    def worker(applied: int, merged: int, redelivered: int) -> dict:
        part = {"records": applied, "applied": applied, "duplicates": 0, "late": 0,
                "rejected": 0, "buffered": 0, "lag": 0, "redelivered": redelivered,
                "identity": {"merged": merged}, "rejectedByReason": {}}  # fmt: skip
        return {"worker": "w0-g0-r0-m0", "partitions": {"0": part}, "freshnessBucketsMs": [10],
                "freshnessCounts": [0, 0], "freshnessSumMs": 0.0}  # fmt: skip

    def sample(text: str, name: str) -> int:
        line = next(x for x in text.splitlines() if x.startswith(name + "{"))
        return int(float(line.rsplit(" ", 1)[1]))

    history = [worker(1000, 5, 3), worker(950, 4, 0), worker(1010, 6, 1)]  # crash, replay
    seen = []
    for st in history:
        sup.status = lambda st=st: [json.loads(json.dumps(st))]  # type: ignore[method-assign]
        text = stream_metrics_text(sup.metrics_status())
        seen.append(
            (sample(text, "onramp_stream_records_total"),  # its first sample: applied
             sample(text, "onramp_identity_merges_total"),
             sample(text, "onramp_stream_redelivered_records_total"))
        )  # fmt: skip
    assert seen == [(1000, 5, 3), (1000, 5, 0), (1010, 6, 1)]  # since the worker started: a reset
    assert sup.status()[0]["partitions"]["0"]["applied"] == 1010
    sup.status = lambda: [worker(950, 4, 0)]  # type: ignore[method-assign]
    assert sup.totals()["applied"] == 950  # what wait_for and the exactness checks compare
