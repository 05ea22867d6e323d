"""Tracing across the pure parts: collector -> record headers -> shard (profile keeps the event's
traceparent) -> consumer spans -> a decision linked to the event's trace. OpenTelemetry's
in-memory span exporter; the Kafka twin carries the headers."""

import asyncio
import datetime as dt
import json

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ray_app.collect import Collector
from ray_app.decide import Decider, DecideRequest
from ray_app.errors import ConfigError
from ray_app.kafka.memory import InMemoryBroker, InMemoryProducer
from ray_app.state import SessionShard
from ray_app.stream.worker import state_config
from ray_app.telemetry.tracing import (
    NoopTracing,
    OtelTracing,
    format_traceparent,
    make_tracing,
    parse_traceparent,
    traceparent_of,
)
from tests.conftest import WRITE_KEY, make_settings

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
AUTH = {
    "authorization": "Basic " + __import__("base64").b64encode(f"{WRITE_KEY}:".encode()).decode()
}


def _batch(user: str, n: int) -> bytes:
    return json.dumps(
        {
            "batch": [
                {
                    "type": "track",
                    "userId": user,
                    "event": "Step Viewed",
                    "messageId": f"{user}-{i}",
                    "timestamp": (NOW + dt.timedelta(seconds=i)).isoformat(),
                    "context": {"onramp": {"sessionId": f"s-{user}", "seq": i, "stepId": "role"}},
                }
                for i in range(n)
            ]
        }
    ).encode()


def _collector(tracing, broker):
    return Collector(
        make_settings(), lambda: InMemoryProducer(broker), clock=lambda: NOW, tracing=tracing
    )


def test_the_event_trace_reaches_the_decision():
    spans = InMemorySpanExporter()
    tracing = OtelTracing(ratio=1.0, exporter=spans)
    broker = InMemoryBroker(partitions=4)
    collector = _collector(tracing, broker)
    reply = asyncio.run(collector.handle("batch", _batch("u1", 3), AUTH))
    assert reply.status == 200, reply.body
    records = broker.records("onramp.events")
    assert len(records) == 3
    (tp,) = {traceparent_of(r.headers) for r in records}
    producer_ctx = parse_traceparent(tp)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    request, publish = by_name["onramp.batch"], by_name["onramp.events publish"]
    assert publish.kind == SpanKind.PRODUCER and request.kind == SpanKind.SERVER
    assert publish.parent.span_id == request.context.span_id
    assert (producer_ctx.trace_id, producer_ctx.span_id) == (
        publish.context.trace_id,
        publish.context.span_id,
    )
    assert request.attributes["http.response.status_code"] == 200

    # the worker's part: the shard keeps the traceparent on the profile, spans per record
    settings = make_settings()
    shard = SessionShard(records[0].partition, state_config(settings))
    traces = [traceparent_of(r.headers) for r in records]
    result = shard.process([(r.key, r.value) for r in records], traces)
    assert result.applied == 3
    assert tracing.consumed(records, {}, 1, 2) == 3
    consumers = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert len(consumers) == 3
    for s in consumers:
        assert s.context.trace_id == producer_ctx.trace_id
        assert s.parent.span_id == producer_ctx.span_id
        assert [link.context.span_id for link in s.links] == [producer_ctx.span_id]
    assert sorted(s.attributes["messaging.kafka.offset"] for s in consumers) == [0, 1, 2]
    profile = shard.profile("u1")
    assert profile["traceparent"] == tp

    # the decision: its own trace, linked to the event's
    decider = Decider.from_settings(settings)
    [decision] = decider.decide_many(
        [(DecideRequest(user_id="u1", slot="next_step"), profile, None)], now_ms=0
    )
    assert decision.event_trace == tp
    span = tracing.decision_span(decision.slot, None, decision.event_trace)
    decision.trace_id = tracing.trace_id(span)
    tracing.end(span, 200)
    decide = by_name | {s.name: s for s in spans.get_finished_spans()}
    decide_span = decide["onramp.decide"]
    assert decision.record()["traceId"] == f"{decide_span.context.trace_id:032x}"
    assert decide_span.context.trace_id != producer_ctx.trace_id
    (link,) = decide_span.links
    assert (link.context.trace_id, link.context.span_id) == (
        producer_ctx.trace_id,
        producer_ctx.span_id,
    )


