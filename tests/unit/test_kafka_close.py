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
