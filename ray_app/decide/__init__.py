"""Decisions: what a user should see next, from the live profile, a model and an exploring policy.

The pieces (each pure and tested alone) come together here, without HTTP or Ray:

* :class:`DecideRequest` - the request body of ``/v1/decide``, validated with precise errors;
* :class:`Arms` - the experiment: which arm a user is in, sticky across split changes (a user
  keeps the arm of the split in force when they were first seen; see :class:`Arms`);
* :class:`Decider` - catalog eligibility -> features -> one batched model forward per slot ->
  policy (control: the static flow with propensity 1; model arms: the exploring policy and the
  exact propensity of what it chose) -> :class:`Decision`, which is also the decision log record.

``deployments/collector.py`` serves it over HTTP, reads the profile from the stream worker that
owns the user, and logs every decision to ``onramp.decisions`` with :class:`DecisionLog`.

>>> from ray_app.config import Settings
>>> d = Decider.from_settings(Settings())
>>> [dec] = d.decide_many([(DecideRequest(user_id="u1", slot="next_step", decision_id="d1"),
...                         None, None)], now_ms=1_767_225_600_000)
>>> dec.chosen, dec.propensity, dec.cold_start, dec.model_version
('welcome', 1.0, True, 0)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ray_app.catalog import Catalog, DecisionRequestError, load_catalog
from ray_app.config import DecideSettings, Settings
from ray_app.experiments import CONTROL, HOLDOUT, Experiment
from ray_app.features import FeatureSchema
from ray_app.model import ControlPolicy, ModelBundle, Policy, cold_start_bundle, score_batch
from ray_app.records import DecisionRecord

__all__ = [
    "MAX_DECIDE_BYTES",
    "Arms",
    "DecideRefused",
    "DecideRequest",
    "Decider",
    "Decision",
    "parse_decide",
]

#: Largest ``POST /v1/decide`` body: a decision request is a few hundred bytes.
MAX_DECIDE_BYTES = 64 * 1024

#: A context value: what features read (flat fields, one level of nesting, short lists). The type
#: is the limit, so that the OpenAPI document says exactly what is accepted and a request nested
#: deeper is a 400 that names the field, not work for the replica.
_Scalar = str | int | float | bool | None
_ContextValue = _Scalar | list[_Scalar] | dict[str, _Scalar | list[_Scalar]]


class DecideRequest(BaseModel):
    """``POST /v1/decide`` (or the query string of ``GET /v1/decide``)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        # the identity rule below, in the OpenAPI document too
        json_schema_extra={
            "anyOf": [
                {"required": ["userId"], "properties": {"userId": {"type": "string"}}},
                {"required": ["anonymousId"], "properties": {"anonymousId": {"type": "string"}}},
            ]
        },
    )

    user_id: str | None = Field(None, alias="userId", min_length=1, max_length=512)
    anonymous_id: str | None = Field(None, alias="anonymousId", min_length=1, max_length=512)
    slot: str = Field(min_length=1, max_length=128, description="Catalog slot to decide.")
    context: dict[str, _ContextValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Request context (device, referrer, locale, ...): at most 64 fields, each a "
        "scalar, a list of scalars or an object of those (one level).",
    )
    candidates: list[str] | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Restrict the answer to these actions (each must be eligible).",
    )
    decision_id: str | None = Field(
        None,
        alias="decisionId",
        min_length=1,
        max_length=128,
        description="Idempotency key: the same id gives the same draw (default: a new UUID).",
    )

    @model_validator(mode="after")
    def _identity(self) -> DecideRequest:
        if self.user_id is None and self.anonymous_id is None:
            raise ValueError("send user_id or anonymous_id")
        return self

    @property
    def user_key(self) -> str:
        """The key events of this user are partitioned by (as the collector keys them)."""
        return self.user_id or self.anonymous_id or ""


_CONTEXT_SHAPE = "a context value is a scalar, a list of scalars or an object of those (one level)"


