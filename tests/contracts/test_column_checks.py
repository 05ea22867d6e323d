"""The stream's batch checks (:class:`validation.columns.ColumnChecks`) decide exactly as the
declared pandera schema (:class:`validation.batch.BatchValidator`): same failing rows, same first
reason, same data-quality figures, on batches mixing every kind of failure."""

from __future__ import annotations

import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from validation.batch import BatchValidator, DataQuality
from validation.columns import ColumnChecks, SampledChecks

STEPS = ("role", "goals", "invite")
LIMITS = {"max_age_ms": 10_000, "max_future_ms": 2_000, "max_user_events_per_s": 3}

row = st.fixed_dictionaries(
    {
        "ts": st.integers(-20_000, 20_000),
        "received": st.integers(-5_000, 5_000),
        "kind": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "x", ""]),
        "step_id": st.none() | st.sampled_from([*STEPS, "dance", ""]),
        "duration_ms": st.none()
        | st.integers(-5, 5)
        | st.floats(-2.0, 2.0, allow_nan=False)
        | st.sampled_from([float("inf"), float("-inf"), -0.0]),
        "user_rate": st.integers(1, 6),
        "segment": st.none() | st.sampled_from(["smb", "enterprise"]),
    }
)


def _columns(rows: list[dict]) -> dict[str, list]:
    return {c: [r[c] for r in rows] for c in rows[0]} if rows else {"ts": []}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row, min_size=1, max_size=40), with_catalog=st.booleans())
def test_column_checks_decide_as_the_pandera_schema(rows, with_catalog) -> None:
    steps = STEPS if with_catalog else None
    declared, fast = (
        BatchValidator(known_steps=steps, **LIMITS),
        ColumnChecks(known_steps=steps, **LIMITS),
    )
    q1, q2 = DataQuality(), DataQuality()
    cols = _columns(rows)
    assert fast.failures_columns(cols, q2) == declared.failures_columns(cols, q1)
    assert q2 == q1


def test_the_checks_can_fail_a_row_for_each_reason() -> None:
    """Not vacuous: the generated batches above cover every reason (checked on a fixed one)."""
    rows = [
        {"ts": 99_999, "received": 0, "kind": "track", "step_id": None, "duration_ms": None, "user_rate": 1},
        {"ts": 0, "received": 0, "kind": "x", "step_id": None, "duration_ms": None, "user_rate": 1},
        {"ts": 0, "received": 0, "kind": "track", "step_id": None, "duration_ms": -1, "user_rate": 1},
        {"ts": 0, "received": 0, "kind": "track", "step_id": None, "duration_ms": None, "user_rate": 9},
        {"ts": 0, "received": 0, "kind": "track", "step_id": "dance", "duration_ms": None, "user_rate": 1},
    ]  # fmt: skip
    got = ColumnChecks(known_steps=STEPS, **LIMITS).failures_columns(_columns(rows))
    assert [r.value for r in got.values()] == [
        "timestamp_out_of_range", "unknown_type", "negative_duration", "implausible_rate",
        "unknown_step",
    ]  # fmt: skip


def test_sampled_checks_count_a_disagreement_with_the_schema(caplog) -> None:
    """A fast path that drifted from the schema is seen: the sample counts and logs the rows."""

    checks = SampledChecks(known_steps=STEPS, every=2, **LIMITS)
    checks.known_steps = frozenset({"role"})  # the fast path forgot two steps; pandera did not
    q = DataQuality()
    cols = _columns(
        [{"ts": 0, "received": 0, "kind": "track", "step_id": "goals", "duration_ms": None,
          "user_rate": 1, "segment": None}] * 3
    )  # fmt: skip
    with caplog.at_level(logging.ERROR, "validation.columns"):
        for _ in range(3):
            checks.failures_columns(cols, q)
    assert (q.sampled, q.disagreements) == (2, 6)
    assert "differ on 3 rows" in caplog.text
