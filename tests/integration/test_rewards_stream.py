"""Rewards through the real broker and Ray: decisions and outcomes in, one reward per decision
out, while stream workers are killed."""

import json
import random
import time

import pytest

from ray_app.kafka import OutRecord, ensure_topics, make_consumer, make_producer
from ray_app.kafka.client import partition_for
from ray_app.stream import StreamSupervisor
from tests.conftest import make_settings
from tests.unit.test_rewards import _scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4


def test_reward_join_is_exact_across_worker_kills(broker, ray_session, tmp_path):
    import ray

    settings = make_settings(
        broker.bootstrap,
        ONRAMP_KAFKA__TOPIC_PREFIX="rewards-chaos",
        ONRAMP_KAFKA__PARTITIONS=str(PARTITIONS),
        ONRAMP_STREAM__ALLOWED_LATENESS_MS="10000",
        ONRAMP_STREAM__REORDER_WAIT_MS="0",
        ONRAMP_STREAM__ATTRIBUTION_WINDOW_S="30",
        ONRAMP_STREAM__CHECKPOINT_INTERVAL_S="0.2",
        ONRAMP_STREAM__POLL_MAX_RECORDS="50",
    )
    ensure_topics(broker.bootstrap, settings.kafka)
    events, decisions, expected = _scenario(users=2_000, spacing_ms=200)
    # the ticker moves every partition's watermark past every window
    tick_keys = [f"ticker-{p}" for p in range(64)]
    ticks = [
        (k.encode(), v.replace(b'"ticker"', f'"{k}"'.encode()))
        for k in tick_keys
        for _, v in events
        if b'"ticker"' in v
    ]
    body = [kv for kv in events if b'"ticker"' not in kv[1]]
    producer = make_producer(broker.bootstrap, settings.kafka)
    topics = settings.topics
    sup = StreamSupervisor(
        settings, broker.bootstrap, workers=2, checkpoint_uri=str(tmp_path / "ckpt")
    ).start()
    rng = random.Random(3)
    try:
        half = len(body) // 2
        for chunk_events, chunk_decisions in (
            (body[:half], decisions[: len(decisions) // 2]),
            (body[half:], decisions[len(decisions) // 2 :]),
        ):
            producer.send_all(
                [OutRecord(topics.decisions, v, key=k) for k, v in chunk_decisions]
                + [OutRecord(topics.events, v, key=k) for k, v in chunk_events]
            ).result(timeout=60)
            for _ in range(2):
                time.sleep(rng.uniform(0.3, 0.8))
                before = sup.restarts
                ray.kill(sup.workers[rng.randrange(sup.n_workers)])
                deadline = time.monotonic() + 60
                while sup.restarts == before and time.monotonic() < deadline:
                    time.sleep(0.1)
        producer.send_all([OutRecord(topics.events, v, key=k) for k, v in ticks]).result(timeout=60)
        totals = sup.wait_for(len(body) + len(ticks), timeout_s=120)
        assert totals["records"] == len(body) + len(ticks)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = sup.status()
            decided = sum(p["rewards"] for w in status for p in w["partitions"].values())
            if decided >= len(expected):
                break
            time.sleep(0.3)
        assert sup.restarts == 4
        assert decided == len(expected)  # the state counted each decision once
    finally:
        sup.stop()
        producer.close()

    consumer = make_consumer(broker.bootstrap, settings.kafka)
    consumer.assign([(topics.rewards, p) for p in range(PARTITIONS)])
    seen: dict[str, tuple] = {}
    copies = 0
    deadline = time.monotonic() + 60
    while len(seen) < len(expected) and time.monotonic() < deadline:
        for r in consumer.poll(0.3, 10_000):
            rec = json.loads(r.value)
            value = (rec["reward"], rec["outcome"])
            assert seen.setdefault(rec["decisionId"], value) == value, "two different rewards"
            assert partition_for(r.key, PARTITIONS) == r.partition
            copies += 1
    consumer.close()
    assert seen == expected
    assert copies >= len(expected)  # replays may write a reward again, identical


def test_a_quiet_partition_times_out_its_decision_through_kafka(broker, ray_session, tmp_path):
    """No event follows a decision on its partition: the worker writes a tick to the partition
    through the broker, reads it back in offset order, and the decision is rewarded 0 when its
    window ends (before, it waited for the partition's next event, however long)."""
    from tests.unit.test_rewards import _decision, _event

    settings = make_settings(
        broker.bootstrap,
        ONRAMP_KAFKA__TOPIC_PREFIX="rewards-quiet",
        ONRAMP_KAFKA__PARTITIONS=str(PARTITIONS),
        ONRAMP_STREAM__ATTRIBUTION_WINDOW_S="1",
        ONRAMP_STREAM__ALLOWED_LATENESS_MS="1000",
        ONRAMP_STREAM__CHECKPOINT_INTERVAL_S="0.2",
    )
    ensure_topics(broker.bootstrap, settings.kafka)
    topics = settings.topics
    now = int(time.time() * 1000)
    producer = make_producer(broker.bootstrap, settings.kafka)
    producer.send_all(
        [
            OutRecord(topics.events, _event("q1", "quiet", now, "Step Viewed", "role")[1],
                      key=b"quiet"),
            OutRecord(topics.decisions, _decision("dq", "quiet", now)[1], key=b"quiet"),
        ]
    ).result(timeout=30)  # fmt: skip
    producer.close()
    sup = StreamSupervisor(
        settings, broker.bootstrap, workers=1, checkpoint_uri=str(tmp_path / "ckpt")
    ).start()
    consumer = make_consumer(broker.bootstrap, settings.kafka)
    consumer.assign([(topics.rewards, p) for p in range(PARTITIONS)])
    rewards: list[dict] = []
    try:
        deadline = time.monotonic() + 60
        while not rewards and time.monotonic() < deadline:
            rewards += [json.loads(r.value) for r in consumer.poll(0.3, 100)]
        status = sup.status()
    finally:
        consumer.close()
        sup.stop()
    assert [(r["decisionId"], r["reward"], r["outcome"]) for r in rewards] == [
        ("dq", 0.0, "timeout")
    ]
    p = str(partition_for(b"quiet", PARTITIONS))
    partition = next(w["partitions"][p] for w in status if p in w["partitions"])
    assert partition["ticks"] >= 1 and partition["records"] == 1 and partition["applied"] == 1
