"""Experiment analysis: per arm conversion and activation with confidence intervals, relative
uplift against control, a sample-ratio-mismatch check and CUPED variance reduction.

The unit of analysis is the user (the unit the experiment randomizes), one row per user; the
ids the stream merged (an anonymous visitor who then signed up) are one user:

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
decision log (``onramp.decision/2``) and reward records (``onramp.reward/2``) as JSON lines, and
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

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ray_app.experiments.html import render_html
from ray_app.experiments.stats import (
    CupedResult,
    Estimate,
    SRMResult,
    cuped,
    proportion,
    ratio_mean,
    relative_uplift,
    srm,
)
from ray_app.records.decision import forwarded_copy
from ray_app.timefmt import RECORD_MS_END, record_ms

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

#: Columns of the per-user frame (``covariate`` and ``experiment`` are optional).
USER_COLUMNS = ("user", "arm", "first_ms", "decisions", "positives", "steps", "activated")


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


def _proportion_mean_var(v: np.ndarray) -> tuple[float, float]:
    """The share of 0/1 values and the variance of that mean, computed at ``(x + 1) / (n + 2)``
    (Agresti and Caffo's adjustment): an arm with no event (or only events) has a variance, so
    its uplift interval is not a single point (it was, with about 75% coverage at 100 users).

    >>> _proportion_mean_var(np.zeros(100))
    (0.0, 9.707804690503653e-05)
    """
    n = len(v)
    if n < 2:
        return (math.nan, math.nan)
    p = (float(v.sum()) + 1) / (n + 2)
    return float(v.mean()), p * (1 - p) / n


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
    has_cov = "covariate" in users and users["covariate"].notna().any()
    cup = None
    if has_cov:
        # a user without a pre-period value (new since) takes the mean: the adjustment is then
        # 0 for them, which keeps the estimate unbiased (CUPED used to be off for everybody)
        covariate = users["covariate"].astype(float)
        covariate = covariate.fillna(covariate.mean())
        cup = cuped(users["activated"].to_numpy(float), covariate.to_numpy(float))
        users = users.assign(activated_cuped=cup.adjusted)
    results: dict[str, ArmResult] = {}
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    for arm in arms:
        g = users[users["arm"] == arm]
        conv = ratio_mean(g["positives"].to_numpy(float), g["decisions"].to_numpy(float))
        act = _proportion_mean_var(g["activated"].to_numpy(float))
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


def _ms(ts: Any, where: str = "timestamp") -> int:
    """A record's time in epoch ms: a number of ms, or ISO-8601 text; a :class:`FieldError`
    naming ``where`` for anything else."""
    from ray_app.errors import FieldError

    try:
        return record_ms(ts)
    except ValueError:
        raise FieldError(where, f"expected epoch ms or an ISO-8601 time, got {ts!r:.80}") from None


def _checked_decision(d: Any) -> Mapping[str, Any]:
    """A decision record with the fields the report reads, or a :class:`FieldError` naming the
    record and the field (an archive can be edited by hand, or be another topic's)."""
    from ray_app.errors import FieldError

    if not isinstance(d, Mapping):
        raise FieldError("decision", f"expected a JSON object, got {type(d).__name__}")
    did = d.get("decisionId")
    if not isinstance(did, str | int) or isinstance(did, bool):
        raise FieldError("decision.decisionId", f"missing or not an id: {did!r:.80}")
    for name in ("userKey", "arm"):
        if not isinstance(d.get(name), str) or not d[name]:
            raise FieldError(
                f"decision {did}: {name}", f"missing or not a text: {d.get(name)!r:.80}"
            )
    _ms(d.get("timestamp"), f"decision {did}: timestamp")
    return d


def _reward_value(r: Any) -> float:
    """A reward record's ``reward``, or a :class:`FieldError` naming the record."""
    from ray_app.errors import FieldError

    value = r.get("reward")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise FieldError(f"reward {r.get('decisionId')}: reward", f"not a number: {value!r:.80}")


def _people(decisions: Iterable[Mapping[str, Any]]) -> Callable[[str], str]:
    """The person each user key belongs to: a decision made after the stream merged ids names
    them in ``mergedFrom`` (an anonymous visitor who signed up is one user of the experiment,
    not two), so keys joined by any decision's ``mergedFrom`` are one person, named by the key
    that survived the last merge."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        root = key
        while root in parent:
            root = parent[root]
        while key != root:
            parent[key], key = root, parent[key]
        return root

    for d in sorted(decisions, key=lambda d: _ms(d["timestamp"])):
        merged = d.get("mergedFrom")
        merged = list(merged) if isinstance(merged, list | tuple) else []
        if forwarded_copy(d) and isinstance(d.get("forwardedFrom"), str):
            merged.append(d["forwardedFrom"])  # a copy for the surviving id: a merge
        if not merged:
            continue
        survivor = find(str(d["userKey"]))
        for old in merged:
            root = find(str(old))
            if root != survivor:
                parent[root] = survivor
    return find


def users_from_logs(
    decisions: Iterable[Mapping[str, Any]],
    rewards: Iterable[Mapping[str, Any]],
    covariates: Mapping[str, float] | None = None,
) -> dict[str, pd.DataFrame]:
    """Per experiment, the per-user frame from decision records (``onramp.decision/2``) and
    reward records (``onramp.reward/2``), each deduplicated by decision id (both topics are
    written at least once). A decision counts for conversion once its reward is decided. Ids
    the stream merged (a decision's ``mergedFrom``, or its copy forwarded to the surviving id)
    are one user, in the arm of their earliest decision (of two at one time, the one with the
    smaller id); a forwarded copy is not a decision.

    >>> d = [{"decisionId": "d1", "userKey": "u1", "arm": "control", "experiment": "e",
    ...       "slot": "next_step", "chosen": "role", "timestamp": "2026-01-01T00:00:00Z"}]
    >>> r = [{"decisionId": "d1", "reward": 1.0, "outcome": "completed", "action": "role"}]
    >>> users_from_logs(d, r)["e"][["user", "arm", "decisions", "positives", "steps"]].to_dict("records")
    [{'user': 'u1', 'arm': 'control', 'decisions': 1, 'positives': 1, 'steps': 1}]
    """
    by_id: dict[str, Mapping[str, Any]] = {}
    copies = []
    for d in decisions:
        if _checked_decision(d).get("chosen") is None:
            continue
        if forwarded_copy(d):  # the original counts; the copy says who it merged into
            copies.append(d)
            continue
        by_id.setdefault(str(d["decisionId"]), d)
    outcome: dict[str, Mapping[str, Any]] = {}
    for r in rewards:
        if isinstance(r, Mapping) and str(r.get("decisionId")) in by_id:
            _reward_value(r)
            outcome.setdefault(str(r["decisionId"]), r)
    person = _people([*by_id.values(), *copies])
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for did, d in by_id.items():
        key = (str(d.get("experiment", "default")), person(str(d["userKey"])))
        at = (_ms(d["timestamp"]), did)  # decisions of one time are ordered by id
        row = rows.setdefault(
            key,
            {
                "user": key[1],
                "arm": d["arm"],
                "first": at,
                "decisions": 0,
                "positives": 0,
                "steps": set(),
                "activated": 0,
            },
        )
        if at < row["first"]:  # the arm of the user's earliest decision, whatever the order
            row["first"], row["arm"] = at, d["arm"]  # the files were read in
        got = outcome.get(did)
        if got is None:
            continue
        row["decisions"] += 1
        if _reward_value(got) > 0:
            row["positives"] += 1
            if got.get("outcome") == "converted":
                row["activated"] = 1
            elif got.get("outcome") == "completed":
                row["steps"].add(got.get("action"))
    frames: dict[str, pd.DataFrame] = {}
    for exp in sorted({k[0] for k in rows}):
        recs = [
            dict(v, steps=len(v["steps"]), first_ms=v["first"][0])
            for k, v in rows.items()
            if k[0] == exp
        ]
        df = pd.DataFrame.from_records(recs, columns=list(USER_COLUMNS))
        if covariates is not None:
            df["covariate"] = df["user"].map(covariates)
        frames[exp] = df
    return frames


# -- HTML -------------------------------------------------------------------------------------


def read_json_lines(path: str | Path, topic: str | None = None) -> list[dict[str, Any]]:
    """Records of JSON lines at ``path``: a file, or what ``onramp archive`` writes (an archive
    root, whose ``<topic>/`` folder is read, or a folder of per-partition files), on the local
    disk or at a filesystem URI (``s3://``...), read through :mod:`ray_app.storage` by
    :func:`ray_app.kafka.archive.archived_files` (``.gz`` read as gzip; blank lines skipped).
    An unreadable input or a line that is not a JSON object is a :class:`FieldError` naming
    ``file[:line]``."""
    import orjson

    from ray_app.errors import FieldError
    from ray_app.kafka.archive import archived_files

    out = []
    for name, raw in archived_files(path, topic):
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise FieldError(f"{name}:{n}", f"not JSON: {exc}") from None
            if not isinstance(rec, dict):
                raise FieldError(f"{name}:{n}", f"expected a JSON object, got {type(rec).__name__}")
            out.append(rec)
    return out


def read_user_table(path: str | Path) -> dict[str, pd.DataFrame]:
    """Per experiment, the per-user frame from a CSV or Parquet table with :data:`USER_COLUMNS`
    (``experiment`` and ``covariate`` optional; ``first_ms`` may be missing: no time plot)."""
    from ray_app.errors import FieldError

    p = Path(path)
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except OSError:
        raise  # a missing file or a folder: the command says which
    except Exception as exc:  # pandas and pyarrow raise many kinds for a file that is no table
        raise FieldError(f"{p}", f"not a {p.suffix.lstrip('.') or 'CSV'} table: {exc}") from None
    if "first_ms" not in df:
        df["first_ms"] = 0
    if "steps" not in df:
        df["steps"] = 0
    missing = [c for c in USER_COLUMNS if c not in df]
    if missing:
        raise FieldError(f"{p}", f"missing columns {missing} (need {list(USER_COLUMNS)})")
    for col in ("first_ms", "decisions", "positives", "steps", "activated", "covariate"):
        if col not in df:
            continue
        numbers = pd.to_numeric(df[col], errors="coerce")
        bad = numbers.isna() & df[col].notna() if col == "covariate" else numbers.isna()
        bad |= ~np.isfinite(numbers.fillna(0.0))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise FieldError(
                f"{p}", f"{col} must be a number, got {df[col].iloc[row]!r} (row {row + 2})"
            )
        df[col] = numbers

    def refuse(bad: Any, what: str) -> None:
        if bad.any():
            row = int(np.flatnonzero(np.asarray(bad))[0])
            raise FieldError(f"{p}", f"{what} (row {row + 2})")

    for col in ("decisions", "positives", "steps"):  # counts: whole numbers, none below 0
        v = df[col].to_numpy(dtype=float)
        refuse((v < 0) | (v != np.floor(v)), f"{col} must be a count (a whole number >= 0)")
    refuse(~df["activated"].isin([0, 1]), "activated must be 0 or 1")
    refuse(df["positives"] > df["decisions"], "positives must be at most decisions")
    first = df["first_ms"].to_numpy(dtype=float)
    refuse((first < 0) | (first >= RECORD_MS_END), "first_ms must be a time of 1970-2200 in ms")
    if "experiment" not in df:
        df["experiment"] = "default"
    for col in ("user", "arm", "experiment"):  # a blank cell: a row no report may drop silently
        refuse(df[col].isna() | (df[col].astype(str).str.strip() == ""), f"{col} is empty")
        df[col] = df[col].astype(str)
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
    from ray_app.cli.output import dumps

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for name, users in experiments.items():
        s = analyze(users, shares, control, level)
        summary[name] = s
        page = out / f"{_safe(name)}.html"
        page.write_text(render_html(name, s, users))
        s["html"] = str(page)
    (out / "summary.json").write_text(dumps(summary, indent=2))  # strict: NaN as null
    return summary


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "experiment"
