"""The checks: plain functions that take a subject (:mod:`tests.contracts.subjects`) and assert
one contract. ``CHECKS`` maps each family to its checks; every check fails on a broken twin
(``test_checks_can_fail``)."""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ray_app.records import RewardRecord
from tests.contracts.subjects import (
    AWKWARD_EVENTS,
    AWKWARD_INPUTS,
    AWKWARD_RECORDS,
    AWKWARD_SCORES,
    SCHEMA,
    SLOTS,
    T0,
    FoldSubject,
    LearnerSubject,
    PolicySubject,
    ScorerSubject,
    ShardSubject,
    event_record,
    event_stream,
    events,
    feature_rows,
    reward_records,
    weights_of,
)


class Aliased(AssertionError):
    """A nested value handed out (or taken in) is shared with the object's own state: changing
    it changes the other. Its own class, so that a known case can be marked without hiding
    any other failure of the same check."""


def _not_aliased(ok: bool, what: str) -> None:
    if not ok:
        raise Aliased(f"{what} is shared, not copied")


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- scorers ----------------------------------------------------------------------------------


def check_scorer_round_trip(s: ScorerSubject) -> None:
    """Its bytes, and a pickle (it crosses Ray), give a model with the same scores."""
    model, x = s.build(7), feature_rows()
    for back in (s.loads(s.dumps(model)), pickle.loads(pickle.dumps(model))):
        for slot in SLOTS:
            assert np.array_equal(s.scores(model, x, slot.index), s.scores(back, x, slot.index))


def check_scorer_seeded(s: ScorerSubject) -> None:
    """The same seed gives the same weights and scores; another seed other weights."""
    a, b, c = s.build(7), s.build(7), s.build(8)
    assert _same_weights(weights_of(a), weights_of(b))
    assert not _same_weights(weights_of(a), weights_of(c))
    x = feature_rows()
    for slot in SLOTS:
        assert np.array_equal(s.scores(a, x, slot.index), s.scores(b, x, slot.index))


def check_scorer_missing_and_unknown_features(s: ScorerSubject) -> None:
    """Profiles, enrichment and contexts with missing, unknown and ill-typed fields give
    feature rows of the schema's width and finite scores, one row or many."""
    model = s.build(7)
    x = feature_rows()
    assert x.shape == (len(AWKWARD_INPUTS), SCHEMA.dim) and np.isfinite(x).all()
    for slot in SLOTS:
        many = s.scores(model, x, slot.index)
        assert many.shape == (len(x), slot.size) and np.isfinite(many).all()
        for row in x:
            one = s.scores(model, row, slot.index)
            assert one.shape == (1, slot.size) and np.isfinite(one).all()


def check_scorer_inputs_not_mutated(s: ScorerSubject) -> None:
    """Scoring leaves the features and the model's weights as they were (twice, same answer)."""
    model, x = s.build(7), feature_rows()
    x0, w0 = x.copy(), weights_of(model)
    for slot in SLOTS:
        first = s.scores(model, x, slot.index).copy()
        assert np.array_equal(first, s.scores(model, x, slot.index))
    assert np.array_equal(x, x0)
    assert _same_weights(weights_of(model), w0)


# -- learners ---------------------------------------------------------------------------------


def _run(learner: Any, records: list[RewardRecord], now: float) -> tuple[Any, ...]:
    """Feed ``records`` in the stream's shape (small chunks), then publish; returns the
    reports, the trainer's weights before the publish (a guardrail may roll them back) and the
    published bytes."""
    reports = [
        learner.learn(records[i : i + 7], offsets={0: i + 7}) for i in range(0, len(records), 7)
    ]
    trained = weights_of(learner)
    bundle = learner.maybe_publish(now=now)
    return tuple(reports), trained, None if bundle is None else bundle.to_bytes()


