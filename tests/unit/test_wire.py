import datetime as dt

import jsonschema
import pytest

from validation.reasons import ReasonCode
from validation.wire import (
    CALL_TYPES,
    MAX_NESTING_DEPTH,
    UnrepresentableNumber,
    WireError,
    check_json_value,
    json_schema,
    nesting_depth_exceeds,
    parse_call,
)

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
    nested = parse_call(
        {"type": "track", "event": "x", "anonymousId": 7, "context": {"onramp": {"sessionId": 9}}}
    )
    assert (nested.anonymousId, nested.context.onramp.sessionId) == ("7", "9")


@pytest.mark.parametrize("bad", ["", "x" * 257, 1.5, False, [], {}, 2**63, -(2**63) - 1, 10**300])
def test_an_id_that_is_not_text_or_an_integer_is_refused_with_what_it_must_be(bad):
    with pytest.raises(WireError) as err:
        parse_call({"type": "track", "event": "x", "userId": bad})
    assert err.value.reason is ReasonCode.INVALID_FIELD and err.value.field == "userId"
    assert "non-empty string of at most 256 characters, or a 64-bit integer" in err.value.message


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


@pytest.mark.parametrize(
    ("value", "reason", "field"),
    [
        ({"a": [[[1]]]}, None, None),
        ({"a": {"b": [1, {"c": 2**63}]}}, ReasonCode.NUMBER_OUT_OF_RANGE, "a.b[1].c"),
        ({"a": -(2**63) - 1}, ReasonCode.NUMBER_OUT_OF_RANGE, "a"),
        ({"a": float("inf")}, ReasonCode.NUMBER_OUT_OF_RANGE, "a"),
        ({"a": UnrepresentableNumber("9" * 5000)}, ReasonCode.NUMBER_OUT_OF_RANGE, "a"),
        ({"a": ["ok", "\ud800"]}, ReasonCode.INVALID_STRING, "a[1]"),
        ({"\udfff": 1}, ReasonCode.INVALID_STRING, "\\udfff"),
        ({"a": object()}, ReasonCode.INVALID_FIELD, "a"),
    ],
)
def test_check_json_value_names_the_first_value_out_of_bounds(value, reason, field):
    if reason is None:
        check_json_value(value)
        return
    with pytest.raises(WireError) as info:
        check_json_value(value)
    assert (info.value.reason, info.value.field) == (reason, field)


def test_nesting_is_checked_iteratively_at_any_depth():
    deep: list = []
    for _ in range(100_000):  # far past the interpreter's recursion limit
        deep = [deep]
    assert nesting_depth_exceeds(deep)
    with pytest.raises(WireError) as info:
        check_json_value({"p": deep})
    assert info.value.reason is ReasonCode.NESTING_TOO_DEEP
    assert info.value.field.startswith("p[0][0]") and len(info.value.field) <= 256
    flat: list = [1]
    for _ in range(MAX_NESTING_DEPTH - 1):
        flat = [flat]
    assert not nesting_depth_exceeds(flat)
    assert nesting_depth_exceeds([flat])


@pytest.mark.parametrize(
    ("stamp", "ok"),
    [
        ("1970-01-01T00:00:00Z", True),
        ("2200-12-31T23:59:59+14:00", True),
        ("1969-12-31T23:59:59Z", False),
        ("0001-01-01T00:00:00+05:00", False),
        ("9999-12-31T23:59:59Z", False),
    ],
)
def test_times_must_lie_in_1970_to_2200(stamp, ok):
    raw = {"type": "track", "event": "x", "userId": "u", "sentAt": stamp}
    if ok:
        assert parse_call(raw).sentAt.year in (1970, 2200)
        return
    with pytest.raises(WireError) as info:
        parse_call(raw)
    assert (info.value.reason, info.value.field) == (ReasonCode.INVALID_TIMESTAMP, "sentAt")


def test_messages_quote_client_values_briefly():
    with pytest.raises(WireError) as info:
        parse_call({"type": "x" * 10_000, "userId": "u"})
    assert len(info.value.message) < 200
    with pytest.raises(WireError) as info:
        parse_call({"type": 10**5000, "userId": "u"})  # repr() of it would be refused
    assert "integer of" in info.value.message
