import base64
import datetime as dt
import gzip
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.collect.parse import Limits, correct_skew, parse_request, write_key_from_header
from validation.reasons import ReasonCode

KEYS = {"demo": "k1", "web": "k2", "site": "k3-secret-write-key"}
NOW = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


DEFAULT_LIMITS = Limits()


def req(route, payload, *, auth="k1", encoding=None, limits=DEFAULT_LIMITS, raw=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    return parse_request(
        route,
        body,
        content_encoding=encoding,
        authorization=basic(auth) if auth else None,
        write_keys=KEYS,
        received_at=NOW,
        limits=limits,
    )


def events(parsed):
    return [json.loads(v) for _, v in parsed.events]


def dlq(parsed):
    return [json.loads(v) for _, v in parsed.dlq]


def t(s):
    return dt.datetime.fromisoformat(s)


# -- skew correction ------------------------------------------------------------------------


def test_skew_correction_cancels_the_device_clock_offset():
    # Device clock is 1 hour behind: event at device 09:00:00, sent at device 09:00:05.
    got = correct_skew(
        t("2026-05-01T12:00:00+00:00"),
        t("2026-05-01T09:00:05+00:00"),
        t("2026-05-01T09:00:00+00:00"),
    )
    assert got == t("2026-05-01T11:59:55+00:00")


def test_skew_without_sent_at_trusts_the_timestamp_and_without_both_uses_receipt():
    assert correct_skew(NOW, None, t("2026-01-01T00:00:00+00:00")) == t("2026-01-01T00:00:00+00:00")
    assert correct_skew(NOW, None, None) == NOW


def test_batch_sent_at_applies_to_events_and_record_keeps_the_original_time():
    p = req(
        "batch",
        {
            "sentAt": "2026-05-01T09:00:10Z",
            "batch": [
                {"type": "track", "event": "x", "userId": "u1", "timestamp": "2026-05-01T09:00:00Z"}
            ],
        },
    )
    (e,) = events(p)
    assert e["timestamp"] == "2026-05-01T11:59:50.000Z"
    assert e["originalTimestamp"] == "2026-05-01T09:00:00.000Z"
    assert e["receivedAt"] == "2026-05-01T12:00:00.000Z"


def test_record_times_without_sent_at_or_without_a_client_time():
    # the client's time alone is the event time (in +02:00 here: written in UTC); none at all is
    # the receipt, and no originalTimestamp is written
    only, none = events(
        req(
            "batch",
            {
                "batch": [
                    {"type": "track", "event": "x", "userId": "u1",
                     "originalTimestamp": "2026-05-01T11:00:00.25+02:00"},
                    {"type": "track", "event": "x", "userId": "u2"},
                ]
            },
        )
    )  # fmt: skip
    assert only["timestamp"] == only["originalTimestamp"] == "2026-05-01T09:00:00.250Z"
    assert none["timestamp"] == none["receivedAt"] == "2026-05-01T12:00:00.000Z"
    assert "originalTimestamp" not in none


# -- normalization --------------------------------------------------------------------------


def test_track_is_normalized_with_key_and_onramp_fields():
    p = req(
        "track",
        {
            "event": "Step Completed",
            "userId": "u1",
            "anonymousId": "a1",
            "messageId": "m-1",
            "properties": {"stepId": "goals", "durationMs": 1200},
            "context": {"onramp": {"sessionId": "s1", "seq": 4}},
        },
    )
    assert p.status == 200 and not p.rejections
    ((key, _),) = p.events
    (e,) = events(p)
    assert key == b"u1"
    assert e["type"] == "track" and e["messageId"] == "m-1" and e["source"] == "demo"
    assert (e["sessionId"], e["seq"], e["stepId"], e["userKey"]) == ("s1", 4, "goals", "u1")
    assert e["properties"] == {"stepId": "goals", "durationMs": 1200}


def test_key_falls_back_to_anonymous_id():
    p = req("page", {"anonymousId": "anon-9", "name": "Welcome"})
    assert p.events[0][0] == b"anon-9"


def test_missing_message_id_is_derived_deterministically():
    a = events(req("track", {"event": "x", "userId": "u"}))[0]["messageId"]
    b = events(req("track", {"event": "x", "userId": "u"}))[0]["messageId"]
    c = events(req("track", {"event": "y", "userId": "u"}))[0]["messageId"]
    assert a == b != c and a.startswith("onramp-")


def test_write_key_in_the_body_authenticates_and_is_not_stored():
    p = req("track", {"event": "x", "userId": "u", "writeKey": "k2"}, auth=None)
    assert p.status == 200 and p.source == "web"
    assert "writeKey" not in events(p)[0]


# -- auth -----------------------------------------------------------------------------------


def test_auth_failures_are_401_and_write_nothing():
    for p, reason in [
        (req("track", {"event": "x", "userId": "u"}, auth=None), ReasonCode.AUTH_MISSING),
        (req("track", {"event": "x", "userId": "u"}, auth="nope"), ReasonCode.AUTH_INVALID),
        (
            req("track", {"event": "x", "userId": "u", "writeKey": "nope"}, auth=None),
            ReasonCode.AUTH_INVALID,
        ),
        (req("track", None, auth=None, raw=b"{{{"), ReasonCode.INVALID_JSON),
    ]:
        assert p.rejections[0].reason is reason
        assert not p.events and not p.dlq


def test_basic_header_parsing():
    assert write_key_from_header(basic("abc")) == "abc"
    assert write_key_from_header("Bearer abc") is None
    assert write_key_from_header("Basic !!!") is None
    assert write_key_from_header(None) is None


# -- request-level rejections land in the DLQ with the raw body -----------------------------


def test_invalid_json_goes_to_dlq_with_raw_text():
    p = req("batch", None, raw=b'{"batch": [')
    assert p.status == 400 and p.rejections[0].reason is ReasonCode.INVALID_JSON
    (d,) = dlq(p)
    assert d["reason"] == "invalid_json" and d["rawText"] == '{"batch": ['
    assert d["origin"]["route"] == "/v1/batch" and d["origin"]["source"] == "demo"


def test_non_utf8_body_is_kept_as_base64():
    p = req("track", None, raw=b"\xff\xfe\x00")
    assert p.rejections[0].reason is ReasonCode.INVALID_UTF8
    assert base64.b64decode(dlq(p)[0]["rawBase64"]) == b"\xff\xfe\x00"


def test_gzip_bodies_are_decoded_and_bad_gzip_rejected():
    body = gzip.compress(json.dumps({"event": "x", "userId": "u"}).encode())
    assert req("track", None, raw=body, encoding="gzip").status == 200
    bad = req("track", None, raw=b"not gzip", encoding="gzip")
    assert bad.rejections[0].reason is ReasonCode.INVALID_GZIP and bad.status == 400
    truncated = req("track", None, raw=body[:-8], encoding="gzip")
    assert truncated.rejections[0].reason is ReasonCode.INVALID_GZIP


def test_every_gzip_member_is_read_and_bytes_after_the_stream_are_refused():
    """A body of concatenated gzip members is all of them (as ``gzip -d`` reads it): the events
    of the second member are not dropped. Bytes after the stream that start no member are
    refused by name, as is a total over the limit across members."""
    first = b'{"batch": [{"type": "track", "event": "a", "userId": "u", "messageId": "m1"}, '
    second = b'{"type": "track", "event": "b", "userId": "u", "messageId": "m2"}]}'
    p = req("batch", None, raw=gzip.compress(first) + gzip.compress(second), encoding="gzip")
    assert p.status == 200 and p.event_ids == ["m1", "m2"], p.rejections
    whole = gzip.compress(first + second)
    for tail in (b"\x00garbage", b"\x00"):
        bad = req("batch", None, raw=whole + tail, encoding="gzip")
        assert bad.status == 400 and bad.rejections[0].reason is ReasonCode.INVALID_GZIP
        assert "after the end of the gzip stream" in bad.rejections[0].message
    # a second member cut short is a truncated stream, not a shorter body
    cut = req("batch", None, raw=whole + gzip.compress(b" ")[:-8], encoding="gzip")
    assert cut.status == 400 and cut.rejections[0].reason is ReasonCode.INVALID_GZIP
    limits = Limits(max_event_bytes=1024, max_request_bytes=2048)
    members = b"".join(gzip.compress(b" " * 1500) for _ in range(2)) + gzip.compress(first)
    over = req("batch", None, raw=members, encoding="gzip", limits=limits)
    assert over.status == 413 and over.rejections[0].reason is ReasonCode.BODY_TOO_LARGE
    # thousands of tiny members would cost a decompressor each: refused past 64
    many = b"".join(gzip.compress(b" ") for _ in range(65)) + gzip.compress(first + second)
    refused = req("batch", None, raw=many, encoding="gzip")
    assert refused.status == 400 and "more than 64 gzip members" in refused.rejections[0].message


def test_unsupported_encoding_is_415():
    p = req("track", {"event": "x", "userId": "u"}, encoding="br")
    assert p.status == 415 and p.rejections[0].reason is ReasonCode.UNSUPPORTED_ENCODING


def test_request_size_limit_is_413_also_after_decompression():
    limits = Limits(max_event_bytes=1024, max_request_bytes=2048)
    big = json.dumps({"event": "x", "userId": "u", "properties": {"p": "a" * 5000}}).encode()
    p = req("track", None, raw=big, limits=limits)
    assert p.status == 413 and p.rejections[0].reason is ReasonCode.BODY_TOO_LARGE
    d = dlq(p)[0]
    assert d["rawSize"] == len(big)
    bomb = gzip.compress(b'{"batch":[' + b" " * 100_000 + b"]}")
    assert len(bomb) < 2048
    p = req("batch", None, raw=bomb, encoding="gzip", limits=limits)
    assert p.status == 413 and p.rejections[0].reason is ReasonCode.BODY_TOO_LARGE


def test_event_size_limit_rejects_one_event_and_keeps_the_rest():
    limits = Limits(max_event_bytes=300)
    p = req(
        "batch",
        {
            "batch": [
                {"type": "track", "event": "x", "userId": "u"},
                {"type": "track", "event": "x", "userId": "u", "properties": {"p": "a" * 400}},
            ]
        },
        limits=limits,
    )
    assert p.status == 413 and len(p.events) == 1
    assert p.rejections[0].reason is ReasonCode.EVENT_TOO_LARGE and p.rejections[0].index == 1


def test_batch_shape_and_count_limits():
    assert req("batch", {"batch": []}).rejections[0].reason is ReasonCode.INVALID_BATCH
    assert req("batch", {"batch": {"a": 1}}).rejections[0].reason is ReasonCode.INVALID_BATCH
    assert req("batch", [1, 2]).rejections[0].reason is ReasonCode.NOT_AN_OBJECT
    many = req(
        "batch", {"batch": [{"type": "page", "userId": "u"}] * 3}, limits=Limits(max_batch_events=2)
    )
    assert many.status == 413 and many.rejections[0].reason is ReasonCode.TOO_MANY_EVENTS


def test_a_mixed_batch_accepts_the_good_and_dead_letters_the_bad():
    p = req(
        "batch",
        {
            "batch": [
                {"type": "track", "event": "ok", "userId": "u1"},
                {"type": "track", "userId": "u2", "messageId": "bad-1"},
                "not an event",
                {"type": "identify", "userId": "u3", "traits": {}},
            ]
        },
    )
    assert p.status == 400
    assert [json.loads(v)["userId"] for _, v in p.events] == ["u1", "u3"]
    assert [(r.reason, r.index, r.field) for r in p.rejections] == [
        (ReasonCode.MISSING_FIELD, 1, "batch[1].event"),
        (ReasonCode.NOT_AN_OBJECT, 2, "batch[2]"),
    ]
    d = dlq(p)
    assert d[0]["raw"] == {"type": "track", "userId": "u2", "messageId": "bad-1"}
    assert d[0]["messageId"] == "bad-1" and d[0]["origin"]["index"] == 1
    assert p.dlq[0][0] == b"u2"  # keyed like the user's events
    assert d[1]["raw"] == "not an event"


def test_values_no_consumer_can_read_are_refused_with_the_field_named():
    # The stream decodes with orjson, which reads neither a lone surrogate nor an int past
    # 64 bits: such an event is refused at the edge, with the field, rather than downstream.
    for raw, reason, where in [
        (
            b'{"event": "x", "userId": "u", "properties": {"big": 100000000000000000000000000001}}',
            ReasonCode.NUMBER_OUT_OF_RANGE,
            "properties.big",
        ),
        (
            b'{"event": "x", "userId": "u", "properties": {"s": "\\ud800"}}',
            ReasonCode.INVALID_STRING,
            "properties.s",
        ),
    ]:
        p = req("track", None, raw=raw)
        assert p.status == 400 and not p.events
        assert (p.rejections[0].reason, p.rejections[0].field) == (reason, where)
        (d,) = dlq(p)
        assert d["reason"] == reason.value and d["raw"]["event"] == "x"


# -- no input makes the parser raise --------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "x"])
        | json_values,
        "event": json_values,
        "userId": json_values,
        "anonymousId": json_values,
        "timestamp": st.sampled_from(["2026-01-01T00:00:00Z", "bad", "2026-13-01"]) | json_values,
        "sentAt": json_values,
        "context": st.fixed_dictionaries({}, optional={"onramp": json_values}) | json_values,
        "properties": json_values,
        "traits": json_values,
        "groupId": json_values,
        "previousId": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    route=st.sampled_from(["batch", "track", "identify", "page", "screen", "group", "alias"]),
    body=st.binary(max_size=200),
)
def test_arbitrary_bytes_never_raise(route, body):
    p = req(route, None, raw=body)
    assert p.status in (200, 400, 401, 413, 415)


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(event_like | json_values, min_size=1, max_size=5))
def test_arbitrary_events_never_raise_and_every_event_is_accounted_for(batch):
    p = req("batch", {"batch": batch})
    assert len(p.events) + len([r for r in p.rejections if r.index is not None]) == len(batch)
    assert len(p.dlq) == len(p.rejections)
    for _, v in p.events:
        json.loads(v)


