"""The collector on Ray Serve over HTTP, writing to the real broker."""

import gzip
import json
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import WRITE_KEY

pytestmark = pytest.mark.integration

AUTH = (WRITE_KEY, "")


@pytest.fixture
def http(collector):
    with httpx.Client(base_url=collector.base_url, timeout=30) as c:
        yield c


def tag():
    return f"t-{uuid.uuid4().hex[:12]}"


def test_segment_python_client_events_arrive_unaltered(collector, read_topic):
    """The PyPI client segment-analytics-python, pointed at the collector, unchanged."""
    from segment.analytics import Client

    errors = []
    client = Client(
        WRITE_KEY,
        host=collector.base_url,
        on_error=lambda e, batch: errors.append(e),
        max_retries=1,
    )
    user = tag()
    sent = [
        client.identify(user, {"role": "founder", "companySize": "1-10"})[1],
        client.track(user, "Signed Up", {"plan": "pro", "seats": 3, "nested": {"a": [1, 2]}})[1],
        client.page(user, "Onboarding", "Welcome", {"path": "/welcome"})[1],
        client.screen(user, "App", "Home", {"x": 1})[1],
        client.group(user, "acct-1", {"name": "Acme"})[1],
        client.alias("prev-" + user, user)[1],
        client.track(
            user,
            "Step Completed",
            {"stepId": "goals"},
            context={"onramp": {"sessionId": "s1", "seq": 7, "stepId": "goals"}},
        )[1],
    ]
    client.flush()
    client.join()
    assert errors == []
    reader = read_topic("onramp.events")
    ids = {m["messageId"] for m in sent}
    got = {
        r["value"]["messageId"]: r
        for r in reader.wait_for(lambda v: v["messageId"] in ids, len(sent))
    }
    assert set(got) == ids  # nothing missing
    for msg in sent:
        rec = got[msg["messageId"]]
        v = rec["value"]
        assert rec["key"] == user.encode()
        assert v["type"] == msg["type"] and v["source"] == "test"
        for fld in (
            "userId",
            "event",
            "name",
            "category",
            "groupId",
            "previousId",
            "properties",
            "traits",
        ):
            if fld in msg:
                assert v[fld] == msg[fld], fld  # nothing altered
        assert v["context"]["library"]["name"] == "analytics-python"
        assert v["originalTimestamp"][:19] == msg["timestamp"][:19]
    step = got[sent[-1]["messageId"]]["value"]
    assert (step["sessionId"], step["seq"], step["stepId"]) == ("s1", 7, "goals")


def _dlq_for(read_topic, request_id, count=1):
    reader = read_topic("onramp.events.dlq")
    return reader.wait_for(lambda v: v["origin"].get("requestId") == request_id, count)


@pytest.mark.parametrize(
    ("route", "content", "headers", "status", "reason"),
    [
        ("/v1/batch", b'{"batch": [', {}, 400, "invalid_json"),
        ("/v1/batch", b"\xff\xfe", {}, 400, "invalid_utf8"),
        ("/v1/batch", b'{"batch": {}}', {}, 400, "invalid_batch"),
        ("/v1/track", b"[1]", {}, 400, "not_an_object"),
        ("/v1/track", b'{"userId": "u"}', {}, 400, "missing_field"),
        ("/v1/t", b'{"event": "x"}', {}, 400, "missing_identity"),
        ("/v1/p", b'{"type": "track", "userId": "u", "event": "x"}', {}, 400, "type_mismatch"),
        ("/v1/i", b'{"userId": "u", "timestamp": "tomorrow-ish"}', {}, 400, "invalid_timestamp"),
        (
            "/v1/track",
            b'{"userId": "u", "event": "x"}',
            {"content-encoding": "gzip"},
            400,
            "invalid_gzip",
        ),
        (
            "/v1/track",
            b'{"userId": "u", "event": "x"}',
            {"content-encoding": "br"},
            415,
            "unsupported_encoding",
        ),
        (
            "/v1/batch",
            json.dumps(
                {
                    "batch": [
                        {
                            "type": "track",
                            "userId": "u",
                            "event": "x",
                            "properties": {"p": "a" * 40_000},
                        }
                    ]
                }
            ).encode(),
            {},
            413,
            "event_too_large",
        ),
        (
            "/v1/batch",
            b'{"batch": [' + b'{"type":"page","userId":"u","name":"' + b"a" * 600_000 + b'"}]}',
            {},
            413,
            "body_too_large",
        ),
    ],
)
def test_malformed_requests_get_4xx_and_their_events_reach_the_dlq(
    http, read_topic, route, content, headers, status, reason
):
    r = http.post(
        route, content=content, headers={"content-type": "text/plain", **headers}, auth=AUTH
    )
    assert r.status_code == status, r.text
    assert r.json()["rejected"][0]["reason"] == reason
    (dead,) = _dlq_for(read_topic, r.headers["x-onramp-request-id"])
    d = dead["value"]
    assert d["reason"] == reason and d["origin"]["source"] == "test"
    assert "raw" in d or "rawText" in d or "rawBase64" in d


