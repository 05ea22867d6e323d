"""Every check fails on a broken twin of a subject: no check passes vacuously.

Each twin breaks exactly the contract its check is about, the way a plausible bug would (a
snapshot that forgets the dedupe memory, a replay buffer seeded from the clock, a policy that
cleans the caller's scores in place...).
"""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any
from unittest import mock

import numpy as np
import pytest

from ray_app.learn import OnlineLearner
from ray_app.learn import learner as learner_module
from ray_app.model import Choice, Policy, Scorer, score_batch
from ray_app.model.policy import _draw, _prepare, _rank
from ray_app.state import Event, Profile, SessionShard, apply
from ray_app.state.dedupe import Deduplicator
from tests.contracts import checks
from tests.contracts.checks import CHECKS
from tests.contracts.subjects import (
    LEARNERS,
    POLICIES,
    SCHEMA,
    SCORERS,
    SHARDS,
    SLOTS,
    FoldSubject,
    PolicySubject,
    ScorerSubject,
    ShardSubject,
)

_SCORER, _BUNDLE = SCORERS[0], SCORERS[1]
_ADAM = LEARNERS[0]
_SIZES = [s.size for s in SLOTS]

# -- scorers ----------------------------------------------------------------------------------


def _log_of_first_feature(model: Any, x: np.ndarray, slot: int) -> np.ndarray:
    """Scores that take the log of a feature that is 0 for most users."""
    with np.errstate(divide="ignore"):
        return score_batch(model, x, slot) + np.log(np.atleast_2d(x)[:, :1])


def _normalizes_in_place(model: Any, x: np.ndarray, slot: int) -> np.ndarray:
    x *= 0.5  # "normalizes" the caller's features
    return score_batch(model, x, slot)


# -- learners ---------------------------------------------------------------------------------


class _ForgetsOptimizer(OnlineLearner):
    """Saves fresh optimizer moments instead of its own."""

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["optimizer"]["state"] = self._make_optimizer().state_dict()
        return state


class _ClockSeededReplay(OnlineLearner):
    """Samples its replay buffer with a generator seeded from the OS."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._replay._rng = random.Random()


class _Trusting(OnlineLearner):
    """Takes every record as valid."""

    def _admit(self, records: Iterable[Any]) -> Any:
        with mock.patch.object(learner_module, "valid_record", lambda *a: True):
            return super()._admit(records)


class _SortsCandidates(OnlineLearner):
    """Sorts each record's candidate list in place."""

    def learn(self, records: Iterable[Any], *args: Any, **kwargs: Any) -> Any:
        records = list(records)
        for r in records:
            if r.candidates:
                r.candidates.sort(reverse=True)
        return super().learn(records, *args, **kwargs)


# -- policies ---------------------------------------------------------------------------------


class _LosesSeed(Policy):
    """Pickles as a policy of seed 0."""

    def __reduce__(self) -> Any:
        p = replace(self, seed=0)
        return (Policy, (p.kind, p.epsilon, p.gamma, p.temperature, p.floor, p.prior_std, p.draws))


class _GlobalRandom(Policy):
    """Draws with the process's random generator instead of ``(seed, key)``."""

    def choose(self, scores: Any, eligible: Any, key: str, uncertainty: Any = None) -> Choice:
        el, vals = _prepare(scores, eligible)
        p = self._probs(el, vals, uncertainty)
        j = _draw(p, random.Random().random())
        return Choice(_rank(el, vals), el[j], p[j], dict(zip(el, p, strict=True)))


class _NaiveSoftmax:
    """A softmax over the raw scores: NaN and infinities go straight through."""

    def choose(self, scores: Any, eligible: Any, key: str, uncertainty: Any = None) -> Choice:
        el = list(eligible)
        s = np.asarray(scores, dtype=np.float64)[el]
        e = np.exp(s - s.max())
        p = (e / e.sum()).tolist()
        j = int(np.nanargmax(p)) if not np.isnan(p).all() else 0
        return Choice(el, el[j], p[j], dict(zip(el, p, strict=True)))


class _CleansInPlace(Policy):
    """Replaces NaN in the caller's scores."""

    def choose(self, scores: Any, eligible: Any, key: str, uncertainty: Any = None) -> Choice:
        if isinstance(scores, np.ndarray):
            np.nan_to_num(scores, copy=False)
        return super().choose(scores, eligible, key, uncertainty)


# -- state core -------------------------------------------------------------------------------


def _restore_forgetting_ids(data: bytes, deltas: Iterable[bytes] = ()) -> SessionShard:
    shard = SessionShard.restore(data, deltas)
    shard.dedupe = Deduplicator(shard.config.dedupe_horizon_ms, shard.config.dedupe_max_ids)
    return shard


class _Lossy(SessionShard):
    """Drops a record now and then."""

    def process(self, records: Iterable[Any], traces: Any = None) -> Any:
        rng = random.Random()
        return super().process([r for r in records if rng.random() > 0.2], None)


