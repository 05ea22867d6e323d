"""Deciding: :class:`Decider` turns a batch of requests into decisions (:class:`Decision`).

Catalog eligibility -> features -> one batched model forward per (arm, slot), with the bonus for
what the model is unsure of (:func:`~ray_app.model.explore_scores`) -> policy (control:
the static flow with propensity 1; model arms: the exploring policy, with the exploration the
served model file carries (:func:`policy_for`), and the exact propensity of what it chose) ->
:class:`Decision`, which is also the decision log record.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_app.catalog import Catalog, DecisionRequestError, Slot, load_catalog
from ray_app.config import Settings
from ray_app.decide.arms import Arms
from ray_app.decide.request import DecideRequest
from ray_app.experiments import Experiment
from ray_app.features import FeatureSchema
from ray_app.model import (
    Choice,
    ControlPolicy,
    ModelBundle,
    Policy,
    cold_start_bundle,
    explore_scores,
)
from ray_app.records.decision import decision_answer, decision_json
from ray_app.records.features import SparseFeatures

__all__ = ["Decider", "Decision", "policy_for"]

#: Why a request has no profile when one may well exist: its arm goes by the last one read.
_UNREAD = frozenset({"deadline", "stream_unavailable"})

#: One request to decide: the request, the live profile (None: none yet) and its enrichment.
_Input = tuple[DecideRequest, dict[str, Any] | None, dict[str, Any] | None]


@dataclass
class Decision:
    """One answered decision; :meth:`record` is what ``onramp.decisions`` receives."""

    decision_id: str
    user_key: str
    slot: str
    arm: str
    experiment: str
    model_version: int
    policy: str
    ranked: list[dict[str, Any]]
    chosen: str | None
    propensity: float | None
    features: SparseFeatures
    schema_hash: str
    candidates: list[str]
    at_ms: int
    cold_start: bool
    context: dict[str, Any] = field(default_factory=dict)
    profile_age_ms: int | None = None
    action_index: int | None = None
    """Index of ``chosen`` among the slot's actions (the model head's output)."""
    cold_reason: str | None = None
    """Why there was no live profile: ``unknown_user``, ``deadline``, ``stream_unavailable``."""
    trace_id: str | None = None
    """Trace id of the decision's span when it was traced (its span links to the trace of the
    profile's latest event); in the record as ``traceId``."""
    event_trace: str | None = None
    """``traceparent`` of the latest traced event of the profile decided from (what the
    decision's span links to)."""
    merged_from: list[str] | None = None
    """Ids merged into the profile decided from (identity stitching), for the parity replay."""

    def answer(self) -> dict[str, Any]:
        """The HTTP answer."""
        return decision_answer(self)

    def record(self) -> dict[str, Any]:
        """The decision log record (schema ``onramp.decision/2``, :class:`DecisionRecord`'s
        encoder :func:`~ray_app.records.decision.decision_json`)."""
        return decision_json(self, self.schema_hash)


def policy_for(policy: Policy, metadata: Mapping[str, Any]) -> Policy:
    """``policy`` with the exploration a model file carries: the learner publishes ``epsilon``
    (raised for a while after a drift) and ``gamma`` (squarecb: growing as it learns).

    >>> policy_for(Policy("squarecb"), {"gamma": 120.0, "epsilon": 2}).gamma
    120.0
    """
    epsilon = _number(metadata.get("epsilon"))
    gamma = _number(metadata.get("gamma"))
    if epsilon is not None and 0 <= epsilon <= 1 and policy.epsilon != epsilon:
        policy = dataclasses.replace(policy, epsilon=epsilon)
    if gamma is not None and 0 < gamma < 1e12 and policy.gamma != gamma:
        policy = dataclasses.replace(policy, gamma=gamma)
    return policy


def _number(v: Any) -> float | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


class _Prepared:
    """A request the catalog accepted, ready to score: its slot, eligible action indices, arm,
    row in the batch's feature matrix and why it had no live profile (None: it had one)."""

    __slots__ = ("arm", "cold_reason", "eligible", "profile", "request", "row", "slot")

    def __init__(
        self,
        request: DecideRequest,
        profile: dict[str, Any] | None,
        slot: Slot,
        eligible: list[int],
        arm: str,
        row: int,
        cold_reason: str | None,
    ) -> None:
        self.request = request
        self.profile = profile
        self.slot = slot
        self.eligible = eligible
        self.arm = arm
        self.row = row
        self.cold_reason = cold_reason


