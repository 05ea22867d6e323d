"""Wire records (ray_app.records): each encodes and decodes to itself, each decoder names the field
at fault and why, and the writers (Decision.record, the collector, the stream) produce what the
decoders read."""

from __future__ import annotations

import base64
import math
import pickle
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.records import (
    DECISION_SCHEMA,
    DLQ_SCHEMA,
    LATE_SCHEMA,
    REWARD_SCHEMA,
    DecisionRecord,
    DecisionRecordError,
    DlqRecord,
    DlqRecordError,
    LateRecord,
    LateRecordError,
    RecordError,
    RewardRecord,
    RewardRecordError,
    SparseFeatures,
    stream_origin,
)
from ray_app.records.features import parse_features
from ray_app.timefmt import iso_ms, ms_from_iso
from validation.reasons import ReasonCode

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

DECISION = DecisionRecord(
    decision_id="d1",
    user_key="u1",
    slot="next_step",
    chosen="role",
    propensity=0.5,
    action_index=1,
    features=[0.25, 1.0],
    at_ms=T0 + 123,
    arm="treatment",
    model_version=3,
    candidates=["role", "goals"],
    ranked=[{"action": "role", "score": 0.7, "probability": 0.5}, {"action": "goals"}],
    experiment="onboarding",
    policy="epsilon_greedy",
    cold_start=False,
    cold_reason=None,
    feature_schema="abc123",
    context={"page": "/welcome"},
    profile_age_ms=40,
    trace_id="0af7651916cd43dd8448eb211c80319c",
    merged_from=["anon-1"],
)

REWARD = RewardRecord(
    decision_id="d1",
    user_key="u1",
    slot="next_step",
    action="role",
    action_index=1,
    arm="treatment",
    propensity=0.5,
    features=[0.25, 1.0],
    reward=1.0,
    outcome="completed",
    decided_at_ms=T0,
    outcome_at_ms=T0 + 4_000,
    model_version=3,
    candidates=["role", "goals"],
)

ORIGIN = stream_origin("onramp.events", 2, 41)

DLQS = [
    DlqRecord(ReasonCode.INVALID_JSON, None, "not JSON", ORIGIN, raw_size=8, raw_text="not json"),
    DlqRecord(
        ReasonCode.INVALID_UTF8,
        None,
        "not UTF-8",
        ORIGIN,
        raw_size=40_000,
        raw_truncated=True,
        raw_base64=base64.b64encode(b"\xff\xfe").decode(),
    ),
    DlqRecord(ReasonCode.INVALID_JSON, None, "a tombstone", ORIGIN, raw_size=0, tombstone=True),
    DlqRecord(
        ReasonCode.MISSING_FIELD,
        "batch[1].type",
        "required",
        {"route": "/v1/batch", "source": "web", "requestId": "r1", "index": 1},
        raw_size=26,
        raw_json=orjson.dumps({"userId": "u2", "x": [1, None]}),
        message_id="m-7",
    ),
    DlqRecord(ReasonCode.NOT_AN_OBJECT, "batch[0]", "null", ORIGIN, raw_size=4, raw_json=b"null"),
]

LATE = LateRecord(
    {"messageId": "m1", "timestamp": "2026-01-01T00:00:00.000Z"},
    watermark=T0 + 600_000,
    behind_ms=600_000,
    allowed_lateness_ms=60_000,
    origin=ORIGIN,
)


def wire(record: Any) -> dict[str, Any]:
    """What a reader gets: the record's bytes decoded as JSON."""
    return orjson.loads(record.encode())


# -- round trips -----------------------------------------------------------------------------


def test_a_decision_record_round_trips_through_its_bytes():
    assert DecisionRecord.from_json(wire(DECISION)) == DECISION
    d = wire(DECISION)
    assert d["schema"] == DECISION_SCHEMA and d["timestamp"] == "2026-01-01T00:00:00.123+00:00"
    assert d["traceId"] == DECISION.trace_id and d["mergedFrom"] == ["anon-1"]


def test_a_minimal_decision_record_reads_with_its_defaults_and_round_trips():
    minimal = {
        "decisionId": "d2",
        "userKey": "u1",
        "slot": "welcome_content",
        "chosen": "video_tour",
        "actionIndex": 0,
        "propensity": 1,
        "timestamp": iso_ms(T0),
        "hops": 1,  # a forwarded record's own field: not part of the record
    }
    d = DecisionRecord.from_json(minimal)
    assert (d.arm, d.model_version, d.ranked, d.candidates) == ("", 0, [], None)
    assert d.features == SparseFeatures(0, (), ())
    assert d.at_ms == T0 and d.propensity == 1.0 and isinstance(d.propensity, float)
    assert DecisionRecord.from_json(wire(d)) == d
    assert "traceId" not in wire(d) and "mergedFrom" not in wire(d)


