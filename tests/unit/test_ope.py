"""Off-policy estimators against closed-form cases and a synthetic bandit with a known value."""

from __future__ import annotations

import numpy as np
import pytest

from ray_app.errors import FieldError
from training.ope import BanditLog, bootstrap_interval, estimate, evaluate, round_rewards


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sample(rng: np.random.Generator, dist: np.ndarray) -> np.ndarray:
    """One action per row drawn from that row's distribution."""
    u = rng.random(dist.shape[0])[:, None]
    return np.minimum((u > dist.cumsum(axis=1)).sum(axis=1), dist.shape[1] - 1)


def _synthetic(seed: int, n: int = 2000, k: int = 4):
    """Contexts, a logging and a target policy, Bernoulli rewards; returns the log, both
    policies' distributions, the true click probabilities and the target's true value on
    these contexts."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    theta = np.array([[1.0, -0.5, 0.2, 0.0], [0.3, 0.8, -1.0, 0.5], [-0.4, 0.1, 0.6, -0.8]])
    p = 1.0 / (1.0 + np.exp(-(x @ theta - 1.0)))  # [n, k] click probabilities
    logging = _softmax(0.3 * (x @ theta) + 0.5 * (x @ rng.normal(size=(3, k))))
    target = _softmax(3.0 * (x @ theta))
    a = _sample(rng, logging)
    r = (rng.random(n) < p[np.arange(n), a]).astype(float)
    log = BanditLog(a, r, logging[np.arange(n), a])
    truth = float((target * p).sum(axis=1).mean())
    return log, logging, target, p, truth


def test_target_equal_to_logging_gives_mean_reward() -> None:
    log, logging, _, _, _ = _synthetic(0, n=500)
    assert estimate("ips", log, logging) == pytest.approx(log.reward.mean(), abs=1e-12)
    assert estimate("snips", log, logging) == pytest.approx(log.reward.mean(), abs=1e-12)


def test_hand_computed_case() -> None:
    # 3 rows, 2 actions; target always plays action 1
    log = BanditLog(action=[1, 0, 1], reward=[1.0, 1.0, 0.0], pscore=[0.25, 0.5, 0.5])
    pi = np.array([[0.0, 1.0]] * 3)
    q = np.array([[0.2, 0.6], [0.9, 0.3], [0.1, 0.4]])
    # ips: (1/0.25*1 + 0 + 1/0.5*0) / 3 = 4/3
    assert estimate("ips", log, pi) == pytest.approx(4 / 3)
    # snips: (4 + 0 + 0) / (4 + 0 + 2) = 2/3
    assert estimate("snips", log, pi) == pytest.approx(2 / 3)
    # dm: mean(0.6, 0.3, 0.4)
    assert estimate("dm", log, pi, q) == pytest.approx(1.3 / 3)
    # dr: dm_i + w_i (r_i - q_i,a_i): 0.6+4*(1-0.6), 0.3+0, 0.4+2*(0-0.4)
    assert estimate("dr", log, pi, q) == pytest.approx((2.2 + 0.3 - 0.4) / 3)


def test_positions_index_the_target_distribution_per_position() -> None:
    # 2 positions: the target plays action 0 at position 0 and action 1 at position 1
    pi = np.zeros((4, 2, 2))
    pi[:, 0, 0] = 1.0
    pi[:, 1, 1] = 1.0
    log = BanditLog(
        action=[0, 1, 0, 1], reward=[1, 1, 0, 1], pscore=[0.5] * 4, position=[0, 1, 1, 0]
    )
    # matches: row0 (a0@p0, r1), row1 (a1@p1, r1); rows 2,3 mismatch -> (2+2)/4
    assert estimate("ips", log, pi) == pytest.approx(1.0)


def test_dr_equals_dm_when_the_outcome_model_is_exact() -> None:
    rng = np.random.default_rng(5)
    n, k = 300, 5
    truth = rng.integers(0, 2, size=(n, k)).astype(float)  # deterministic rewards per (x, a)
    logging = _softmax(rng.normal(size=(n, k)))
    a = _sample(rng, logging)
    log = BanditLog(a, truth[np.arange(n), a], logging[np.arange(n), a])
    target = _softmax(rng.normal(size=(n, k)) * 2)
    dm, dr = estimate("dm", log, target, truth), estimate("dr", log, target, truth)
    assert dr == pytest.approx(dm, abs=1e-12)
    assert dm == pytest.approx(float((target * truth).sum(axis=1).mean()))


def test_unbiased_on_a_synthetic_bandit_over_many_seeds() -> None:
    ips, dr, snips, truths = [], [], [], []
    for seed in range(200):
        log, _, target, p, truth = _synthetic(seed, n=1500)
        wrong_q = np.clip(p + 0.15, 0, 1)  # a biased outcome model: DR must still be unbiased
        ips.append(estimate("ips", log, target))
        snips.append(estimate("snips", log, target))
        dr.append(estimate("dr", log, target, wrong_q))
        truths.append(truth)
    err_ips = np.asarray(ips) - np.asarray(truths)
    err_dr = np.asarray(dr) - np.asarray(truths)
    # the mean error is within 4 standard errors of zero, and the spread is not degenerate
    for err in (err_ips, err_dr):
        se = err.std(ddof=1) / np.sqrt(err.size)
        assert abs(err.mean()) < 4 * se + 1e-3, (err.mean(), se)
        assert err.std() > 0
    # the biased model alone (DM) is visibly off: the test can tell a biased estimator apart
    log, _, target, p, truth = _synthetic(0, n=1500)
    assert estimate("dm", log, target, np.clip(p + 0.15, 0, 1)) - truth > 0.1
    assert abs(np.mean(snips) - np.mean(truths)) < 0.02


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    log, _, target, p, _ = _synthetic(1, n=800)
    a = evaluate(log, target, p, n_bootstrap=300, seed=7)
    b = evaluate(log, target, p, n_bootstrap=300, seed=7)
    c = evaluate(log, target, p, n_bootstrap=300, seed=8)
    assert a == b
    assert a["ips"].ci_low != c["ips"].ci_low
    for e in a.values():
        assert e.ci_low <= e.value <= e.ci_high
        assert e.n == 800 and e.ci_level == pytest.approx(0.95)
    # DM's interval is much narrower than IPS's (it has no importance weights)
    assert a["dm"].ci_high - a["dm"].ci_low < a["ips"].ci_high - a["ips"].ci_low


def test_bootstrap_interval_of_a_constant_is_that_constant() -> None:
    assert bootstrap_interval(np.full(50, 0.3), np.ones(50), 100, seed=0) == pytest.approx(
        (0.3, 0.3, 0.3)
    )


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"pscore": [0.5, 0.0]}, "pscore", "must be in (0, 1]; 0.0 at row 1"),
        ({"pscore": [0.5, 1.5]}, "pscore", "must be in (0, 1]; 1.5 at row 1"),
        ({"pscore": [0.5, -0.1]}, "pscore", "must be in (0, 1]"),
        ({"reward": [1.0, float("nan")]}, "reward", "must be finite; nan at index 1"),
        ({"pscore": [0.5, float("nan")]}, "pscore", "must be finite"),
        ({"reward": [1.0]}, "reward", "expected 2 rows"),
        ({"action": [0, 1.5]}, "action", "expected non-negative integers; 1.5 at row 1"),
        ({"action": [0, -1]}, "action", "expected non-negative integers"),
        ({"action": [[0, 1]]}, "action", "expected a 1-D array"),
        ({"position": [0]}, "position", "expected 2 rows"),
    ],
)
def test_bad_logs_name_the_field(kwargs, field, reason) -> None:
    args = {"action": [0, 1], "reward": [1.0, 0.0], "pscore": [0.5, 0.5], **kwargs}
    with pytest.raises(FieldError) as exc:
        BanditLog(**args)
    assert exc.value.field == field
    assert reason in exc.value.reason


def test_empty_log_is_refused() -> None:
    with pytest.raises(FieldError, match="empty"):
        BanditLog([], [], [])


@pytest.mark.parametrize(
    ("dist", "q", "estimator", "field", "reason"),
    [
        ([[0.5, 0.5]], None, "ips", "action_dist", "expected shape (n_rows=2"),
        ([[0.5, 0.6]] * 2, None, "ips", "action_dist", "must sum to 1"),
        ([[1.5, -0.5]] * 2, None, "ips", "action_dist", ">= 0"),
        ([[1.0]] * 2, None, "ips", "action", "out of range for 1 actions"),
        ([[0.5, float("nan")]] * 2, None, "ips", "action_dist", "must be finite"),
        ([[0.5, 0.5]] * 2, None, "dm", "q", "needs an outcome model"),
        ([[0.5, 0.5]] * 2, [[0.1, 0.2, 0.3]] * 2, "dr", "q", "expected the shape"),
        ([[0.5, 0.5]] * 2, [[0.1, float("inf")]] * 2, "dr", "q", "must be finite"),
        ([[0.5, 0.5]] * 2, None, "magic", "estimator", "expected one of"),
    ],
)
def test_bad_policies_name_the_field(dist, q, estimator, field, reason) -> None:
    log = BanditLog([0, 1], [1.0, 0.0], [0.5, 0.5])
    with pytest.raises(FieldError) as exc:
        round_rewards(estimator, log, dist, q)
    assert exc.value.field == field
    assert reason in exc.value.reason


def test_positions_beyond_the_distribution_are_refused() -> None:
    log = BanditLog([0, 1], [1.0, 0.0], [0.5, 0.5], position=[0, 2])
    with pytest.raises(FieldError, match="has 1 positions but the log uses 3"):
        estimate("ips", log, [[0.5, 0.5]] * 2)


def test_snips_where_the_policy_takes_no_logged_action_is_undefined_not_zero():
    """SNIPS divides by the weights of the rows the target policy would take: none, and it has
    no value (it was 0 with an interval of [0, 0]); a resample without such a row has none
    either, and was counted as 0, pulling the interval's low end down to 0."""
    import math

    n = 200
    log = BanditLog(action=[0] * n, reward=[0.0] * (n - 1) + [1.0], pscore=[0.5] * n)
    one = np.tile([1.0, 0.0], (n, 1))
    one[: n - 1] = [0.0, 1.0]  # the target takes the logged action on the last row only
    est = evaluate(log, one, estimators=["snips"], n_bootstrap=300, seed=1)["snips"]
    assert (est.value, est.ci_low, est.ci_high, est.bootstrap_mean) == (1.0, 1.0, 1.0, 1.0)
    never = np.tile([0.0, 1.0], (n, 1))
    est = evaluate(log, never, estimators=["snips", "ips"], n_bootstrap=50, seed=1)
    assert math.isnan(est["snips"].value) and math.isnan(est["snips"].ci_low)
    assert est["ips"].value == 0.0  # IPS is defined: the policy's rows reward nothing