def test_a_batch_context_that_would_expand_past_the_limit_refuses_the_request_before_any_work():
    import datetime as _dt
    import json as _json
    import time as _time

    from ray_app.collect.parse import Limits as _Limits
    from ray_app.collect.parse import parse_request as _parse

    events = [{"type": "track", "userId": f"u{i}", "event": "E"} for i in range(2300)]
    body = _json.dumps(
        {"writeKey": "k", "batch": events, "context": {f"k{i}": "v" * 20 for i in range(1000)}}
    ).encode()
    started = _time.perf_counter()
    parsed = _parse(
        "batch",
        body,
        content_encoding=None,
        authorization=None,
        write_keys={"w": "k"},
        received_at=_dt.datetime.now(_dt.UTC),
    )
    assert _time.perf_counter() - started < 0.1  # refused up front, not after 60 MB of records
    assert parsed.status == 413 and not parsed.events
    (rej,) = parsed.rejections
    assert (rej.reason.value, rej.field) == ("body_too_large", "context")
    # the same context on a small batch is fine: the bound is on the expansion
    small = _json.dumps(
        {"writeKey": "k", "batch": events[:100], "context": {f"k{i}": "v" for i in range(100)}}
    ).encode()
    ok = _parse(
        "batch",
        small,
        content_encoding=None,
        authorization=None,
        write_keys={"w": "k"},
        received_at=_dt.datetime.now(_dt.UTC),
        limits=_Limits(),
    )
    assert ok.status == 200 and len(ok.events) == 100


