from validation.batch import BatchValidator
from validation.reasons import ReasonCode

MIN = 60_000


def row(ts=0, received=0, kind="track", step_id=None, duration_ms=None):
    return {
        "ts": ts,
        "received": received,
        "kind": kind,
        "step_id": step_id,
        "duration_ms": duration_ms,
    }


def test_event_time_must_be_near_receipt():
    v = BatchValidator(max_age_ms=60 * MIN, max_future_ms=5 * MIN)
    rows = [
        row(ts=10 * MIN, received=10 * MIN),
        row(ts=16 * MIN, received=10 * MIN),
        row(ts=0, received=61 * MIN),
    ]
    assert v.failures(rows) == {
        1: ReasonCode.TIMESTAMP_OUT_OF_RANGE,
        2: ReasonCode.TIMESTAMP_OUT_OF_RANGE,
    }


def test_without_a_catalog_any_step_passes_and_types_are_checked():
    v = BatchValidator()
    assert v.failures([row(step_id="anything"), row(kind="click")]) == {1: ReasonCode.UNKNOWN_TYPE}


def test_quality_figures_accumulate():
    v = BatchValidator()
    v.failures([row(step_id="a", duration_ms=3), row(), row(duration_ms=-1)])
    q = v.quality.as_dict()
    assert q["rows"] == 3 and q["failed"] == {"negative_duration": 1}
    assert q["nullRate"]["step_id"] == round(2 / 3, 4) and q["kindMix"] == {"track": 1.0}
    assert v.failures([]) == {}
