"""Off-policy evaluation: the value of a target policy estimated from another policy's logs.

Logged bandit data is one row per decision: the action the logging policy took, the reward that
followed, the probability the logging policy gave that action (its *propensity*), and optionally
the slot position the action was shown in (for list/slate logs such as the Open Bandit Dataset).
The target policy is given by its action distribution per row, ``action_dist[i, a]`` (or
``action_dist[i, a, position]`` for lists), and the model-based estimators also take an outcome
model's predictions ``q[i, a(, position)] ~ E[reward | x_i, a]`` of the same shape.

Estimators (``w_i = action_dist[i, a_i, p_i] / pscore_i``):

* ``ips``: inverse propensity scoring, ``mean(w_i r_i)``; unbiased when the logging propensities
  are right and positive wherever the target policy acts.
* ``snips``: self-normalized IPS, ``sum(w_i r_i) / sum(w_i)``; slightly biased, lower variance.
* ``dm``: direct method, ``mean(sum_a action_dist[i, a] q[i, a])``; as good as the outcome model.
* ``dr``: doubly robust, ``dm_i + w_i (r_i - q[i, a_i])``; unbiased if either the propensities or
  the outcome model are right.

Confidence intervals are non-parametric bootstrap percentiles over rows, from a seeded generator
(the outcome model is held fixed, as in the Open Bandit Pipeline). Everything here is pure numpy.

>>> import numpy as np
>>> log = BanditLog(action=[0, 1, 1, 0], reward=[1, 0, 1, 0], pscore=[0.5, 0.5, 0.5, 0.5])
>>> always_0 = np.array([[1.0, 0.0]] * 4)
>>> estimate("ips", log, always_0)
0.5
>>> q = np.array([[0.5, 0.5]] * 4)
>>> estimate("dm", log, always_0, q), estimate("dr", log, always_0, q)
(0.5, 0.5)
>>> r = evaluate(log, always_0, q, n_bootstrap=200, seed=1)
>>> sorted(r), r["snips"].value, r["ips"].ci_low <= 0.5 <= r["ips"].ci_high
(['dm', 'dr', 'ips', 'snips'], 0.5, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from ray_app.errors import FieldError

__all__ = [
    "ESTIMATORS",
    "BanditLog",
    "Estimate",
    "EstimatorName",
    "bootstrap_interval",
    "estimate",
    "evaluate",
    "round_rewards",
]

EstimatorName = Literal["ips", "snips", "dm", "dr"]
ESTIMATORS: tuple[EstimatorName, ...] = ("ips", "snips", "dm", "dr")
_NEEDS_Q = frozenset({"dm", "dr"})


def _finite(name: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), a.shape)
        where = idx[0] if a.ndim == 1 else tuple(int(i) for i in idx)
        raise FieldError(name, f"must be finite; {a[idx]} at index {where}")


def _vector(name: str, values: ArrayLike, n: int | None, dtype: Any) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise FieldError(name, f"expected numbers: {exc}") from None
    if a.ndim != 1:
        raise FieldError(name, f"expected a 1-D array, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise FieldError(name, f"expected {n} rows (one per logged decision), got {a.shape[0]}")
    _finite(name, a)
    if dtype is int:
        if (a != np.round(a)).any() or (a < 0).any():
            i = int(np.flatnonzero((a != np.round(a)) | (a < 0))[0])
            raise FieldError(name, f"expected non-negative integers; {a[i]} at row {i}")
        return a.astype(np.int64)
    return a


@dataclass(frozen=True)
class BanditLog:
    """Logged bandit feedback, validated: one row per decision (arrays of equal length ``n``).

    ``action`` (int index of the logged action), ``reward``, ``pscore`` (the logging policy's
    probability of that action, in ``(0, 1]``), and ``position`` (int slot position, for list
    logs; ``None`` means one position). Bad input raises :class:`FieldError` naming the field.

    >>> BanditLog(action=[0, 1], reward=[1, 0], pscore=[0.5, 0])
    Traceback (most recent call last):
    ...
    ray_app.errors.FieldError: pscore: must be in (0, 1]; 0.0 at row 1
    >>> BanditLog(action=[0, 1], reward=[1], pscore=[0.5, 0.5])
    Traceback (most recent call last):
    ...
    ray_app.errors.FieldError: reward: expected 2 rows (one per logged decision), got 1
    """

    action: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    position: np.ndarray | None = None

    def __init__(
        self,
        action: ArrayLike,
        reward: ArrayLike,
        pscore: ArrayLike,
        position: ArrayLike | None = None,
    ) -> None:
        act = _vector("action", action, None, int)
        n = act.shape[0]
        if n == 0:
            raise FieldError("action", "the log is empty (no rows)")
        rew = _vector("reward", reward, n, float)
        ps = _vector("pscore", pscore, n, float)
        bad = (ps <= 0) | (ps > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise FieldError("pscore", f"must be in (0, 1]; {ps[i]} at row {i}")
        pos = None if position is None else _vector("position", position, n, int)
        object.__setattr__(self, "action", act)
        object.__setattr__(self, "reward", rew)
        object.__setattr__(self, "pscore", ps)
        object.__setattr__(self, "position", pos)

    @property
    def n(self) -> int:
        """Number of logged rows."""
        return int(self.action.shape[0])

    def take(self, rows: ArrayLike) -> BanditLog:
        """The log restricted to ``rows`` (indices or a boolean mask)."""
        idx = np.asarray(rows)
        return BanditLog(
            self.action[idx],
            self.reward[idx],
            self.pscore[idx],
            None if self.position is None else self.position[idx],
        )


def _per_position(name: str, arr: ArrayLike, log: BanditLog) -> np.ndarray:
    """``arr`` as ``[n, n_actions, n_positions]`` after checking it against ``log``."""
    try:
        a = np.asarray(arr, dtype=float)
    except (TypeError, ValueError) as exc:
        raise FieldError(name, f"expected numbers: {exc}") from None
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[0] != log.n:
        raise FieldError(
            name,
            f"expected shape (n_rows={log.n}, n_actions) or (n_rows, n_actions, n_positions), "
            f"got {a.shape}",
        )
    _finite(name, a)
    if int(log.action.max()) >= a.shape[1]:
        raise FieldError(
            "action", f"action {int(log.action.max())} is out of range for {a.shape[1]} actions"
        )
    n_pos = 1 if log.position is None else int(log.position.max()) + 1
    if a.shape[2] < n_pos:
        raise FieldError(name, f"has {a.shape[2]} positions but the log uses {n_pos}")
    return a


def _check_dist(action_dist: np.ndarray) -> None:
    if (action_dist < 0).any():
        raise FieldError("action_dist", "probabilities must be >= 0")
    sums = action_dist.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        i = np.unravel_index(int(np.argmax(np.abs(sums - 1.0))), sums.shape)
        raise FieldError(
            "action_dist", f"each row must sum to 1 over actions; row {int(i[0])} sums to {sums[i]}"
        )


def _positions(log: BanditLog) -> np.ndarray:
    return np.zeros(log.n, dtype=np.int64) if log.position is None else log.position


def round_rewards(
    estimator: EstimatorName,
    log: BanditLog,
    action_dist: ArrayLike,
    q: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row terms ``(numerator, weight)``: the estimate is ``sum(numerator) / sum(weight)``.

    For ``ips``, ``dm`` and ``dr`` the weight is 1 per row (a plain mean); for ``snips`` it is
    the importance weight. Bootstrap intervals resample these rows.

    >>> log = BanditLog(action=[1], reward=[1.0], pscore=[0.25])
    >>> num, w = round_rewards("ips", log, [[0.5, 0.5]])
    >>> num.tolist(), w.tolist()
    ([2.0], [1.0])
    """
    if estimator not in ESTIMATORS:
        raise FieldError("estimator", f"expected one of {list(ESTIMATORS)}, got {estimator!r}")
    pi = _per_position("action_dist", action_dist, log)
    _check_dist(pi)
    rows = np.arange(log.n)
    pos = _positions(log)
    w = pi[rows, log.action, pos] / log.pscore
    ones = np.ones(log.n)
    if estimator == "ips":
        return w * log.reward, ones
    if estimator == "snips":
        return w * log.reward, w
    if q is None:
        raise FieldError("q", f"{estimator} needs an outcome model's predictions q[row, action]")
    qa = _per_position("q", q, log)
    if qa.shape != pi.shape:
        raise FieldError("q", f"expected the shape of action_dist {pi.shape}, got {qa.shape}")
    dm = np.einsum("na,na->n", qa[rows, :, pos], pi[rows, :, pos])
    if estimator == "dm":
        return dm, ones
    return dm + w * (log.reward - qa[rows, log.action, pos]), ones


