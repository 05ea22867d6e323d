"""``/v1/decide``'s request parsing never raises: any body is a request or a 4xx naming the field."""

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_app.decide import MAX_DECIDE_BYTES, DecideRefused, DecideRequest, parse_decide

TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
    | st.sampled_from(["\ud800", "next_step", "", "x" * 600])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=30,
)
FIELDS = st.sampled_from(
    ["userId", "user_id", "anonymousId", "anonymous_id", "slot", "context", "candidates",
     "decisionId", "decision_id", "extra"]
)  # fmt: skip
BODIES = st.dictionaries(FIELDS, JSON, max_size=6) | JSON


def _encode(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _check(result: object) -> None:
    if isinstance(result, DecideRefused):
        assert 400 <= result.status < 500
        orjson.dumps(result.body())  # the answer itself always encodes
    else:
        assert isinstance(result, DecideRequest)
        assert result.user_key


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(BODIES)
def test_any_json_body_is_a_request_or_a_4xx(value):
    _check(parse_decide(_encode(value)))
    if isinstance(value, dict):
        _check(parse_decide(value))  # the query-string form hands over a mapping


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=400))
def test_any_bytes_are_a_request_or_a_4xx(raw):
    _check(parse_decide(raw))


def test_the_measured_cases_are_4xx():
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    cases = [
        b'{"userId": "u", "slot": "next_step", "context": ' + deep + b"}",
        b"[" * 3000 + b"]" * 3000,
        b'{"userId": "\\ud800", "slot": "next_step"}',
        b'{"userId": "u", "slot": "next_step", "context": {"n": ' + b"9" * 5000 + b"}}",
        b"x" * (MAX_DECIDE_BYTES + 1),
        b'{"slot": "next_step"}',
        b'{"userId": "u", "slot": "next_step", "context": {"a": {"b": {"c": 1}}}}',
    ]
    statuses = [parse_decide(c).status for c in cases]  # type: ignore[union-attr]
    assert statuses == [400, 400, 400, 400, 413, 400, 400]
    refused = parse_decide(cases[-1])
    assert isinstance(refused, DecideRefused) and refused.field == "context.a"


def test_a_request_that_names_no_user_is_refused_on_user_id():
    """No ``userId`` and no ``anonymousId``: the refusal names the field, in the body's own
    spelling (it named none)."""
    refused = parse_decide(b'{"slot": "next_step"}')
    assert isinstance(refused, DecideRefused) and refused.field == "userId"
    assert "userId or anonymousId" in refused.message


def test_empty_lists_and_long_field_names_count_against_the_context_bounds():
    """5,500 nested empty lists counted as no value at all (each decision record 60 KB), and a
    field name had no bound (60,000 characters went into every record)."""
    empty = {"a": {f"k{i}": [] for i in range(5500)}}
    refused = parse_decide(orjson.dumps({"userId": "u", "slot": "next_step", "context": empty}))
    assert isinstance(refused, DecideRefused) and "5500 values in all" in refused.message
    for context in ({"x" * 200: 1}, {"page": {"y" * 200: 1}}):
        body = orjson.dumps({"userId": "u", "slot": "next_step", "context": context})
        refused = parse_decide(body)
        assert isinstance(refused, DecideRefused) and refused.status == 400
        assert "a field name of 200 characters; at most 128" in refused.message
    fine = {"device": "web", "tags": [], "utm": {}, "x" * 128: 1}
    assert isinstance(
        parse_decide(orjson.dumps({"userId": "u", "slot": "next_step", "context": fine})),
        DecideRequest,
    )


def test_a_context_is_bounded_in_values_and_text_not_only_in_top_level_fields():
    # 4,000 numbers under one field fitted the 64 KB body and 64 fields: about 1,000 times a
    # normal request's hashing, on the event loop every request of the replica shares
    wide = {"userId": "u", "slot": "next_step", "context": {"a": {f"k{i}": i for i in range(4000)}}}
    refused = parse_decide(orjson.dumps(wide))
    assert isinstance(refused, DecideRefused) and refused.status == 400
    assert refused.field == "context" and "4000 values" in refused.message
    assert not refused.message.startswith("Value error")
    long = {"userId": "u", "slot": "next_step", "context": {"referrer": "x" * 2_000}}
    refused = parse_decide(orjson.dumps(long))
    assert isinstance(refused, DecideRefused) and "referrer" in refused.message
    fine = {
        "userId": "u",
        "slot": "next_step",
        "context": {"device": "web", "tags": ["a"] * 60, "utm": {f"k{i}": i for i in range(60)}},
    }
    assert isinstance(parse_decide(orjson.dumps(fine)), DecideRequest)


def test_repeated_candidates_in_a_query_string_are_all_kept():
    # ?candidates=goals&candidates=integrations (URLSearchParams.append, requests) kept the last
    from ray_app.decide.request import decide_query

    items = [("user_id", "u1"), ("slot", "next_step")]
    items += [("candidates", "goals"), ("candidates", "integrations")]
    req = parse_decide(decide_query(items))
    assert isinstance(req, DecideRequest) and req.candidates == ["goals", "integrations"]
