"""Reward records: one logged decision joined with what the user did next. The stream's reward join
(:mod:`ray_app.state.rewards`) builds them, the stream worker writes them to ``onramp.rewards``
with :meth:`RewardRecord.to_json`, and the online learner, training and ``onramp report`` read
them with :meth:`RewardRecord.from_json`.

A :class:`RewardRecord` carries everything the online learner needs from the decision (its
features, the action served, its propensity, the arm and model version) and the outcome (a reward
of 1.0 for ``completed``/``converted``, 0.0 for ``abandoned``/``timeout``). On the wire it is a
JSON object of schema ``onramp.reward/2`` in camelCase, like the decision record it comes from,
with the features sparse (:mod:`ray_app.records.features`); records of schema ``/1`` (the dense
list) still read back. In memory the features are the dense list the learner trains on.

>>> r = RewardRecord(decision_id="d1", user_key="u1", slot="next_step", action="goals",
...                  action_index=3, arm="treatment", propensity=0.25, features=[0.0, 1.0],
...                  reward=1.0, outcome="completed", decided_at_ms=1000, outcome_at_ms=4000,
...                  model_version=2)
>>> RewardRecord.from_json(r.to_json()) == r
True
>>> r.to_json()["schema"], r.latency_ms
('onramp.reward/2', 3000)
>>> RewardRecord.from_json({**r.to_json(), "propensity": 0})
Traceback (most recent call last):
...
ray_app.records.errors.RewardRecordError: propensity: must be in (0, 1], got 0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import orjson

from ray_app.records._read import _integer, _number, _text
from ray_app.records.errors import RewardRecordError
from ray_app.records.features import SparseFeatures, parse_features
from ray_app.timefmt import ms_from_iso

if TYPE_CHECKING:
    from ray_app.catalog import Catalog

__all__ = ["OUTCOMES", "REWARD_SCHEMA", "REWARD_SCHEMAS", "Outcome", "RewardRecord", "reward_of"]

REWARD_SCHEMA = "onramp.reward/2"
#: The schemas a reward record may carry (``/1``: the features as a dense list).
REWARD_SCHEMAS = frozenset({"onramp.reward/1", REWARD_SCHEMA})

Outcome = Literal["completed", "abandoned", "timeout", "converted"]

#: Each outcome and the reward it is worth.
OUTCOMES: dict[str, float] = {
    "completed": 1.0,
    "converted": 1.0,
    "abandoned": 0.0,
    "timeout": 0.0,
}


def reward_of(outcome: str) -> float:
    """The reward an outcome is worth (``ValueError`` for an unknown outcome).

    >>> reward_of("converted"), reward_of("timeout")
    (1.0, 0.0)
    """
    try:
        return OUTCOMES[outcome]
    except KeyError:
        raise ValueError(
            f"unknown outcome {outcome!r}; expected one of {sorted(OUTCOMES)}"
        ) from None


@dataclass(frozen=True)
class RewardRecord:
    """A decision and its outcome (see the module docstring).

    ``action`` is the served action's id and ``action_index`` its position in the slot (the
    model's output column); ``features`` the decision's feature vector as logged; ``candidates``
    (optional) the action ids that were eligible, for evaluating a greedy policy exactly;
    ``outcome_at_ms`` is ``None`` for an outcome inferred at the end of the attribution window
    (``timeout``).
    """

    decision_id: str
    user_key: str
    slot: str
    action: str
    action_index: int
    arm: str
    propensity: float
    features: list[float]
    reward: float
    outcome: Outcome
    decided_at_ms: int
    outcome_at_ms: int | None
    model_version: int
    candidates: list[str] | None = None
    feature_schema: str | None = None
    """The hash of the feature schema ``features`` were made under (``featureSchema``; absent
    from records written before it was kept, and from decisions that did not log it)."""

    @property
    def latency_ms(self) -> int | None:
        """Milliseconds from the decision to its outcome (``None`` without an outcome time)."""
        return None if self.outcome_at_ms is None else self.outcome_at_ms - self.decided_at_ms

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (schema ``onramp.reward/2``)."""
        out: dict[str, Any] = {
            "schema": REWARD_SCHEMA,
            "decisionId": self.decision_id,
            "userKey": self.user_key,
            "slot": self.slot,
            "action": self.action,
            "actionIndex": self.action_index,
            "arm": self.arm,
            "propensity": self.propensity,
            "features": SparseFeatures.from_dense(self.features).to_json(),
            "reward": self.reward,
            "outcome": self.outcome,
            "decidedAtMs": self.decided_at_ms,
            "outcomeAtMs": self.outcome_at_ms,
            "modelVersion": self.model_version,
        }
        if self.candidates is not None:
            out["candidates"] = list(self.candidates)
        if self.feature_schema is not None:
            out["featureSchema"] = self.feature_schema
        return out

    def encode(self) -> bytes:
        """:meth:`to_json` as JSON bytes."""
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(
        cls, data: Any, slot_actions: Mapping[str, Sequence[str]] | None = None
    ) -> RewardRecord:
        """Read and validate a dict written by :meth:`to_json`; :class:`RewardRecordError` if bad.

        With ``slot_actions`` (slot -> action ids in head order, e.g. a bundle's), a missing or
        null ``actionIndex`` is resolved from ``action``.

        >>> d = {"decisionId": "d1", "userKey": "u1", "slot": "s", "action": "b", "arm": "a",
        ...      "propensity": 1, "features": [0], "reward": 0, "outcome": "timeout",
        ...      "decidedAtMs": 0, "outcomeAtMs": None, "modelVersion": 0, "actionIndex": None}
        >>> RewardRecord.from_json(d, {"s": ["a", "b"]}).action_index
        1
        """
        if not isinstance(data, Mapping):
            raise RewardRecordError("", f"expected a JSON object, got {type(data).__name__}")
        schema = data.get("schema", REWARD_SCHEMA)
        if schema not in REWARD_SCHEMAS:
            expected = " or ".join(map(repr, sorted(REWARD_SCHEMAS)))
            raise RewardRecordError("schema", f"expected {expected}, got {schema!r}")
        outcome = _text(data, "outcome")
        if outcome not in OUTCOMES:
            raise RewardRecordError(
                "outcome", f"expected one of {sorted(OUTCOMES)}, got {outcome!r}"
            )
        reward = _number(data, "reward")
        if reward not in (0.0, 1.0):
            raise RewardRecordError("reward", f"must be 0 or 1, got {reward}")
        if reward != OUTCOMES[outcome]:  # what the stream's reward join writes (reward_of)
            raise RewardRecordError(
                "reward", f"an outcome {outcome!r} is worth {OUTCOMES[outcome]:g}, got {reward:g}"
            )
        propensity = _number(data, "propensity")
        if not 0.0 < propensity <= 1.0:
            raise RewardRecordError("propensity", f"must be in (0, 1], got {data['propensity']}")
        features = _features(data.get("features"))
        slot, action = _text(data, "slot"), _text(data, "action")
        if data.get("actionIndex") is None and slot_actions is not None:
            ids = list(slot_actions.get(slot) or ())
            if action not in ids:
                raise RewardRecordError(
                    "actionIndex", f"missing, and {action!r} is not an action of slot {slot!r}"
                )
            index = ids.index(action)
        else:
            index = _integer(data, "actionIndex")
        if index < 0:
            raise RewardRecordError("actionIndex", f"must be >= 0, got {index}")
        outcome_at = data.get("outcomeAtMs")
        if outcome_at is not None:
            outcome_at = _integer(data, "outcomeAtMs")
        cands = data.get("candidates")
        if cands is not None and not (
            isinstance(cands, list) and all(isinstance(c, str) for c in cands)
        ):
            raise RewardRecordError("candidates", "expected a list of action ids")
        feature_schema = data.get("featureSchema")
        if feature_schema is not None and not isinstance(feature_schema, str):
            raise RewardRecordError("featureSchema", "expected a feature schema hash (text)")
        return cls(
            decision_id=_text(data, "decisionId"),
            user_key=_text(data, "userKey"),
            slot=slot,
            action=action,
            action_index=index,
            arm=_text(data, "arm"),
            propensity=propensity,
            features=features,
            reward=reward,
            outcome=cast(Outcome, outcome),
            decided_at_ms=_integer(data, "decidedAtMs"),
            outcome_at_ms=outcome_at,
            model_version=_integer(data, "modelVersion"),
            candidates=None if cands is None else list(cands),
            feature_schema=feature_schema,
        )

    @classmethod
    def from_decision(
        cls,
        decision: Mapping[str, Any],
        catalog: Catalog,
        outcome: Outcome,
        outcome_at_ms: int | None,
    ) -> RewardRecord:
        """Join a decision log record (``Decision.record()``, schema ``onramp.decision/2``) with
        its outcome. :class:`RewardRecordError` if the decision served nothing or names an action
        the catalog does not have.

        >>> from ray_app.catalog import load_catalog
        >>> d = {"decisionId": "d9", "userKey": "u1", "slot": "next_step", "arm": "treatment",
        ...      "modelVersion": 3, "chosen": "goals", "propensity": 0.5, "features": [0.5],
        ...      "candidates": ["goals", "role"], "timestamp": "2026-01-01T00:00:00.000+00:00"}
        >>> r = RewardRecord.from_decision(d, load_catalog(), "completed", 1_767_225_605_000)
        >>> r.action_index, r.reward, r.latency_ms
        (3, 1.0, 5000)
        """
        chosen = decision.get("chosen")
        if not isinstance(chosen, str):
            raise RewardRecordError("chosen", "the decision served no action")
        slot_name = _text(decision, "slot")
        slot = catalog.slots.get(slot_name)
        if slot is None:
            raise RewardRecordError("slot", f"unknown slot {slot_name!r}")
        index = slot.action_index.get(chosen)
        if index is None:
            raise RewardRecordError("chosen", f"unknown action {chosen!r} in slot {slot_name!r}")
        stamp = decision.get("timestamp")
        try:
            decided_at = ms_from_iso(str(stamp))
        except (ValueError, OverflowError):
            raise RewardRecordError("timestamp", f"not an ISO time: {stamp!r}") from None
        cands = decision.get("candidates")
        return cls.from_json(
            {
                "decisionId": decision.get("decisionId"),
                "userKey": decision.get("userKey"),
                "slot": slot_name,
                "action": chosen,
                "actionIndex": index,
                "arm": decision.get("arm"),
                "propensity": decision.get("propensity"),
                "features": decision.get("features"),
                "reward": reward_of(outcome),
                "outcome": outcome,
                "decidedAtMs": decided_at,
                "outcomeAtMs": outcome_at_ms,
                "modelVersion": decision.get("modelVersion"),
                "candidates": list(cands) if isinstance(cands, list) else None,
                "featureSchema": decision.get("featureSchema"),
            }
        )


def _features(raw: Any) -> list[float]:
    """The dense features of a reward record (sparse on the wire, or schema ``/1``'s list)."""
    try:
        sparse = parse_features(raw)
    except ValueError as exc:
        raise RewardRecordError("features", str(exc)) from None
    if not sparse.size:
        raise RewardRecordError("features", "expected at least one feature, got none")
    return sparse.dense()