class _Strict(SessionShard):
    """Parses every record before the shard does (and so raises on junk)."""

    def process(self, records: Iterable[Any], traces: Any = None) -> Any:
        records = list(records)
        for _, value in records:
            json.loads(value)
        return super().process(records, traces)


class _CachedViews(SessionShard):
    """Hands out the same profile dict every time."""

    def profile(self, user_key: str) -> dict[str, Any] | None:
        views = self.__dict__.setdefault("_views", {})
        if user_key not in views:
            views[user_key] = super().profile(user_key)
        return views[user_key]


def _loads_without_stamps(data: bytes) -> Profile:
    p: Profile = pickle.loads(data)
    p.trait_stamps.clear()
    return p


def _last_arrival_wins(p: Profile, e: Event) -> Profile:
    apply(p, e)
    p.traits.update(e.traits)
    return p


def _assumes_a_name(p: Profile, e: Event) -> Profile:
    e.name.lower()  # type: ignore[union-attr]
    return apply(p, e)


def _keeps_event_traits(p: Profile, e: Event) -> Profile:
    apply(p, e)
    p.traits = e.traits
    return p


def _scorer(name: str, **change: Any) -> ScorerSubject:
    return replace(_SCORER, name=name, **change)


BROKEN: list[tuple[Callable[[Any], None], Any]] = [
    (
        checks.check_scorer_round_trip,
        _scorer("loads a fresh scorer", loads=lambda b: Scorer(SCHEMA.dim, _SIZES, 16, seed=99)),
    ),
    (
        checks.check_scorer_seeded,
        _scorer(
            "ignores the seed",
            build=lambda seed: Scorer(SCHEMA.dim, _SIZES, 16, seed=random.Random().randrange(9**9)),
        ),
    ),
    (
        checks.check_scorer_missing_and_unknown_features,
        replace(_BUNDLE, name="log of a feature", scores=_log_of_first_feature),
    ),
    (
        checks.check_scorer_inputs_not_mutated,
        _scorer("normalizes in place", scores=_normalizes_in_place),
    ),
    (
        checks.check_learner_state_round_trip,
        replace(_ADAM, name="forgets its moments", cls=_ForgetsOptimizer),
    ),
    (
        checks.check_learner_seeded,
        replace(_ADAM, name="clock-seeded replay", cls=_ClockSeededReplay),
    ),
    (
        checks.check_learner_missing_and_unknown_features,
        replace(_ADAM, name="trusting", cls=_Trusting),
    ),
    (
        checks.check_learner_inputs_not_mutated,
        replace(_ADAM, name="sorts candidates", cls=_SortsCandidates),
    ),
    (checks.check_policy_round_trip, PolicySubject("loses its seed", lambda s: _LosesSeed(seed=s))),
    (checks.check_policy_seeded, PolicySubject("global random", lambda s: _GlobalRandom(seed=s))),
    (
        checks.check_policy_missing_and_unknown_features,
        PolicySubject("naive softmax", lambda s: _NaiveSoftmax()),
    ),
    (
        checks.check_policy_inputs_not_mutated,
        PolicySubject("cleans in place", lambda s: _CleansInPlace(seed=s)),
    ),
    (
        checks.check_shard_snapshot_round_trip,
        replace(SHARDS[0], name="forgets ids", restore=_restore_forgetting_ids),
    ),
    (checks.check_shard_seeded, ShardSubject("lossy", lambda: _Lossy(0))),
    (checks.check_shard_missing_and_unknown_features, ShardSubject("strict", lambda: _Strict(0))),
    (checks.check_shard_inputs_not_mutated, ShardSubject("cached views", lambda: _CachedViews(0))),
    (checks.check_fold_round_trip, FoldSubject("forgets stamps", loads=_loads_without_stamps)),
    (checks.check_fold_seeded, FoldSubject("last arrival wins", apply=_last_arrival_wins)),
    (
        checks.check_fold_missing_and_unknown_features,
        FoldSubject("assumes a name", apply=_assumes_a_name),
    ),
    (checks.check_fold_inputs_not_mutated, FoldSubject("keeps traits", apply=_keeps_event_traits)),
]


@pytest.mark.parametrize(
    ("check", "twin"),
    [pytest.param(c, t, id=f"{c.__name__.removeprefix('check_')}[{t}]") for c, t in BROKEN],
)
def test_the_check_fails_on_a_broken_twin(check: Callable[[Any], None], twin: Any) -> None:
    with pytest.raises(Exception):  # noqa: B017 (an assertion, or the crash it guards against)
        check(twin)


def test_every_check_has_a_broken_twin() -> None:
    every = [c for family in CHECKS.values() for c in family]
    assert sorted(c.__name__ for c, _ in BROKEN) == sorted(c.__name__ for c in every)


def test_the_twins_are_otherwise_sound() -> None:
    """A twin breaks only its own contract: the learner twins pass the other learner checks
    (so each check fails for its own reason, not because the twin is broken everywhere)."""
    for check, twin in BROKEN[4:8]:
        for other in CHECKS["learner"]:
            if other is not check and twin.cls is not _Trusting:
                other(twin)
    assert POLICIES and LEARNERS  # the real subjects exist (their checks: test_contracts)
