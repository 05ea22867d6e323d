"""``onramp archive``'s read against the real broker: every record a topic held when the read
began is archived, from partitions that took many producer batches, with either Kafka client.

A review feared that records of a partition's last batch were dropped (the archive stops at the
end offsets it began with, and the embedded broker was said to report the start of its last
batch + 1 as the end); this is the check on the broker itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from ray_app.kafka import ensure_topics, make_consumer
from ray_app.kafka.archive import archive_topics
from ray_app.kafka.client import OutRecord, make_producer
from tests.conftest import make_settings


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_the_archive_holds_every_record_of_many_batches(broker, tmp_path: Path, client: str):
    settings = make_settings(
        broker.bootstrap,
        ONRAMP_KAFKA__TOPIC_PREFIX=f"archive-{client}",
        ONRAMP_KAFKA__CLIENT=client,
    )
    ensure_topics(broker.bootstrap, settings.kafka)
    topic = settings.topics.events
    n = 12_000
    producer = make_producer(broker.bootstrap, settings.kafka)
    try:
        records = [OutRecord(topic, orjson.dumps({"i": i}), f"k{i % 7}".encode()) for i in range(n)]
        for start in range(0, n, 100):  # many small producer batches per partition
            producer.send_many(records[start : start + 100]).result(30)
        producer.flush(10)
    finally:
        producer.close()
    consumer = make_consumer(broker.bootstrap, settings.kafka)
    try:
        report = archive_topics(
            consumer, [topic], tmp_path, settings.kafka.partitions, idle_s=1.0, max_seconds=120
        )
    finally:
        consumer.close()
    assert report.by_topic[topic] == n and report.truncated == [] and not report.interrupted
    seen = sorted(
        json.loads(line)["i"] for f in report.files for line in Path(f).read_text().splitlines()
    )
    assert seen == list(range(n))
