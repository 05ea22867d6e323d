"""Subjects of the contract suite: every scorer, learner, policy and state core, built the way
the product builds them, behind one small adapter per family, and the inputs the checks feed
them (awkward ones included)."""

from __future__ import annotations

import datetime as dt
import io
import json
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ray_app.catalog import load_catalog
from ray_app.features import FeatureSchema
from ray_app.learn import LearnerConfig, OnlineLearner
from ray_app.model import ControlPolicy, ModelBundle, Policy, Scorer, cold_start_bundle, score_batch
from ray_app.records import RewardRecord
from ray_app.state import Event, Profile, SessionShard, StateConfig, apply
from validation.batch import BatchValidator

CATALOG = load_catalog()
SCHEMA = FeatureSchema.from_catalog(CATALOG)
SLOTS = list(CATALOG.slots.values())
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms

# -- inputs -----------------------------------------------------------------------------------

#: Profiles (as ``Profile.as_dict()`` gives them) and request contexts that a decision may meet:
#: unknown user, empty, partial, and full of keys, values and steps nobody declared.
AWKWARD_INPUTS: list[tuple[Any, Any, Any]] = [
    (None, None, None),
    ({}, {}, {}),
    ({"stepsCompleted": ["welcome"]}, None, None),
    (
        {"stepsCompleted": ["no-such-step"], "stepsSeen": ["???"], "currentStep": "nowhere"},
        None,
        {},
    ),
    (
        {"traits": {"role": "astronaut", "favouriteColour": "teal", "nested": {"a": [1, 2]}}},
        {"companySize": "not a number", "industry": None},
        {"device": "toaster", "locale": "xx-YY", "unknownField": [1, 2, 3]},
    ),
    ({"counts": {"track:Step Viewed": -5}, "lastSeen": "yesterday", "steps": None}, None, None),
]


def feature_rows() -> np.ndarray:
    """One feature row per awkward input (``[n, dim]`` float32)."""
    return np.stack([SCHEMA.featurize(p, e, c, now_ms=T0) for p, e, c in AWKWARD_INPUTS])


def reward_records(n: int, start: int = 0, seed: int = 0) -> list[RewardRecord]:
    """``n`` rewards over every slot, with varied propensities, arms and features; the reward
    depends on the action and a trait, so there is something to learn."""
    rng = random.Random(seed)
    rows = [SCHEMA.featurize({"traits": {"role": r}}, now_ms=T0).tolist() for r in ("a", "b", "c")]
    out = []
    for i in range(start, start + n):
        slot = SLOTS[i % len(SLOTS)]
        a = rng.randrange(slot.size)
        k = rng.randrange(len(rows))
        eligible = sorted({a, *rng.sample(range(slot.size), min(3, slot.size))})
        reward = float(rng.random() < (0.8 if a == k else 0.2))
        out.append(
            RewardRecord(
                decision_id=f"d{i}",
                user_key=f"u{i}",
                slot=slot.name,
                action=slot.action_ids[a],
                action_index=a,
                arm=rng.choice(["treatment", "treatment", "control"]),
                propensity=rng.choice([1 / len(eligible), 0.05, 0.5, 0.9]),
                features=list(rows[k]),
                reward=reward,
                outcome="completed" if reward else "abandoned",
                decided_at_ms=T0 + i * 1_000,
                outcome_at_ms=T0 + i * 1_000 + 500,
                model_version=0,
                candidates=[slot.action_ids[j] for j in eligible] if i % 4 else None,
            )
        )
    return out


def weights_of(model: Any) -> dict[str, torch.Tensor]:
    scorer = model if isinstance(model, Scorer) else model.scorer
    return {k: v.detach().clone() for k, v in scorer.state_dict().items()}


# -- scorers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScorerSubject:
    """A scorer family member: ``build(seed)`` makes one, ``dumps``/``loads`` are its bytes,
    ``scores(model, x, slot_index)`` runs it (``score_batch``, what the decision path calls)."""

    name: str
    build: Callable[[int], Any]
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]
    scores: Callable[[Any, np.ndarray, int], np.ndarray] = score_batch

    def __str__(self) -> str:
        return self.name


def _scorer_dumps(s: Scorer) -> bytes:
    buf = io.BytesIO()
    torch.save({"architecture": s.architecture, "weights": s.state_dict()}, buf)
    return buf.getvalue()


def _scorer_loads(data: bytes) -> Scorer:
    state = torch.load(io.BytesIO(data), weights_only=True)
    s = Scorer(**state["architecture"])
    s.load_state_dict(state["weights"])
    return s


