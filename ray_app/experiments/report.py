"""Experiment analysis: per arm conversion and activation with confidence intervals, relative
uplift against control, a sample-ratio-mismatch check and CUPED variance reduction.

The unit of analysis is the user (the unit the experiment randomizes), one row per user:

* ``conversion``: decisions followed by a positive outcome within the attribution window, over
  decisions with a decided outcome (a ratio metric: its interval comes from the delta method over
  per-user sums, so a user's decisions are not counted as independent);
* ``activation``: users who completed onboarding (an ``Onboarding Completed`` credited to one of
  their decisions: reward outcome ``converted``), over users;
* relative uplift ``mean(arm) / mean(control) - 1`` with a delta-method interval;
* SRM: a chi-square goodness-of-fit test of users per arm against the configured split; a p-value
  under 0.001 means the assignment or the logging is broken and the results are not to be trusted;
* CUPED (Deng et al. 2013): with a pre-period covariate ``x`` per user (activity before the
  experiment, say), ``y - theta * (x - mean(x))`` with ``theta = cov(x, y) / var(x)`` (pooled)
  estimates the same effect with variance reduced by about ``corr(x, y)**2``.

Pure functions over numbers and a pandas frame; :func:`users_from_logs` builds the frame from the
decision log (``onramp.decision/1``) and reward records (``onramp.reward/1``) as JSON lines, and
:func:`render_html` writes the report with its plots.

>>> e = proportion(30, 100)
>>> round(e.value, 2), round(e.low, 3), round(e.high, 3)
(0.3, 0.219, 0.396)
>>> u = relative_uplift(0.24, 0.00004, 0.20, 0.00004)
>>> round(u.value, 3), round(u.low, 3), round(u.high, 3)
(0.2, 0.103, 0.297)
>>> srm({"control": 5000, "treatment": 5200}, {"control": 0.5, "treatment": 0.5}).mismatch
False
>>> srm({"control": 5000, "treatment": 5600}, {"control": 0.5, "treatment": 0.5}).mismatch
True
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ArmResult",
    "CupedResult",
    "Estimate",
    "SRMResult",
    "analyze",
    "cuped",
    "read_json_lines",
    "read_user_table",
    "write_report",
    "proportion",
    "ratio_mean",
    "relative_uplift",
    "render_html",
    "srm",
    "uplift_over_time",
    "users_from_logs",
]

SRM_THRESHOLD = 0.001
#: Columns of the per-user frame (``covariate`` and ``experiment`` are optional).
USER_COLUMNS = ("user", "arm", "first_ms", "decisions", "positives", "steps", "activated")


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
    return Estimate.normal(value, var, level)


@dataclass(frozen=True)
class SRMResult:
    """Chi-square goodness of fit of users per arm against the expected shares."""

    chi2: float
    df: int
    p_value: float
    mismatch: bool
    observed: dict[str, int]
    expected: dict[str, float]


def _chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square(df): the regularized upper incomplete gamma function
    Q(df / 2, x / 2), by its series below a + 1 and its continued fraction above (Numerical
    Recipes' ``gammq``).

    >>> round(_chi2_sf(3.841458820694124, 1), 6), round(_chi2_sf(5.991464547107979, 2), 6)
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
    p = _chi2_sf(chi2, df) if n else 1.0
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


@dataclass
class ArmResult:
    """One arm's numbers in the summary."""

    arm: str
    users: int
    decisions: int
    conversion: Estimate
    activation: Estimate
    conversion_uplift: Estimate | None = None
    activation_uplift: Estimate | None = None
    activation_cuped: Estimate | None = None
    activation_uplift_cuped: Estimate | None = None


def _mean_var(v: np.ndarray) -> tuple[float, float]:
    if len(v) < 2:
        return (math.nan, math.nan)
    return float(v.mean()), float(v.var(ddof=1) / len(v))


