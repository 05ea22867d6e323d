"""The collector's request path against the in-memory Kafka twin."""

import asyncio
import base64
import json

import pytest

from ray_app.collect import Collector
from ray_app.kafka import InMemoryBroker, InMemoryProducer
from ray_app.telemetry import OtelHooks
from tests.conftest import WRITE_KEY, make_settings

AUTH = {"authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


def run(coro):
    return asyncio.run(coro)


def make(broker=None, **env):
    broker = broker or InMemoryBroker(partitions=4)
    settings = make_settings("unused:9092", **env)
    hooks = OtelHooks()
    return Collector(settings, lambda: InMemoryProducer(broker), hooks), broker, hooks


def body(*events):
    return json.dumps({"batch": list(events)}).encode()


GOOD = {"type": "track", "event": "x", "userId": "u1"}


def test_200_after_the_records_are_in_kafka():
    c, broker, hooks = make()
    reply = run(c.handle("batch", body(GOOD, GOOD), AUTH))
    assert reply.status == 200 and reply.body["accepted"] == 2
    assert len(broker.records("onramp.events")) == 2
    assert b'onramp_events_accepted_total{source="test"} 2.0' in hooks.prometheus_text()


def test_rejected_events_are_in_the_dlq_before_the_answer():
    c, broker, hooks = make()
    reply = run(c.handle("batch", body(GOOD, {"type": "track", "userId": "u"}), AUTH))
    assert reply.status == 400
    assert reply.body["rejected"][0]["reason"] == "missing_field"
    (dead,) = broker.records("onramp.events.dlq")
    assert json.loads(dead.value)["reason"] == "missing_field"
    assert b'onramp_events_rejected_total{reason="missing_field"} 1.0' in hooks.prometheus_text()


def test_a_long_user_agent_is_kept_short_in_each_dlq_record():
    """Every DLQ record of a request carries its origin: a 12 KB User-Agent on a batch of 1,800
    refused events made 22 MB of records (and held the in-flight budget) from a 4 KB body."""
    c, broker, _ = make()
    agent = "Mozilla/5.0 " + "x" * 12_000
    reply = run(c.handle("batch", body(*[1] * 200), {**AUTH, "user-agent": agent}))
    assert reply.status == 400
    dead = broker.records("onramp.events.dlq")
    assert len(dead) == 200
    kept = json.loads(dead[0].value)["origin"]["userAgent"]
    assert kept.startswith("Mozilla/5.0 xxx") and kept.endswith("(11500 more characters)")
    assert sum(len(d.value) for d in dead) < 200 * 1_500


def test_auth_failure_writes_nothing():
    c, broker, _ = make()
    reply = run(c.handle("batch", body(GOOD), {}))
    assert reply.status == 401 and not broker.topics


def test_kafka_not_acknowledging_gives_503_with_retry_after_and_counts_nothing_accepted():
    c, broker, hooks = make(ONRAMP_KAFKA__ACK_TIMEOUT_S="0.2")
    broker.available = False
    reply = run(c.handle("batch", body(GOOD), AUTH))
    assert reply.status == 503 and reply.headers["Retry-After"] == "5"
    assert "onramp_events_accepted_total{" not in hooks.prometheus_text().decode()
    assert c.inflight_bytes > 0  # still owed by Kafka: counted against the memory bound
    broker.recover()
    assert c.inflight_bytes == 0
    assert run(c.handle("batch", body(GOOD), AUTH)).status == 200


def test_memory_bound_turns_requests_away_with_503():
    c, broker, hooks = make(
        ONRAMP_KAFKA__ACK_TIMEOUT_S="0.1", ONRAMP_COLLECTOR__MAX_INFLIGHT_BYTES="10000"
    )
    broker.available = False
    first = run(c.handle("batch", body(*[GOOD] * 5), AUTH))
    assert first.status == 503
    held = c.inflight_bytes
    assert 0 < held <= 10000
    second = run(c.handle("batch", body(*[GOOD] * 20), AUTH))
    assert second.status == 503 and c.inflight_bytes == held  # not admitted: nothing queued
    assert b'cause="backpressure"' in hooks.prometheus_text()


def test_a_failed_delivery_rebuilds_the_producer():
    built = []

    class Failing(InMemoryProducer):
        def send(self, record, callback):
            callback(None, RuntimeError("broker lost its state"))

    broker = InMemoryBroker()

    def factory():
        built.append(1)
        return Failing(broker) if len(built) == 1 else InMemoryProducer(broker)

    c = Collector(make_settings("unused:9092"), factory)
    assert run(c.handle("batch", body(GOOD), AUTH)).status == 503
    assert run(c.handle("batch", body(GOOD), AUTH)).status == 200
    assert len(built) == 2


def test_a_factory_that_cannot_connect_gives_503_not_500():
    def factory():
        raise ConnectionError("no brokers")

    c = Collector(make_settings("unused:9092"), factory)
    reply = run(c.handle("batch", body(GOOD), AUTH))
    assert reply.status == 503 and "no brokers" in reply.body["message"]


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", "https://app.example.com"),
        ("https://evil.example", None),
        (None, None),
    ],
)
def test_cors(origin, allowed):
    c, _, _ = make()
    assert c.cors_headers(origin).get("Access-Control-Allow-Origin") == allowed
    pre = c.preflight(origin, "content-type")
    assert pre.status == (204 if allowed else 403)
    if allowed:
        assert "POST" in pre.headers["Access-Control-Allow-Methods"]
        assert pre.headers["Access-Control-Allow-Headers"] == "content-type"


