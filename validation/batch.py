"""Batch validation of decoded events with pandera: the semantic checks the wire schema cannot make.

Run once per micro-batch (never per event: building the frame and validating 5,000 rows costs
about as much as 5 single-row validations). Every check is row-wise, so a row's verdict does not
depend on which batch it came in, and a replay after a crash decides exactly as the first run.

Checks (reason code in brackets):

* event time after skew correction within ``[receivedAt - max_age, receivedAt + max_future]``
  (``timestamp_out_of_range``);
* ``properties.durationMs`` absent or >= 0 (``negative_duration``);
* call type one of Segment's (``unknown_type``);
* step id, when present, in the onboarding catalog, when one is configured (``unknown_step``).

>>> v = BatchValidator(known_steps={"role", "goals"})
>>> rows = [dict(ts=1000, received=1000, kind="track", step_id="role", duration_ms=5),
...         dict(ts=1000, received=1000, kind="track", step_id="dance", duration_ms=None),
...         dict(ts=1000, received=1000, kind="track", step_id=None, duration_ms=-3)]
>>> [(i, r.value) for i, r in v.failures(rows).items()]
[(1, 'unknown_step'), (2, 'negative_duration')]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from validation.reasons import ReasonCode

__all__ = ["BatchValidator", "DataQuality"]

_KINDS = ("track", "identify", "page", "screen", "group", "alias")
_DAY_MS = 86_400_000


@dataclass
class DataQuality:
    """Running data-quality figures over validated batches, for skew audits."""

    rows: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "failed": dict(self.failed),
            "nullRate": {k: round(v / self.rows, 4) for k, v in self.nulls.items()}
            if self.rows
            else {},
            "kindMix": {k: round(v / self.rows, 4) for k, v in self.kinds.items()}
            if self.rows
            else {},
        }


class BatchValidator:
    """A pandera schema over the columns the state core reads."""

    def __init__(
        self,
        max_age_ms: int = 30 * _DAY_MS,
        max_future_ms: int = 5 * 60_000,
        known_steps: Iterable[str] | None = None,
    ) -> None:
        import pandera.pandas as pa

        self.known_steps = frozenset(known_steps) if known_steps is not None else None
        self.max_age_ms = max_age_ms
        self.max_future_ms = max_future_ms
        self.quality = DataQuality()
        checks_ts = pa.Check(
            lambda df: (
                (df["ts"] >= df["received"] - max_age_ms)
                & (df["ts"] <= df["received"] + max_future_ms)
            ),
            name=ReasonCode.TIMESTAMP_OUT_OF_RANGE.value,
        )
        self._columns = {
            "kind": pa.Column(
                str, pa.Check(lambda s: s.isin(_KINDS), name=ReasonCode.UNKNOWN_TYPE.value)
            ),
            "duration_ms": pa.Column(
                float,
                pa.Check(lambda s: s.isna() | (s >= 0), name=ReasonCode.NEGATIVE_DURATION.value),
                nullable=True,
            ),
        }
        if self.known_steps is not None:
            self._columns["step_id"] = pa.Column(
                object,
                pa.Check(
                    lambda s: s.isna() | s.isin(self.known_steps),
                    name=ReasonCode.UNKNOWN_STEP.value,
                ),
                nullable=True,
            )
        else:
            self._columns["step_id"] = pa.Column(object, nullable=True)
        self.schema = pa.DataFrameSchema(
            {"ts": pa.Column("int64"), "received": pa.Column("int64"), **self._columns},
            checks=[checks_ts],
        )

    def failures(self, rows: list[Mapping[str, Any]]) -> dict[int, ReasonCode]:
        """Row index -> the first reason it fails for (rows that pass are absent)."""
        import pandas as pd
        import pandera.errors as pe

        if not rows:
            return {}
        df = pd.DataFrame.from_records(
            rows, columns=["ts", "received", "kind", "step_id", "duration_ms"]
        )
        df["duration_ms"] = df["duration_ms"].astype("float64")
        self.quality.rows += len(df)
        for col in ("step_id", "duration_ms"):
            self.quality.nulls[col] = self.quality.nulls.get(col, 0) + int(df[col].isna().sum())
        for kind, n in df["kind"].value_counts().items():
            self.quality.kinds[str(kind)] = self.quality.kinds.get(str(kind), 0) + int(n)
        try:
            self.schema.validate(df, lazy=True)
            return {}
        except pe.SchemaErrors as exc:
            out: dict[int, ReasonCode] = {}
            cases = exc.failure_cases
            for check, index in zip(cases["check"], cases["index"], strict=True):
                if index is None or check is None:
                    continue
                name = str(check).split("(")[0]
                try:
                    reason = ReasonCode(name)
                except ValueError:
                    reason = ReasonCode.INVALID_FIELD
                out.setdefault(int(index), reason)
            for reason in out.values():
                self.quality.failed[reason.value] = self.quality.failed.get(reason.value, 0) + 1
            return dict(sorted(out.items()))