def _same_run(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return a[0] == b[0] and _same_weights(a[1], b[1]) and a[2] == b[2]


def check_learner_state_round_trip(s: LearnerSubject) -> None:
    """A learner restored from its bytes (and from its ``state_dict``) mid-run learns and
    publishes exactly what the original does from then on."""
    first, then = reward_records(150, seed=1), reward_records(150, start=150, seed=2)
    original = s.make()
    original.drift()  # a boost that runs across the restart (it also renews the optimizer:
    _run(original, first, now=1.0)  # drift first, so that its moments are saved)
    assert original.boost_left > 0
    restored = [
        s.cls.from_bytes(original.to_bytes(), s.config, clock=lambda: 0.0),
        s.cls.from_state(copy.deepcopy(original.state_dict()), s.config, clock=lambda: 0.0),
    ]
    want = _run(original, then, now=2.0)
    for learner in restored:
        assert _same_run(_run(learner, then, now=2.0), want)
        assert learner.counters == original.counters and learner.offsets == original.offsets
        assert _same_weights(weights_of(learner), weights_of(original))


def check_learner_seeded(s: LearnerSubject) -> None:
    """Two learners fed the same rewards the same way end with the same weights, reports and
    published bytes (replay sampling included); other rewards give other weights."""
    records = reward_records(200, seed=3)
    a, b, c = s.make(), s.make(), s.make()
    run = _run(a, records, now=1.0)
    assert _same_run(run, _run(b, records, now=1.0))
    assert _same_weights(weights_of(a), weights_of(b))
    assert not _same_weights(run[1], _run(c, reward_records(200, seed=4), now=1.0)[1])


def _broken(r: RewardRecord, i: int) -> list[RewardRecord]:
    """Copies of ``r`` with a missing, extra, non-finite or unknown part each."""
    slot = next(s for s in SLOTS if s.name == r.slot)
    other = (r.action_index + 1) % slot.size
    variants: list[dict[str, Any]] = [
        {"features": r.features[:-1]},  # a feature missing
        {"features": [*r.features, 0.0]},  # an unknown feature
        {"features": []},
        {"features": [math.nan, *r.features[1:]]},
        {"features": [*r.features[:-1], math.inf]},
        {"slot": "no_such_slot"},
        {"action": "no_such_action"},
        {"action_index": slot.size},
        {"action_index": -1},
        {"action_index": other},  # index and id disagree
        {"propensity": 0.0},
        {"propensity": 1.5},
        {"propensity": math.nan},
        {"reward": 2.0},
        {"reward": math.nan},
    ]
    out = []
    for n, change in enumerate(variants):
        out.append(replace(r, **{**change, "decision_id": f"bad-{i}-{n}"}))
    return out


def check_learner_missing_and_unknown_features(s: LearnerSubject) -> None:
    """Records with missing, extra or non-finite features, unknown slots or actions, or
    impossible propensities and rewards are counted as invalid and change nothing; once fixed,
    the same decision is learned (an invalid record is not remembered as seen)."""
    learner = s.make()
    good = reward_records(4, seed=5)
    bad = [b for i, r in enumerate(good) for b in _broken(r, i)]
    w0 = weights_of(learner)
    report = learner.learn(bad)
    counted = (report.received, report.invalid, report.trained, report.updates)
    assert counted == (len(bad), len(bad), 0, 0)
    assert report.guardrail == report.duplicates == 0 and report.loss is None
    assert learner.counters["invalid"] == len(bad) and learner.seen == 0
    assert _same_weights(weights_of(learner), w0)
    # unknown candidates and records without candidates are fine: learned, and checked on
    fixed = [replace(r, decision_id=b.decision_id) for r, b in zip(good, bad, strict=False)]
    odd = replace(good[0], decision_id="odd", candidates=["nope", good[0].action])
    report = learner.learn([*fixed, odd])
    assert report.invalid == 0 and report.trained + report.guardrail == len(fixed) + 1
    bundle = learner.maybe_publish(now=1.0)
    assert bundle is not None and all(
        np.isfinite(v.numpy()).all() for v in bundle.scorer.state_dict().values()
    )


def check_learner_inputs_not_mutated(s: LearnerSubject) -> None:
    """Learning and publishing leave the records and the starting bundle as they were, and a
    published bundle does not alias the learner's weights."""
    bundle = s.bundle()
    start = weights_of(bundle)
    meta = copy.deepcopy(bundle.metadata)
    learner = s.make(bundle)
    records = reward_records(120, seed=6)
    before = copy.deepcopy(records)
    _run(learner, records, now=1.0)
    assert records == before  # frozen records with their (mutable) feature and candidate lists
    assert _same_weights(weights_of(bundle), start) and bundle.metadata == meta
    learner.learn(reward_records(40, start=120, seed=7))
    published = learner.maybe_publish(now=2.0)
    assert published is not None
    good = weights_of(learner.last_good())
    with torch.no_grad():
        for p in published.scorer.parameters():
            p.add_(1.0)
    assert _same_weights(weights_of(learner.last_good()), good)


# -- policies ---------------------------------------------------------------------------------

_KEYS = [f"decision-{i}" for i in range(60)]
_SCORES = np.array([0.1, 0.9, 0.5, -1.0, 0.85, 0.3, 0.2])


def _choices(policy: Any) -> list[Any]:
    return [policy.choose(_SCORES, [0, 1, 2, 4, 6], k, np.full(7, 0.5)) for k in _KEYS]


def check_policy_round_trip(s: PolicySubject) -> None:
    """A pickled policy (it crosses Ray inside the decider) chooses exactly as the original."""
    policy = s.build(3)
    assert _choices(pickle.loads(pickle.dumps(policy))) == _choices(policy)


def check_policy_seeded(s: PolicySubject) -> None:
    """The same seed and decision ids give the same choices and propensities; an exploring
    policy with another seed chooses otherwise for some ids."""
    assert _choices(s.build(3)) == _choices(s.build(3))
    if s.explores:
        assert [c.chosen for c in _choices(s.build(3))] != [c.chosen for c in _choices(s.build(4))]


def check_policy_missing_and_unknown_features(s: PolicySubject) -> None:
    """NaN and infinite scores, unsorted and partial eligibility, missing or broken
    uncertainty: a valid choice (an eligible action, a ranking of exactly the eligible ones,
    finite probabilities summing to 1, the propensity the chosen action's probability)."""
    policy = s.build(3)
    for scores, eligible, uncertainty in AWKWARD_SCORES:
        for key in _KEYS[:5]:
            c = policy.choose(scores, eligible, key, uncertainty)
            assert c.chosen in eligible and sorted(c.ranking) == sorted(eligible)
            assert set(c.probabilities) == set(eligible)
            probs = list(c.probabilities.values())
            assert all(math.isfinite(p) and p >= 0 for p in probs)
            assert math.isclose(sum(probs), 1.0, abs_tol=1e-9)
            assert c.propensity == c.probabilities[c.chosen] > 0


def check_policy_inputs_not_mutated(s: PolicySubject) -> None:
    """Choosing leaves the scores, eligible actions and uncertainty as they were."""
    policy = s.build(3)
    for scores, eligible, uncertainty in AWKWARD_SCORES:
        before = copy.deepcopy((scores, eligible, uncertainty))
        policy.choose(scores, eligible, "k", uncertainty)
        for now, then in zip((scores, eligible, uncertainty), before, strict=True):
            assert type(now) is type(then)
            if now is not None:
                assert np.array_equal(np.asarray(now), np.asarray(then), equal_nan=True)


# -- state core: the partition ----------------------------------------------------------------


def _outcome(shard: Any, result: Any) -> tuple[Any, ...]:
    return (
        result.applied,
        result.duplicates,
        len(result.late),
        [(i, str(e)) for i, _, _, e in result.rejected],
        shard.stats.as_dict(),
        shard.profiles_as_dicts(),
    )


def check_shard_snapshot_round_trip(s: ShardSubject) -> None:
    """A shard restored from a snapshot (and from a snapshot plus a delta) takes the next
    records exactly as the original: same profiles, counters, duplicates (the dedupe memory
    travels) and late records (the watermark travels)."""
    records = event_stream(40)
    first, middle, rest = records[:15], records[15:30], records[30:]
    original = s.make()
    original.process(first)
    base = original.snapshot()
    original.process(middle)
    delta = original.snapshot_delta()
    full = original.snapshot(rebase=False)
    replay = [*rest, *first[-3:], event_record(0, "u0", messageId="late-1")]  # dupes, a late one
    restored = [s.restore(full), s.restore(base, [delta])]
    want = _outcome(original, original.process(replay))
    for shard in restored:
        assert _outcome(shard, shard.process(replay)) == want


def check_shard_seeded(s: ShardSubject) -> None:
    """The same records give the same state, whatever the batch boundaries; other records
    another state."""
    records = [*event_stream(40), *AWKWARD_RECORDS]
    a, b, c = s.make(), s.make(), s.make()
    a.process(records)
    for i in range(0, len(records), 6):
        b.process(records[i : i + 6])
    c.process(records[:-20])
    assert (a.stats.as_dict(), a.profiles_as_dicts()) == (b.stats.as_dict(), b.profiles_as_dicts())
    assert a.profiles_as_dicts() != c.profiles_as_dicts()


def check_shard_missing_and_unknown_features(s: ShardSubject) -> None:
    """Records with optional fields missing, unknown fields and types, tombstones, junk and
    wrong types never stop the partition: each is applied, rejected (with a reason) or
    buffered, and the counters reconcile."""
    shard = s.make()
    result = shard.process([*event_stream(10), *AWKWARD_RECORDS, event_record(11)])
    st = shard.stats
    assert st.records == 10 + 3 + len(AWKWARD_RECORDS) + 1
    assert st.records == st.applied + st.duplicates + st.late + st.rejected + shard.buffered
    assert result.applied >= 11 and len(result.rejected) >= 4  # the tombstone and the junk
    for _, _, _, error in result.rejected:
        assert str(error)
    assert shard.profile("u1") is not None


def check_shard_inputs_not_mutated(s: ShardSubject) -> None:
    """Processing leaves the batch as it was, and a profile handed out does not alias the
    shard's state."""
    shard = s.make()
    nested = event_record(
        12,
        "u1",
        type="identify",
        event=None,
        sessionId=None,
        seq=None,
        traits={"team": {"size": 3}},
    )
    records = [*event_stream(12), nested]
    before = list(records)
    shard.process(records)
    assert records == before
    seen = shard.profile("u1")
    assert seen is not None and seen["traits"]["team"] == {"size": 3}
    want = copy.deepcopy(seen)
    seen["counts"]["track"] = -1
    seen["traits"]["role"] = "mutated"
    seen["stepsSeen"].append("mutated")
    assert shard.profile("u1") == want
    seen["traits"]["team"]["size"] = "mutated"
    _not_aliased(shard.profile("u1") == want, "a nested trait of a profile handed out")


# -- state core: the profile fold -------------------------------------------------------------


def _fold(s: FoldSubject, evs: list[Any], profile: Any = None) -> Any:
    p = profile if profile is not None else s.new("u1")
    for e in evs:
        p = s.apply(p, e)
    return p


def _view(p: Any) -> dict[str, Any]:
    p.advance(T0 + 10**9)  # close sessions the same way before comparing
    return p.as_dict()


def check_fold_round_trip(s: FoldSubject) -> None:
    """A profile through its bytes (as snapshots carry it) folds the next events as the
    original does."""
    evs = events(24)
    original = _fold(s, evs[:12])
    back = s.loads(s.dumps(original))
    assert _view(_fold(s, evs[12:], back)) == _view(_fold(s, evs[12:], original))


def check_fold_seeded(s: FoldSubject) -> None:
    """The same events give the same profile, in any order (below the caps the fold
    commutes); other events another profile."""
    evs = events(24)
    want = _view(_fold(s, evs))
    for order in (evs[::-1], evs[1::2] + evs[::2], sorted(evs, key=lambda e: e.message_id)):
        assert _view(_fold(s, order)) == want
    assert _view(_fold(s, evs[:20])) != want


def check_fold_missing_and_unknown_features(s: FoldSubject) -> None:
    """Events without name, session or step, with unknown kinds, names and steps, or odd
    traits fold without raising, each one counted."""
    p = _fold(s, AWKWARD_EVENTS)
    view = _view(p)
    assert sum(v for k, v in view["counts"].items() if not k.startswith("track:")) == len(
        AWKWARD_EVENTS
    )


def check_fold_inputs_not_mutated(s: FoldSubject) -> None:
    """Folding leaves the events as they were, and the profile does not alias their traits or
    properties (changing one afterwards does not change the other)."""
    evs = events(12)
    before = copy.deepcopy(evs)
    p = _fold(s, evs)
    assert evs == before
    p.traits["role"] = "mutated"
    p.traits.pop("team", None)
    assert evs == before
    p = _fold(s, evs)
    p.traits["team"]["size"] = "mutated"
    p.traits["team"]["tags"].append("mutated")
    _not_aliased(evs == before, "a nested trait value of an event folded into the profile")


CHECKS: dict[str, list[Callable[[Any], None]]] = {
    "scorer": [
        check_scorer_round_trip,
        check_scorer_seeded,
        check_scorer_missing_and_unknown_features,
        check_scorer_inputs_not_mutated,
    ],
    "learner": [
        check_learner_state_round_trip,
        check_learner_seeded,
        check_learner_missing_and_unknown_features,
        check_learner_inputs_not_mutated,
    ],
    "policy": [
        check_policy_round_trip,
        check_policy_seeded,
        check_policy_missing_and_unknown_features,
        check_policy_inputs_not_mutated,
    ],
    "shard": [
        check_shard_snapshot_round_trip,
        check_shard_seeded,
        check_shard_missing_and_unknown_features,
        check_shard_inputs_not_mutated,
    ],
    "fold": [
        check_fold_round_trip,
        check_fold_seeded,
        check_fold_missing_and_unknown_features,
        check_fold_inputs_not_mutated,
    ],
}