def analyze(
    users: pd.DataFrame,
    shares: Mapping[str, float] | None = None,
    control: str = "control",
    level: float = 0.95,
) -> dict[str, Any]:
    """The summary of one experiment from its per-user frame (see :data:`USER_COLUMNS`).

    ``shares``: the configured split (arm -> weight) for the SRM check; without it, equal
    shares over the arms seen.
    """
    arms = sorted(users["arm"].unique(), key=lambda a: (a != control, a))
    if control not in arms:
        raise ValueError(f"no user in the control arm {control!r}; arms: {arms}")
    has_cov = "covariate" in users and users["covariate"].notna().all()
    cup = None
    if has_cov:
        cup = cuped(users["activated"].to_numpy(float), users["covariate"].to_numpy(float))
        users = users.assign(activated_cuped=cup.adjusted)
    results: dict[str, ArmResult] = {}
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    for arm in arms:
        g = users[users["arm"] == arm]
        conv = ratio_mean(g["positives"].to_numpy(float), g["decisions"].to_numpy(float))
        act = _mean_var(g["activated"].to_numpy(float))
        stats[arm] = {"conversion": conv, "activation": act}
        results[arm] = ArmResult(
            arm,
            len(g),
            int(g["decisions"].sum()),
            Estimate.normal(conv[0], conv[1], level),
            proportion(int(g["activated"].sum()), len(g), level),
        )
        if cup is not None:
            stats[arm]["activation_cuped"] = _mean_var(g["activated_cuped"].to_numpy(float))
            results[arm].activation_cuped = Estimate.normal(*stats[arm]["activation_cuped"], level)
    c = stats[control]
    for arm in arms:
        if arm == control:
            continue
        s = stats[arm]
        r = results[arm]
        r.conversion_uplift = relative_uplift(*s["conversion"], *c["conversion"], level)
        r.activation_uplift = relative_uplift(*s["activation"], *c["activation"], level)
        if cup is not None:
            r.activation_uplift_cuped = relative_uplift(
                *s["activation_cuped"], *c["activation_cuped"], level
            )
    counts = users["arm"].value_counts().to_dict()
    check = srm(counts, shares or dict.fromkeys(arms, 1.0))
    return {
        "control": control,
        "level": level,
        "users": len(users),
        "arms": {a: _plain(asdict(r)) for a, r in results.items()},
        "srm": _plain(asdict(check)),
        "cuped": None
        if cup is None
        else {
            "metric": "activation",
            "theta": cup.theta,
            "correlation": cup.correlation,
            "varianceReduction": cup.variance_reduction,
        },
    }


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return _plain(x.item())
    return x


def uplift_over_time(
    users: pd.DataFrame, arm: str, control: str = "control", points: int = 10, level: float = 0.95
) -> list[dict[str, Any]]:
    """Cumulative relative uplift of activation, ``arm`` vs ``control``, over users first seen
    up to each of ``points`` times (equal steps of the experiment's duration)."""
    if users.empty:
        return []
    lo, hi = int(users["first_ms"].min()), int(users["first_ms"].max())
    out = []
    for i in range(1, points + 1):
        until = lo + (hi - lo) * i / points
        seen = users[users["first_ms"] <= until]
        t = seen[seen["arm"] == arm]["activated"].to_numpy(float)
        c = seen[seen["arm"] == control]["activated"].to_numpy(float)
        est = relative_uplift(*_mean_var(t), *_mean_var(c), level)
        out.append({"until_ms": until, "users": len(seen), **_plain(asdict(est))})
    return out


# -- input ------------------------------------------------------------------------------------


def _ms(ts: Any) -> int:
    if isinstance(ts, int | float):
        return int(ts)
    return int(pd.Timestamp(ts).timestamp() * 1000)