def _online_bundle(seed: int) -> ModelBundle:
    """A bundle the online learner published after learning some rewards."""
    learner = OnlineLearner(
        cold_start_bundle(SCHEMA, CATALOG, seed=seed, hidden=16),
        LearnerConfig(batch_size=16, replay_steps=1, warmup_rewards=0),
        clock=lambda: 0.0,
    )
    learner.learn(reward_records(96, seed=seed))
    bundle = learner.maybe_publish(now=1.0)
    assert bundle is not None
    return bundle


def _bundle_loads(data: bytes) -> ModelBundle:
    return ModelBundle.from_bytes(data, SCHEMA, CATALOG)


SCORERS = [
    ScorerSubject(
        "Scorer",
        lambda seed: Scorer(SCHEMA.dim, [s.size for s in SLOTS], hidden=16, seed=seed),
        _scorer_dumps,
        _scorer_loads,
    ),
    ScorerSubject(
        "ModelBundle(cold_start)",
        lambda seed: cold_start_bundle(SCHEMA, CATALOG, seed=seed, hidden=16),
        ModelBundle.to_bytes,
        _bundle_loads,
    ),
    ScorerSubject("ModelBundle(online)", _online_bundle, ModelBundle.to_bytes, _bundle_loads),
]

# -- learners ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LearnerSubject:
    """An online learner as the service builds one: ``bundle()`` is what it starts from."""

    name: str
    bundle: Callable[[], ModelBundle]
    config: LearnerConfig
    cls: type[OnlineLearner] = OnlineLearner

    def make(self, bundle: ModelBundle | None = None) -> OnlineLearner:
        return self.cls(bundle or self.bundle(), self.config, clock=lambda: 0.0)

    def __str__(self) -> str:
        return self.name


# small batches and a low guardrail minimum: every part (replay, guardrail check, control
# comparison, boosts) runs within the few hundred rewards a check feeds
_SMALL = dict(batch_size=16, guardrail_min_records=5, replay_steps=2, publish_interval_s=0.0)

LEARNERS = [
    LearnerSubject(
        "OnlineLearner(adam, cold start)",
        lambda: cold_start_bundle(SCHEMA, CATALOG, seed=1, hidden=16),
        LearnerConfig(**_SMALL, control_min_treatment=20, control_min_control=10),
    ),
    LearnerSubject(
        "OnlineLearner(sgd, no replay)",
        lambda: cold_start_bundle(SCHEMA, CATALOG, seed=2, hidden=16),
        LearnerConfig(**{**_SMALL, "replay_size": 0}, optimizer="sgd", lr=0.1),
    ),
    LearnerSubject(
        "OnlineLearner(from a trained model, no control guardrail)",
        lambda: _online_bundle(3),
        LearnerConfig(**_SMALL, control_z=0.0, guardrail_share=0.3),
    ),
]

# -- policies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySubject:
    """A policy family member: ``build(seed)`` makes one; ``explores``: it draws at random
    (so another seed gives other choices)."""

    name: str
    build: Callable[[int], Any]
    explores: bool = True

    def __str__(self) -> str:
        return self.name


POLICIES = [
    PolicySubject("Policy(epsilon_greedy)", lambda seed: Policy("epsilon_greedy", 0.3, seed=seed)),
    PolicySubject("Policy(squarecb)", lambda seed: Policy("squarecb", gamma=5.0, seed=seed)),
    PolicySubject("Policy(softmax)", lambda seed: Policy("softmax", temperature=1.0, seed=seed)),
    PolicySubject("Policy(thompson)", lambda seed: Policy("thompson", floor=0.1, seed=seed)),
    PolicySubject(
        "ControlPolicy", lambda seed: ControlPolicy.for_slot(CATALOG, "next_step"), explores=False
    ),
]

#: (scores, eligible, uncertainty) a policy may be handed: NaN, infinities, unsorted subsets,
#: lists instead of arrays, missing or broken uncertainty.
AWKWARD_SCORES: list[tuple[Any, list[int], Any]] = [
    (np.array([0.1, 2.0, 0.5, -1.0, 0.0, 0.3, 0.2]), [0, 1, 2, 3, 4, 5, 6], None),
    (np.array([np.nan, 1.0, np.nan, 0.0, 0.0, 0.0, 0.0]), [2, 0, 1], None),
    (np.full(7, np.nan), [6, 3], np.full(7, np.nan)),
    (np.array([np.inf, -np.inf, 0.0, np.inf, 1.0, 0.0, 0.0]), [0, 1, 3, 4], np.full(7, np.inf)),
    ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [5], [1.0] * 7),
    (np.array([1e308, -1e308, 3.0, 2.0, 1.0, 0.0, -0.0]), [1, 0, 4], np.array([0.0] * 7)),
]