@dataclass(frozen=True)
class DecideRefused:
    """Why a ``/v1/decide`` request cannot be read: the HTTP status and the error body."""

    status: int
    error: str
    field: str | None
    message: str

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "field": self.field, "message": self.message}


def parse_decide(body: bytes | Mapping[str, Any]) -> DecideRequest | DecideRefused:
    """A ``POST`` body (bytes) or a query string's fields (a mapping) -> the request, or why not.
    Never raises: any input is a request or a 4xx with the field named.

    >>> parse_decide(b'{"userId": "u1", "slot": "next_step"}').user_key
    'u1'
    >>> parse_decide(b'[1]')
    DecideRefused(status=400, error='not_an_object', field=None, message='send a JSON object')
    >>> parse_decide(b'{"userId": "u1", "slot": "s", "context": {"a": {"b": {"c": 1}}}}')
    ... # doctest: +NORMALIZE_WHITESPACE
    DecideRefused(status=400, error='invalid_request', field='context.a', message='a context value
    is a scalar, a list of scalars or an object of those (one level)')
    """
    data: Any = body
    if isinstance(body, bytes | bytearray | memoryview):
        if len(body) > MAX_DECIDE_BYTES:
            return DecideRefused(
                413, "body_too_large", None, f"the limit is {MAX_DECIDE_BYTES} bytes"
            )
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return DecideRefused(400, "invalid_json", None, str(exc))
    if not isinstance(data, Mapping):
        return DecideRefused(400, "not_an_object", None, "send a JSON object")
    try:
        return DecideRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        loc = err["loc"]
        if len(loc) >= 2 and loc[0] == "context" and err["type"] != "too_long":
            return DecideRefused(400, "invalid_request", f"context.{loc[1]}", _CONTEXT_SHAPE)
        where = ".".join(str(p) for p in loc) or None
        return DecideRefused(400, "invalid_request", where, str(err["msg"])[:512])
    except Exception as exc:  # last resort: no body may become a 500
        return DecideRefused(400, "invalid_request", None, f"{type(exc).__name__}: {exc}"[:512])


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
    features: list[float]
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
        return {
            "decisionId": self.decision_id,
            "slot": self.slot,
            "chosen": self.chosen,
            "propensity": self.propensity,
            "ranked": self.ranked,
            "arm": self.arm,
            "experiment": self.experiment,
            "modelVersion": self.model_version,
            "policy": self.policy,
            "coldStart": self.cold_start,
            "coldReason": self.cold_reason,
        }

    def record(self) -> dict[str, Any]:
        """The decision log record (schema ``onramp.decision/1``, :class:`DecisionRecord`)."""
        return DecisionRecord(
            decision_id=self.decision_id,
            user_key=self.user_key,
            slot=self.slot,
            chosen=self.chosen,
            propensity=self.propensity,
            action_index=self.action_index,
            features=self.features,
            at_ms=self.at_ms,
            arm=self.arm,
            model_version=self.model_version,
            candidates=self.candidates,
            ranked=self.ranked,
            experiment=self.experiment,
            policy=self.policy,
            cold_start=self.cold_start,
            cold_reason=self.cold_reason,
            feature_schema=self.schema_hash,
            context=self.context,
            profile_age_ms=self.profile_age_ms,
            trace_id=self.trace_id,
            merged_from=self.merged_from,
        ).to_json()


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


