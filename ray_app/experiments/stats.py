"""The statistics of an experiment report: proportions and ratio metrics with confidence
intervals (delta method), relative uplift, the sample-ratio-mismatch test and CUPED. Pure
functions over numbers and arrays (see :mod:`ray_app.experiments.report`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

SRM_THRESHOLD = 0.001
"""SRM p-value under which the split is broken."""

__all__ = [
    "SRM_THRESHOLD",
    "CupedResult",
    "Estimate",
    "SRMResult",
    "chi2_sf",
    "cuped",
    "proportion",
    "ratio_mean",
    "relative_uplift",
    "srm",
]


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


@dataclass(frozen=True)
class Estimate:
    """A point estimate, its standard error and its ``level`` confidence interval."""

    value: float
    std_error: float
    low: float
    high: float

    @classmethod
    def normal(cls, value: float, variance: float, level: float = 0.95) -> Estimate:
        se = math.sqrt(max(variance, 0.0))
        half = _z(level) * se
        return cls(value, se, value - half, value + half)

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high


def proportion(k: int, n: int, level: float = 0.95) -> Estimate:
    """Wilson score interval of ``k`` successes in ``n`` (good at small ``n`` and near 0 or 1)."""
    if n <= 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan)
    z = _z(level)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, math.sqrt(p * (1 - p) / n), center - half, center + half)


def ratio_mean(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """``sum(num) / sum(den)`` and its variance by the delta method over the units (users).

    >>> m, v = ratio_mean(np.array([1.0, 0, 2, 1]), np.array([2.0, 1, 2, 3]))
    >>> round(m, 3), round(v, 5)
    (0.5, 0.03125)
    """
    n = len(num)
    if n < 2 or den.sum() <= 0:
        return (math.nan, math.nan)
    mx, my = num.mean(), den.mean()
    vx, vy = num.var(ddof=1), den.var(ddof=1)
    cxy = np.cov(num, den, ddof=1)[0, 1]
    r = mx / my
    var = (vx - 2 * r * cxy + r * r * vy) / (my * my * n)
    return float(r), float(var)


def relative_uplift(
    mean_t: float, var_t: float, mean_c: float, var_c: float, level: float = 0.95
) -> Estimate:
    """``mean_t / mean_c - 1`` with a delta-method interval (``var_*``: variances of the means)."""
    if mean_c == 0 or not all(map(math.isfinite, (mean_t, var_t, mean_c, var_c))):
        return Estimate(math.nan, math.nan, math.nan, math.nan)
    value = mean_t / mean_c - 1
    var = var_t / mean_c**2 + mean_t**2 * var_c / mean_c**4
    est = Estimate.normal(value, var, level)
    if mean_t >= 0 and mean_c > 0 and est.low < -1:  # a rate cannot fall below zero
        est = Estimate(est.value, est.std_error, -1.0, est.high)
    return est


@dataclass(frozen=True)
class SRMResult:
    """Chi-square goodness of fit of users per arm against the expected shares."""

    chi2: float
    df: int
    p_value: float
    mismatch: bool
    observed: dict[str, int]
    expected: dict[str, float]


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square(df): the regularized upper incomplete gamma function
    Q(df / 2, x / 2), by its series below a + 1 and its continued fraction above (Numerical
    Recipes' ``gammq``).

    >>> round(chi2_sf(3.841458820694124, 1), 6), round(chi2_sf(5.991464547107979, 2), 6)
    (0.05, 0.05)
    """
    a, z = df / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    log_prefix = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1:  # series for P(a, z)
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1
            term *= z / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300  # continued fraction for Q(a, z) (modified Lentz)
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def srm(
    observed: Mapping[str, int], shares: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> SRMResult:
    """Sample-ratio-mismatch check (arms of ``shares`` with no user count as 0 observed)."""
    total_share = sum(shares.values())
    arms = [a for a in shares if shares[a] > 0]
    n = sum(observed.get(a, 0) for a in arms)
    expected = {a: n * shares[a] / total_share for a in arms}
    chi2 = sum((observed.get(a, 0) - e) ** 2 / e for a, e in expected.items() if e > 0)
    df = max(len(arms) - 1, 1)
    p = chi2_sf(chi2, df) if n else 1.0
    return SRMResult(
        chi2, df, p, p < threshold, {a: int(observed.get(a, 0)) for a in arms}, expected
    )


@dataclass(frozen=True)
class CupedResult:
    """CUPED adjustment of a user-level metric by a pre-period covariate."""

    theta: float
    correlation: float
    variance_reduction: float
    adjusted: np.ndarray = field(repr=False)


def cuped(y: np.ndarray, x: np.ndarray) -> CupedResult:
    """``y - theta * (x - mean(x))`` with ``theta`` pooled over all users (so it does not depend
    on the arm: the adjusted means stay unbiased for the effect).

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=5000); y = x + rng.normal(size=5000)
    >>> round(cuped(y, x).variance_reduction, 1)
    0.5
    """
    vx = x.var(ddof=1)
    if len(y) < 3 or vx == 0:
        return CupedResult(0.0, 0.0, 0.0, y.astype(float))
    cov = np.cov(y, x, ddof=1)[0, 1]
    theta = cov / vx
    adjusted = y - theta * (x - x.mean())
    vy = y.var(ddof=1)
    reduction = 1 - adjusted.var(ddof=1) / vy if vy > 0 else 0.0
    corr = cov / math.sqrt(vx * vy) if vy > 0 else 0.0
    return CupedResult(float(theta), float(corr), float(reduction), adjusted)