def users_from_logs(
    decisions: Iterable[Mapping[str, Any]],
    rewards: Iterable[Mapping[str, Any]],
    covariates: Mapping[str, float] | None = None,
) -> dict[str, pd.DataFrame]:
    """Per experiment, the per-user frame from decision records (``onramp.decision/1``) and
    reward records (``onramp.reward/1``), each deduplicated by decision id (both topics are
    written at least once). A decision counts for conversion once its reward is decided.

    >>> d = [{"decisionId": "d1", "userKey": "u1", "arm": "control", "experiment": "e",
    ...       "slot": "next_step", "chosen": "role", "timestamp": "2026-01-01T00:00:00Z"}]
    >>> r = [{"decisionId": "d1", "reward": 1.0, "outcome": "completed", "action": "role"}]
    >>> users_from_logs(d, r)["e"][["user", "arm", "decisions", "positives", "steps"]].to_dict("records")
    [{'user': 'u1', 'arm': 'control', 'decisions': 1, 'positives': 1, 'steps': 1}]
    """
    by_id: dict[str, Mapping[str, Any]] = {}
    for d in decisions:
        if d.get("chosen") is not None:
            by_id.setdefault(str(d["decisionId"]), d)
    outcome: dict[str, Mapping[str, Any]] = {}
    for r in rewards:
        if str(r["decisionId"]) in by_id:
            outcome.setdefault(str(r["decisionId"]), r)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for did, d in by_id.items():
        key = (str(d.get("experiment", "default")), str(d["userKey"]))
        row = rows.setdefault(
            key,
            {
                "user": key[1],
                "arm": d["arm"],
                "first_ms": _ms(d["timestamp"]),
                "decisions": 0,
                "positives": 0,
                "steps": set(),
                "activated": 0,
            },
        )
        row["first_ms"] = min(row["first_ms"], _ms(d["timestamp"]))
        got = outcome.get(did)
        if got is None:
            continue
        row["decisions"] += 1
        if float(got["reward"]) > 0:
            row["positives"] += 1
            if got.get("outcome") == "converted":
                row["activated"] = 1
            elif got.get("outcome") == "completed":
                row["steps"].add(got.get("action"))
    frames: dict[str, pd.DataFrame] = {}
    for exp in sorted({k[0] for k in rows}):
        recs = [dict(v, steps=len(v["steps"])) for k, v in rows.items() if k[0] == exp]
        df = pd.DataFrame.from_records(recs, columns=list(USER_COLUMNS))
        if covariates is not None:
            df["covariate"] = df["user"].map(covariates)
        frames[exp] = df
    return frames


# -- HTML -------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _funnel_plot(users: pd.DataFrame, arms: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ["exposed", "1+ steps", "2+ steps", "3+ steps", "activated"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        g = users[users["arm"] == arm]
        n = max(len(g), 1)
        shares = [1.0, *((g["steps"] >= k).sum() / n for k in (1, 2, 3)), g["activated"].sum() / n]
        ax.bar(np.arange(len(stages)) + i * width, shares, width, label=arm)
    ax.set_xticks(np.arange(len(stages)) + width * (len(arms) - 1) / 2, stages)
    ax.set_ylabel("share of the arm's users")
    ax.set_title("Onboarding completion funnel per arm")
    ax.legend()
    return _png(fig)


