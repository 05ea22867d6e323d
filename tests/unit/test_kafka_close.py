"""A producer closed with records it never sent fails them in their callbacks: a caller waiting
for their acknowledgement (the collector's request, its in-flight bytes) is told, not left."""

from __future__ import annotations

import threading

import pytest

from ray_app.config import Settings
from ray_app.kafka.broker import free_port
from ray_app.kafka.client import OutRecord, make_producer

# send_all answers where each record landed; send_many (the collector's and the stream's) only
# that all did, with one delivery callback for the batch: both fail the same way.
BATCH_METHODS = ["send_all", "send_many"]


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


@pytest.mark.parametrize("method", BATCH_METHODS)
def test_a_confluent_batch_closed_before_delivery_fails_its_future(method: str) -> None:
    pytest.importorskip("confluent_kafka")
    settings = Settings().kafka.model_copy(update={"client": "confluent", "ack_timeout_s": 1.0})
    producer = make_producer(f"127.0.0.1:{free_port()}", settings)  # nobody listens there
    acked = getattr(producer, method)(
        [OutRecord("onramp.events", b"v%d" % i, b"k") for i in range(50)]
    )
    producer.close(timeout_s=0.0)
    with pytest.raises(Exception, match="delivery failed"):
        acked.result(timeout=5.0)


@pytest.mark.parametrize("method", BATCH_METHODS)
def test_a_confluent_producer_holds_at_most_buffer_bytes(method: str) -> None:
    # 1 MiB of room (librdkafka's own default is 1 GiB) and nobody takes the records: the third
    # 512 KiB record finds the queue full and the batch fails
    settings = Settings().kafka.model_copy(
        update={"client": "confluent", "ack_timeout_s": 0.3, "buffer_bytes": 2**20}
    )
    producer = make_producer(f"127.0.0.1:{free_port()}", settings)  # nobody listens there
    try:
        big = b"x" * 2**19
        acked = getattr(producer, method)([OutRecord("onramp.events", big, b"k") for _ in range(3)])
        with pytest.raises(Exception, match=r"producer queue full for 0\.3s"):
            acked.result(timeout=5.0)
    finally:
        producer.close(timeout_s=0.0)


@pytest.mark.parametrize("method", BATCH_METHODS)
def test_a_confluent_record_nobody_takes_fails_after_the_delivery_timeout(method: str) -> None:
    # librdkafka's own default is 300 s: a producer whose broker came back without its state
    # hung every record that long (kafka-python cannot go below its 30 s request timeout; the
    # integration tests build it with this setting against the real broker)
    settings = Settings().kafka.model_copy(
        update={"client": "confluent", "delivery_timeout_s": 1.0}
    )
    producer = make_producer(f"127.0.0.1:{free_port()}", settings)  # nobody listens there
    try:
        acked = getattr(producer, method)([OutRecord("onramp.events", b"v", b"k")])
        with pytest.raises(Exception, match="Message timed out"):
            acked.result(timeout=10.0)
    finally:
        producer.close(timeout_s=0.0)


@pytest.mark.parametrize("method", BATCH_METHODS)
def test_a_confluent_batch_that_finds_the_queue_full_fails_with_why(method: str) -> None:
    # librdkafka's queue holds 2 records and nobody takes them: the third waits ack_timeout_s
    # for room, then the batch fails (the records already queued settle later, unheard)
    pytest.importorskip("confluent_kafka")
    settings = Settings().kafka.model_copy(update={"client": "confluent", "ack_timeout_s": 0.3})
    producer = make_producer(
        f"127.0.0.1:{free_port()}", settings, **{"queue.buffering.max.messages": 2}
    )
    try:
        acked = getattr(producer, method)(
            [OutRecord("onramp.events", b"v%d" % i, b"k") for i in range(5)]
        )
        with pytest.raises(Exception, match=r"producer queue full for 0\.3s"):
            acked.result(timeout=5.0)
    finally:
        producer.close(timeout_s=0.0)


def test_send_many_counts_acknowledgements_waits_out_an_outage_and_fails_on_a_refusal() -> None:
    from ray_app.kafka.memory import InMemoryBroker, InMemoryProducer

    broker = InMemoryBroker()
    producer = InMemoryProducer(broker)
    records = [OutRecord("t", b"v%d" % i, b"k%d" % i) for i in range(7)]
    assert producer.send_many(records).result(timeout=1) == 7
    broker.available = False  # an outage: nothing is acknowledged until it ends
    pending = producer.send_many(records)
    assert not pending.done()
    broker.recover()
    assert pending.result(timeout=1) == 7 and len(broker.records("t")) == 14

    class Refusing(InMemoryProducer):
        def send(self, record, callback):  # type: ignore[no-untyped-def]
            if record.value == b"v3":
                raise RuntimeError("queue full")
            super().send(record, callback)

    with pytest.raises(RuntimeError, match="queue full"):
        Refusing(broker).send_many(records).result(timeout=1)


def test_an_unreachable_kafka_is_told_within_the_admin_timeout() -> None:
    """The topic check asked for 5 s and waited 30 (kafka-python's bootstrap timeout), holding
    the stream supervisor's monitor and the worker restarts it runs."""
    import time

    from ray_app.errors import KafkaUnavailable
    from ray_app.kafka.topics import verify_topics

    started = time.monotonic()
    with pytest.raises(KafkaUnavailable):
        verify_topics(f"127.0.0.1:{free_port()}", Settings().kafka, ["t"], timeout_s=1.0)
    assert time.monotonic() - started < 10


def test_a_free_port_is_picked_outside_the_ephemeral_range_and_is_free() -> None:
    """A port taken from the kernel's ephemeral range can go to an outgoing connection before
    its listener binds it: HAProxy's stats port did, and every Serve test of that session
    errored with "Address already in use"."""
    import socket

    from ray_app.kafka.broker import _PICK_LOW, _ephemeral_low

    for _ in range(20):
        port = free_port()
        assert _PICK_LOW <= port < _ephemeral_low()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))  # nobody listens on it


def test_a_batch_acknowledged_from_two_threads_at_once_resolves_once_with_its_count() -> None:
    # librdkafka serves delivery reports on whichever thread polls: the producer's poller and a
    # flush() may both be serving one batch's reports; none may be lost or counted twice
    from ray_app.kafka.client import _Count

    for _ in range(20):
        count = _Count(20_000)
        resolved = []
        count.future.add_done_callback(resolved.append)
        report = count.librdkafka_report
        threads = [
            threading.Thread(target=lambda r=report: [r(None, None) for _ in range(10_000)])
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert count.future.result(timeout=1) == 20_000 and len(resolved) == 1


def test_a_delivery_error_fails_the_batch_and_later_acknowledgements_change_nothing() -> None:
    from ray_app.kafka.client import _Count

    class Msg:
        def topic(self) -> str:
            return "onramp.events"

    count = _Count(3)
    count.librdkafka_report(None, None)
    count.librdkafka_report("_MSG_TIMED_OUT", Msg())
    count.librdkafka_report(None, None)
    count.librdkafka_report(None, None)  # the last one: the batch stays failed
    with pytest.raises(Exception, match="delivery failed: _MSG_TIMED_OUT"):
        count.future.result(timeout=1)