def test_wildcard_cors():
    c, _, _ = make(ONRAMP_COLLECTOR__CORS_ORIGINS='["*"]')
    assert c.cors_headers("https://any.example")["Access-Control-Allow-Origin"] == "*"


def test_the_budget_is_taken_while_records_are_built_and_given_back_at_once_when_refused():
    c, broker, hooks = make(ONRAMP_COLLECTOR__MAX_INFLIGHT_BYTES="3000")
    big = [dict(GOOD, messageId=f"m{i}", properties={"pad": "p" * 200}) for i in range(40)]
    reply = run(c.handle("batch", body(*big), AUTH))
    assert reply.status == 503 and reply.headers["Retry-After"] == "5"
    assert c.inflight_bytes == 0  # what was reserved before the refusal is released
    assert not broker.topics  # nothing of a refused request reaches Kafka
    assert b'cause="backpressure"' in hooks.prometheus_text()
    assert run(c.handle("batch", body(GOOD), AUTH)).status == 200
    assert c.inflight_bytes == 0


def test_a_request_cancelled_while_waiting_for_kafka_gives_its_bytes_back():
    c, broker, _ = make(ONRAMP_KAFKA__ACK_TIMEOUT_S="30")
    broker.available = False  # Kafka never acknowledges while the client waits

    async def cancelled() -> None:
        task = asyncio.create_task(c.handle("batch", body(GOOD, GOOD), AUTH))
        await asyncio.sleep(0.2)
        assert c.inflight_bytes > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancelled())
    assert c.inflight_bytes > 0  # Kafka still owes the records: still counted
    broker.recover()  # they settle: the bytes come back even though nobody awaits them
    assert c.inflight_bytes == 0


def test_a_request_cancelled_before_the_send_thread_runs_gives_its_bytes_back():
    import threading

    c, broker, _ = make()
    gate = threading.Event()
    c._sender.submit(gate.wait, 5)  # the send thread is busy: the next job waits in its queue

    async def cancelled() -> None:
        task = asyncio.create_task(c.handle("batch", body(GOOD), AUTH))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancelled())
    gate.set()
    c._sender.submit(lambda: None).result(5)  # the queued send ran (and was settled)
    assert c.inflight_bytes == 0
    assert len(broker.records("onramp.events")) == 1  # sent anyway: a retry dedupes on messageId


def test_a_bad_batch_sent_at_is_named_as_the_batchs_not_the_events():
    """An event without its own sentAt takes the batch's: when that one is not a time, the
    rejection names the batch's field (the client's bug is there), not a batch[i].sentAt the
    event never sent; an event's own bad sentAt is still its own."""
    c, broker, _ = make()
    bad_own = {**GOOD, "sentAt": "later"}
    payload = {
        "sentAt": "soon",
        "batch": [GOOD, {**GOOD, "sentAt": "2026-01-01T00:00:00Z"}, bad_own],
    }
    reply = run(c.handle("batch", json.dumps(payload).encode(), AUTH))
    rejected = reply.body["rejected"]
    assert [(r["index"], r["field"]) for r in rejected] == [(0, "sentAt"), (2, "batch[2].sentAt")]
    assert rejected[0]["message"].startswith("the batch's sentAt")
    assert reply.body["accepted"] == 1 and len(broker.records("onramp.events.dlq")) == 2
