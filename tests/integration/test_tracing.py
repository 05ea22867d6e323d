"""One trace id from the collector, through a Kafka record header, to the stream worker and into
the decision the event influenced: real broker, real Ray actors, real Serve over HTTP, spans
and metrics exported over OTLP/HTTP by each process to a receiver in this test (decoded with
``opentelemetry.proto``)."""

import json
import time
import uuid

import httpx
import pytest

from ray_app.kafka import ensure_topics, make_consumer
from ray_app.telemetry.tracing import parse_traceparent, traceparent_of
from tests.conftest import WRITE_KEY, deploy, make_settings
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration

READ = {"authorization": "Bearer onramp-demo-read-key"}


def test_one_trace_goes_collector_kafka_worker_decision(broker, serve_port, tmp_path):
    import ray
    from ray import serve

    from ray_app.stream import start_supervisor_actor

    receiver = OtlpReceiver()
    settings = make_settings(
        broker.bootstrap,
        ONRAMP_KAFKA__TOPIC_PREFIX="traced",
        ONRAMP_RAY__NAMESPACE="onramp-traced",
        ONRAMP_TELEMETRY__TRACES="1",
        ONRAMP_TELEMETRY__OTLP_ENDPOINT=receiver.url,
        ONRAMP_TELEMETRY__EXPORT_INTERVAL_S="0.3",
        ONRAMP_STREAM__CHECKPOINT_URI=str(tmp_path / "ckpt"),
        ONRAMP_DECIDE__MAX_REPLICAS="1",
    )
    ensure_topics(broker.bootstrap, settings.kafka)
    sup = start_supervisor_actor(settings, broker.bootstrap)
    app = deploy("traced", "/traced", settings, serve_port)
    user = f"t-{uuid.uuid4().hex[:10]}"
    try:
        with httpx.Client(base_url=app.base_url, timeout=30) as http:
            batch = {
                "batch": [
                    {"type": "identify", "userId": user, "traits": {"role": "developer"}},
                    {
                        "type": "track",
                        "userId": user,
                        "event": "Step Completed",
                        "context": {"onramp": {"sessionId": "s", "seq": 0, "stepId": "welcome"}},
                    },
                ]
            }
            sent = http.post("/v1/batch", json=batch, auth=(WRITE_KEY, ""))
            assert sent.status_code == 200, sent.text

            # the records carry the producer span's traceparent in their Kafka headers
            consumer = make_consumer(broker.bootstrap, settings.kafka)
            consumer.assign([(settings.topics.events, p) for p in range(4)])
            headers = []
            deadline = time.monotonic() + 20
            while len(headers) < 2 and time.monotonic() < deadline:
                for r in consumer.poll(0.2):
                    if json.loads(r.value).get("userKey") == user:
                        headers.append(traceparent_of(r.headers))
            consumer.close()
            assert len(headers) == 2 and headers[0] == headers[1] and headers[0], headers
            producer_ctx = parse_traceparent(headers[0])
            trace, producer_span = f"{producer_ctx.trace_id:032x}", f"{producer_ctx.span_id:016x}"

            # a decision made from the profile those events built
            deadline = time.monotonic() + 60
            answer: dict = {}
            while time.monotonic() < deadline:
                answer = http.get(
                    "/v1/decide", params={"user_id": user, "slot": "next_step"}, headers=READ
                ).json()
                if not answer.get("coldStart", True):
                    break
                time.sleep(0.3)
            assert answer.get("coldStart") is False, answer

        records = make_consumer(broker.bootstrap, settings.kafka)
        records.assign([(settings.topics.decisions, p) for p in range(4)])
        decision = None
        deadline = time.monotonic() + 20
        while decision is None and time.monotonic() < deadline:
            for r in records.poll(0.2):
                d = json.loads(r.value)
                if d["decisionId"] == answer["decisionId"]:
                    decision = d
        records.close()
        assert decision is not None and decision.get("traceId"), decision
        assert decision["traceId"] != trace  # its own trace, linked to the event's

        # collector (Serve replica) -> producer span -> worker (another actor) -> decision
        (request,) = receiver.wait(lambda s: s["trace"] == trace and s["name"] == "onramp.batch")
        (publish,) = receiver.wait(lambda s: s["span"] == producer_span)
        assert publish["parent"] == request["span"] and publish["component"] == "collector"
        consumed = receiver.wait(
            lambda s: s["trace"] == trace and s["component"] == "stream", timeout_s=30
        )
        assert len(consumed) == 2 and {s["parent"] for s in consumed} == {producer_span}
        # each process reports its own service.instance.id: a backend tells replicas apart
        assert publish["instance"] and consumed[0]["instance"]
        assert publish["instance"] != consumed[0]["instance"]
        (decide,) = receiver.wait(lambda s: s["trace"] == decision["traceId"])
        assert decide["name"] == "onramp.decide" and decide["component"] == "collector"
        assert decide["links"] == [(trace, producer_span)]
        # the collector's metrics reach the OTLP endpoint too
        deadline = time.monotonic() + 20
        pushed = {
            "onramp.events.accepted",
            "onramp.decisions",
            "onramp.http.request.duration",
            "onramp.decide.duration",
        }
        while not pushed <= receiver.metrics and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pushed <= receiver.metrics, receiver.metrics
    finally:
        serve.delete("traced")
        ray.get(sup.stop.remote(), timeout=120)
        ray.kill(sup)
        receiver.close()


@pytest.mark.parametrize("producer_client", ["kafka-python", "confluent"])
def test_trace_headers_cross_the_broker_with_either_client(broker, producer_client):
    from ray_app.kafka import OutRecord, make_producer

    settings = make_settings(broker.bootstrap, ONRAMP_KAFKA__TOPIC_PREFIX="traced-headers")
    ensure_topics(broker.bootstrap, settings.kafka)
    tp = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    producer = make_producer(
        broker.bootstrap, settings.kafka.model_copy(update={"client": producer_client})
    )
    producer.send_all(
        [OutRecord(settings.topics.events, b"{}", b"k", (("traceparent", tp.encode()),))]
    ).result(timeout=30)
    producer.close()
    for consumer_client in ("kafka-python", "confluent"):
        consumer = make_consumer(
            broker.bootstrap, settings.kafka.model_copy(update={"client": consumer_client})
        )
        consumer.assign([(settings.topics.events, p) for p in range(4)])
        found = []
        deadline = time.monotonic() + 20
        while tp not in found and time.monotonic() < deadline:
            found += [traceparent_of(r.headers) for r in consumer.poll(0.2)]
        consumer.close()
        assert tp in found, (producer_client, consumer_client, found)
