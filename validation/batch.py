"""Batch validation of decoded events with pandera: the semantic checks the wire schema cannot make.

Run once per micro-batch (never per event: building the frame and validating 5,000 rows costs
about as much as 5 single-row validations). Every check is row-wise, so a row's verdict does not
depend on which batch it came in, and a replay after a crash decides exactly as the first run.

Checks (reason code in brackets):

* event time after skew correction within ``[receivedAt - max_age, receivedAt + max_future]``
  (``timestamp_out_of_range``);
* ``properties.durationMs`` absent or >= 0 (``negative_duration``);
* call type one of Segment's (``unknown_type``);
* step id, when present, in the onboarding catalog, when one is configured (``unknown_step``);
* the user's events in the same second of event time, counted in offset order up to and
  including this one, at most ``max_user_events_per_s`` (``implausible_rate``). The caller
  computes that running count (:class:`ray_app.state.SessionShard` does), which keeps the check
  row-wise.

>>> v = BatchValidator(known_steps={"role", "goals"})
>>> rows = [dict(ts=1000, received=1000, kind="track", step_id="role", duration_ms=5),
...         dict(ts=1000, received=1000, kind="track", step_id="dance", duration_ms=None),
...         dict(ts=1000, received=1000, kind="track", step_id=None, duration_ms=-3),
...         dict(ts=1000, received=1000, kind="track", step_id=None, user_rate=500)]
>>> [(i, r.value) for i, r in v.failures(rows).items()]
[(1, 'unknown_step'), (2, 'negative_duration'), (3, 'implausible_rate')]
>>> v.quality.as_dict()["failed"]
{'implausible_rate': 1, 'negative_duration': 1, 'unknown_step': 1}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from validation.reasons import ReasonCode

__all__ = [
    "COLUMNS",
    "FIELD_OF",
    "KINDS",
    "BatchValidator",
    "DataQuality",
    "Limits",
    "record_quality",
]

KINDS = ("track", "identify", "page", "screen", "group", "alias")
_DAY_MS = 86_400_000

#: The columns a batch carries, in order.
COLUMNS = ("ts", "received", "kind", "step_id", "duration_ms", "user_rate", "segment")

#: What a failing check blames, for DLQ records.
FIELD_OF = {
    ReasonCode.TIMESTAMP_OUT_OF_RANGE: "timestamp",
    ReasonCode.NEGATIVE_DURATION: "properties.durationMs",
    ReasonCode.UNKNOWN_TYPE: "type",
    ReasonCode.UNKNOWN_STEP: "stepId",
    ReasonCode.IMPLAUSIBLE_RATE: "timestamp",
}


@dataclass
class DataQuality:
    """Running data-quality figures over validated batches, for skew audits: rows seen, failures
    by reason, null rates of the optional columns, the mix of call types and of segments."""

    rows: int = 0
    batches: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    sampled: int = 0
    """Batches also validated by the declared pandera schema (:class:`SampledChecks`)."""
    disagreements: int = 0
    """Rows of those on which the stream's checks and the pandera schema differed (0, always:
    anything else is a bug, logged with the rows)."""

    def as_dict(self) -> dict[str, Any]:
        def share(counts: dict[str, int]) -> dict[str, float]:
            return (
                {k: round(v / self.rows, 4) for k, v in sorted(counts.items())} if self.rows else {}
            )

        return {
            "rows": self.rows,
            "batches": self.batches,
            "failed": dict(sorted(self.failed.items())),
            "nullRate": share(self.nulls),
            "kindMix": share(self.kinds),
            "segmentMix": share(self.segments),
            "sampled": self.sampled,
            "disagreements": self.disagreements,
        }


#: Distinct segments the data-quality mix counts by name; past them, as :data:`OTHER_SEGMENTS`.
#: ``traits.segment`` is whatever a client sends: 10,000 distinct ones made every checkpoint
#: delta of the partition 2 MB (the mix is checkpointed with the state).
MAX_SEGMENTS = 64
OTHER_SEGMENTS = "(other)"


def _add(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


def record_quality(columns: Mapping[str, list[Any]], q: DataQuality) -> list[Any]:
    """Add a batch's rows, null counts and mixes to ``q``; returns its segment column."""
    n = len(columns["ts"])
    segments = columns.get("segment") or [None] * n
    q.rows += n
    q.batches += 1
    for col, values in (
        ("step_id", columns["step_id"]),
        ("duration_ms", columns["duration_ms"]),
        ("segment", segments),
    ):
        _add(q.nulls, col, values.count(None))
    for kind, k in Counter(columns["kind"]).items():
        _add(q.kinds, str(kind), k)
    for seg, k in Counter(segments).items():
        name = "unknown" if seg is None else str(seg)
        if name not in q.segments and len(q.segments) >= MAX_SEGMENTS:
            name = OTHER_SEGMENTS  # a client names segments: the mix stays bounded
        _add(q.segments, name, k)
    return segments