def test_a_top_level_onboarding_field_is_taken_only_when_it_says_what_the_context_says():
    """``sessionId``, ``seq`` and ``stepId`` at the top of the record are the stream's reading of
    the onboarding context: a client's own top-level value that differs is refused by name
    (the stream used to refuse it after the collector's 200), one that agrees is kept."""
    base = {"event": "e", "userId": "u"}
    for extra, field in (
        ({"seq": "abc"}, "seq"),
        ({"seq": -1}, "seq"),
        ({"sessionId": ""}, "sessionId"),
        ({"sessionId": {"a": 1}}, "sessionId"),
        ({"stepId": 7}, "stepId"),
        ({"sessionId": "s2", "context": {"onramp": {"sessionId": "s1"}}}, "sessionId"),
    ):
        p = req("track", {**base, **extra})
        assert p.status == 400, extra
        assert [(r.reason, r.field) for r in p.rejections] == [
            (ReasonCode.INVALID_ONRAMP_CONTEXT, field)
        ], extra
        assert f"context.onramp.{field}" in p.rejections[0].message
        assert len(p.dlq) == 1  # refused, not lost
    agreeing = {"seq": 3, "sessionId": "s1", "context": {"onramp": {"sessionId": "s1", "seq": 3}}}
    p = req("track", {**base, **agreeing, "stepId": "role", "properties": {"stepId": "role"}})
    assert p.status == 200, p.rejections
    record = json.loads(p.events[0][1])
    assert (record["sessionId"], record["seq"], record["stepId"]) == ("s1", 3, "role")