class Arms:
    """Experiment assignment, sticky across split changes without storing assignments.

    The current split is ``decide.arms``; ``decide.earlier_splits`` lists the splits before it
    with their start times. A user is assigned by the split that was in force when the stream
    first saw them (``firstSeen`` of their profile, which is exactly-once state); a user with no
    profile yet is new and gets the current split. So changing the split moves only users who
    arrive afterwards, unless ``decide.reassign`` is set. Holdout membership depends on the salt
    and the holdout share only.

    >>> from ray_app.config import DecideSettings
    >>> s = DecideSettings(arms={"control": 1.0, "treatment": 0.0}, earlier_splits=[
    ...     {"since": "2026-01-01T00:00:00Z", "arms": {"control": 0.0, "treatment": 1.0}}])
    >>> arms = Arms(s)
    >>> arms.assign("u1", {"firstSeen": 1_767_225_600_000 + 5})   # first seen under the old split
    'treatment'
    >>> arms.assign("u1", None)                                    # new user: the current split
    'control'
    """

    def __init__(self, settings: DecideSettings) -> None:
        def experiment(weights: dict[str, float], where: str = "decide") -> Experiment:
            return Experiment.from_dict(
                {
                    "name": settings.experiment,
                    "salt": settings.salt,
                    "arms": weights,
                    "holdout": settings.holdout,
                },
                where=where,
            )

        self.name = settings.experiment
        self.current = experiment(settings.arms)
        self.reassign = settings.reassign
        splits = sorted(settings.earlier_splits, key=lambda s: s.since)
        self.earlier: list[tuple[int, Experiment]] = [
            (_ms(sp.since), experiment(sp.arms, f"decide.earlier_splits[{n}]"))
            for n, sp in enumerate(splits)
        ]

    def in_force(self, first_seen_ms: int | None) -> Experiment:
        """The split in force at a time (None: now)."""
        if first_seen_ms is None or self.reassign:
            return self.current
        chosen = self.current
        for i, (since, exp) in enumerate(self.earlier):
            until = self.earlier[i + 1][0] if i + 1 < len(self.earlier) else None
            if first_seen_ms >= since and (until is None or first_seen_ms < until):
                chosen = exp
        return chosen

    def assign(self, user_key: str, profile: dict[str, Any] | None) -> str:
        """The user's arm. A person whose ids were merged (identity stitching) keeps the arm of
        the first id seen of them (the profile's ``assignmentKey``), whichever id asks.

        >>> from ray_app.config import DecideSettings
        >>> arms = Arms(DecideSettings())
        >>> merged = {"assignmentKey": "anon-7", "firstSeen": 1}
        >>> arms.assign("user-7", merged) == arms.assign("anon-7", None)
        True
        """
        first = profile.get("firstSeen") if profile else None
        key = profile.get("assignmentKey") if profile else None
        return self.in_force(first if isinstance(first, int) else None).assign(
            key if isinstance(key, str) and key else user_key
        )


