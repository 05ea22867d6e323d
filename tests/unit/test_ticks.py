"""Ticks (ray_app.state.tick): a quiet partition's watermark moves on, so a decision without an
outcome is rewarded 0 when its window ends, not at the partition's next event; and ticks change
no reward a stream of events alone would give."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.kafka.client import partition_for
from ray_app.kafka.memory import InMemoryProducer
from ray_app.state import SessionShard, StateConfig
from ray_app.state.tick import TICK, tick_record
from ray_app.stream import worker as worker_module
from ray_app.stream.worker import StreamWorker
from tests.conftest import make_settings
from tests.unit.test_rewards import CONFIG, T0, _decision, _event, _final, _run, _scenario

KEY = b"test-checkpoint-key-0123456789ab"


def _tick(at: int) -> tuple[bytes, bytes]:
    return b"onramp.tick/0/0", tick_record(at, 0)


def test_a_tick_closes_a_window_only_once_it_is_due():
    shard = SessionShard(0, CONFIG)
    assert shard.due_ms() is None
    shard.process([_event("e1", "u1", T0, "Step Viewed", "role")])
    shard.process_decisions([_decision("d1", "u1", T0 + 1_000)], 1)
    due = T0 + 1_000 + CONFIG.attribution_window_ms + CONFIG.allowed_lateness_ms + 1
    assert shard.due_ms() == due
    assert shard.process([_tick(due - 1)]).rewards == []  # not yet
    r = shard.process([_tick(due)])
    assert [(x.decision_id, x.reward, x.outcome) for x in r.rewards] == [("d1", 0.0, "timeout")]
    assert shard.due_ms() is None
    # the worker's clock, not the stream's records: counted apart, never applied
    assert (shard.stats.records, shard.stats.ticks, shard.stats.applied) == (1, 2, 1)
    assert shard.profile("u1")["counts"] == {"track": 1, "track:Step Viewed": 1}


def test_a_tick_releases_events_held_for_a_missing_seq():
    config = StateConfig(allowed_lateness_ms=60_000, reorder_wait_ms=2_000)
    shard = SessionShard(0, config)

    def ev(mid: str, seq: int, t: int) -> tuple[bytes, bytes]:
        return b"u1", json.dumps(
            {"messageId": mid, "type": "track", "event": "Clicked", "userKey": "u1",
             "timestamp": _iso(T0 + t), "receivedAt": _iso(T0 + t), "sessionId": "s",
             "seq": seq}
        ).encode()  # fmt: skip

    shard.process([ev("a", 0, 0), ev("c", 2, 100)])  # seq 1 never comes
    assert shard.buffered == 1
    assert shard.due_ms() == T0 + 100 + 2_000 + 1
    shard.process([_tick(T0 + 2_100)])
    assert shard.buffered == 1
    r = shard.process([_tick(T0 + 2_101)])
    assert shard.buffered == 0 and r.applied == 1


def test_a_tick_for_another_partition_moves_nothing():
    """A tick written with a partition count other than the topic's lands on another partition:
    counted there, and that partition's time does not move by it."""
    shard = SessionShard(1, CONFIG)
    shard.process([_event("e1", "u1", T0, "Step Viewed", "role")])
    shard.process_decisions([_decision("d1", "u1", T0)], 1)
    r = shard.process([(b"k", tick_record(T0 + 3_600_000, 0))])
    assert r.rewards == [] and shard.max_ts == T0 and shard.stats.ticks == 1
    assert shard.process([(b"k", tick_record(T0 + 3_600_000, 1))]).rewards != []


