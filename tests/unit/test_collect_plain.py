"""The collector's plain path (:mod:`ray_app.collect.plain`) gives the answers of the pydantic
models, on plausible events and on hostile ones.

Every request is parsed twice, once as shipped and once with the plain path switched off, and
the two answers must be the same: the same records (as JSON objects), keys, message ids,
rejections and DLQ records. A test of the plain path alone would pass if it refused
everything; ``test_plain_events_take_the_plain_path`` pins that the events clients send do not
go to the models.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ray_app.collect.parse as parse_module
from ray_app.collect.body import Limits, checked_json, decode_body
from ray_app.collect.parse import ParsedRequest, iso
from ray_app.collect.plain import plain_call, plain_record
from ray_app.collect.rejection import RequestRejected
from tests.unit.test_parse_adversarial import encode, event_like, parse, small_values
from validation.wire import WireError, parse_call


def _answer(p: ParsedRequest) -> dict[str, Any]:
    return {
        "status": p.status,
        "events": [(k, orjson.loads(v)) for k, v in p.events],
        "ids": p.event_ids,
        "rejections": [r.public() for r in p.rejections],
        "dlq": [(k, orjson.loads(v)) for k, v in p.dlq],
    }


def _body(doc: Any) -> bytes:
    return encode(doc).encode("utf-8", "surrogatepass")


def both_ways(route: str, body: bytes, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The answer to ``body``, checked to be the models' answer too; returns it."""
    shipped = _answer(parse(route, body))
    with monkeypatch.context() as m:
        m.setattr(parse_module, "plain_call", lambda raw, route_type: None)
        models = _answer(parse(route, body))
    assert shipped == models
    return shipped


# -- plausible events: what SDKs send, with the variations the contract allows -----------------

ids = st.text(min_size=1, max_size=8) | st.integers(-(2**63), 2**63 - 1) | st.just("x" * 256)
instants = st.datetimes(min_value=dt.datetime(1969, 12, 25), max_value=dt.datetime(2201, 1, 5)).map(
    lambda t: t.replace(tzinfo=dt.UTC)
)
times = st.one_of(
    instants.map(lambda t: t.isoformat(timespec="milliseconds").replace("+00:00", "Z")),
    instants.map(lambda t: t.isoformat()),  # +00:00, any fraction or none
    instants.map(lambda t: t.replace(tzinfo=None).isoformat(timespec="seconds")),  # naive
    instants.map(lambda t: t.astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat()),
    instants.map(lambda t: t.isoformat(timespec="milliseconds").replace("+00:00", "z")),
    st.integers(0, 2**33),  # unix seconds, which the models read too
)
onramp = st.fixed_dictionaries(
    {},
    optional={
        "sessionId": ids | st.none(),
        "seq": st.integers(0, 2**40) | st.none(),
        "stepId": ids | st.none(),
        "extra": small_values,
    },
)
context = st.fixed_dictionaries(
    {},
    optional={
        "onramp": onramp | st.none(),
        "library": st.fixed_dictionaries({"name": st.just("analytics.js")}),
        "traits": st.dictionaries(st.text(max_size=4), small_values, max_size=3),
        "ip": st.sampled_from(["10.0.0.1", None]),
    },
)
objects = st.dictionaries(st.text(max_size=6), small_values, max_size=4)
valid_fields = st.fixed_dictionaries(
    {
        "event": st.text(min_size=1, max_size=4) | st.sampled_from(["Step Completed", "e" * 256]),
        "userId": ids,
    },
    optional={
        "anonymousId": ids | st.none(),
        "messageId": ids | st.none(),
        "timestamp": times | st.none(),
        "originalTimestamp": times | st.none(),
        "sentAt": times | st.none(),
        "context": context,
        "properties": objects | st.just({"stepId": "goals"}),
        "traits": objects,
        "name": st.text(max_size=4) | st.none(),
        "category": st.text(max_size=4) | st.none(),
        "integrations": objects | st.none(),
        "channel": st.sampled_from(["client", None]),
        "schema": st.just("theirs"),
        "stepId": st.sampled_from(["theirs", None]),
    },
)
# One field off at a time: a value of another type, out of bounds, or null where it may not be.
bad_id = st.sampled_from(["", "x" * 257, True, 1.5, [], {}])
bad_time = st.sampled_from(
    [
        "2026-02-30T00:00:00.000Z",
        "2026-11-01T24:00:00.000Z",
        "soon",
        "",
        1.5,
        True,
        "2026-11-01",
        "2026-11-01T10:00:00.1234567Z",
        "2026-11-01 10:00:00Z",
        "1969-12-31T23:59:59.999Z",
    ]
)
bad_onramp = st.sampled_from(
    [
        [],
        "s",
        {"seq": -1},
        {"seq": True},
        {"seq": 3.0},
        {"seq": "4"},
        {"sessionId": ""},
        {"stepId": 5.5},
    ]
)
bad_fields = st.one_of(
    st.tuples(st.sampled_from(["userId", "anonymousId", "messageId"]), bad_id),
    st.tuples(st.just("userId"), st.none()),  # no identity, unless an anonymousId
    st.tuples(st.sampled_from(["timestamp", "originalTimestamp", "sentAt"]), bad_time),
    st.tuples(
        st.just("context"),
        st.sampled_from([None, [], "c"]) | bad_onramp.map(lambda o: {"onramp": o}),
    ),
    st.tuples(
        st.sampled_from(["properties", "traits", "integrations"]), st.sampled_from([None, [], "p"])
    ),
    st.tuples(st.just("event"), st.sampled_from(["", "e" * 257, None, 7])),
    st.tuples(st.sampled_from(["name", "category"]), st.sampled_from(["n" * 257, 3])),
)
plausible = st.tuples(
    st.sampled_from(["track", "identify", "page", "screen"])
    | st.sampled_from(["group", "alias", None, 3]),
    valid_fields,
    st.none() | st.none() | bad_fields,
).map(
    lambda t: {**({} if t[0] is None else {"type": t[0]}), **t[1], **dict([t[2]] if t[2] else [])}
)
batch_envelope = st.fixed_dictionaries(
    {}, optional={"sentAt": times, "context": context, "writeKey": st.just("k1")}
)

