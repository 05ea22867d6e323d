"""The HTML page of an experiment report, with its plots (funnel per arm, uplift over time) as
inline PNGs (see :mod:`ray_app.experiments.report`)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["render_html"]


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
    for text in ax.legend().get_texts():  # arm names as text, never math markup
        text.set_parse_math(False)
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
    for text in ax.legend().get_texts():  # arm names as text, never math markup
        text.set_parse_math(False)
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
    from ray_app.experiments.report import uplift_over_time  # report renders with this

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
