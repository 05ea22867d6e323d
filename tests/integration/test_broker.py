"""The embedded broker and both Kafka clients, for real."""

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref

import pytest

from ray_app.config import KafkaSettings
from ray_app.errors import BrokerError
from ray_app.kafka import (
    EmbeddedBroker,
    OutRecord,
    ensure_topics,
    list_topics,
    make_consumer,
    make_producer,
)
from ray_app.kafka.broker import free_port, probe_metadata
from ray_app.kafka.client import partition_for

pytestmark = pytest.mark.integration


def test_start_answers_metadata_and_stop_frees_the_port():
    b = EmbeddedBroker().start()
    try:
        assert b.running and probe_metadata(b.host, b.port)
    finally:
        b.stop()
    assert not b.running and not probe_metadata(b.host, b.port)


def test_a_broker_does_not_outlive_a_process_killed_without_stopping_it():
    """SIGKILL to the process that started the broker (nothing of it runs to stop it): the
    broker gets its parent-death signal and frees its port."""
    code = (
        "from ray_app.kafka import EmbeddedBroker; import time; "
        "b = EmbeddedBroker().start(); print(b.port, flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        assert probe_metadata("127.0.0.1", port)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while probe_metadata("127.0.0.1", port, timeout_s=0.5) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not probe_metadata("127.0.0.1", port, timeout_s=0.5)


def test_port_taken_is_a_clear_error(broker):
    with pytest.raises(BrokerError, match=f"port {broker.port} on 127.0.0.1 is taken"):
        EmbeddedBroker(port=broker.port).start()


def test_missing_binary_is_a_clear_error(tmp_path):
    with pytest.raises(BrokerError, match="missing or not executable"):
        EmbeddedBroker(binary=tmp_path / "tansu").start()


def test_probe_is_false_on_a_closed_port():
    assert not probe_metadata("127.0.0.1", free_port(), timeout_s=0.5)


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_round_trip_through_each_client(broker, client):
    s = KafkaSettings(partitions=4, client=client)
    topic = f"rt-{client}"
    assert ensure_topics(broker.bootstrap, s, [topic]) == [topic]
    assert ensure_topics(broker.bootstrap, s, [topic]) == []  # idempotent
    assert topic in list_topics(broker.bootstrap, s)
    producer = make_producer(broker.bootstrap, s)
    records = [OutRecord(topic, f"v{i}".encode(), key=f"k{i % 7}".encode()) for i in range(500)]
    delivered = producer.send_all(records).result(timeout=30)
    producer.close()
    assert len(delivered) == 500
    # one Delivered per record, in the records' order: its partition, and offsets rising within one
    assert [(d.topic, d.partition) for d in delivered] == [
        (topic, partition_for(r.key, 4)) for r in records
    ]
    for p in range(4):
        offsets = [d.offset for d in delivered if d.partition == p]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    got = _read_back(broker, s, topic, 500)
    assert sorted(r.value for r in got) == sorted(r.value for r in records)


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_send_many_resolves_once_every_record_is_in_kafka(broker, client):
    s = KafkaSettings(partitions=4, client=client)
    topic = f"many-{client}"
    ensure_topics(broker.bootstrap, s, [topic])
    producer = make_producer(broker.bootstrap, s)
    batches = [
        [OutRecord(topic, f"v{b}-{i}".encode(), key=f"k{i % 7}".encode()) for i in range(100)]
        for b in range(5)
    ]
    futures = [producer.send_many(batch) for batch in batches]
    assert [f.result(timeout=30) for f in futures] == [100] * 5
    assert producer.send_many([]).result(timeout=1) == 0
    producer.close()
    got = _read_back(broker, s, topic, 500)
    assert sorted(r.value for r in got) == sorted(r.value for b in batches for r in b)


def _read_back(broker, settings, topic, n):
    """What the topic holds, read from every partition until ``n`` records (20 s at most)."""
    consumer = make_consumer(broker.bootstrap, settings)
    consumer.assign([(topic, p) for p in range(settings.partitions)])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        got += consumer.poll(0.2)
    consumer.close()
    # Kafka's murmur2 in both clients, and in the in-memory twin: key -> partition is one function
    assert all(r.partition == partition_for(r.key, settings.partitions) for r in got)
    return got


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_seek_reads_a_partition_again_from_the_offset_and_drops_what_was_fetched(broker, client):
    """What a stream worker does when a fetch skipped offsets: read again from the first one
    skipped, with nothing the client fetched before the seek handed over after it."""
    s = KafkaSettings(partitions=1, client=client)
    topic = f"seek-{client}"
    ensure_topics(broker.bootstrap, s, [topic])
    producer = make_producer(broker.bootstrap, s)
    producer.send_many([OutRecord(topic, f"v{i}".encode()) for i in range(3000)]).result(30)
    producer.close()
    consumer = make_consumer(broker.bootstrap, s)
    consumer.assign_at({(topic, 0): 0})
    got: list = []
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        got = consumer.poll(0.2, max_records=10)  # the client has fetched more than these
    assert [r.offset for r in got] == list(range(len(got)))
    for target in (2500, 5):  # forward past what was fetched, then back before it
        consumer.seek(topic, 0, target)
        after: list = []
        deadline = time.monotonic() + 20
        while len(after) < 100 and time.monotonic() < deadline:
            after += consumer.poll(0.2, max_records=100 - len(after))
        assert [r.offset for r in after] == list(range(target, target + 100))
        assert after[0].value == f"v{target}".encode()
    consumer.close()


def test_onramp_broker_command_runs_in_the_foreground_and_stops_on_sigterm():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.onramp", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "ONRAMP_KAFKA__PARTITIONS": "2"},
    )
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line, line
        assert {
            "onramp.events",
            "onramp.events.dlq",
            "onramp.events.late",
            "onramp.decisions",
        } <= list_topics(f"127.0.0.1:{port}", KafkaSettings())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not probe_metadata("127.0.0.1", port)
    finally:
        proc.kill()


