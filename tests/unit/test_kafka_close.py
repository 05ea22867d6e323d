"""A producer closed with records it never sent fails them in their callbacks: a caller waiting
for their acknowledgement (the collector's request, its in-flight bytes) is told, not left."""

from __future__ import annotations

import threading

import pytest

from ray_app.config import Settings
from ray_app.kafka.broker import free_port
from ray_app.kafka.client import OutRecord, make_producer


def test_a_confluent_producer_closed_before_delivery_fails_what_it_held() -> None:
    pytest.importorskip("confluent_kafka")
    settings = Settings().kafka.model_copy(update={"client": "confluent", "ack_timeout_s": 1.0})
    producer = make_producer(f"127.0.0.1:{free_port()}", settings)  # nobody listens there
    outcomes: list[tuple[object, object]] = []
    done = threading.Event()

    def callback(delivered: object, error: object) -> None:
        outcomes.append((delivered, error))
        done.set()

    producer.send(OutRecord("onramp.events", b"v", b"k"), callback)
    producer.close(timeout_s=0.0)
    assert done.wait(5.0), "the record's callback never ran"
    [(delivered, error)] = outcomes
    assert delivered is None and "delivery failed" in str(error)


def test_a_confluent_batch_closed_before_delivery_fails_its_future() -> None:
    pytest.importorskip("confluent_kafka")
    settings = Settings().kafka.model_copy(update={"client": "confluent", "ack_timeout_s": 1.0})
    producer = make_producer(f"127.0.0.1:{free_port()}", settings)  # nobody listens there
    acked = producer.send_all([OutRecord("onramp.events", b"v%d" % i, b"k") for i in range(50)])
    producer.close(timeout_s=0.0)
    with pytest.raises(Exception, match="delivery failed"):
        acked.result(timeout=5.0)


def test_a_confluent_producer_holds_at_most_buffer_bytes() -> None:
    # 1 MiB of room (librdkafka's own default is 1 GiB) and nobody takes the records: the third
    # 512 KiB record finds the queue full and the batch fails
    settings = Settings().kafka.model_copy(
        update={"client": "confluent", "ack_timeout_s": 0.3, "buffer_bytes": 2**20}
    )
    producer = make_producer(f"127.0.0.1:{free_port()}", settings)  # nobody listens there
    try:
        big = b"x" * 2**19
        acked = producer.send_all([OutRecord("onramp.events", big, b"k") for _ in range(3)])
        with pytest.raises(Exception, match=r"producer queue full for 0\.3s"):
            acked.result(timeout=5.0)
    finally:
        producer.close(timeout_s=0.0)


def test_a_confluent_record_nobody_takes_fails_after_the_delivery_timeout() -> None:
    # librdkafka's own default is 300 s: a producer whose broker came back without its state
    # hung every record that long (kafka-python cannot go below its 30 s request timeout; the
    # integration tests build it with this setting against the real broker)
    settings = Settings().kafka.model_copy(
        update={"client": "confluent", "delivery_timeout_s": 1.0}
    )
    producer = make_producer(f"127.0.0.1:{free_port()}", settings)  # nobody listens there
    try:
        acked = producer.send_all([OutRecord("onramp.events", b"v", b"k")])
        with pytest.raises(Exception, match="Message timed out"):
            acked.result(timeout=10.0)
    finally:
        producer.close(timeout_s=0.0)


def test_a_confluent_batch_that_finds_the_queue_full_fails_with_why() -> None:
    # librdkafka's queue holds 2 records and nobody takes them: the third waits ack_timeout_s
    # for room, then the batch fails (the records already queued settle later, unheard)
    pytest.importorskip("confluent_kafka")
    settings = Settings().kafka.model_copy(update={"client": "confluent", "ack_timeout_s": 0.3})
    producer = make_producer(
        f"127.0.0.1:{free_port()}", settings, **{"queue.buffering.max.messages": 2}
    )
    try:
        acked = producer.send_all([OutRecord("onramp.events", b"v%d" % i, b"k") for i in range(5)])
        with pytest.raises(Exception, match=r"producer queue full for 0\.3s"):
            acked.result(timeout=5.0)
    finally:
        producer.close(timeout_s=0.0)
