"""Rewards: decisions joined with the outcomes that followed them, in event time.

Stream workers read ``onramp.decisions`` beside ``onramp.events`` (same key, same partition) and
keep, per partition, the decisions whose outcome is not known yet. A decision of user ``u`` at
time ``t`` that showed action ``a`` gets **reward 1** when, within the attribution window
``[t, t + window]`` of event time:

* ``step`` slots (``next_step``): ``u`` completed step ``a`` (``Step Completed`` with that step);
* other slots (content, checklists): ``u`` completed onboarding (``Onboarding Completed``);

and **reward 0** (outcome ``timeout``) once the watermark passes ``t + window`` without one. An
``Step Completed`` that echoes a decision id (``properties.decisionId``) credits that decision
only; otherwise an outcome credits every decision of the user in whose window it falls and
that it matches (a conversion credits every content decision in its window).

Exactly once, whatever the interleaving of the two topics: a reward is decided either when a
matching completion is applied while the decision waits, or when the decision arrives and the
profile already holds a completion in its window, or when the watermark closes the window, and
each of these gives the same value (a completion inside the window is always applied before the
watermark passes the window's end: later ones are late, and events still held by a reorder
buffer are never behind the watermark). Each decision id is decided once and remembered until
the watermark is well past its window, so a decision logged twice (an idempotent client retry)
gets one reward. Reward records are written at least once (a replay after a crash may write one
again, identical, with the same decision id); readers deduplicate by decision id.

>>> from ray_app.state.profile import Profile
>>> j = RewardJoin(window_ms=60_000, step_slots=frozenset({"next_step"}))
>>> d = {"decisionId": "d1", "userKey": "u1", "slot": "next_step", "chosen": "role",
...      "propensity": 0.5, "features": [0.0], "arm": "treatment", "modelVersion": 3,
...      "timestamp": "2026-01-01T00:00:00.000+00:00", "ranked": [{"action": "role"}]}
>>> j.offer_decision(d, None, watermark=0)
[]
>>> p = Profile("u1"); p.steps["role"] = StepStats(completions=1, completed_times=[(1767225630000, "")])
>>> [(r["decisionId"], r["reward"], r["outcome"]) for r in j.on_completion("u1", "role", 1767225630000, None, p)]
[('d1', 1.0, 'completed')]
"""

from __future__ import annotations

import datetime as dt
import heapq
from dataclasses import dataclass, field
from typing import Any

from ray_app.state.event import EventDecodeError
from ray_app.state.profile import Profile, StepStats
from validation.reasons import ReasonCode

__all__ = ["PendingDecision", "RewardJoin", "StepStats", "decode_decision"]

_REQUIRED = ("decisionId", "userKey", "slot", "chosen", "propensity", "timestamp")


@dataclass(frozen=True, slots=True)
class PendingDecision:
    decision_id: str
    user_key: str
    slot: str
    step_slot: bool
    action: str
    action_index: int | None
    arm: str
    propensity: float
    features: tuple[float, ...]
    decided_at: int
    model_version: int

    def reward(self, value: float, outcome: str, outcome_at: int | None) -> dict[str, Any]:
        """The reward record (schema ``onramp.reward/1``)."""
        return {
            "schema": "onramp.reward/1",
            "decisionId": self.decision_id,
            "userKey": self.user_key,
            "slot": self.slot,
            "action": self.action,
            "actionIndex": self.action_index,
            "arm": self.arm,
            "propensity": self.propensity,
            "features": list(self.features),
            "reward": value,
            "outcome": outcome,
            "decidedAtMs": self.decided_at,
            "outcomeAtMs": outcome_at,
            "modelVersion": self.model_version,
        }


