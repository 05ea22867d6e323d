"""Batch validation inside the state core: semantic failures are rejected with a reason code,
counted, never applied, and the verdict does not depend on how records are batched."""

import json

from ray_app.state import SessionShard, StateConfig
from ray_app.state.event import RecordRejected
from validation.batch import BatchValidator
from validation.reasons import ReasonCode

STEPS = frozenset({"welcome", "role"})


def _rec(mid, t_s, *, received_s=None, step="role", seq=None, duration=None, user="u1", **extra):
    props = {} if duration is None else {"durationMs": duration}
    d = {
        "messageId": mid,
        "type": "track",
        "event": "Step Completed",
        "userKey": user,
        "timestamp": f"2026-01-01T00:{t_s // 60:02d}:{t_s % 60:02d}Z",
        "receivedAt": f"2026-01-01T00:{(received_s or t_s) // 60:02d}:{(received_s or t_s) % 60:02d}Z",
        "stepId": step,
        "properties": props,
        **extra,
    }
    if seq is not None:
        d["sessionId"], d["seq"] = "s", seq
    return (user.encode(), json.dumps(d).encode())


def _shard(**kw):
    config = StateConfig(known_steps=STEPS, max_future_ms=60_000, **kw)
    return SessionShard(0, config, BatchValidator.for_state(config))


def test_each_semantic_failure_is_rejected_with_its_reason_and_field():
    shard = _shard(max_user_events_per_s=3)
    records = [
        _rec("ok", 100),
        _rec("neg", 101, duration=-5),
        _rec("step", 102, step="dance"),
        _rec("future", 900, received_s=100),  # 800 s after receivedAt, 60 s allowed
        *[_rec(f"burst{i}", 200) for i in range(5)],  # 5 in one second, 3 allowed
    ]
    r = shard.process(records)
    reasons = {records[i][1]: (e.reason, e.field) for i, _, _, e in r.rejected}
    got = {json.loads(v)["messageId"]: rf for v, rf in reasons.items()}
    assert got == {
        "neg": (ReasonCode.NEGATIVE_DURATION, "properties.durationMs"),
        "step": (ReasonCode.UNKNOWN_STEP, "stepId"),
        "future": (ReasonCode.TIMESTAMP_OUT_OF_RANGE, "timestamp"),
        "burst3": (ReasonCode.IMPLAUSIBLE_RATE, "timestamp"),
        "burst4": (ReasonCode.IMPLAUSIBLE_RATE, "timestamp"),
    }
    assert all(isinstance(e, RecordRejected) and e.message for *_, e in r.rejected)
    assert r.applied == 4  # ok + burst0..2
    assert shard.stats.rejected == 5
    assert shard.rejected_by_reason == {
        "negative_duration": 1,
        "unknown_step": 1,
        "timestamp_out_of_range": 1,
        "implausible_rate": 2,
    }
    assert "dance" not in shard.profile("u1")["steps"]
    q = shard.quality.as_dict()
    assert q["rows"] == len(records) and q["failed"]["implausible_rate"] == 2
    assert q["kindMix"] == {"track": 1.0}


def test_verdicts_do_not_depend_on_batching_and_survive_snapshots():
    records = [_rec(f"m{i}", 10 + i // 7, duration=(-1 if i % 11 == 0 else 5)) for i in range(70)]
    records += [_rec(f"x{i}", 30, step="nope" if i % 2 else "role") for i in range(6)]
    one = _shard(max_user_events_per_s=5)
    r = one.process(records)
    whole = sorted(json.loads(records[i][1])["messageId"] for i, *_ in r.rejected)

    parts = _shard(max_user_events_per_s=5)
    rejected = []
    for i in range(0, len(records), 9):
        # a crash between every batch; the restarted worker injects its validator again
        parts = SessionShard.restore(parts.snapshot(), checks=parts.checks)
        batch = records[i : i + 9]
        rejected += [
            json.loads(batch[j][1])["messageId"] for j, *_ in parts.process(batch).rejected
        ]
    assert sorted(rejected) == whole
    assert parts.profiles_as_dicts() == one.profiles_as_dicts()
    assert parts.rejected_by_reason == one.rejected_by_reason
    assert b"BatchValidator" not in parts.snapshot()  # the validator is injected, never pickled


def test_validation_off_applies_everything_decodable():
    shard = SessionShard(0, StateConfig(known_steps=STEPS))  # no checks injected
    r = shard.process([_rec("neg", 100, duration=-5), _rec("step", 101, step="dance")])
    assert (r.applied, r.rejected) == (2, [])