def estimate(
    estimator: EstimatorName,
    log: BanditLog,
    action_dist: ArrayLike,
    q: ArrayLike | None = None,
) -> float:
    """The point estimate of the target policy's value (mean reward per row).

    >>> log = BanditLog(action=[0, 1], reward=[1.0, 0.0], pscore=[0.5, 0.5])
    >>> estimate("snips", log, [[0.9, 0.1], [0.9, 0.1]])
    0.9
    """
    num, w = round_rewards(estimator, log, action_dist, q)
    total = float(w.sum())
    if total <= 0:
        # the target policy never takes a logged action: SNIPS is undefined (NaN; null in the
        # JSON), not 0, a value the policy would be rated at with certainty
        return math.nan
    return float(num.sum() / total)


def bootstrap_interval(
    num: np.ndarray,
    weight: np.ndarray,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    chunk: int = 64,
) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``sum(num)/sum(weight)`` over rows resampled with replacement.

    Percentile interval at level ``1 - alpha`` from ``n_bootstrap`` resamples drawn with
    ``numpy.random.default_rng(seed)``; the same seed gives the same interval. A resample whose
    weights sum to 0 (SNIPS where the target policy takes none of its logged actions) has no
    value: it is left out, not counted as 0, which pulled the interval's low end to 0; when
    none has one, all three are NaN.

    >>> mean, low, high = bootstrap_interval(np.array([0.0, 1.0] * 50), np.ones(100), 500, seed=3)
    >>> round(mean, 2), low < 0.5 < high, round(high - low, 1)
    (0.5, True, 0.2)
    """
    if n_bootstrap < 1:
        raise FieldError("n_bootstrap", f"must be >= 1, got {n_bootstrap}")
    if not 0 < alpha < 1:
        raise FieldError("alpha", f"must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    n = num.shape[0]
    # at most ~4M drawn indices at once (64 resamples of a million rows took 1.5 GB); the same
    # draws, in more, smaller chunks
    chunk = max(1, min(chunk, _MAX_DRAWN // max(n, 1)))
    values = np.empty(n_bootstrap)
    done = 0
    while done < n_bootstrap:
        c = min(chunk, n_bootstrap - done)
        idx = rng.integers(0, n, size=(c, n))
        top, bottom = num[idx].sum(axis=1), weight[idx].sum(axis=1)
        values[done : done + c] = np.divide(
            top, bottom, out=np.full_like(top, np.nan, dtype=np.float64), where=bottom > 0
        )
        done += c
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan, math.nan
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), float(round(low, 12)), float(round(high, 12))


#: Most row indices :func:`bootstrap_interval` draws in one chunk of resamples.
_MAX_DRAWN = 4_000_000


@dataclass(frozen=True)
class Estimate:
    """One estimator's value with its bootstrap interval (``ci_level`` = 1 - alpha)."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    bootstrap_mean: float
    n: int
    n_bootstrap: int
    ci_level: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def evaluate(
    log: BanditLog,
    action_dist: ArrayLike,
    q: ArrayLike | None = None,
    estimators: Sequence[EstimatorName] | None = None,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Every estimator (default: all four, or ``ips`` and ``snips`` when ``q`` is None) with CIs.

    Each estimator's bootstrap uses the same ``seed``, so they resample the same rows.

    >>> log = BanditLog(action=[0, 1, 0, 1], reward=[1, 0, 0, 1], pscore=[0.5] * 4)
    >>> sorted(evaluate(log, [[0.5, 0.5]] * 4, n_bootstrap=10))
    ['ips', 'snips']
    """
    names = (
        list(estimators)
        if estimators is not None
        else [e for e in ESTIMATORS if q is not None or e not in _NEEDS_Q]
    )
    out: dict[str, Estimate] = {}
    for name in names:
        num, w = round_rewards(name, log, action_dist, q)
        total = float(w.sum())
        value = float(num.sum() / total) if total > 0 else math.nan  # undefined (SNIPS)
        mean, low, high = bootstrap_interval(num, w, n_bootstrap, alpha, seed)
        out[name] = Estimate(name, value, low, high, mean, log.n, n_bootstrap, 1 - alpha)
    return out
