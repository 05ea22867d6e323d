"""The batch checks the stream runs on every micro-batch: :mod:`validation.batch`'s pandera
schema, written as one pass of plain Python over the columns.

Pandera stays the declaration (and what training data and the archive are checked with): the
contract suite asserts that both give the same verdict on every row
(``tests/contracts/test_column_checks.py``), and the stream validates a sample of its batches
with pandera as well (:class:`SampledChecks`), counting any row where they differ. The fast
path costs about 1 us a row where building a frame for pandera costs about 20 (``bench/stream.py``).

>>> checks = ColumnChecks(known_steps={"role"})
>>> cols = {"ts": [1000, 1000], "received": [1000, 1000], "kind": ["track", "track"],
...         "step_id": ["role", "dance"], "duration_ms": [5, None], "user_rate": [1, 1]}
>>> {i: r.value for i, r in checks.failures_columns(cols).items()}
{1: 'unknown_step'}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from validation.batch import KINDS, BatchValidator, DataQuality, Limits, record_quality
from validation.reasons import ReasonCode

__all__ = ["ColumnChecks", "SampledChecks"]

log = logging.getLogger(__name__)


class ColumnChecks(Limits):
    """:class:`~validation.batch.BatchValidator`'s checks, row by row, first failing reason in
    the schema's order: event time, call type, duration, per-user rate, step id."""

    def failures_columns(
        self, columns: Mapping[str, list[Any]], quality: DataQuality | None = None
    ) -> dict[int, ReasonCode]:
        """Row -> the first reason it fails for (as ``BatchValidator.failures_columns``)."""
        if not columns["ts"]:
            return {}
        q = self.quality if quality is None else quality
        record_quality(columns, q)
        age, ahead, rate_max = self.max_age_ms, self.max_future_ms, self.max_user_events_per_s
        steps, kinds = self.known_steps, frozenset(KINDS)
        out: dict[int, ReasonCode] = {}
        rows = zip(
            columns["ts"],
            columns["received"],
            columns["kind"],
            columns["duration_ms"],
            columns["user_rate"],
            columns["step_id"],
            strict=True,
        )
        for i, (ts, received, kind, duration, rate, step) in enumerate(rows):
            if not received - age <= ts <= received + ahead:
                reason = ReasonCode.TIMESTAMP_OUT_OF_RANGE
            elif kind not in kinds:
                reason = ReasonCode.UNKNOWN_TYPE
            elif duration is not None and duration < 0:
                reason = ReasonCode.NEGATIVE_DURATION
            elif rate > rate_max:
                reason = ReasonCode.IMPLAUSIBLE_RATE
            elif steps is not None and step is not None and step not in steps:
                reason = ReasonCode.UNKNOWN_STEP
            else:
                continue
            out[i] = reason
            q.failed[reason.value] = q.failed.get(reason.value, 0) + 1
        return out


class SampledChecks(ColumnChecks):
    """:class:`ColumnChecks` deciding every batch, and the declared pandera schema validating one
    batch in ``every`` as well: a row where they differ is counted in the quality figures
    (``disagreements``) and logged. The verdicts are always the fast path's, so a replay decides
    exactly as the first run whichever batches were sampled."""

    def __init__(self, *args: Any, every: int = 50, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every = every
        self._declared = BatchValidator(
            self.max_age_ms, self.max_future_ms, self.known_steps, self.max_user_events_per_s
        )
        self._batches = 0

    def failures_columns(
        self, columns: Mapping[str, list[Any]], quality: DataQuality | None = None
    ) -> dict[int, ReasonCode]:
        out = super().failures_columns(columns, quality)
        self._batches += 1
        if self.every > 0 and self._batches % self.every == 1 and columns["ts"]:
            q = self.quality if quality is None else quality
            if self._declared is None:
                self._declared = BatchValidator(
                    self.max_age_ms,
                    self.max_future_ms,
                    self.known_steps,
                    self.max_user_events_per_s,
                )
            declared = self._declared.failures_columns(columns, DataQuality())
            q.sampled += 1
            differ = sorted(i for i in set(out) | set(declared) if out.get(i) != declared.get(i))
            if differ:
                q.disagreements += len(differ)
                log.error(
                    "batch checks and the pandera schema differ on %d rows, e.g. row %d: %s vs %s",
                    len(differ),
                    differ[0],
                    out.get(differ[0]),
                    declared.get(differ[0]),
                )
        return out
