"""Data-skew audit: recent traffic against the data the model was trained on.

Three questions, each answered from data Onramp already writes:

* **features**: the population stability index of each decision feature (the vectors the decision
  log records, in [0, 1] but a cross of two traits, worth ``features.cross_weight``), recent
  against reference; over ``psi_threshold`` (0.25: shifted) a
  feature has drifted;
* **segment mix**: the shares of each context value (``device``, ``plan``... as the decisions
  carry them in ``context``) and of experiment arms; a chi-square test of the recent counts
  against the reference shares, drifted when ``p < 0.001`` and some share moved by more than
  ``mix_tolerance`` (large samples make tiny moves significant);
* **DLQ and late rates**: from the Prometheus text of ``/metrics`` (a scrape or a saved file): the
  share of events refused (collector and stream) and the share of late records, against the
  reference scrape when one is given, else against ``max_dlq_share`` / ``max_late_share``.

>>> rng = np.random.default_rng(0)
>>> ref = rng.uniform(size=(2000, 2)); cur = ref.copy(); cur[:, 1] = cur[:, 1] ** 3
>>> [(f.name, f.drifted) for f in feature_shifts(ref, cur, ["tenure", "progress"])]
[('tenure', False), ('progress', True)]
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ray_app.learn.drift import psi

__all__ = [
    "FeatureShift",
    "MixShift",
    "RateCheck",
    "audit",
    "decision_records",
    "feature_shifts",
    "mix_shift",
    "rates_from_metrics",
    "render_audit_html",
    "write_audit",
]


@dataclass(frozen=True)
class FeatureShift:
    name: str
    psi: float
    reference_mean: float
    recent_mean: float
    drifted: bool


def feature_shifts(
    reference: np.ndarray, recent: np.ndarray, names: Sequence[str], threshold: float = 0.25
) -> list[FeatureShift]:
    """PSI of every feature (columns of ``[n, d]`` matrices), in column order."""
    scores = psi(reference, recent)
    return [
        FeatureShift(
            name,
            float(s),
            float(reference[:, i].mean()),
            float(recent[:, i].mean()),
            bool(s > threshold),
        )
        for i, (name, s) in enumerate(zip(names, scores, strict=True))
    ]


@dataclass(frozen=True)
class MixShift:
    segment: str
    reference: dict[str, float]
    recent: dict[str, float]
    chi2: float
    p_value: float
    max_move: float
    drifted: bool


def mix_shift(
    segment: str,
    reference: Mapping[str, int],
    recent: Mapping[str, int],
    alpha: float = 0.001,
    tolerance: float = 0.05,
) -> MixShift:
    """Chi-square of ``recent`` counts against the ``reference`` shares (values unseen in the
    reference get a small floor share, so a new segment counts as a move).

    >>> mix_shift("device", {"mobile": 500, "desktop": 500}, {"mobile": 800, "desktop": 200}).drifted
    True
    """
    from ray_app.experiments.stats import chi2_sf

    values = sorted(set(reference) | set(recent))
    n_ref, n_cur = sum(reference.values()), sum(recent.values())
    ref = {v: reference.get(v, 0) / n_ref if n_ref else 0.0 for v in values}
    cur = {v: recent.get(v, 0) / n_cur if n_cur else 0.0 for v in values}
    floor = 0.5 / max(n_ref, 1)
    chi2 = sum((recent.get(v, 0) - n_cur * max(ref[v], floor)) ** 2 / (n_cur * max(ref[v], floor))
               for v in values) if n_cur else 0.0  # fmt: skip
    p = chi2_sf(chi2, max(len(values) - 1, 1)) if n_cur and len(values) > 1 else 1.0
    move = max((abs(cur[v] - ref[v]) for v in values), default=0.0)
    return MixShift(segment, ref, cur, chi2, p, move, bool(p < alpha and move > tolerance))


@dataclass(frozen=True)
class RateCheck:
    name: str
    recent: float | None
    reference: float | None
    limit: float
    drifted: bool


def rates_from_metrics(text: str) -> dict[str, float | None]:
    """DLQ share (refused / (accepted + refused), collector and stream) and late share (late /
    all stream records) from Onramp's Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    from ray_app.errors import FieldError

    sums = dict.fromkeys(("accepted", "rejected", "records", "late", "stream_rejected"), 0.0)
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError as exc:  # the parser's word for text that is not the exposition format
        raise FieldError("metrics", f"not Prometheus text: {exc}") from None
    for s in samples:
        if s.name == "onramp_events_accepted_total":
            sums["accepted"] += s.value
        elif s.name == "onramp_events_rejected_total":
            sums["rejected"] += s.value
        elif s.name == "onramp_stream_records_total":
            sums["records"] += s.value
            if s.labels.get("outcome") == "late":
                sums["late"] += s.value
            if s.labels.get("outcome") == "rejected":
                sums["stream_rejected"] += s.value
    seen = sums["accepted"] + sums["rejected"]
    return {
        "dlq_share": (sums["rejected"] + sums["stream_rejected"]) / seen if seen else None,
        "late_share": sums["late"] / sums["records"] if sums["records"] else None,
    }