def test_the_clock_is_the_record_that_moved_event_time_and_ticks_keep_its_gap():
    """The time a partition's event time was written is its moving record's Kafka timestamp, not
    the chunk's last (a retried batch lands after newer records with its older timestamp: the
    tick after it claimed a time 30 s ahead); a tick moves it by as much as event time, whatever
    its own timestamp (LogAppendTime, or records after it in the chunk)."""
    shard = SessionShard(0, CONFIG)
    ev = _event("e1", "u1", T0, "Step Viewed", "role")
    retried = _event("e0", "u2", T0 - 30_100, "Step Viewed", "role")
    shard.process([ev, retried], stamps=[T0 + 40, T0 - 30_000])
    assert shard.clock_kafka_ms == T0 + 40 and shard.max_ts == T0
    shard.process([_tick(T0 + 5_000)], stamps=[T0 + 9_000])  # stamped late by the broker
    assert shard.clock_kafka_ms - shard.max_ts == 40
    shard.process([_tick(T0 + 9_000), retried], stamps=[T0 + 9_500, T0 - 30_000])
    assert shard.clock_kafka_ms - shard.max_ts == 40
    # without a timestamp (a client that gives none, kafka-python's v0 batches): its receivedAt
    shard.process([_event("e2", "u1", T0 + 20_000, "Step Viewed", "role")], stamps=[0])
    assert shard.clock_kafka_ms == T0 + 20_000


def test_a_tick_behind_the_clock_changes_nothing_and_a_bad_one_is_rejected():
    shard = SessionShard(0, CONFIG)
    shard.process([_event("e1", "u1", T0 + 50_000, "Step Viewed", "role")])
    before = (shard.max_ts, shard.watermark)
    shard.process([_tick(T0)])
    assert (shard.max_ts, shard.watermark) == before
    r = shard.process([(b"k", json.dumps({"type": TICK}).encode())])
    (_, _, _, err) = r.rejected[0]
    assert (err.reason.value, err.field) == ("missing_field", "timestamp")
    r = shard.process([(b"k", json.dumps({"type": TICK, "timestamp": "soon"}).encode())])
    assert r.rejected[0][3].reason.value == "invalid_timestamp"
    assert shard.stats.rejected == 2 and shard.stats.records == 3


def _with_ticks(events: list, rng: random.Random) -> list:
    """The scenario's events with ticks where a partition could go quiet: between two events,
    at a time no later than the next one's (a tick is the time now, and events written after it
    are not older than it but for their lateness), and the closing traffic replaced by ticks of
    the same times."""
    body = [e for e in events if b'"ticker"' not in e[1]]
    closing = [json.loads(v)["timestamp"] for _, v in events if b'"ticker"' in v]
    out: list = []
    for e in body:
        t = _ms(json.loads(e[1])["timestamp"])
        if out and rng.random() < 0.3:
            out.append(_tick(t - rng.randint(0, 3_000)))
        out.append(e)
    return out + [_tick(_ms(ts)) for ts in closing]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_ticks_where_a_partition_goes_quiet_keep_every_reward(seed):
    """The property tests of the reward join (tests/unit/test_rewards.py), with ticks wherever
    the partition could go quiet and closing it instead of more events: the same reward for
    every decision, exactly once, also across crashes and restores from deltas."""
    events, decisions, expected = _scenario()
    rng = random.Random(seed)
    ticked = _with_ticks(events, rng)
    shard, rewards = _run(ticked, decisions, rng)
    assert _final(rewards) == expected and len(rewards) == len(expected)
    assert shard.rewards.stats()["pendingDecisions"] == 0
    shard, rewards = _run(ticked, decisions, rng, crash_every=0.3)
    assert _final(rewards) == expected
    assert shard.rewards.stats()["rewards"] == len(expected)


def _iso(ms: int) -> str:
    from tests.unit.test_rewards import _iso as iso

    return str(iso(ms))


def _ms(iso: str) -> int:
    from ray_app.state.event import parse_ms

    return parse_ms(iso, "timestamp")


# -- the worker ------------------------------------------------------------------------------


def _settings(tick_s: str = "0.2") -> Any:
    """A short attribution window and lateness: a decision is due a second after it's made."""
    return make_settings(
        ONRAMP_KAFKA__TOPIC_PREFIX="ticks",
        ONRAMP_KAFKA__PARTITIONS="2",
        ONRAMP_STREAM__ATTRIBUTION_WINDOW_S="0.5",
        ONRAMP_STREAM__ALLOWED_LATENESS_MS="500",
        ONRAMP_STREAM__WATERMARK_TICK_S=tick_s,
    )


