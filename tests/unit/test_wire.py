import datetime as dt

import jsonschema
import pytest

from validation.reasons import ReasonCode
from validation.wire import CALL_TYPES, WireError, json_schema, parse_call

VALID = {
    "track": {"type": "track", "event": "Signed Up", "userId": "u1", "properties": {"plan": "pro"}},
    "identify": {"type": "identify", "userId": "u1", "traits": {"role": "founder"}},
    "page": {"type": "page", "anonymousId": "a1", "name": "Welcome"},
    "screen": {"type": "screen", "anonymousId": "a1", "name": "Home"},
    "group": {"type": "group", "userId": "u1", "groupId": "acct-1", "traits": {"size": 10}},
    "alias": {"type": "alias", "userId": "u1", "previousId": "a1"},
}


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_call_type_parses(kind):
    call = parse_call(VALID[kind])
    assert call.type == kind
    assert isinstance(call, CALL_TYPES[kind])


@pytest.mark.parametrize("kind", sorted(VALID))
def test_json_schema_accepts_what_the_models_accept(kind):
    jsonschema.validate(VALID[kind], json_schema())


def test_json_schema_validates_a_batch_and_rejects_garbage():
    schema = json_schema()
    jsonschema.validate({"batch": [VALID["track"], VALID["page"]]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "track", "userId": "u1"}, schema)  # no event


def test_numeric_ids_become_strings_and_naive_times_are_utc():
    call = parse_call(
        {"type": "track", "event": "x", "userId": 42, "timestamp": "2026-03-01T10:00:00"}
    )
    assert call.userId == "42"
    assert call.timestamp == dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)


def test_unknown_fields_are_kept():
    call = parse_call({**VALID["track"], "channel": "server", "_metadata": {"x": 1}})
    dumped = call.model_dump()
    assert dumped["channel"] == "server" and dumped["_metadata"] == {"x": 1}


def test_onramp_context_is_read():
    call = parse_call(
        {**VALID["track"], "context": {"onramp": {"sessionId": "s1", "seq": 3, "stepId": "goals"}}}
    )
    assert (call.context.onramp.sessionId, call.context.onramp.seq, call.context.onramp.stepId) == (
        "s1",
        3,
        "goals",
    )


@pytest.mark.parametrize(
    ("raw", "route", "reason", "field"),
    [
        ([1, 2], None, ReasonCode.NOT_AN_OBJECT, None),
        ({"event": "x", "userId": "u"}, None, ReasonCode.MISSING_TYPE, "type"),
        ({"type": "click", "userId": "u"}, None, ReasonCode.UNKNOWN_TYPE, "type"),
        ({"type": 5, "userId": "u"}, None, ReasonCode.UNKNOWN_TYPE, "type"),
        ({"type": "page", "userId": "u"}, "track", ReasonCode.TYPE_MISMATCH, "type"),
        ({"type": "track", "event": "x"}, None, ReasonCode.MISSING_IDENTITY, "userId"),
        (
            {"type": "alias", "anonymousId": "a", "previousId": "p"},
            None,
            ReasonCode.MISSING_IDENTITY,
            "userId",
        ),
        ({"type": "track", "userId": "u"}, None, ReasonCode.MISSING_FIELD, "event"),
        ({"type": "track", "userId": "u", "event": ""}, None, ReasonCode.INVALID_FIELD, "event"),
        ({"type": "group", "userId": "u"}, None, ReasonCode.MISSING_FIELD, "groupId"),
        (
            {"type": "track", "userId": "u", "event": "x", "properties": [1]},
            None,
            ReasonCode.INVALID_FIELD,
            "properties",
        ),
        ({"type": "track", "userId": True, "event": "x"}, None, ReasonCode.INVALID_FIELD, "userId"),
        (
            {"type": "track", "userId": "u", "event": "x", "timestamp": "soon"},
            None,
            ReasonCode.INVALID_TIMESTAMP,
            "timestamp",
        ),
        (
            {"type": "track", "userId": "u", "event": "x", "sentAt": [1]},
            None,
            ReasonCode.INVALID_TIMESTAMP,
            "sentAt",
        ),
        (
            {"type": "track", "userId": "u", "event": "x", "context": {"onramp": {"seq": -1}}},
            None,
            ReasonCode.INVALID_ONRAMP_CONTEXT,
            "context.onramp.seq",
        ),
        (
            {"type": "track", "userId": "u", "event": "x", "context": {"onramp": {"seq": True}}},
            None,
            ReasonCode.INVALID_ONRAMP_CONTEXT,
            "context.onramp.seq",
        ),
    ],
)
def test_rejections_carry_reason_and_field(raw, route, reason, field):
    with pytest.raises(WireError) as info:
        parse_call(raw, route)
    assert info.value.reason is reason
    assert info.value.field == field
    assert info.value.message


def test_every_reason_code_has_a_4xx_status():
    for code in ReasonCode:
        assert 400 <= code.http_status < 500, code