def test_the_decision_a_decider_answers_is_logged_in_the_record_shape():
    from ray_app.decide import Decision

    decision = Decision(
        decision_id="d1", user_key="u1", slot="next_step", arm="treatment", experiment="e",
        model_version=3, policy="greedy", ranked=[{"action": "role"}], chosen="role",
        propensity=0.5, features=[0.25], schema_hash="h", candidates=["role"], at_ms=T0,
        cold_start=False, action_index=1,
    )  # fmt: skip
    record = decision.record()
    assert list(record)[:12] == ["schema", *decision.answer()]
    assert DecisionRecord.from_json(orjson.loads(orjson.dumps(record))).to_json() == record


def test_a_reward_record_round_trips_through_its_bytes():
    assert RewardRecord.from_json(wire(REWARD)) == REWARD
    assert wire(REWARD)["schema"] == REWARD_SCHEMA


@pytest.mark.parametrize("record", DLQS, ids=lambda r: r.message)
def test_a_dlq_record_round_trips_through_its_bytes(record):
    assert DlqRecord.from_json(wire(record)) == record
    d = wire(record)
    assert d["schema"] == DLQ_SCHEMA and "messageId" in d
    assert sum(k in d for k in ("raw", "rawText", "rawBase64")) == (0 if record.tombstone else 1)


def test_a_dlq_record_written_without_raw_size_reads_the_size_it_kept():
    d = wire(DLQS[3])
    del d["rawSize"], d["rawTruncated"]
    assert DlqRecord.from_json(d).raw_size == len(DLQS[3].raw_json or b"")


def test_a_late_record_round_trips_through_its_bytes():
    assert LateRecord.from_json(wire(LATE)) == LATE
    assert wire(LATE)["schema"] == LATE_SCHEMA
    text = LateRecord("not json", 5, 1, 0, ORIGIN)
    assert LateRecord.from_json(wire(text)) == text