def _quiet_partition_run(
    twin, tmp_path, tick_s: str, wait_s: float, ago_ms: int = 0, restart: bool = False
) -> tuple[StreamWorker, list[dict]]:
    """An event and a decision (both ``ago_ms`` ago, written now) for a user whose partition
    then goes quiet, on a worker whose attribution window and lateness are short: the rewards
    it writes within ``wait_s``. ``restart``: send nothing, start from the checkpoint there
    is."""
    settings = _settings(tick_s)
    t = settings.topics
    user = "quiet-user"
    p = partition_for(user.encode(), 2)
    w = StreamWorker("w0", settings, "in-memory", [0, 1], str(tmp_path / "ckpt"), KEY)
    now = int(time.time() * 1000)
    producer = InMemoryProducer(twin)
    if not restart:
        producer.send_all(
            [
                worker_module.OutRecord(
                    t.events, _event("e1", user, now - ago_ms, "Step Viewed", "role")[1],
                    key=user.encode()),
                worker_module.OutRecord(
                    t.decisions, _decision("d1", user, now - ago_ms)[1], key=user.encode()),
            ]
        ).result(5)  # fmt: skip
    w.start()
    rewards: list[dict] = []
    deadline = time.monotonic() + wait_s
    while not rewards and time.monotonic() < deadline:
        time.sleep(0.05)
        rewards = [json.loads(r.value) for r in twin.topics.get(t.rewards, [[]] * 2)[p]]
    w.stop()
    return w, rewards


def test_a_restarted_worker_ticks_from_where_the_last_one_saw_event_time(
    twin, tmp_path, monkeypatch
):
    """The wall clock at which event time last moved is checkpointed with the state: a worker
    started on a partition quiet for two minutes (a deploy, a crash) ticks it on, and its
    decision times out (timed from its own start, it took the partition for a backfill)."""
    real = time.time
    with monkeypatch.context() as m:  # the first worker ran two minutes ago
        m.setattr(time, "time", lambda: real() - 120)
        w, rewards = _quiet_partition_run(twin, tmp_path, "0", wait_s=0.5)
    assert rewards == [] and w.checkpoints >= 1
    w, rewards = _quiet_partition_run(twin, tmp_path, "0.2", wait_s=10, restart=True)
    assert [(r["decisionId"], r["outcome"]) for r in rewards] == [("d1", "timeout")]


def test_a_worker_catching_up_with_records_written_minutes_ago_ticks_them_on(
    twin, tmp_path, monkeypatch
):
    """Records written two minutes ago (a worker down meanwhile: a deploy, a crash) and read
    only now: live when written, so the partition gets its ticks (timed by when its records were
    taken, it looked like a backfill and its decisions waited for the next event)."""
    real = time.time
    settings = _settings()
    t, user = settings.topics, "late-reader"
    p = partition_for(user.encode(), 2)
    with monkeypatch.context() as m:  # the collector wrote them two minutes ago
        m.setattr(time, "time", lambda: real() - 120)
        then = int(time.time() * 1000)
        InMemoryProducer(twin).send_all(
            [worker_module.OutRecord(t.events, _event("e1", user, then, "Step Viewed", "role")[1],
                                     key=user.encode()),
             worker_module.OutRecord(t.decisions, _decision("d1", user, then)[1],
                                     key=user.encode())]
        ).result(5)  # fmt: skip
    w = StreamWorker("w0", settings, "in-memory", [0, 1], str(tmp_path / "ckpt"), KEY)
    w.start()
    rewards: list[dict] = []
    deadline = time.monotonic() + 10
    while not rewards and time.monotonic() < deadline:
        time.sleep(0.05)
        rewards = [json.loads(r.value) for r in twin.topics.get(t.rewards, [[]] * 2)[p]]
    w.stop()
    assert [(r["decisionId"], r["outcome"]) for r in rewards] == [("d1", "timeout")]


def test_a_quiet_partition_gets_a_tick_and_its_decision_times_out(twin, tmp_path):
    w, rewards = _quiet_partition_run(twin, tmp_path, "0.2", wait_s=10)
    assert [(r["decisionId"], r["reward"], r["outcome"]) for r in rewards] == [
        ("d1", 0.0, "timeout")
    ]
    assert sum(w.ticks.values()) >= 1
    # a tick's own timestamp is when it was written: how far event time is behind the time
    # records are written stays as the last event left it (a chain of ticks does not fall
    # behind by each one's trip through Kafka, nor end up taken for a backfill)
    shard = next(sh for sh in w.shards.values() if sh.stats.ticks)
    assert abs((shard.clock_kafka_ms - shard.max_ts) - 0) < 100
    status = w.status()["partitions"]
    assert sum(s["ticks"] for s in status.values()) >= 1
    assert all(s["records"] == (1 if s["applied"] else 0) for s in status.values())