examples = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@examples
@given(events=st.lists(plausible, min_size=1, max_size=5), env=batch_envelope)
def test_plausible_batches_get_the_models_answer(events, env, monkeypatch):
    both_ways("batch", _body({**env, "batch": events}), monkeypatch)


@examples
@given(event=plausible, route=st.sampled_from(["track", "identify", "page", "screen"]))
def test_plausible_single_calls_get_the_models_answer(event, route, monkeypatch):
    both_ways(route, _body(event), monkeypatch)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(events=st.lists(event_like | small_values, min_size=1, max_size=4))
def test_hostile_batches_get_the_models_answer(events, monkeypatch):
    both_ways("batch", _body({"batch": events}), monkeypatch)


@examples
@given(raw=plausible)
def test_a_plain_call_is_the_models_call(raw):
    """Whatever the plain path accepts, the models accept, with the same fields and record."""
    try:
        raw = decode_body(_body(raw), None, Limits())  # as the collector reads it
        checked_json(raw)
    except (RequestRejected, WireError):
        return  # refused before any call is read
    call = plain_call(raw, None)
    if call is None:
        return
    model = parse_call(raw, None)
    onramp = model.context.onramp
    assert call.user_key == model.user_key
    assert call.message_id == model.messageId
    assert call.timestamp == model.timestamp
    assert call.original_timestamp == model.originalTimestamp
    assert call.sent_at == model.sentAt
    assert (call.session_id, call.seq, call.step_id) == (
        (onramp.sessionId, onramp.seq, onramp.stepId) if onramp else (None, None, None)
    )
    original = model.timestamp or model.originalTimestamp
    if call.client_time_text is not None:
        assert original is not None and call.client_time_text == iso(original)
    ours = {"schema": "onramp.event/1", "seq": 1}
    expected = {**model.model_dump(mode="json", exclude_none=True), **ours}
    for field in ("timestamp", "originalTimestamp"):
        expected.pop(field, None)  # written by the collector in its own fields
    assert orjson.loads(plain_record(call, ours)) == expected