class Decider:
    """Everything a replica needs to decide; see the module docstring. Not thread-safe for
    swaps; a swap replaces one attribute, so a request in flight finishes with what it read."""

    def __init__(
        self,
        catalog: Catalog,
        arms: Arms,
        policy: Policy,
        bundles: dict[str, ModelBundle] | None = None,
    ) -> None:
        self.catalog = catalog
        self.schema = FeatureSchema.from_catalog(catalog)
        self.arms = arms
        self.policy = policy
        cold = cold_start_bundle(self.schema, catalog)
        self.bundles: dict[str, ModelBundle] = {"treatment": cold, "treatment_b": cold}
        for arm, bundle in (bundles or {}).items():
            self.swap(arm, bundle)
        self._control = {name: ControlPolicy.for_slot(catalog, name) for name in catalog.slot_names}

    @classmethod
    def from_settings(cls, settings: Settings) -> Decider:
        from ray_app.decide.user_config import policy_of

        d = settings.decide
        return cls(load_catalog(d.catalog_path), Arms(d), policy_of(d))

    def swap(self, arm: str, bundle: ModelBundle | None, force: bool = False) -> bool:
        """Serve ``bundle`` to ``arm`` if it is newer than what the arm serves; True if swapped.
        Newer is a higher :attr:`~ray_app.model.ModelBundle.serving_rank` (a registry promotion
        or rollback, then the version); with ``force`` (an operator named this file) any
        version, and ``None`` is the cold start. Raises
        :class:`~ray_app.model.ModelFileError` if it cannot serve this catalog."""
        if bundle is None:
            bundle = cold_start_bundle(self.schema, self.catalog)
        bundle.check(self.schema, self.catalog, strict_catalog=False)
        current = self.bundles.get(arm)
        if (
            not force
            and current is not None
            and bundle.serving_rank <= current.serving_rank
            and current.serving_rank > (0, 0)
        ):
            return False
        self.bundles[arm] = bundle
        return True

    def versions(self) -> dict[str, int]:
        return {arm: b.version for arm, b in self.bundles.items()}

    def decide_many(
        self,
        requests: Sequence[_Input],
        now_ms: int,
        cold_reasons: Sequence[str | None] | None = None,
    ) -> list[Decision | DecisionRequestError]:
        """Decide a batch of (request, live profile or None, enrichment or None).

        A request naming an unknown slot, an unknown action or ineligible candidates gets the
        catalog's :class:`~ray_app.catalog.DecisionRequestError` in its place (an HTTP 422
        with the field and the reason); the others are decided. ``cold_reasons`` (one per
        request) says why a request has no live profile; without it, no profile is
        ``unknown_user``.
        """
        bundles = dict(self.bundles)  # one model per arm for the whole batch, whatever swaps
        # each model arm explores as its own model file says (the learner publishes gamma and
        # epsilon with the weights), over the configured policy
        base = self.policy
        policies = {arm: policy_for(base, b.metadata) for arm, b in bundles.items()}
        prepared, x = self._prepare(requests, now_ms, cold_reasons)
        scores = _score(prepared, x, bundles)
        # the logged features, rounded once for the whole batch
        logged = SparseFeatures.from_rows(x, decimals=6)
        return [
            p
            if isinstance(p, DecisionRequestError)
            else self._decision(
                p, scores.get(i), logged[p.row], bundles, policies.get(p.arm, base), now_ms
            )
            for i, p in enumerate(prepared)
        ]

    def _prepare(
        self,
        requests: Sequence[_Input],
        now_ms: int,
        cold_reasons: Sequence[str | None] | None,
    ) -> tuple[list[_Prepared | DecisionRequestError], np.ndarray]:
        """Each request checked against the catalog and assigned an arm, and the feature matrix
        of those the catalog accepted (row :attr:`_Prepared.row`); a request the catalog refuses
        is its error."""
        prepared: list[_Prepared | DecisionRequestError] = []
        profiles: list[dict[str, Any] | None] = []
        enrichments: list[dict[str, Any] | None] = []
        contexts: list[dict[str, Any]] = []
        catalog, arms = self.catalog, self.arms
        for i, (req, profile, enrichment) in enumerate(requests):
            if cold_reasons is None:
                cold = "unknown_user" if profile is None else None
            else:
                cold = cold_reasons[i]
            unread = profile is None and cold in _UNREAD
            try:
                slot = catalog.slot(req.slot)
                eligible = catalog.eligible(req.slot, profile, enrichment, req.candidates, unread)
            except DecisionRequestError as exc:
                prepared.append(exc)
                continue
            if unread:
                arm = arms.assign_unread(req.user_key)
            else:
                arm = arms.assign(req.user_key, profile)
            prepared.append(_Prepared(req, profile, slot, eligible, arm, len(profiles), cold))
            profiles.append(profile)
            enrichments.append(enrichment)
            contexts.append(req.context)
        x = self.schema.featurize_many(profiles, enrichments, contexts, now_ms)
        return prepared, x

    def _choose(
        self, p: _Prepared, scores: np.ndarray | None, policy: Policy, draw_key: str
    ) -> Choice:
        """The draw among the eligible actions: the static flow for control, else ``policy``
        over the model's ``scores``; ``draw_key`` (the user, the slot and the decision id) is
        what the draw depends on."""
        if Experiment.serves_control(p.arm):
            zeros = np.zeros(p.slot.size, dtype=np.float32)
            return self._control[p.slot.name].choose(zeros, p.eligible, draw_key)
        assert scores is not None, "a model arm's eligible request is scored"
        return policy.choose(scores, p.eligible, draw_key)

    def _decision(
        self,
        p: _Prepared,
        scores: np.ndarray | None,
        features: SparseFeatures,
        bundles: Mapping[str, ModelBundle],
        policy: Policy,
        now_ms: int,
    ) -> Decision:
        """One prepared request's :class:`Decision` (``scores``: the model's, None for control;
        ``features``: its feature vector as logged)."""
        req, profile, slot = p.request, p.profile, p.slot
        decision_id = req.decision_id or str(uuid.uuid4())
        control = Experiment.serves_control(p.arm)
        # the draw is the request's own: a client's id reused for another user or slot (or
        # picked to steer one user's draws onto another's) does not repeat another's draw
        draw_key = f"{req.user_key}\x1f{slot.name}\x1f{decision_id}"
        choice = self._choose(p, scores, policy, draw_key) if p.eligible else None
        last = profile.get("lastReceived") if profile else None
        # logged under the id whose profile answered (an id merged into another reads the
        # survivor's profile): the decision's reward join lives in that id's partition
        owner = profile.get("userKey") if profile else None
        return Decision(
            decision_id=decision_id,
            user_key=owner if isinstance(owner, str) and owner else req.user_key,
            slot=slot.name,
            arm=p.arm,
            experiment=self.arms.name,
            model_version=0 if control else bundles[p.arm].version,
            policy="control" if control else policy.kind,
            ranked=[] if choice is None else _ranked(slot, choice, None if control else scores),
            chosen=None if choice is None else slot.actions[choice.chosen].id,
            propensity=None if choice is None else choice.propensity,
            features=features,
            schema_hash=self.schema.hash,
            candidates=[slot.actions[a].id for a in p.eligible],
            at_ms=now_ms,
            cold_start=p.cold_reason is not None,
            cold_reason=p.cold_reason,
            context=dict(req.context),
            profile_age_ms=now_ms - last if isinstance(last, int) else None,
            action_index=None if choice is None else choice.chosen,
            event_trace=profile.get("traceparent") if profile else None,
            merged_from=profile.get("mergedFrom") if profile else None,
        )


