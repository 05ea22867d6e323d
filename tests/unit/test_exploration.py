"""squarecb exploration: inverse gap weighting in the policy, gamma published by the learner and
taken up by the decision replicas; the scorer's wide part."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.catalog import load_catalog
from ray_app.config import Settings
from ray_app.decide import Decider, policy_for
from ray_app.decide.request import DecideRequest
from ray_app.features import FeatureSchema
from ray_app.learn import LearnerConfig, OnlineLearner, RewardRecord
from ray_app.model import Policy, Scorer, cold_start_bundle, explore_scores, score_batch

CATALOG = load_catalog()
SCHEMA = FeatureSchema.from_catalog(CATALOG)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=1, max_size=8),
    st.floats(0.01, 1e6),
)
def test_squarecb_is_a_distribution_that_favours_the_best(scores, gamma):
    policy = Policy("squarecb", gamma=gamma)
    p = policy.probabilities(np.array(scores), list(range(len(scores))))
    assert sum(p.values()) == pytest.approx(1.0) and min(p.values()) > 0
    best = max(range(len(scores)), key=lambda a: (scores[a], -a))
    assert p[best] >= max(p.values()) - 1e-12
    # the propensity logged is the probability of what was drawn
    c = policy.choose(np.array(scores), list(range(len(scores))), key="d1")
    assert c.propensity == pytest.approx(p[c.chosen])


def test_squarecb_explores_less_as_gamma_grows_and_more_for_near_best_actions():
    scores = np.array([2.0, 1.9, -1.0])  # sigmoid: 0.88, 0.87, 0.27
    early = Policy("squarecb", gamma=10.0).probabilities(scores, [0, 1, 2])
    late = Policy("squarecb", gamma=1_000.0).probabilities(scores, [0, 1, 2])
    assert late[0] > early[0]
    assert early[1] > early[2] and late[1] > 10 * late[2]


@pytest.mark.slow
def test_the_learner_publishes_a_growing_gamma_that_the_replicas_take():
    learner = OnlineLearner(
        cold_start_bundle(SCHEMA, CATALOG),
        LearnerConfig(batch_size=8, publish_interval_s=0.0, warmup_rewards=0),
    )
    x = SCHEMA.featurize({"stepsCompleted": ["welcome"]}).tolist()
    gammas = []
    for k in range(3):
        records = [
            RewardRecord(f"d{k}-{i}", "u", "next_step", "goals", 3, "treatment", 0.5, x,
                         float(i % 2), "completed" if i % 2 else "abandoned", 0, 1, 0)
            for i in range(200)
        ]  # fmt: skip
        learner.learn(records)
        bundle = learner.maybe_publish(now=float(k))
        assert bundle is not None
        gammas.append(bundle.metadata["gamma"])
        assert policy_for(Policy("squarecb"), bundle.metadata).gamma == bundle.metadata["gamma"]
    scale = learner.config.gamma_scale
    assert gammas == sorted(gammas) and gammas[0] > scale
    learner.drift()  # a drift: exploration starts over, around the cold-start weights
    assert learner.gamma() == pytest.approx(
        scale * (1 + learner.config.drift_gamma_head_start) ** 0.5
    )
    # garbage in a model file's metadata leaves the policy as it was
    policy = Policy("squarecb", gamma=42.0)
    for bad in ({"gamma": "x"}, {"gamma": -1}, {"gamma": float("nan")}, {"gamma": True}):
        assert policy_for(policy, bad).gamma == 42.0


def test_the_wide_part_starts_at_zero_and_the_cold_start_keeps_the_static_order():
    bundle = cold_start_bundle(SCHEMA, CATALOG)
    assert all(float(w.weight.detach().abs().sum()) == 0.0 for w in bundle.scorer.wides)
    x = SCHEMA.featurize({"traits": {"plan": "pro", "seats": 40}}, None, {"device": "mobile"})
    scores = score_batch(bundle, x, CATALOG.slot("next_step").index)[0]
    order = list(np.argsort(-scores, kind="stable"))
    assert order == list(CATALOG.slot("next_step").control_order)
    # the wide part reaches the logits directly: one feature, one action
    s = Scorer(4, (3,), hidden=2)
    with torch.no_grad():
        s.wides[0].weight[2, 1] = 5.0
    x4 = np.array([0.0, 1.0, 0.0, 0.0], dtype=np.float32)
    assert score_batch(s, x4, 0)[0][2] - score_batch(Scorer(4, (3,), hidden=2), x4, 0)[0][2] == (
        pytest.approx(5.0)
    )


def _rewards(tag: str, x: list[float], action: str, index: int, n: int) -> list[RewardRecord]:
    return [
        RewardRecord(f"{tag}-{i}", "u", "next_step", action, index, "treatment", 0.5, x,
                     float(i % 2), "completed" if i % 2 else "abandoned", 0, 1, 0)
        for i in range(n)
    ]  # fmt: skip


def test_the_learner_counts_what_each_action_was_learned_from_and_publishes_its_optimism():
    config = LearnerConfig(batch_size=8, publish_interval_s=0.0, warmup_rewards=0, optimism=1.5)
    learner = OnlineLearner(cold_start_bundle(SCHEMA, CATALOG), config)
    slot = CATALOG.slot("next_step")
    x = SCHEMA.featurize({"stepsCompleted": ["welcome"]}).tolist()
    learner.learn(_rewards("a", x, slot.actions[3].id, 3, 64))
    evidence = learner.scorer.evidence(slot.index)
    active = [i for i, v in enumerate(x) if v]
    n = learner.counters["trained"]  # every reward (no guardrail slice by default)
    assert n == 64
    assert evidence[3, active].tolist() == pytest.approx([n * x[i] ** 2 for i in active])
    assert float(evidence.sum()) == pytest.approx(float(evidence[3].sum()))  # only action 3
    bundle = learner.maybe_publish(now=1.0)
    assert bundle is not None and bundle.metadata["optimism"] == 1.5
    assert torch.equal(bundle.scorer.evidence(slot.index), evidence)
    # the replicas' scores: action 3, seen here, gets less of a bonus than the others
    bonus = (
        explore_scores(bundle, np.array(x, np.float32), slot.index)[0]
        - score_batch(bundle, np.array(x, np.float32), slot.index)[0]
    )
    assert bonus[3] < min(bonus[a] for a in range(slot.size) if a != 3)
    restored = OnlineLearner.from_bytes(learner.to_bytes(), config)  # a restarted learner
    assert torch.equal(restored.scorer.evidence(slot.index), evidence)
    learner.drift()  # a restart: back to the cold-start weights, which have seen nothing
    assert float(learner.scorer.evidence(slot.index).sum()) == 0.0
    with pytest.raises(ValueError, match="optimism"):
        LearnerConfig(optimism=-1.0)


def test_optimism_explores_the_action_a_context_never_saw_and_leaves_others_alone():
    s = Scorer(4, (3,), hidden=2)
    seen = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 50)  # context A: actions 0 and 1, often
    s.observe(seen, torch.tensor([0, 1] * 25), 0)
    a = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
    b = np.array([0.0, 0.0, 1.0, 0.0], np.float32)  # context B: nothing seen yet
    policy = Policy("squarecb", gamma=100.0)
    plain = policy.probabilities(score_batch(s, a, 0)[0], [0, 1, 2])
    keen = policy.probabilities(score_batch(s, a, 0, optimism=1.0)[0], [0, 1, 2])
    assert keen[2] > plain[2]  # action 2, never shown in context A, is tried more
    # no evidence in context B: the same bonus for every action, the same policy
    pb = policy.probabilities(score_batch(s, b, 0)[0], [0, 1, 2])
    kb = policy.probabilities(score_batch(s, b, 0, optimism=1.0)[0], [0, 1, 2])
    assert kb == pytest.approx(pb)


def test_a_replica_ranks_by_the_logits_plus_the_bonus_its_model_file_carries():
    slot = CATALOG.slot("next_step")
    profile = {"userId": "u", "traits": {"plan": "pro"}, "stepsCompleted": ["welcome"]}
    learner = OnlineLearner(
        cold_start_bundle(SCHEMA, CATALOG),
        LearnerConfig(batch_size=8, publish_interval_s=0.0, warmup_rewards=0, optimism=2.0),
    )
    x = SCHEMA.featurize(profile).tolist()
    learner.learn(_rewards("a", x, slot.actions[3].id, 3, 64))
    bundle = learner.maybe_publish(now=1.0)
    assert bundle is not None
    decider = Decider.from_settings(Settings())
    assert decider.swap("treatment", bundle) and decider.swap("treatment_b", bundle)
    requests = [
        (DecideRequest(user_id=f"u{i}", slot="next_step", decision_id=f"d{i}"), profile, None)
        for i in range(40)
    ]
    decisions = [d for d in decider.decide_many(requests, now_ms=0) if d.arm != "control"]
    assert decisions
    for d in decisions:
        features = np.zeros(SCHEMA.dim, np.float32)
        features[list(d.features.indices)] = d.features.values
        want = explore_scores(bundle, features, slot.index)[0]
        got = {r["action"]: r["score"] for r in d.ranked}
        assert got == {
            a: pytest.approx(float(want[slot.action_ids.index(a)]), abs=1e-5) for a in got
        }