def _rate_checks(
    recent: Mapping[str, float | None],
    reference: Mapping[str, float | None] | None,
    limits: Mapping[str, float],
) -> list[RateCheck]:
    out = []
    for name, limit in limits.items():
        cur = recent.get(name)
        ref = reference.get(name) if reference else None
        # against the reference: more than twice its share and over half the limit; else the limit
        if cur is None:
            drifted = False
        elif ref is not None:
            drifted = cur > max(2 * ref, limit / 2)
        else:
            drifted = cur > limit
        out.append(RateCheck(name, cur, ref, limit, drifted))
    return out


#: Decisions of each set whose features the audit compares, at most (evenly spaced beyond):
#: a PSI over 50,000 decisions is as sure as over more, and each is a dense row of floats.
MAX_ROWS = 50_000


@dataclass(frozen=True)
class _Features:
    x: np.ndarray  # one dense row per decision of the usual width
    schema: str | None
    unreadable: int  # features that are not a feature vector
    other_width: int  # vectors of another width than the set's usual one


def _features(records: Sequence[Mapping[str, Any]]) -> _Features:
    """The decisions' feature vectors (the sparse object a decision record carries, or the
    dense list of schema ``/1``) as a dense matrix of the set's most common width."""
    from ray_app.records.features import parse_features

    parsed = []
    unreadable = 0
    for r in records:
        raw = r.get("features")
        if raw is None or raw == []:
            continue
        try:
            parsed.append(parse_features(raw))
        except ValueError:
            unreadable += 1
    schema = next((r.get("featureSchema") for r in records if r.get("featureSchema")), None)
    sizes = Counter(f.size for f in parsed)
    width = sizes.most_common(1)[0][0] if sizes else 0
    kept = [f for f in parsed if f.size == width]
    if len(kept) > MAX_ROWS:
        kept = [kept[i] for i in np.linspace(0, len(kept) - 1, MAX_ROWS).astype(int)]
    x = np.zeros((len(kept), width), dtype=np.float32)
    for i, f in enumerate(kept):
        x[i, list(f.indices)] = f.values
    return _Features(x, schema if isinstance(schema, str) else None, unreadable,
                     len(parsed) - sizes[width])  # fmt: skip


def _is_decision(r: Any) -> bool:
    """A record of a decision: one of ``onramp.decisions``, or of ``onramp.rewards`` (what
    training reads, which carries its decision's features and arm)."""
    return isinstance(r, Mapping) and ("features" in r or "arm" in r)


def decision_records(records: Iterable[Any]) -> list[Mapping[str, Any]]:
    """Each decision once: the topics are written at least once, an archive run again over the
    same offsets writes them again, and the stream's copy of a decision forwarded to a merged
    id's survivor (:func:`~ray_app.records.decision.forwarded_copy`) is not another decision."""
    from ray_app.records.decision import forwarded_copy

    seen: set[str] = set()
    out = []
    for r in records:
        if not _is_decision(r) or forwarded_copy(r):
            continue
        did = r.get("decisionId")
        if isinstance(did, str):
            if did in seen:
                continue
            seen.add(did)
        out.append(r)
    return out