def test_a_confluent_delivery_callback_that_raises_does_not_stop_later_acknowledgements(
    broker, monkeypatch
):
    pytest.importorskip("confluent_kafka")
    # the client's log to a list of our own (pytest's capture would keep its records, and
    # with them the producer, to the end of the test)
    logged: list[logging.LogRecord] = []
    client_log = logging.getLogger("ray_app.kafka.client")
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    monkeypatch.setattr(client_log, "propagate", False)
    client_log.addHandler(handler)
    s = KafkaSettings(partitions=1, client="confluent")
    topic = "rt-callback-raises"
    ensure_topics(broker.bootstrap, s, [topic])
    producer = make_producer(broker.bootstrap, s)
    try:
        raised = threading.Event()

        def bad(delivered, error):
            raised.set()
            raise RuntimeError("a broken hook")

        producer.send(OutRecord(topic, b"first", key=b"k"), bad)
        assert raised.wait(10.0)
        delivered = producer.send_all([OutRecord(topic, b"later", key=b"k")]).result(timeout=10)
        assert [d.topic for d in delivered] == [topic]
    finally:
        producer.close()
        client_log.removeHandler(handler)
    assert [r.getMessage() for r in logged] == ["a delivery callback of the producer failed"]
    # and nothing it raised keeps the closed producer alive once the log lets go of it (it
    # would go on reaching for the broker until the process ends)
    logged.clear()
    gone = weakref.ref(producer)
    del producer
    gc.collect()
    assert gone() is None


def test_an_existing_topic_with_another_retention_is_refused(broker):
    """The broker's retention.ms of an existing topic is read (kafka-python reports each value
    as a dict, on which the check raised; and its default filter, "modified", left out a topic
    at the broker default, so that case was never refused)."""
    from ray_app.errors import ConfigError

    topic = "retention-check"
    day = KafkaSettings(partitions=2, retention_ms=86_400_000)
    assert ensure_topics(broker.bootstrap, day, [topic]) == [topic]
    assert ensure_topics(broker.bootstrap, day, [topic]) == []  # the same: accepted
    with pytest.raises(ConfigError, match=r"retention-check has retention.ms=86400000"):
        ensure_topics(broker.bootstrap, KafkaSettings(partitions=2, retention_ms=1000), [topic])