def _uplift_plot(series: dict[str, list[dict[str, Any]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for arm, points in series.items():
        pts = [p for p in points if p["value"] is not None]
        if not pts:
            continue
        t = [pd.Timestamp(p["until_ms"], unit="ms") for p in pts]
        ax.plot(t, [p["value"] for p in pts], marker="o", label=f"{arm} vs control")
        ax.fill_between(t, [p["low"] for p in pts], [p["high"] for p in pts], alpha=0.2)
    ax.axhline(0, color="grey", lw=1)
    ax.set_ylabel("relative uplift of activation")
    ax.set_title("Uplift over time (cumulative, with confidence band)")
    ax.legend()
    fig.autofmt_xdate()
    return _png(fig)


def _fmt(e: Mapping[str, Any] | None, pct: bool = True) -> str:
    if not e or e.get("value") is None:
        return "-"
    f = (lambda v: f"{100 * v:.2f}%") if pct else (lambda v: f"{v:.4f}")
    return f"{f(e['value'])} [{f(e['low'])}, {f(e['high'])}]"


def render_html(experiment: str, summary: Mapping[str, Any], users: pd.DataFrame) -> str:
    """The report page: tables, SRM verdict, CUPED, the funnel and uplift-over-time plots
    (PNG, embedded as base64, so the page is one self-contained file)."""
    arms = list(summary["arms"])
    control = summary["control"]
    series = {a: uplift_over_time(users, a, control) for a in arms if a != control}
    rows = []
    for a, r in summary["arms"].items():
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    a,
                    r["users"],
                    r["decisions"],
                    _fmt(r["conversion"]),
                    _fmt(r["conversion_uplift"]),
                    _fmt(r["activation"]),
                    _fmt(r["activation_uplift"]),
                    _fmt(r["activation_uplift_cuped"]),
                )
            )
            + "</tr>"
        )
    s = summary["srm"]
    srm_text = (
        f"<p class='bad'>Sample ratio mismatch: p = {s['p_value']:.2g} (chi-square "
        f"{s['chi2']:.1f}, df {s['df']}). Users per arm do not match the split: do not trust "
        "these results before finding why.</p>"
        if s["mismatch"]
        else f"<p>No sample ratio mismatch (p = {s['p_value']:.3g}).</p>"
    )
    cup = summary.get("cuped")
    cuped_text = (
        f"<p>CUPED on activation: covariate correlation {cup['correlation']:.2f}, variance "
        f"reduced by {100 * cup['varianceReduction']:.1f}%.</p>"
        if cup
        else "<p>CUPED: no pre-period covariate given.</p>"
    )
    level = round(100 * summary["level"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Onramp experiment {html.escape(experiment)}</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}
.bad{{color:#b00;font-weight:bold}}</style></head><body>
<h1>Experiment {html.escape(experiment)}</h1>
<p>{summary["users"]} users. Intervals are {level}% confidence intervals; uplift is relative to
{html.escape(control)}.</p>
<table><tr><th>arm</th><th>users</th><th>decisions</th><th>conversion</th><th>uplift</th>
<th>activation</th><th>uplift</th><th>uplift (CUPED)</th></tr>
{"".join(rows)}</table>
{srm_text}
{cuped_text}
<h2>Completion funnel</h2><img alt="funnel" src="data:image/png;base64,{_funnel_plot(users, arms)}">
<h2>Uplift over time</h2><img alt="uplift" src="data:image/png;base64,{_uplift_plot(series)}">
</body></html>
"""


# -- files ------------------------------------------------------------------------------------


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (``.gz`` read as gzip; blank lines skipped). An unreadable
    file or a line that is not a JSON object is a :class:`FieldError` naming ``file[:line]``."""
    import gzip

    import orjson

    from ray_app.errors import FieldError

    p = Path(path)
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError) as exc:
        raise FieldError(str(p), f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise FieldError(f"{p}:{n}", f"not JSON: {exc}") from None
        if not isinstance(rec, dict):
            raise FieldError(f"{p}:{n}", f"expected a JSON object, got {type(rec).__name__}")
        out.append(rec)
    return out


def read_user_table(path: str | Path) -> dict[str, pd.DataFrame]:
    """Per experiment, the per-user frame from a CSV or Parquet table with :data:`USER_COLUMNS`
    (``experiment`` and ``covariate`` optional; ``first_ms`` may be missing: no time plot)."""
    from ray_app.errors import FieldError

    p = Path(path)
    df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    if "first_ms" not in df:
        df["first_ms"] = 0
    if "steps" not in df:
        df["steps"] = 0
    missing = [c for c in USER_COLUMNS if c not in df]
    if missing:
        raise FieldError(f"{p}", f"missing columns {missing} (need {list(USER_COLUMNS)})")
    if "experiment" not in df:
        df["experiment"] = "default"
    df["user"] = df["user"].astype(str)
    df["arm"] = df["arm"].astype(str)
    return {str(e): g.drop(columns="experiment") for e, g in df.groupby("experiment")}


def write_report(
    experiments: Mapping[str, pd.DataFrame],
    out_dir: str | Path,
    shares: Mapping[str, float] | None = None,
    control: str = "control",
    level: float = 0.95,
) -> dict[str, Any]:
    """Analyse every experiment; write one page per experiment (``<experiment>.html``) and
    ``summary.json`` with every experiment's numbers. Returns the summary."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for name, users in experiments.items():
        s = analyze(users, shares, control, level)
        summary[name] = s
        page = out / f"{_safe(name)}.html"
        page.write_text(render_html(name, s, users))
        s["html"] = str(page)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "experiment"