class Limits:
    """The bounds the batch checks enforce, and what the state core asks of a validator besides
    its verdicts (``field_of``, ``new_quality``): shared by the declared schema
    (:class:`BatchValidator`) and the stream's fast path (:class:`validation.columns.ColumnChecks`).
    """

    def __init__(
        self,
        max_age_ms: int = 30 * _DAY_MS,
        max_future_ms: int = 5 * 60_000,
        known_steps: Iterable[str] | None = None,
        max_user_events_per_s: int = 50,
    ) -> None:
        self.field_of: Mapping[ReasonCode, str] = FIELD_OF
        self.known_steps = frozenset(known_steps) if known_steps is not None else None
        self.max_age_ms = max_age_ms
        self.max_future_ms = max_future_ms
        self.max_user_events_per_s = max_user_events_per_s
        self.quality = DataQuality()

    @classmethod
    def for_state(cls, config: Any, **kwargs: Any) -> Self:
        """The checks for a state configured by ``config`` (anything with ``max_age_ms``,
        ``max_future_ms``, ``known_steps`` and ``max_user_events_per_s``, such as
        :class:`ray_app.state.StateConfig`)."""
        return cls(
            config.max_age_ms,
            config.max_future_ms,
            config.known_steps,
            config.max_user_events_per_s,
            **kwargs,
        )

    @staticmethod
    def new_quality() -> DataQuality:
        """Empty running figures, for a state that keeps its own across batches."""
        return DataQuality()


class BatchValidator(Limits):
    """A pandera schema over the columns the state core reads (see the module docstring).

    The stream injects one into each partition's state (:class:`ray_app.state.SessionShard`
    takes it as ``checks``; :meth:`for_state` builds it from the state's settings).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import pandera.pandas as pa

        super().__init__(*args, **kwargs)
        max_age_ms, max_future_ms = self.max_age_ms, self.max_future_ms
        max_user_events_per_s = self.max_user_events_per_s
        steps = self.known_steps
        # Frame-wide checks, one per reason code: the frame is built by failures_columns with
        # fixed dtypes, so per-column dtype checks would only double the cost (about 0.5 ms a
        # check per batch, whatever its size).
        checks = [
            pa.Check(
                lambda df: (
                    (df["ts"] >= df["received"] - max_age_ms)
                    & (df["ts"] <= df["received"] + max_future_ms)
                ),
                name=ReasonCode.TIMESTAMP_OUT_OF_RANGE.value,
            ),
            pa.Check(lambda df: df["kind"].isin(KINDS), name=ReasonCode.UNKNOWN_TYPE.value),
            pa.Check(
                lambda df: df["duration_ms"].isna() | (df["duration_ms"] >= 0),
                name=ReasonCode.NEGATIVE_DURATION.value,
            ),
            pa.Check(
                lambda df: df["user_rate"] <= max_user_events_per_s,
                name=ReasonCode.IMPLAUSIBLE_RATE.value,
            ),
        ]
        if steps is not None:
            checks.append(
                pa.Check(
                    lambda df: df["step_id"].isna() | df["step_id"].isin(steps),
                    name=ReasonCode.UNKNOWN_STEP.value,
                )
            )
        self.schema = pa.DataFrameSchema(checks=checks, name="onramp.events batch")

    def failures(
        self, rows: Sequence[Mapping[str, Any]], quality: DataQuality | None = None
    ) -> dict[int, ReasonCode]:
        """Row index -> the first reason it fails for (rows that pass are absent).

        Rows are mappings with the keys of :data:`COLUMNS` (``user_rate`` and ``segment`` may be
        left out). ``quality`` receives the batch's figures (default: ``self.quality``).
        """
        return self.failures_columns(
            {c: [r.get(c, 1 if c == "user_rate" else None) for r in rows] for c in COLUMNS},
            quality,
        )

    def failures_columns(
        self, columns: Mapping[str, list[Any]], quality: DataQuality | None = None
    ) -> dict[int, ReasonCode]:
        """As :meth:`failures`, from one list per column (cheaper to build than row dicts)."""
        import numpy as np
        import pandas as pd
        import pandera.errors as pe

        n = len(columns["ts"])
        if not n:
            return {}
        q = self.quality if quality is None else quality
        segments = record_quality(columns, q)
        df = pd.DataFrame(
            {
                "ts": np.asarray(columns["ts"], dtype=np.int64),
                "received": np.asarray(columns["received"], dtype=np.int64),
                "kind": np.asarray(columns["kind"], dtype=object),
                "step_id": np.asarray(columns["step_id"], dtype=object),
                "duration_ms": np.asarray(
                    [np.nan if d is None else d for d in columns["duration_ms"]], dtype=np.float64
                ),
                "user_rate": np.asarray(columns["user_rate"], dtype=np.int64),
                "segment": np.asarray(segments, dtype=object),
            },
            copy=False,
        )
        try:
            self.schema.validate(df, lazy=True)
            return {}
        except pe.SchemaErrors as exc:
            out: dict[int, ReasonCode] = {}
            cases = exc.failure_cases
            for check, index in zip(cases["check"], cases["index"], strict=True):
                if index is None or check is None or pd.isna(index):
                    continue
                name = str(check).split("(")[0]
                try:
                    reason = ReasonCode(name)
                except ValueError:
                    reason = ReasonCode.INVALID_FIELD
                out.setdefault(int(index), reason)
            for reason in out.values():
                _add(q.failed, reason.value, 1)
            return dict(sorted(out.items()))