def decode_decision(record: dict[str, Any], step_slots: frozenset[str]) -> PendingDecision:
    """A decision log record -> what the join keeps; raises :class:`EventDecodeError`."""
    for key in _REQUIRED:
        if record.get(key) is None:
            raise EventDecodeError(ReasonCode.MISSING_FIELD, key, "required in a decision record")
    try:
        t = dt.datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00"))
    except ValueError:
        raise EventDecodeError(
            ReasonCode.INVALID_TIMESTAMP, "timestamp", f"not ISO-8601: {record['timestamp']!r}"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    p = record["propensity"]
    if not isinstance(p, int | float) or not 0 < p <= 1:
        raise EventDecodeError(
            ReasonCode.INVALID_FIELD, "propensity", "expected a number in (0, 1]"
        )
    features = record.get("features") or []
    if not isinstance(features, list) or not all(isinstance(v, int | float) for v in features):
        raise EventDecodeError(ReasonCode.INVALID_FIELD, "features", "expected a list of numbers")
    ranked = record.get("ranked") or []
    ids = [r.get("action") for r in ranked if isinstance(r, dict)]
    slot = str(record["slot"])
    return (
        PendingDecision(
            decision_id=str(record["decisionId"]),
            user_key=str(record["userKey"]),
            slot=slot,
            step_slot=slot in step_slots,
            action=str(record["chosen"]),
            action_index=record.get("actionIndex"),
            arm=str(record.get("arm", "")),
            propensity=float(p),
            features=tuple(float(v) for v in features),
            decided_at=int(t.timestamp() * 1000),
            model_version=int(record.get("modelVersion") or 0),
        )
        if record["chosen"] in ids or not ids
        else _bad_chosen(record)
    )


def _bad_chosen(record: dict[str, Any]) -> PendingDecision:
    raise EventDecodeError(
        ReasonCode.INVALID_FIELD, "chosen", f"{record['chosen']!r} is not among the ranked actions"
    )


@dataclass
class RewardJoin:
    """The pending decisions of one partition and the rules above. Pure and picklable."""

    window_ms: int = 300_000
    step_slots: frozenset[str] = frozenset({"next_step"})
    pending: dict[str, PendingDecision] = field(default_factory=dict)
    by_user: dict[str, list[str]] = field(default_factory=dict)
    closing: list[tuple[int, str]] = field(default_factory=list)
    decided: dict[str, int] = field(default_factory=dict)
    """Decision ids already rewarded -> end of their window (to drop repeated log records)."""
    forget: list[tuple[int, str]] = field(default_factory=list)
    rewards: int = 0
    positives: int = 0
    repeated: int = 0
    # what changed since the last take_delta(): so a delta checkpoint carries only that
    added: dict[str, PendingDecision] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    decided_added: dict[str, int] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)

    # -- inputs ----------------------------------------------------------------------------

    def offer_decision(
        self, record: dict[str, Any], profile: Profile | None, watermark: int
    ) -> list[dict[str, Any]]:
        """A decision log record; raises :class:`EventDecodeError` for a malformed one."""
        d = decode_decision(record, self.step_slots)
        if d.decision_id in self.pending or d.decision_id in self.decided:
            self.repeated += 1
            return []
        end = d.decided_at + self.window_ms
        hit = self._completion_in_window(d, profile)
        if hit is not None:
            return [self._decide(d, 1.0, "completed" if d.step_slot else "converted", hit)]
        if watermark > end:
            return [self._decide(d, 0.0, "timeout", None)]
        self.pending[d.decision_id] = d
        self.added[d.decision_id] = d
        self.by_user.setdefault(d.user_key, []).append(d.decision_id)
        heapq.heappush(self.closing, (end, d.decision_id))
        return []

    def on_completion(
        self,
        user_key: str,
        step: str | None,
        ts: int,
        decision_id: str | None,
        profile: Profile | None = None,
        onboarding: bool = False,
    ) -> list[dict[str, Any]]:
        """A completion was applied (``step`` completed, or onboarding when ``onboarding``)."""
        ids = self.by_user.get(user_key)
        if not ids:
            return []
        out = []
        for did in list(ids):
            d = self.pending[did]
            if decision_id is not None and did != decision_id and not onboarding:
                continue
            if not d.decided_at <= ts <= d.decided_at + self.window_ms:
                continue
            if d.step_slot and not onboarding and step == d.action:
                out.append(self._decide(d, 1.0, "completed", ts))
            elif not d.step_slot and onboarding:
                out.append(self._decide(d, 1.0, "converted", ts))
        return out

    def advance(self, watermark: int) -> list[dict[str, Any]]:
        """Close the windows the watermark has passed (reward 0, ``timeout``)."""
        out = []
        while self.closing and self.closing[0][0] < watermark:
            _, did = heapq.heappop(self.closing)
            d = self.pending.get(did)
            if d is not None:
                out.append(self._decide(d, 0.0, "timeout", None))
        while self.forget and self.forget[0][0] < watermark:
            _, did = heapq.heappop(self.forget)
            if self.decided.pop(did, None) is not None:
                self.forgotten.add(did)
                self.decided_added.pop(did, None)
        return out

    # -- internals ---------------------------------------------------------------------------

    def _completion_in_window(self, d: PendingDecision, profile: Profile | None) -> int | None:
        if profile is None:
            return None
        end = d.decided_at + self.window_ms
        if d.step_slot:
            st = profile.steps.get(d.action)
            if st is None:
                return None
            for at, echo in st.completed_times:
                if d.decided_at <= at <= end and echo in ("", d.decision_id):
                    return at
            return None
        done = profile.completed_at
        return done if done is not None and d.decided_at <= done <= end else None

    def _decide(
        self, d: PendingDecision, value: float, outcome: str, at: int | None
    ) -> dict[str, Any]:
        if self.pending.pop(d.decision_id, None) is not None:
            if self.added.pop(d.decision_id, None) is None:
                self.removed.add(d.decision_id)
            ids = self.by_user[d.user_key]
            ids.remove(d.decision_id)
            if not ids:
                del self.by_user[d.user_key]
        end = d.decided_at + self.window_ms
        self.decided[d.decision_id] = end
        self.decided_added[d.decision_id] = end
        heapq.heappush(self.forget, (end + self.window_ms, d.decision_id))
        self.rewards += 1
        self.positives += value > 0
        return d.reward(value, outcome, at)

    # -- incremental checkpoints -------------------------------------------------------------

    def reset_changes(self) -> None:
        """A full snapshot was taken: later deltas are relative to it."""
        self.added, self.removed, self.decided_added, self.forgotten = {}, set(), {}, set()

    def take_delta(self) -> tuple[Any, ...]:
        """What changed since the previous snapshot or delta (and forget that)."""
        delta = (
            self.added,
            self.removed,
            self.decided_added,
            self.forgotten,
            (self.rewards, self.positives, self.repeated),
        )
        self.reset_changes()
        return delta

    def apply_delta(self, delta: tuple[Any, ...]) -> None:
        """Bring a restored join up to date with a delta of :meth:`take_delta`."""
        added, removed, decided_added, forgotten, counters = delta
        for did in removed:
            d = self.pending.pop(did, None)
            if d is not None:
                ids = self.by_user.get(d.user_key, [])
                if did in ids:
                    ids.remove(did)
                if not ids:
                    self.by_user.pop(d.user_key, None)
        for did, d in added.items():
            self.pending[did] = d
            self.by_user.setdefault(d.user_key, []).append(did)
            heapq.heappush(self.closing, (d.decided_at + self.window_ms, did))
        for did in forgotten:
            self.decided.pop(did, None)
        for did, end in decided_added.items():
            self.decided[did] = end
            heapq.heappush(self.forget, (end + self.window_ms, did))
        self.rewards, self.positives, self.repeated = counters
        self.reset_changes()

    def stats(self) -> dict[str, int]:
        return {
            "pendingDecisions": len(self.pending),
            "rewards": self.rewards,
            "positiveRewards": self.positives,
            "repeatedDecisions": self.repeated,
        }