def test_an_events_own_write_key_is_not_written_to_the_topic():
    """A batch event's ``writeKey`` (a secret) is left out of its record and of its DLQ record,
    as a single call's body key is."""
    ok = {"type": "track", "event": "e", "userId": "u", "writeKey": "k1"}
    bad = {"type": "track", "userId": "u", "writeKey": "k1"}  # no event name: refused
    p = req("batch", {"batch": [ok, bad]})
    assert len(p.events) == 1 and len(p.dlq) == 1
    assert "writeKey" not in json.loads(p.events[0][1])
    assert b"k1" not in p.dlq[0][1]
    single = req("track", {"event": "e", "userId": "u", "writeKey": "k1"})
    assert "writeKey" not in json.loads(single.events[0][1])


def test_a_refused_batchs_dlq_record_holds_no_write_key():
    """A request refused whole (not a batch, too many events, a context that is no object, a
    body that is no JSON) went to the DLQ as its raw body, the body's writeKey in it (in a gzip
    body's compressed bytes too), where every refused event's DLQ record leaves it out."""
    secret = "k3-secret-write-key"
    event = {"type": "track", "event": "e", "userId": "u"}
    cut = b'{"writeKey": "' + secret.encode() + b'", "batch": [1,'  # no JSON: header auth
    cases = [
        req("batch", {"writeKey": secret, "batch": "nope"}, auth=None),
        req("batch", {"writeKey": secret, "batch": [event] * 3}, auth=None,
            limits=Limits(max_batch_events=2)),
        req("batch", {"writeKey": secret, "batch": [event], "context": [1]}, auth=None),
        req("batch", None, raw=cut),
        req("batch", None, encoding="gzip", raw=gzip.compress(cut)),
    ]  # fmt: skip
    for p in cases:
        assert p.status >= 400 and len(p.dlq) == 1, p.rejections
        assert secret.encode() not in p.dlq[0][1]
    text = json.loads(cases[3].dlq[0][1])["rawText"]
    assert text.startswith('{"writeKey":"(removed)"') and '"batch": [1,' in text
    gz = json.loads(cases[4].dlq[0][1])
    assert "rawBase64" not in gz and gz["rawText"].startswith('{"writeKey":"(removed)"')
    assert json.loads(cases[0].dlq[0][1])["raw"] == {"batch": "nope"}  # the rest as sent