def _segments(records: Iterable[Mapping[str, Any]]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for r in records:
        if r.get("arm") is not None:
            out.setdefault("arm", Counter())[str(r["arm"])] += 1
        context = r.get("context")
        for k, v in (context if isinstance(context, Mapping) else {}).items():
            if isinstance(v, str | int | bool) and not isinstance(v, float):
                out.setdefault(f"context.{k}", Counter())[str(v)] += 1
    return out


def audit(
    reference: Sequence[Mapping[str, Any]],
    recent: Sequence[Mapping[str, Any]],
    feature_names: Sequence[str] | None = None,
    recent_metrics: str | None = None,
    reference_metrics: str | None = None,
    psi_threshold: float = 0.25,
    mix_tolerance: float = 0.05,
    max_dlq_share: float = 0.02,
    max_late_share: float = 0.01,
) -> dict[str, Any]:
    """Compare two sets of decision records (and optionally two ``/metrics`` texts)."""
    from ray_app.errors import FieldError

    reference, recent = decision_records(reference), decision_records(recent)
    ref_f, cur_f = _features(reference), _features(recent)
    ref_x, ref_schema, cur_x, cur_schema = ref_f.x, ref_f.schema, cur_f.x, cur_f.schema
    for side, f in (("reference", ref_f), ("recent", cur_f)):
        if not len(f.x):  # "nothing drifted" would be a pass on nothing compared
            raise FieldError(
                side,
                f"no decision with a readable feature vector ({f.unreadable} unreadable); "
                "nothing to compare",
            )
    if ref_x.shape[1] != cur_x.shape[1] or (ref_schema and cur_schema and ref_schema != cur_schema):
        raise FieldError(
            "features",
            f"the reference ({ref_x.shape[1]} features, schema {ref_schema}) and recent "
            f"({cur_x.shape[1]}, schema {cur_schema}) decisions use different feature schemas",
        )
    names = list(feature_names or [])
    if len(names) != ref_x.shape[1]:
        names = [f"f{i}" for i in range(ref_x.shape[1])]
    features = feature_shifts(ref_x, cur_x, names, psi_threshold)
    ref_seg, cur_seg = _segments(reference), _segments(recent)
    mix = [
        mix_shift(s, ref_seg.get(s, Counter()), cur_seg.get(s, Counter()), tolerance=mix_tolerance)
        for s in sorted(set(ref_seg) | set(cur_seg))
    ]
    rates: list[RateCheck] = []
    if recent_metrics is not None:
        rates = _rate_checks(
            rates_from_metrics(recent_metrics),
            rates_from_metrics(reference_metrics) if reference_metrics else None,
            {"dlq_share": max_dlq_share, "late_share": max_late_share},
        )
    drifted = (
        [f"feature {f.name} (PSI {f.psi:.2f})" for f in features if f.drifted]
        + [
            f"segment mix {m.segment} (moved {100 * m.max_move:.1f} points)"
            for m in mix
            if m.drifted
        ]
        + [f"{r.name} {100 * (r.recent or 0):.2f}%" for r in rates if r.drifted]
    )
    return {
        **{
            name: {
                "decisions": len(records),
                "withFeatures": len(f.x),
                "unreadableFeatures": f.unreadable,
                "otherWidth": f.other_width,
            }
            for name, records, f in (("reference", reference, ref_f), ("recent", recent, cur_f))
        },
        "features": [asdict(f) for f in sorted(features, key=lambda f: -f.psi)],
        "segments": [asdict(m) for m in mix],
        "rates": [asdict(r) for r in rates],
        "drifted": drifted,
        "_matrices": (ref_x, cur_x, names),
    }


def render_audit_html(result: Mapping[str, Any], top: int = 6) -> str:
    """The audit page: what drifted, the tables, histograms of the most shifted features and the
    segment mixes (PNG embedded as base64)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref_x, cur_x, names = result["_matrices"]
    images = []
    worst = result["features"][:top]
    if worst:
        cols = min(3, len(worst))
        rows = math.ceil(len(worst) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
        for ax, f in zip(axes.ravel(), worst, strict=False):
            i = names.index(f["name"])
            high = max(1.0, float(ref_x[:, i].max(initial=0)), float(cur_x[:, i].max(initial=0)))
            bins = np.linspace(0, high, 21)  # a cross is worth more than 1
            ax.hist(ref_x[:, i], bins, alpha=0.5, density=True, label="reference")
            ax.hist(cur_x[:, i], bins, alpha=0.5, density=True, label="recent")
            # labels as text: a "$" would be matplotlib's math markup, and "$\\foo$" an error
            ax.set_title(f"{f['name']} (PSI {f['psi']:.2f})", fontsize=9, parse_math=False)
        axes.ravel()[0].legend(fontsize=8)
        for ax in axes.ravel()[len(worst) :]:
            ax.axis("off")
        images.append(("Most shifted features", _png(fig)))
    if result["segments"]:
        segs = result["segments"]
        fig, axes = plt.subplots(1, len(segs), figsize=(4 * len(segs), 3), squeeze=False)
        for ax, m in zip(axes.ravel(), segs, strict=True):
            values = sorted(set(m["reference"]) | set(m["recent"]))
            x = np.arange(len(values))
            ax.bar(x - 0.2, [m["reference"].get(v, 0) for v in values], 0.4, label="reference")
            ax.bar(x + 0.2, [m["recent"].get(v, 0) for v in values], 0.4, label="recent")
            # the values are what requests sent in their context: text, never math markup
            ax.set_xticks(x, values, rotation=30, fontsize=8, parse_math=False)
            ax.set_title(m["segment"], fontsize=9, parse_math=False)
        axes.ravel()[0].legend(fontsize=8)
        images.append(("Segment mix", _png(fig)))
    drifted = result["drifted"]
    verdict = (
        "<ul class='bad'>" + "".join(f"<li>{html.escape(d)}</li>" for d in drifted) + "</ul>"
        if drifted
        else "<p>Nothing drifted.</p>"
    )
    feats = "".join(
        f"<tr><td>{html.escape(f['name'])}</td><td>{f['psi']:.3f}</td>"
        f"<td>{f['reference_mean']:.3f}</td><td>{f['recent_mean']:.3f}</td></tr>"
        for f in result["features"]
    )
    rates = "".join(
        f"<tr><td>{r['name']}</td><td>{_pct(r['recent'])}</td><td>{_pct(r['reference'])}</td>"
        f"<td>{_pct(r['limit'])}</td></tr>"
        for r in result["rates"]
    )
    imgs = "".join(
        f"<h2>{t}</h2><img alt='{t}' src='data:image/png;base64,{b}'>" for t, b in images
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Onramp audit</title>
<style>body{{font-family:sans-serif;max-width:64rem;margin:2rem auto}}
td,th{{border:1px solid #ccc;padding:.2rem .5rem}}table{{border-collapse:collapse}}
.bad{{color:#b00}}</style></head><body><h1>Data-skew audit</h1>
<p>{result["reference"]["decisions"]} reference decisions, {result["recent"]["decisions"]} recent.</p>
<h2>What drifted</h2>{verdict}
<h2>DLQ and late rates</h2><table><tr><th>rate</th><th>recent</th><th>reference</th><th>limit</th></tr>
{rates}</table>{imgs}
<h2>Features</h2><table><tr><th>feature</th><th>PSI</th><th>reference mean</th><th>recent mean</th></tr>
{feats}</table></body></html>
"""


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_audit(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``audit.html`` and ``audit.json`` (strict JSON: no NaN) to ``out_dir``; returns the
    HTML path."""
    from ray_app.cli.output import dumps

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.html").write_text(render_audit_html(result))
    plain = {k: v for k, v in result.items() if not k.startswith("_")}
    (out / "audit.json").write_text(dumps(plain, indent=2))
    return out / "audit.html"