def test_incoming_traceparent_is_the_parent_and_unsampled_requests_carry_no_header():
    spans = InMemorySpanExporter()
    broker = InMemoryBroker(partitions=4)
    collector = _collector(OtelTracing(ratio=0.0, exporter=spans), broker)
    asyncio.run(collector.handle("batch", _batch("u2", 1), AUTH))  # ratio 0, no parent: no trace
    assert spans.get_finished_spans() == ()
    assert broker.records("onramp.events")[0].headers == ()
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    asyncio.run(collector.handle("batch", _batch("u3", 1), {**AUTH, "traceparent": incoming}))
    request = next(s for s in spans.get_finished_spans() if s.name == "onramp.batch")
    assert f"{request.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert request.parent.span_id == 0xB7AD6B7169203331
    header = traceparent_of(broker.records("onramp.events")[-1].headers)
    assert header.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    # a decision linked to a sampled event is sampled whatever the ratio
    tracing = OtelTracing(ratio=0.0, exporter=spans)
    assert tracing.trace_id(tracing.decision_span("next_step", None, header)) is not None
    assert tracing.trace_id(tracing.decision_span("next_step", None, None)) is None


def test_tracing_off_adds_nothing():
    broker = InMemoryBroker(partitions=4)
    collector = _collector(make_tracing(make_settings().telemetry, "collector"), broker)
    assert isinstance(collector.tracing, NoopTracing)
    asyncio.run(collector.handle("batch", _batch("u4", 2), AUTH))
    assert all(r.headers == () for r in broker.records("onramp.events"))
    shard = SessionShard(0, state_config(make_settings()))
    shard.process([(r.key, r.value) for r in broker.records("onramp.events")])
    assert "traceparent" not in shard.profile("u4")


def test_profile_keeps_the_latest_event_trace_whatever_the_arrival_order():
    records = [(b"u5", _event("u5", i)) for i in range(4)]
    traces = [f"00-{i + 1:032x}-{i + 1:016x}-01" for i in range(4)]
    forward = SessionShard(0, state_config(make_settings()))
    forward.process(records, traces)
    backward = SessionShard(0, state_config(make_settings()))
    backward.process(records[::-1], traces[::-1])
    assert forward.profile("u5")["traceparent"] == traces[-1]
    assert forward.profile("u5") == backward.profile("u5")
    # a snapshot round trip keeps it (replay after a restart gives the same state)
    restored = SessionShard.restore(forward.snapshot())
    assert restored.profile("u5") == forward.profile("u5")


def _event(user: str, i: int) -> bytes:
    t = (NOW + dt.timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
    return json.dumps(
        {
            "messageId": f"{user}-{i}", "type": "track", "event": "Step Viewed",
            "userKey": user, "timestamp": t, "receivedAt": t, "sessionId": "s",
            "stepId": "role",
        }
    ).encode()  # fmt: skip


def test_traceparent_parsing_is_strict():
    assert parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") is None
    assert parse_traceparent("00-" + "0" * 32 + "-b7ad6b7169203331-01") is None
    ctx = parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
    assert not ctx.trace_flags.sampled
    assert format_traceparent(ctx) == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def test_tracing_without_an_exporter_is_a_config_error():
    with pytest.raises(ConfigError, match=r"telemetry\.otlp_endpoint"):
        make_settings(ONRAMP_TELEMETRY__TRACES="0.1")
    s = make_settings(
        ONRAMP_TELEMETRY__TRACES="0.1", ONRAMP_TELEMETRY__OTLP_ENDPOINT="http://otel:4318"
    )
    assert s.telemetry.traces == 0.1