def test_mixed_batch_accepts_valid_and_dead_letters_invalid(http, read_topic):
    user = tag()
    r = http.post(
        "/v1/batch",
        json={
            "batch": [
                {"type": "track", "event": "ok", "userId": user, "messageId": user + "-1"},
                {"type": "track", "userId": user},
            ]
        },
        auth=AUTH,
    )
    assert r.status_code == 400
    assert r.json()["accepted"] == 1 and r.json()["rejected"][0]["field"] == "batch[1].event"
    assert read_topic("onramp.events").wait_for(lambda v: v["messageId"] == user + "-1", 1)
    (dead,) = _dlq_for(read_topic, r.headers["x-onramp-request-id"])
    assert dead["key"] == user.encode()


def test_gzip_json_and_text_plain_and_body_write_key(http, read_topic):
    user = tag()
    payload = json.dumps({"batch": [{"type": "track", "event": "gz", "userId": user}]}).encode()
    r = http.post(
        "/v1/b", content=gzip.compress(payload), headers={"content-encoding": "gzip"}, auth=AUTH
    )
    assert r.status_code == 200, r.text
    r = http.post(
        "/v1/t",
        content=json.dumps({"event": "plain", "userId": user, "writeKey": WRITE_KEY}),
        headers={"content-type": "text/plain"},
    )
    assert r.status_code == 200, r.text
    got = read_topic("onramp.events").wait_for(lambda v: v.get("userId") == user, 2)
    assert sorted(v["value"]["event"] for v in got) == ["gz", "plain"]


def test_unknown_or_missing_write_key_is_401(http):
    assert http.post("/v1/track", json={"event": "x", "userId": "u"}).status_code == 401
    assert (
        http.post("/v1/track", json={"event": "x", "userId": "u"}, auth=("wrong", "")).status_code
        == 401
    )
    assert (
        http.post("/v1/track", json={"event": "x", "userId": "u", "writeKey": "wrong"}).status_code
        == 401
    )


def test_cors_preflight_and_headers(http):
    origin = "https://app.example.com"
    pre = http.options(
        "/v1/batch",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == origin
    assert "POST" in pre.headers["access-control-allow-methods"]
    r = http.post(
        "/v1/track", json={"event": "x", "userId": "u"}, auth=AUTH, headers={"origin": origin}
    )
    assert r.headers["access-control-allow-origin"] == origin
    bad = http.options(
        "/v1/batch",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert bad.status_code == 403


def test_openapi_lists_every_status(http):
    spec = http.get("/openapi.json").json()
    for path in (
        "/v1/batch",
        "/v1/b",
        "/v1/track",
        "/v1/t",
        "/v1/identify",
        "/v1/i",
        "/v1/page",
        "/v1/p",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
    ):
        statuses = set(spec["paths"][path]["post"]["responses"])
        assert {"200", "400", "401", "413", "415", "503"} <= statuses, path
        assert "requestBody" in spec["paths"][path]["post"]
    assert "TrackCall" in spec["components"]["schemas"]


def test_healthz_and_metrics(http):
    assert http.get("/healthz").json()["status"] == "ok"
    http.post("/v1/track", content=b"nope", auth=AUTH)
    accepted = http.post("/v1/track", json={"userId": "m1", "event": "Clicked"}, auth=AUTH)
    assert accepted.status_code == 200, accepted.text
    text = http.get("/metrics").text
    # every series is labelled with the replica that counted it (telemetry.replicas)
    assert 'onramp_events_rejected_total{reason="invalid_json",replica="' in text
    assert "onramp_events_accepted_total{" in text
    assert "onramp_http_request_duration_seconds_bucket" in text


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    route=st.sampled_from(["/v1/batch", "/v1/track", "/v1/i", "/v1/p", "/v1/group", "/v1/alias"]),
    body=st.binary(max_size=300) | st.text(max_size=200).map(str.encode),
    encoding=st.sampled_from([None, "gzip", "identity", "deflate"]),
    auth=st.booleans(),
)
def test_no_request_shape_gets_a_500(collector, route, body, encoding, auth):
    headers = {"content-encoding": encoding} if encoding else {}
    r = httpx.post(
        collector.base_url + route,
        content=body,
        headers=headers,
        auth=AUTH if auth else None,
        timeout=30,
    )
    assert r.status_code < 500, r.text


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_is_4xx(http, method):
    assert 400 <= http.request(method, "/v1/batch").status_code < 500