def _ms(t: dt.datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


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
        d = settings.decide
        policy = Policy(
            kind=d.policy, epsilon=d.epsilon, gamma=d.gamma, temperature=d.temperature, seed=d.seed
        )
        return cls(load_catalog(d.catalog_path), Arms(d), policy)

    def swap(self, arm: str, bundle: ModelBundle) -> bool:
        """Serve ``bundle`` to ``arm`` if it is newer than what the arm serves; True if swapped.
        Newer is a higher :attr:`~ray_app.model.ModelBundle.serving_rank` (a registry promotion
        or rollback, then the version). Raises :class:`~ray_app.model.ModelFileError` if it
        cannot serve this catalog."""
        bundle.check(self.schema, self.catalog, strict_catalog=False)
        current = self.bundles.get(arm)
        if (
            current is not None
            and bundle.serving_rank <= current.serving_rank
            and current.serving_rank > (0, 0)
        ):
            return False
        self.bundles[arm] = bundle
        self.policy = policy_for(self.policy, bundle.metadata)
        return True

    def versions(self) -> dict[str, int]:
        return {arm: b.version for arm, b in self.bundles.items()}

    def decide_many(
        self,
        requests: Sequence[tuple[DecideRequest, dict[str, Any] | None, dict[str, Any] | None]],
        now_ms: int,
        cold_reasons: Sequence[str | None] | None = None,
    ) -> list[Decision | DecisionRequestError]:
        """Decide a batch of (request, live profile or None, enrichment or None).

        A request naming an unknown slot, an unknown action or ineligible candidates gets the
        catalog's :class:`~ray_app.catalog.DecisionRequestError` in its place (an HTTP 422
        with the field and the reason); the others are decided.
        """
        bundles = dict(self.bundles)  # one model per arm for the whole batch, whatever swaps
        policy = self.policy
        prepared: list[Any] = []
        errors: dict[int, DecisionRequestError] = {}
        for i, (req, profile, enrichment) in enumerate(requests):
            try:
                slot = self.catalog.slot(req.slot)
                eligible = self.catalog.eligible(req.slot, profile, enrichment, req.candidates)
            except DecisionRequestError as exc:
                errors[i] = exc
                prepared.append(None)
                continue
            arm = self.arms.assign(req.user_key, profile)
            x = self.schema.featurize(profile, enrichment, req.context, now_ms)
            cold = (
                ("unknown_user" if profile is None else None)
                if cold_reasons is None
                else cold_reasons[i]
            )
            prepared.append((req, profile, slot, eligible, arm, x, cold))
        # one forward per (arm's bundle, slot) over every request that needs it
        scores: dict[int, np.ndarray] = {}
        groups: dict[tuple[str, int], list[int]] = {}
        for i, item in enumerate(prepared):
            if item is None:
                continue
            _, _, slot, eligible, arm, _, _ = item
            if eligible and not Experiment.serves_control(arm):
                groups.setdefault((arm, slot.index), []).append(i)
        for (arm, slot_index), members in groups.items():
            x = np.stack([prepared[i][5] for i in members])
            out = score_batch(bundles[arm], x, slot_index)
            for row, i in enumerate(members):
                scores[i] = out[row]
        decisions: list[Decision | DecisionRequestError] = []
        for i, item in enumerate(prepared):
            if item is None:
                decisions.append(errors[i])
                continue
            req, profile, slot, eligible, arm, x, cold = item
            decision_id = req.decision_id or str(uuid.uuid4())
            control = Experiment.serves_control(arm)
            bundle = None if control else bundles[arm]
            ranked: list[dict[str, Any]] = []
            chosen: str | None = None
            chosen_index: int | None = None
            propensity: float | None = None
            if eligible:
                if control:
                    choice = self._control[slot.name].choose(
                        np.zeros(slot.size, dtype=np.float32), eligible, decision_id
                    )
                    s = None
                else:
                    s = scores[i]
                    choice = policy.choose(s, eligible, decision_id)
                chosen = slot.actions[choice.chosen].id
                chosen_index = choice.chosen
                propensity = choice.propensity
                ranked = [
                    {
                        "action": slot.actions[a].id,
                        "score": None if s is None else round(float(s[a]), 6),
                        "probability": round(choice.probabilities.get(a, 0.0), 6),
                    }
                    for a in choice.ranking
                ]
            last = profile.get("lastReceived") if profile else None
            # logged under the id whose profile answered (an id merged into another reads the
            # survivor's profile): the decision's reward join lives in that id's partition
            owner = profile.get("userKey") if profile else None
            decisions.append(
                Decision(
                    decision_id=decision_id,
                    user_key=owner if isinstance(owner, str) and owner else req.user_key,
                    slot=slot.name,
                    arm=arm,
                    experiment=self.arms.name,
                    model_version=0 if bundle is None else bundle.version,
                    policy="control" if control else policy.kind,
                    ranked=ranked,
                    chosen=chosen,
                    propensity=propensity,
                    features=np.round(x.astype(np.float64), 6).tolist(),
                    schema_hash=self.schema.hash,
                    candidates=[slot.actions[a].id for a in eligible],
                    at_ms=now_ms,
                    cold_start=cold is not None,
                    cold_reason=cold,
                    context=dict(req.context),
                    profile_age_ms=now_ms - last if isinstance(last, int) else None,
                    action_index=chosen_index,
                    event_trace=profile.get("traceparent") if profile else None,
                    merged_from=profile.get("mergedFrom") if profile else None,
                )
            )
        return decisions


# Re-exported for the HTTP layer.
HOLDOUT_ARM = HOLDOUT
CONTROL_ARM = CONTROL
