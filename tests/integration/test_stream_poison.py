"""Poison records against the real broker and real Ray actors: every kind of malformed record in
onramp.events and onramp.decisions (tombstones, bytes that are not UTF-8, JSON arrays, fields of
the wrong type, a decision whose ``ranked`` is not a list or whose ``modelVersion`` is a string),
interleaved with good events. The worker keeps its partitions moving (the good events after the
bad ones are applied, offsets advance and are committed), writes one DLQ record with a reason per
bad record, and is never restarted; a new worker resumes from its signed checkpoints."""

import json
import time

import pytest

from ray_app.kafka import OutRecord, ensure_topics, make_consumer, make_producer
from ray_app.stream import StreamSupervisor
from tests.conftest import make_settings
from tests.unit.test_stream_poison import BAD_DECISIONS, BAD_EVENTS, decision, good

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_poison_records_go_to_the_dlq_and_the_partitions_keep_moving(
    broker, ray_session, tmp_path, client
):
    settings = make_settings(
        broker.bootstrap,
        ONRAMP_KAFKA__TOPIC_PREFIX=f"poison-{client}",
        ONRAMP_KAFKA__PARTITIONS="2",
        ONRAMP_KAFKA__CLIENT=client,
        ONRAMP_KAFKA__CONSUMER_GROUP=f"onramp-poison-{client}",
        ONRAMP_STREAM__CHECKPOINT_INTERVAL_S="0.2",
        ONRAMP_STREAM__CHECKPOINT_KEY_FILE=str(tmp_path / "keys" / "checkpoint.key"),
    )
    t = settings.topics
    ensure_topics(broker.bootstrap, settings.kafka)
    events: list[OutRecord] = []
    bad_events: set[int] = set()  # positions in `events`
    for n, (value, reason, _) in enumerate(BAD_EVENTS):
        user = f"user-{n % 5}".encode()  # both partitions
        events.append(OutRecord(t.events, good(f"g{n}", n * 1000, user.decode()), key=user))
        if reason != "applied":
            bad_events.add(len(events))
        events.append(OutRecord(t.events, value, key=user))  # type: ignore[arg-type]
    for n in range(10):  # good events after all the bad ones
        user = f"user-{n % 5}"
        events.append(OutRecord(t.events, good(f"after{n}", 60_000 + n, user), key=user.encode()))
    decisions = [OutRecord(t.decisions, v, key=b"user-0") for v, _, _ in BAD_DECISIONS]  # type: ignore[arg-type]
    decisions.append(OutRecord(t.decisions, decision(userKey="user-0"), key=b"user-0"))
    producer = make_producer(broker.bootstrap, settings.kafka)
    delivered = producer.send_all(events + decisions).result(timeout=60)
    producer.close()
    at = {i: (d.topic, d.partition, d.offset) for i, d in enumerate(delivered)}
    ends: dict[int, int] = {}
    for i in range(len(events)):
        _, p, o = at[i]
        ends[p] = max(ends.get(p, 0), o + 1)
    expected_dlq = {at[i] for i in bad_events} | {
        at[len(events) + i] for i in range(len(BAD_DECISIONS))
    }
    (decision_partition,) = {at[len(events) + i][1] for i in range(len(decisions))}

    sup = StreamSupervisor(
        settings,
        broker.bootstrap,
        workers=1,
        checkpoint_uri=str(tmp_path / "ckpt"),
        monitor_interval_s=0.2,
    ).start()
    observer = make_consumer(broker.bootstrap, settings.kafka)
    try:
        totals = sup.wait_for(len(events), timeout_s=60)
        assert totals["records"] == len(events)
        assert totals["applied"] == len(BAD_EVENTS) + 1 + 10
        assert totals["rejected"] == len(bad_events)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the decisions topic moves too
            (status,) = sup.status()
            part = status["partitions"][str(decision_partition)]
            if part["decisionOffset"] == len(decisions):
                break
            time.sleep(0.2)
        assert part["decisionOffset"] == len(decisions) and part["pendingDecisions"] == 1
        assert sum(part["decisionsRejectedByReason"].values()) == len(BAD_DECISIONS)
        assert {int(p): st["nextOffset"] for p, st in status["partitions"].items()} == ends
        live = sup.profiles()
        for n in range(5):  # the good events after the bad ones were applied
            profile = live.get(f"user-{n}")
            assert profile is not None and profile["counts"]["track:Clicked"] >= 2
        deadline = time.monotonic() + 20
        committed = {}
        while time.monotonic() < deadline:
            committed = {p: observer.committed(t.events, p) for p in ends}
            if committed == ends:
                break
            time.sleep(0.3)
        assert committed == ends
        assert status["error"] is None and sup.restarts == 0  # never crashed, never restarted
        assert sup.check() == 0
    finally:
        sup.stop()
        observer.close()

    reader = make_consumer(broker.bootstrap, settings.kafka)
    reader.assign([(t.dlq, p) for p in range(2)])
    dead: list[dict] = []
    deadline = time.monotonic() + 20
    while len(dead) < len(expected_dlq) and time.monotonic() < deadline:
        dead += [json.loads(r.value) for r in reader.poll(0.5, 1000)]
    reader.close()
    origins = [
        (d["origin"]["topic"], d["origin"]["partition"], d["origin"]["offset"]) for d in dead
    ]
    assert sorted(origins) == sorted(expected_dlq)  # one DLQ record per bad record
    assert all(d["schema"] == "onramp.dlq/1" and d["reason"] and d["message"] for d in dead)
    by_origin = dict(zip(origins, dead, strict=True))
    assert by_origin[at[min(bad_events)]]["tombstone"] is True
    ranked = next(i for i, (_, _, f) in enumerate(BAD_DECISIONS) if f == "ranked")
    assert by_origin[at[len(events) + ranked]]["field"] == "ranked"
    version = next(i for i, (v, _, f) in enumerate(BAD_DECISIONS) if f == "modelVersion")
    assert by_origin[at[len(events) + version]]["reason"] == "invalid_field"

    # a new worker resumes from the signed checkpoints, at the offsets committed
    again = StreamSupervisor(
        settings, broker.bootstrap, workers=1, checkpoint_uri=str(tmp_path / "ckpt")
    ).start()
    try:
        (status,) = again.status()
        assert status["refused"] == {}
        assert {int(p): o for p, o in status["restoredFrom"].items()} == ends
    finally:
        again.stop()
