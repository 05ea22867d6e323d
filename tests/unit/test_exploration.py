"""squarecb exploration: inverse gap weighting in the policy, gamma published by the learner and
taken up by the decision replicas; the scorer's wide part."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.catalog import load_catalog
from ray_app.decide import policy_for
from ray_app.features import FeatureSchema
from ray_app.learn import LearnerConfig, OnlineLearner, RewardRecord
from ray_app.model import Policy, Scorer, cold_start_bundle, score_batch

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
    assert gammas == sorted(gammas) and gammas[0] > 10.0
    learner.drift()  # a drift: exploration starts over, around the cold-start weights
    assert learner.gamma() == pytest.approx(
        10.0 * (1 + learner.config.drift_gamma_head_start) ** 0.5
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