def _score(
    prepared: Sequence[_Prepared | DecisionRequestError],
    x: np.ndarray,
    bundles: Mapping[str, ModelBundle],
) -> dict[int, np.ndarray]:
    """One forward per (arm's bundle, slot) over the rows of ``x`` that need it (eligible, in a
    model arm): request index -> its scores (the logits plus the bundle's exploration bonus:
    :func:`~ray_app.model.explore_scores`; what the policy ranks by and the record logs)."""
    groups: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for i, p in enumerate(prepared):
        if isinstance(p, _Prepared) and p.eligible and not Experiment.serves_control(p.arm):
            groups.setdefault((p.arm, p.slot.index), []).append((i, p.row))
    scores: dict[int, np.ndarray] = {}
    for (arm, slot_index), members in groups.items():
        rows = [row for _, row in members]
        out = explore_scores(bundles[arm], x if len(rows) == len(x) else x[rows], slot_index)
        for k, (i, _) in enumerate(members):
            scores[i] = out[k]
    return scores


def _ranked(slot: Slot, choice: Choice, scores: np.ndarray | None) -> list[dict[str, Any]]:
    """The eligible actions best first, with their scores (None for control) and probabilities."""
    return [
        {
            "action": slot.actions[a].id,
            "score": None if scores is None else round(float(scores[a]), 6),
            "probability": round(choice.probabilities.get(a, 0.0), 6),
        }
        for a in choice.ranking
    ]