def test_a_batch_envelope_is_read_alike_whatever_its_events_say():
    """An event's ``"sentAt": null`` is no sentAt: it takes the batch's, as an event without the
    key does (the skew correction was skipped for it); a batch context that is not an object
    is refused by name (it was ignored)."""
    event = {"type": "track", "event": "e", "userId": "u", "timestamp": "2026-05-01T11:00:00Z"}
    sent = "2026-05-01T11:00:10Z"  # the device clock an hour behind the receipt (12:00:00)
    absent = req("batch", {"batch": [event], "sentAt": sent})
    null = req("batch", {"batch": [{**event, "sentAt": None}], "sentAt": sent})
    times = [json.loads(p.events[0][1])["timestamp"] for p in (absent, null)]
    assert times[0] == times[1] == "2026-05-01T11:59:50.000Z"
    for context in ("garbage", [1, 2], 3):
        p = req("batch", {"batch": [event], "context": context})
        assert p.status == 400 and [(r.reason, r.field) for r in p.rejections] == [
            (ReasonCode.INVALID_FIELD, "context")
        ]


def test_an_authorization_header_that_holds_no_write_key_is_named():
    """A malformed ``Authorization`` (another scheme, bad base64) with no body key is refused
    as ``auth_invalid`` on that header, not as a missing write key; a body key still counts."""
    for header in ("Bearer k1", "Basic =azE6", "Basic"):
        p = parse_request(
            "track", json.dumps({"event": "e", "userId": "u"}).encode(), content_encoding=None,
            authorization=header, write_keys=KEYS, received_at=NOW,
        )  # fmt: skip
        assert p.status == 401, header
        assert [(r.reason, r.field) for r in p.rejections] == [
            (ReasonCode.AUTH_INVALID, "Authorization")
        ], header
    with_body_key = parse_request(
        "track", json.dumps({"event": "e", "userId": "u", "writeKey": "k1"}).encode(),
        content_encoding=None, authorization="Bearer other", write_keys=KEYS, received_at=NOW,
    )  # fmt: skip
    assert with_body_key.status == 200
    missing = req("track", {"event": "e", "userId": "u"}, auth=None)
    assert [(r.reason, r.field) for r in missing.rejections] == [
        (ReasonCode.AUTH_MISSING, "writeKey")
    ]
