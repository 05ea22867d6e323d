"""Batch validation inside the stream state: each micro-batch of decoded events goes through an
injected :class:`BatchCheck` once, row-wise, and a failing event is rejected with the check's
reason code and a message that names the values.

The state core does not choose the validator: the stream gives each shard the declared pandera
schema (:class:`validation.batch.BatchValidator`, built by ``BatchValidator.for_state``), and a
shard given none validates nothing (what a benchmark of validation's cost compares against).
:class:`BatchChecks` is mixed into :class:`~ray_app.state.shard.SessionShard`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ray_app.state.event import Event, RecordRejected
from ray_app.state.profile import Profile
from ray_app.timefmt import iso_ms
from validation.reasons import ReasonCode

if TYPE_CHECKING:
    from ray_app.state.config import StateConfig

__all__ = ["PROCESSING_FAILED_REASON", "BatchCheck", "BatchChecks", "Quality", "failed_error"]

#: The reason a record is rejected with when validating or applying it raised (a value of a type
#: nothing checked for): the last-resort catch; the DLQ record's message names the error.
PROCESSING_FAILED_REASON = ReasonCode.UNPROCESSABLE


class Quality(Protocol):
    """Running data-quality figures a :class:`BatchCheck` keeps for a shard (checkpointed with it)."""

    def as_dict(self) -> dict[str, Any]: ...


class BatchCheck(Protocol):
    """What the state core asks of a batch validator."""

    field_of: Mapping[ReasonCode, str]
    """The field a failing check blames, by reason (for DLQ records)."""

    def new_quality(self) -> Quality: ...

    def failures_columns(
        self, columns: Mapping[str, list[Any]], quality: Any
    ) -> Mapping[int, ReasonCode]:
        """Row -> the first reason it fails for, from one list per column (``ts``, ``received``,
        ``kind``, ``step_id``, ``duration_ms``, ``user_rate``, ``segment``); the batch's
        figures go into ``quality``."""
        ...


class BatchChecks:
    """The validation half of a shard."""

    config: StateConfig
    profiles: dict[str, Profile]
    quality: Quality | None
    rates: dict[str, tuple[int, int]]
    _rates_pruned_at: int
    checks: BatchCheck | None
    watermark: int

    def _validate_safely(
        self, decoded: list[tuple[int, bytes | None, bytes, Event]]
    ) -> dict[int, RecordRejected]:
        """:meth:`_validate`, and if the batch as a whole raises, each event on its own: an
        event that raises alone is rejected, the others are validated as usual (a failed
        attempt leaves the per-user rates as they were, so no event counts twice)."""
        try:
            return self._validate(decoded)
        except Exception:
            out: dict[int, RecordRejected] = {}
            for n, item in enumerate(decoded):
                try:
                    failed = self._validate([item])
                except Exception as exc:
                    out[n] = failed_error(exc)
                else:
                    if failed:
                        out[n] = failed[0]
            return out

    def _validate(
        self, decoded: list[tuple[int, bytes | None, bytes, Event]]
    ) -> dict[int, RecordRejected]:
        """Position in ``decoded`` -> why it fails batch validation (:attr:`checks` is set)."""
        assert self.checks is not None
        cols: dict[str, list[Any]] = {
            "ts": [], "received": [], "kind": [], "step_id": [], "duration_ms": [],
            "user_rate": [], "segment": [],
        }  # fmt: skip
        rates = self.rates
        batch: dict[str, tuple[int, int]] = {}  # kept apart until validation went through
        for _, _, _, e in decoded:
            cols["ts"].append(e.ts)
            cols["received"].append(e.received)
            cols["kind"].append(e.kind)
            cols["step_id"].append(e.step_id)
            d = e.properties.get("durationMs")
            cols["duration_ms"].append(
                d if isinstance(d, int | float) and not isinstance(d, bool) else None
            )
            second = e.ts // 1000
            last = batch.get(e.user_key) or rates.get(e.user_key)
            n = last[1] + 1 if last is not None and last[0] == second else 1
            batch[e.user_key] = (second, n)
            cols["user_rate"].append(n)
            seg = e.traits.get("segment")
            if seg is None:
                p = self.profiles.get(e.user_key)
                seg = p.traits.get("segment") if p is not None else None
            cols["segment"].append(seg if isinstance(seg, str) else None)
        reasons = self.checks.failures_columns(cols, self.quality)
        rates.update(batch)
        if len(rates) > 2 * self._rates_pruned_at + 10_000:
            horizon = self.watermark // 1000
            self.rates = {u: r for u, r in rates.items() if r[0] >= horizon}
            self._rates_pruned_at = len(self.rates)
        out: dict[int, RecordRejected] = {}
        for n, reason in reasons.items():
            e = decoded[n][3]
            out[n] = RecordRejected(
                reason, self.checks.field_of.get(reason), _explain(reason, e, self.config)
            )
        return out


def _explain(reason: ReasonCode, e: Event, c: StateConfig) -> str:
    if reason == ReasonCode.TIMESTAMP_OUT_OF_RANGE:
        return (
            f"event time {iso_ms(e.ts)} is {(e.ts - e.received) / 1000:+.1f} s from receivedAt "
            f"{iso_ms(e.received)}; allowed {-c.max_age_ms / 1000:+.0f} s to "
            f"{c.max_future_ms / 1000:+.0f} s"
        )
    if reason == ReasonCode.NEGATIVE_DURATION:
        return f"durationMs {e.properties.get('durationMs')} < 0"
    if reason == ReasonCode.UNKNOWN_STEP:
        return f"step {e.step_id!r} is not in the onboarding catalog"
    if reason == ReasonCode.UNKNOWN_TYPE:
        return f"type {e.kind!r} is not a Segment call type"
    if reason == ReasonCode.IMPLAUSIBLE_RATE:
        return (
            f"more than {c.max_user_events_per_s} events from {e.user_key!r} "
            f"in the second of {iso_ms(e.ts)}"
        )
    return str(reason)


def failed_error(exc: Exception, message_id: str | None = None) -> RecordRejected:
    """A record that raised something other than a decode error while it was taken."""
    about = f" (event {message_id!r})" if message_id else ""
    text = f"{type(exc).__name__}: {exc}"
    return RecordRejected(
        PROCESSING_FAILED_REASON, None, f"could not be processed{about}: {text[:500]}"
    )