# -- state core -------------------------------------------------------------------------------


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def event_record(i: int, user: str = "u1", **extra: Any) -> tuple[bytes, bytes]:
    """A normalized event of ``onramp.events`` (Kafka key, value); ``extra`` overrides."""
    steps = ["welcome", "role", "team_size", "goals"]
    d: dict[str, Any] = {
        "messageId": f"m{i}",
        "type": "track",
        "event": ["Step Viewed", "Step Completed"][i % 2],
        "userKey": user,
        "timestamp": _iso(T0 + i * 1_000),
        "receivedAt": _iso(T0 + i * 1_000 + 50),
        "sessionId": f"s-{user}",
        "seq": i,
        "stepId": steps[(i // 2) % len(steps)],
        "context": {"traits": {"role": ["a", "b"][i % 2]}},
    }
    d.update(extra)
    return user.encode(), json.dumps({k: v for k, v in d.items() if v is not None}).encode()


def event_stream(n: int, users: int = 3) -> list[tuple[bytes, bytes]]:
    """``n`` events of ``users`` users in order, then a few replayed (duplicates)."""
    out = [event_record(i, f"u{i % users}") for i in range(n)]
    return out + out[n - 4 : n - 1]


#: Records a partition may receive: optional fields missing, unknown fields and types,
#: tombstones, junk bytes, wrong types, unknown steps.
AWKWARD_RECORDS: list[tuple[bytes | None, bytes | None]] = [
    event_record(100, sessionId=None, seq=None, stepId=None),
    event_record(101, unknownField={"x": [1, 2]}, properties={"plan": "pro", "n": None}),
    event_record(102, type="screen", event=None),
    event_record(103, type="identify", event=None, traits={"role": "c", "new": {"deep": 1}}),
    event_record(104, stepId="no-such-step"),
    event_record(105, timestamp=12345),
    event_record(106, userKey=None),
    (b"u1", None),
    (b"u1", b"\xff\xfe not utf-8"),
    (b"u1", b"[1, 2, 3]"),
    (None, b"{}"),
]


@dataclass(frozen=True)
class ShardSubject:
    """A partition's state: ``make()`` a fresh one; ``restore(base, deltas)`` from snapshots."""

    name: str
    make: Callable[[], SessionShard]
    restore: Callable[..., SessionShard] = SessionShard.restore

    def __str__(self) -> str:
        return self.name


SHARDS = [
    ShardSubject(
        "SessionShard(pandera checks)",
        lambda: SessionShard(0, checks=BatchValidator()),
        lambda data, deltas=(): SessionShard.restore(data, deltas, BatchValidator()),
    ),
    ShardSubject(
        "SessionShard(no checks, small reorder buffer)",
        lambda: SessionShard(1, StateConfig(reorder_max_buffer=2)),
    ),
]


def events(n: int, user: str = "u1") -> list[Event]:
    """``n`` events of one user: step views and completions, traits, sessions, properties."""
    out = []
    for i in range(n):
        out.append(
            Event(
                message_id=f"e{i}",
                user_key=user,
                kind=["track", "track", "identify", "page"][i % 4],
                name=["Step Viewed", "Step Completed", None, None][i % 4],
                ts=T0 + (i * 7_919) % 50_000,  # out of order on purpose
                received=T0 + 60_000 + i,
                session_id=f"s{i % 2}",
                seq=i,
                step_id=["welcome", "role", "goals"][i % 3],
                user_id="known-1" if i % 5 == 0 else None,
                anonymous_id=f"anon-{i % 3}",
                traits={"role": f"r{i}", "team": {"size": i, "tags": ["x", "y"]}},
                properties={"plan": "pro", "items": [i, i + 1]},
            )
        )
    return out


#: Events with the optional parts missing and unknown kinds, names and steps.
AWKWARD_EVENTS = [
    Event("a1", "u1", "track", None, T0, T0),
    Event("a2", "u1", "screen", "Whatever", T0 + 1, T0 + 1),
    Event("a3", "u1", "track", "Step Completed", T0 + 2, T0 + 2, step_id="no-such-step"),
    Event("a4", "u1", "identify", None, T0 + 3, T0 + 3, traits={"": None, "k": float("nan")}),
    Event("a5", "u1", "alias", None, T0 + 4, T0 + 4, previous_id="old", user_id="new"),
    Event("a6", "u1", "track", "Step Viewed", T0 + 5, T0 + 5, session_id="", seq=-1),
]


@dataclass(frozen=True)
class FoldSubject:
    """The profile fold: ``apply(profile, event)``, with a profile's bytes (pickle, as
    snapshots hold it)."""

    name: str
    apply: Callable[[Profile, Event], Profile] = apply
    dumps: Callable[[Profile], bytes] = pickle.dumps
    loads: Callable[[bytes], Profile] = pickle.loads
    new: Callable[[str], Profile] = field(default=lambda user: Profile(user))

    def __str__(self) -> str:
        return self.name


FOLDS = [FoldSubject("apply(Profile, Event)")]