def test_errors_carry_field_and_reason_and_survive_pickling():
    for err in (
        DecisionRecordError(ReasonCode.INVALID_FIELD, "arm", "expected a string, got 3"),
        DlqRecordError("origin", "expected an object"),
        LateRecordError("watermark", "expected an integer"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert isinstance(back, RecordError) and type(back) is type(err)
        assert (back.field, back.reason) == (err.field, err.reason)
    missing = DecisionRecordError(ReasonCode.MISSING_FIELD, "slot", "required")
    assert pickle.loads(pickle.dumps(missing)).code is ReasonCode.MISSING_FIELD


# -- malformed records -----------------------------------------------------------------------


def decision(**fields: Any) -> dict[str, Any]:
    return {**wire(DECISION), **fields}


BAD_DECISIONS = [
    ([1], "not_an_object", ""),
    (decision(slot=None), "missing_field", "slot"),
    (decision(chosen=None), "missing_field", "chosen"),
    (decision(decisionId=5), "invalid_field", "decisionId"),
    (decision(timestamp=5), "invalid_timestamp", "timestamp"),
    (decision(timestamp="99999-01-01"), "invalid_timestamp", "timestamp"),
    (decision(propensity=0), "invalid_field", "propensity"),
    (decision(propensity=True), "invalid_field", "propensity"),
    (decision(actionIndex=-1), "invalid_field", "actionIndex"),
    (decision(actionIndex=None), "missing_field", "actionIndex"),
    (decision(features=["x"]), "invalid_field", "features"),
    (decision(ranked=[{"id": "role"}]), "invalid_field", "ranked"),
    (decision(chosen="other"), "invalid_field", "chosen"),
    (decision(candidates="role"), "invalid_field", "candidates"),
    (decision(arm=3), "invalid_field", "arm"),
    (decision(modelVersion=2.5), "invalid_field", "modelVersion"),
    (decision(schema="onramp.reward/1"), "invalid_field", "schema"),
    (decision(coldStart="no"), "invalid_field", "coldStart"),
    (decision(context=[1]), "invalid_field", "context"),
    (decision(profileAgeMs=1.5), "invalid_field", "profileAgeMs"),
    (decision(mergedFrom="anon-1"), "invalid_field", "mergedFrom"),
]


@pytest.mark.parametrize(("data", "code", "field"), BAD_DECISIONS)
def test_a_malformed_decision_record_names_its_reason_code_and_field(data, code, field):
    with pytest.raises(DecisionRecordError) as info:
        DecisionRecord.from_json(data)
    assert (info.value.code.value, info.value.field) == (code, field) and info.value.reason


def test_a_decision_merged_from_no_one_reads_back_as_written():
    record = DecisionRecord.from_json(decision(mergedFrom=None))
    empty = DecisionRecord.from_json(decision(mergedFrom=[]))
    assert empty == record and "mergedFrom" not in empty.to_json()
    assert DecisionRecord.from_json(empty.to_json()) == empty


def test_a_decision_error_reads_like_the_stream_reports_it():
    with pytest.raises(DecisionRecordError) as info:
        DecisionRecord.from_json(decision(timestamp="soon"))
    assert info.value.reason == "not an ISO-8601 time: 'soon'"
    with pytest.raises(DecisionRecordError) as info:
        DecisionRecord.from_json(decision(arm=["x" * 200]))
    assert info.value.field == "arm" and len(info.value.reason) < 120
    assert info.value.reason.endswith("...")


def dlq(**fields: Any) -> dict[str, Any]:
    d = {**wire(DLQS[0]), **fields}
    return {k: v for k, v in d.items() if v is not ...}


BAD_DLQS = [
    ("x", ""),
    (dlq(schema="onramp.late/1"), "schema"),
    (dlq(reason="nope"), "reason"),
    (dlq(message=None), "message"),
    (dlq(origin="stream"), "origin"),
    (dlq(rawText=5), "rawText"),
    (dlq(rawText=..., rawBase64="%%%"), "rawBase64"),
    (dlq(rawSize=-1), "rawSize"),
    (dlq(rawTruncated="yes"), "rawTruncated"),
    (dlq(rawBase64="AAAA"), "raw"),  # two forms of the value at once
    (dlq(tombstone=True), "raw"),  # a tombstone keeps no value
    (dlq(field=7), "field"),
]


@pytest.mark.parametrize(("data", "field"), BAD_DLQS)
def test_a_malformed_dlq_record_names_its_field(data, field):
    with pytest.raises(DlqRecordError) as info:
        DlqRecord.from_json(data)
    assert info.value.field == field and info.value.reason


BAD_LATES = [
    (None, ""),
    ({**wire(LATE), "schema": DLQ_SCHEMA}, "schema"),
    ({k: v for k, v in wire(LATE).items() if k != "event"}, "event"),
    ({**wire(LATE), "watermark": "1"}, "watermark"),
    ({**wire(LATE), "behindMs": True}, "behindMs"),
    ({**wire(LATE), "allowedLatenessMs": None}, "allowedLatenessMs"),
    ({**wire(LATE), "origin": []}, "origin"),
    ({**wire(LATE), "reason": ""}, "reason"),
]


@pytest.mark.parametrize(("data", "field"), BAD_LATES)
def test_a_malformed_late_record_names_its_field(data, field):
    with pytest.raises(LateRecordError) as info:
        LateRecord.from_json(data)
    assert info.value.field == field and info.value.reason


def test_a_malformed_reward_record_names_its_field():
    with pytest.raises(RewardRecordError) as info:
        RewardRecord.from_json({**wire(REWARD), "outcome": "maybe"})
    assert info.value.field == "outcome" and "expected one of" in info.value.reason


# -- the writers -----------------------------------------------------------------------------


def test_the_collector_and_the_stream_write_dlq_records_the_decoder_reads():
    import datetime as dt

    from ray_app.collect.parse import parse_request
    from ray_app.stream.outputs import dlq_record, late_record
    from validation.wire import WireError

    parsed = parse_request(
        "batch",
        orjson.dumps({"writeKey": "k1", "batch": [5]}),
        content_encoding=None,
        authorization=None,
        write_keys={"demo": "k1"},
        received_at=dt.datetime(2026, 5, 1, tzinfo=dt.UTC),
        origin={"requestId": "r1"},
    )
    (_, value), *_ = parsed.dlq
    record = DlqRecord.from_json(orjson.loads(value))
    assert record.origin["requestId"] == "r1" and record.origin["index"] == 0
    assert record.raw_json == b"5" and record.message_id is None

    class Rec:
        topic, partition, offset = "onramp.events", 0, 9

    err = WireError(ReasonCode.INVALID_UTF8, None, "not UTF-8")
    for value in (None, b"\xff\xfe", b"text"):
        record = DlqRecord.from_json(orjson.loads(dlq_record(value, err, Rec())))
        assert record.origin == stream_origin("onramp.events", 0, 9)
        assert record.tombstone is (value is None)
    why = {"reason": "late", "watermark": 10, "behindMs": 5, "allowedLatenessMs": 1}
    late = LateRecord.from_json(orjson.loads(late_record(b'{"a": 1}', why, Rec())))
    assert late.event == {"a": 1} and late.behind_ms == 5


def test_iso_times_convert_exactly_both_ways():
    for ms in (0, 1, T0 + 999, -1, 253_402_300_799_999):
        assert ms_from_iso(iso_ms(ms)) == ms


# ------------------------------------------------------------------------------ sparse features


def test_decision_and_reward_records_carry_the_features_sparse_and_read_the_dense_form_too():
    dense = [0.0] * 500 + [1.0, 0.0, 0.375] + [0.0] * 73
    d = DecisionRecord(
        decision_id="d9", user_key="u1", slot="next_step", chosen="role", propensity=0.5,
        action_index=1, features=dense, at_ms=T0, arm="treatment",
    )  # fmt: skip
    out = wire(d)
    assert out["schema"] == DECISION_SCHEMA == "onramp.decision/2"
    assert out["features"] == {"size": 576, "indices": [500, 502], "values": [1.0, 0.375]}
    assert len(orjson.dumps(out["features"])) < len(orjson.dumps(dense)) // 10
    assert DecisionRecord.from_json(out) == d and d.features.dense() == dense
    # a record of schema /1 (the dense list) reads as the same record
    assert DecisionRecord.from_json({**out, "schema": "onramp.decision/1", "features": dense}) == d
    r = RewardRecord.from_decision(out, _catalog(), "completed", T0 + 1000)
    assert r.features == dense and r.to_json()["features"] == out["features"]
    assert r.to_json()["schema"] == REWARD_SCHEMA == "onramp.reward/2"


@pytest.mark.parametrize(
    "features, reason",
    [
        (
            {"size": 4, "indices": [3, 1], "values": [1, 1]},
            "indices: expected increasing positions",
        ),
        (
            {"size": 4, "indices": [4], "values": [1]},
            "indices: expected increasing positions in [0, 4)",
        ),
        ({"size": 4, "indices": [1], "values": [1, 2]}, "values: expected 1 finite numbers"),
        ({"size": -1, "indices": [], "values": []}, "size: expected an integer in [0, 2097152]"),
        ({"indices": [1], "values": [1]}, "size: expected an integer in [0, 2097152], got None"),
        # a dense list of 10**12 floats for its reward would not fit in memory
        ({"size": 10**12, "indices": [], "values": []}, "size: expected an integer in [0, "),
        ({"size": 4, "indices": [True], "values": [1]}, "indices: expected increasing positions"),
        ("0,1,0", "expected {"),
        ([0, "1"], "expected a list of finite numbers"),
    ],
)
def test_garbage_features_are_refused_with_the_part_at_fault(features: Any, reason: str):
    with pytest.raises(DecisionRecordError) as err:
        DecisionRecord.from_json({**wire(DECISION), "features": features})
    assert err.value.field == "features" and reason in err.value.reason
    assert err.value.code == ReasonCode.INVALID_FIELD


def _reference_parse(raw: dict[str, Any]) -> tuple[int, tuple[int, ...], tuple[float, ...]] | None:
    """The sparse form's checks item by item, as written before they ran per list in C."""
    size, index, value = raw["size"], raw["indices"], raw["values"]
    last = -1
    for i in index:
        if type(i) is not int or not last < i < size:
            return None
        last = i

    def finite(v: Any) -> bool:
        if type(v) not in (int, float):
            return False
        try:
            return math.isfinite(v)
        except OverflowError:
            return False

    if len(value) != len(index) or not all(map(finite, value)):
        return None
    return size, tuple(index), tuple(float(v) for v in value)


_ITEMS = st.one_of(
    st.integers(-3, 40),
    st.integers(min_value=2**63, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, -0.0, True, False, None, "1", 1.5]),
)


@settings(max_examples=600, deadline=None)
@given(
    size=st.integers(0, 40),
    index=st.one_of(st.lists(st.integers(0, 40), max_size=12).map(sorted), st.lists(_ITEMS)),
    value=st.lists(_ITEMS, max_size=12),
)
def test_the_sparse_features_checks_agree_with_the_item_by_item_reference(size, index, value):
    raw = {"size": size, "indices": index, "values": value}
    want = _reference_parse(raw)
    if want is None:
        with pytest.raises(ValueError):
            parse_features(raw)
    else:
        got = parse_features(raw)
        assert (got.size, got.indices, got.values) == want
        assert all(type(v) is float for v in got.values)


def test_packed_features_are_little_endian_whatever_the_machine():
    p = SparseFeatures(4, (1, 3), (1.0, 0.25)).packed()
    assert p.indices == (1).to_bytes(4, "little") + (3).to_bytes(4, "little")
    assert p.values == struct.pack("<2d", 1.0, 0.25)
    assert p.sparse() == SparseFeatures(4, (1, 3), (1.0, 0.25))


def test_finite_values_that_add_up_past_the_largest_float_are_kept():
    got = parse_features({"size": 3, "indices": [0, 1, 2], "values": [1e308, 1e308, 10**300]})
    assert got.values == (1e308, 1e308, 1e300)
    with pytest.raises(ValueError, match="values"):
        parse_features({"size": 2, "indices": [0, 1], "values": [1.0, 10**400]})


def test_a_pending_decision_from_an_old_checkpoint_keeps_its_dense_features():
    """Checkpoints written before the decision log went sparse hold each pending decision's
    features as a dense tuple: its reward and its forwarded record still carry them."""
    from ray_app.state.rewards import PendingDecision

    dense = (0.0, 2.0, 0.0)
    old = PendingDecision(
        decision_id="d1", user_key="u1", slot="next_step", step_slot=True, action="role",
        action_index=1, arm="treatment", propensity=0.5, features=dense, decided_at=T0,
        model_version=1,
    )  # fmt: skip
    assert old.reward(1.0, "completed", T0 + 5).features == list(dense)
    assert old.record()["features"] == {"size": 3, "indices": [1], "values": [2.0]}


def _catalog() -> Any:
    from ray_app.catalog import load_catalog

    return load_catalog()


def test_what_decodes_can_be_written_back():
    """A decoded record is re-encoded downstream (a reward, a merge): a value past what the
    encoder writes is refused at the decoder, by name, instead of raising in the stream worker
    (which stopped the partition, the same record again on every replay)."""
    for version in (2**64, 1e300):
        with pytest.raises(DecisionRecordError, match="modelVersion"):
            DecisionRecord.from_json(decision(modelVersion=version))
    for stamp in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-01:00"):
        with pytest.raises(DecisionRecordError, match="timestamp"):
            DecisionRecord.from_json(decision(timestamp=stamp))
    ok = DecisionRecord.from_json(decision(modelVersion=2**63 - 1))
    assert DecisionRecord.from_json(ok.to_json()).model_version == 2**63 - 1
    with pytest.raises(RewardRecordError, match="decidedAtMs: expected a 64-bit integer"):
        RewardRecord.from_json({**REWARD.to_json(), "decidedAtMs": 2**64})


def test_a_late_event_nested_past_the_encoders_depth_is_kept_as_text():
    from types import SimpleNamespace

    from ray_app.stream.outputs import late_record

    value = b'{"type": "track", "properties": {"x": ' + b"[" * 300 + b"]" * 300 + b"}}"
    why = {"watermark": T0, "behindMs": 5, "allowedLatenessMs": 1, "reason": "late"}
    out = orjson.loads(late_record(value, why, SimpleNamespace(topic="t", partition=0, offset=7)))
    assert out["event"] == value.decode()


@settings(max_examples=200)
@given(
    when=st.datetimes(timezones=st.timezones()),
    naive=st.datetimes(),
)
def test_iso_writes_every_time_as_astimezone_and_isoformat_do(when, naive):
    """``iso`` writes from the milliseconds since the epoch and a kept text of their second: the
    same text as ``astimezone(UTC).isoformat(timespec="milliseconds")`` for any offset, and a
    naive time read as that reads it (local time)."""
    import datetime as dt

    from ray_app.timefmt import iso

    def reference(t: dt.datetime) -> str:
        return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    for t in (when, naive):
        try:
            expected = reference(t)
        except (OverflowError, ValueError) as exc:  # an offset past year 1 or 9999
            with pytest.raises(type(exc)):
                iso(t)
            continue
        assert iso(t) == expected
        assert iso(t) == expected  # and once its second's text is kept


def test_a_reward_records_feature_schema_must_be_text():
    from ray_app.records.reward import RewardRecord, RewardRecordError

    d = {"decisionId": "d1", "userKey": "u1", "slot": "s", "action": "a", "actionIndex": 0,
         "arm": "treatment", "propensity": 1, "features": [0], "reward": 0,
         "outcome": "timeout", "decidedAtMs": 0, "outcomeAtMs": None, "modelVersion": 0}  # fmt: skip
    assert RewardRecord.from_json(d).feature_schema is None
    assert RewardRecord.from_json({**d, "featureSchema": "f" * 16}).feature_schema == "f" * 16
    with pytest.raises(RewardRecordError) as err:
        RewardRecord.from_json({**d, "featureSchema": 7})
    assert err.value.field == "featureSchema"