def test_without_ticks_the_decision_waits_for_the_next_event(twin, tmp_path):
    w, rewards = _quiet_partition_run(twin, tmp_path, "0", wait_s=2.5)  # a tick is due at ~1 s
    assert rewards == [] and w.ticks == {}


def test_a_partition_of_past_times_gets_no_tick(twin, tmp_path):
    """Records of an hour ago written now (a backfill straight to the topic), with a decision
    due in their own time: a tick of the present would make the backfill's next records late
    after any pause; only its own records move its time."""
    w, rewards = _quiet_partition_run(twin, tmp_path, "0.2", wait_s=2.5, ago_ms=3_600_000)
    assert rewards == [] and w.ticks == {}


def test_decisions_arriving_do_not_hold_ticks_back(twin, tmp_path):
    """A client asking for decisions every fraction of a second on a partition whose events
    stopped: decisions do not move event time, so they must not keep the partition from its
    ticks either."""
    import threading

    settings = _settings("0.3")
    t, user = settings.topics, "busy-user"
    p = partition_for(user.encode(), 2)
    producer = InMemoryProducer(twin)
    now = int(time.time() * 1000)
    producer.send_all(
        [worker_module.OutRecord(t.events, _event("e1", user, now, "Step Viewed", "role")[1],
                                 key=user.encode())]
    ).result(5)  # fmt: skip
    stop = threading.Event()

    def ask() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            value = _decision(f"d{n}", user, int(time.time() * 1000))[1]
            producer.send_all([worker_module.OutRecord(t.decisions, value, key=user.encode())])
            time.sleep(0.1)

    asking = threading.Thread(target=ask)
    w = StreamWorker("w0", settings, "in-memory", [0, 1], str(tmp_path / "ckpt"), KEY)
    asking.start()
    w.start()
    try:
        rewards: list[dict] = []
        deadline = time.monotonic() + 10
        while not rewards and time.monotonic() < deadline:
            time.sleep(0.05)
            rewards = [json.loads(r.value) for r in twin.topics.get(t.rewards, [[]] * 2)[p]]
    finally:
        stop.set()
        asking.join()
        w.stop()
    assert rewards and rewards[0]["decisionId"] == "d1" and rewards[0]["outcome"] == "timeout"


def test_ticks_written_counts_what_kafka_acknowledged_and_failed_sends_apart(twin, tmp_path):
    """``ticksWritten`` counts a tick once Kafka acknowledged it; a send that failed (a broker
    down: a later tick takes its place) shows in ``ticksFailed`` instead, so that the status
    never reports as written a tick the partition will never read."""
    import concurrent.futures as cf

    w = StreamWorker("w0", _settings(), "in-memory", [0, 1], str(tmp_path / "ckpt"), KEY)
    acked: cf.Future = cf.Future()
    acked.set_result(2)
    failed: cf.Future = cf.Future()
    failed.set_exception(RuntimeError("broker down"))
    w._ticks_settled([0, 1], acked)
    w._ticks_settled([1], failed)
    status = w.status()
    assert {p: s["ticksWritten"] for p, s in status["partitions"].items()} == {"0": 1, "1": 1}
    assert status["ticksFailed"] == 1


def test_failed_ticks_are_a_counter_per_worker_slot_on_metrics():
    from ray_app.telemetry.stream import stream_metrics_text

    def worker(name: str, failed: int) -> dict:
        return {"worker": name, "partitions": {}, "freshnessBucketsMs": [10],
                "freshnessCounts": [0, 0], "freshnessSumMs": 0.0, "ticksFailed": failed}  # fmt: skip

    text = stream_metrics_text([worker("w0-g0-r0-m0", 2), worker("w1-g0-r1-m0", 0)])
    assert 'onramp_stream_ticks_failed_total{worker="w0"} 2' in text
    assert 'onramp_stream_ticks_failed_total{worker="w1"} 0' in text
    assert "onramp_stream_ticks_failed_total 0" in stream_metrics_text([])