SDK_EVENTS = [
    # analytics.js 2.x, in a batch with the batch's sentAt
    {
        "type": "track",
        "event": "Step Completed",
        "anonymousId": "a1b2",
        "userId": "u-1",
        "messageId": "ajs-next-1733400000000-3f1c",
        "timestamp": "2026-12-05T10:00:00.123Z",
        "properties": {"stepId": "goals", "durationMs": 1234},
        "context": {
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "onramp": {"sessionId": "s-1", "seq": 4},
            "page": {"path": "/onboarding", "url": "https://app.example.com/onboarding"},
        },
        "integrations": {},
        "sentAt": "2026-12-05T10:00:00.200Z",
        "_metadata": {"bundled": ["Segment.io"], "unbundled": []},
    },
    # RudderStack's identify: traits in context.traits too
    {
        "type": "identify",
        "userId": 42,
        "traits": {"role": "admin", "companySize": 120},
        "context": {"traits": {"role": "admin"}, "onramp": {"stepId": "welcome"}},
        "originalTimestamp": "2026-12-05T10:00:01.000Z",
        "channel": "web",
    },
    {"type": "page", "anonymousId": "a1", "name": "Pricing", "properties": {"path": "/p"}},
    {"type": "screen", "userId": "u", "name": None, "timestamp": "2026-12-05T10:00:00Z"},
]


@pytest.mark.parametrize("event", SDK_EVENTS, ids=lambda e: e["type"])
def test_plain_events_take_the_plain_path(event, monkeypatch):
    assert plain_call(event, None) is not None
    answer = both_ways("batch", json.dumps({"batch": [event]}).encode(), monkeypatch)
    assert answer["status"] == 200 and len(answer["events"]) == 1


@pytest.mark.parametrize(
    "event",
    [
        {"type": "group", "userId": "u", "groupId": "g"},  # not a plain type
        {"type": "track", "userId": "u"},  # no event name
        {"type": "track", "event": "e"},  # no identity
        {"type": "track", "event": "e", "userId": ""},  # an empty id
        {"type": "track", "event": "e", "userId": "u", "context": None},
        {"type": "track", "event": "e", "userId": "u", "context": {"onramp": {"seq": -1}}},
        {"type": "track", "event": "e", "userId": "u", "timestamp": "1969-12-31T23:59:59Z"},
        {"type": "page", "userId": "u", "name": "n" * 257},
    ],
)
def test_events_the_models_must_judge_are_left_to_them(event, monkeypatch):
    assert plain_call(event, None) is None
    both_ways("batch", json.dumps({"batch": [event]}).encode(), monkeypatch)


@pytest.mark.parametrize("plain", [True, False])
def test_an_extra_properties_field_that_is_not_an_object_is_kept(plain, monkeypatch):
    """``properties`` is an extra field of ``identify``: any JSON value. The collector looks for
    ``properties.stepId`` only in an object (it used to refuse this event as unprocessable)."""
    if not plain:
        monkeypatch.setattr(parse_module, "plain_call", lambda raw, route_type: None)
    body = json.dumps({"userId": "u", "properties": [1], "traits": {"role": "cto"}}).encode()
    p = parse("identify", body)
    assert (p.status, p.rejections) == (200, [])
    assert orjson.loads(p.events[0][1])["properties"] == [1]


_CANONICAL_CHARS = st.sampled_from("0123456789-:.TZ+ x\u0661")  # an Arabic-Indic digit too


@given(
    when=st.datetimes(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31))
    | st.builds(lambda chars: "".join(chars), st.lists(_CANONICAL_CHARS, min_size=24, max_size=24)),
)
def test_a_canonical_time_is_the_instant_the_models_read(when):
    """The plain path reads a time written as ``toISOString`` writes it with the standard
    library's parser: whatever it accepts the models accept as the same instant (what it
    refuses goes to the models, which accept it or say why not)."""
    from pydantic import TypeAdapter, ValidationError

    from ray_app.collect.plain import _time

    text = when.isoformat(timespec="milliseconds") + "Z" if isinstance(when, dt.datetime) else when
    ours = _time(text)
    if ours is None:
        return
    try:
        theirs = TypeAdapter(dt.datetime).validate_python(text)
    except ValidationError:
        pytest.fail(f"the plain path read {text!r}, which the models refuse")
    assert ours == theirs and ours.utcoffset() == dt.timedelta(0)
