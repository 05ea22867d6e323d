"""One stream worker against the real broker and Ray: checkpointed offsets reach the Kafka consumer
group (for lag monitoring), and events failing batch validation reach the DLQ with their reason;
a ProfileReader reads the workers' profiles over their profile sockets, the same as the actor
call answers them."""

import asyncio
import datetime as dt
import json
import time

import pytest

from ray_app.config import SimSettings
from ray_app.kafka import OutRecord, ensure_topics, make_consumer, make_producer
from ray_app.sim import TrafficPlan
from ray_app.stream import StreamSupervisor
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_checkpointed_offsets_are_committed_and_invalid_events_reach_the_dlq(
    broker, ray_session, tmp_path, client
):
    settings = make_settings(
        broker.bootstrap,
        ONRAMP_KAFKA__TOPIC_PREFIX=f"commit-{client}",
        ONRAMP_KAFKA__PARTITIONS="2",
        ONRAMP_KAFKA__CLIENT=client,
        ONRAMP_KAFKA__CONSUMER_GROUP=f"onramp-stream-{client}",
        ONRAMP_STREAM__CHECKPOINT_INTERVAL_S="0.2",
    )
    ensure_topics(broker.bootstrap, settings.kafka)
    records = TrafficPlan.build(SimSettings(users=40, seed=3, malformed_share=0)).normalized(
        dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    )
    # a track's properties are read (an identify's are an extra the stream leaves alone)
    at = next(i for i, (_, v) in enumerate(records) if json.loads(v)["type"] == "track")
    bad = json.loads(records[at][1])
    bad.update(messageId="bad-duration", properties={"durationMs": -40})
    records.append((records[at][0], json.dumps(bad).encode()))
    producer = make_producer(broker.bootstrap, settings.kafka)
    producer.send_all([OutRecord(settings.topics.events, v, key=k) for k, v in records]).result(
        timeout=60
    )
    producer.close()

    sup = StreamSupervisor(
        settings, broker.bootstrap, workers=1, checkpoint_uri=str(tmp_path / "ckpt")
    ).start()
    observer = make_consumer(broker.bootstrap, settings.kafka)
    try:
        totals = sup.wait_for(len(records), timeout_s=60)
        assert totals["records"] == len(records)
        assert totals["rejected"] == 1
        (status,) = sup.status()
        ends = {int(p): st["nextOffset"] for p, st in status["partitions"].items()}
        # link and merge records (every simulated user signs up after an anonymous page)
        assert totals["control"] > 0
        assert sum(ends.values()) == len(records) + totals["control"] + totals["relayed"]
        # while the worker runs, its checkpoints reach the group (asynchronously)
        deadline = time.monotonic() + 20
        committed = {}
        while time.monotonic() < deadline:
            committed = {p: observer.committed(settings.topics.events, p) for p in ends}
            if committed == ends:
                break
            time.sleep(0.3)
        assert committed == ends
        assert status["commitFailures"] == 0
        assert status["partitions"]["0"]["quality"]["rows"] > 0
    finally:
        sup.stop()
        observer.close()

    reader = make_consumer(broker.bootstrap, settings.kafka)
    reader.assign([(settings.topics.dlq, p) for p in range(2)])
    dead = []
    deadline = time.monotonic() + 20
    while not dead and time.monotonic() < deadline:
        dead = [json.loads(r.value) for r in reader.poll(0.5, 1000)]
    reader.close()
    (record,) = dead
    assert record["reason"] == "negative_duration"
    assert record["field"] == "properties.durationMs"
    assert json.loads(record["rawText"])["messageId"] == "bad-duration"
    assert record["origin"]["topic"] == settings.topics.events


def test_the_reader_gets_the_actor_calls_profiles_over_the_workers_sockets(
    broker, ray_session, tmp_path
):
    import ray

    from ray_app.stream import ProfileReader, start_supervisor_actor

    namespace = "onramp-profile-socket"
    settings = make_settings(
        broker.bootstrap,
        ONRAMP_KAFKA__TOPIC_PREFIX="profile-socket",
        ONRAMP_KAFKA__PARTITIONS="4",
        ONRAMP_RAY__NAMESPACE=namespace,
        ONRAMP_STREAM__WORKERS="2",
        ONRAMP_STREAM__CHECKPOINT_URI=str(tmp_path),
    )
    ensure_topics(broker.bootstrap, settings.kafka)
    records = TrafficPlan.build(SimSettings(users=30, seed=5, malformed_share=0)).normalized(
        dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    )
    producer = make_producer(broker.bootstrap, settings.kafka)
    producer.send_all([OutRecord(settings.topics.events, v, key=k) for k, v in records]).result(
        timeout=60
    )
    producer.close()
    keys = sorted({k.decode() for k, _ in records})  # anonymous ids too: they follow merges
    sup = start_supervisor_actor(settings, broker.bootstrap)
    try:
        ray.get(sup.wait_for.remote(len(records), 60), timeout=90)
        partitions, workers, addresses = ray.get(sup.routes.remote(True))
        assert len(workers) == 2
        assert partitions == 4 and len(addresses) == 2 and all(addresses)
        assert len(ray.get(sup.routes.remote())) == 2  # as before, for other callers
        reader = ProfileReader(namespace)

        async def read() -> tuple[dict, dict]:
            by_actor = await reader.get_many(keys)  # opens the sockets meanwhile
            for _ in range(50):
                if all(link.channel for link in reader._links.values()):
                    break
                await asyncio.sleep(0.05)
            by_socket = await reader.get_many(keys)
            reader.close()
            return by_actor, by_socket

        by_actor, by_socket = asyncio.run(read())
        assert reader.socket_reads >= 2  # both workers, at least once each
        assert by_socket == by_actor
        assert sum(p is not None for p in by_socket.values()) == len(keys)
    finally:
        ray.get(sup.stop.remote(), timeout=120)
        ray.kill(sup)
