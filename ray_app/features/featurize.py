"""Filling a feature vector: a profile, its CRM row and the request context -> the schema's slots.

**Onboarding features** are named from the catalog's steps: which steps were seen, completed or
abandoned, time and form errors per step, progress, event counts (:data:`EVENT_COUNTS`),
sessions, recency, activity and the current step; then the hashed attributes
(:mod:`ray_app.features.hashing`). The layout (which position holds which feature) is the
:class:`~ray_app.features.schema.FeatureSchema`'s; this module only writes values into it.

Every value is finite whatever the input: missing fields, ``None``, strings where numbers belong,
negative counts map to 0. Counts and durations are ``log1p``-scaled and clipped into ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

from ray_app.features.hashing import hashed_features, hashed_parts
from ray_app.features.values import as_number, scaled

if TYPE_CHECKING:
    from ray_app.features.schema import FeatureSchema

__all__ = ["EVENT_COUNTS", "fill_row"]

#: The ``counts`` keys of a profile that become features (event kinds and onboarding tracks).
EVENT_COUNTS: tuple[str, ...] = (
    "track",
    "identify",
    "page",
    "screen",
    "group",
    "alias",
    "track:Step Viewed",
    "track:Step Completed",
    "track:Step Abandoned",
    "track:Form Error",
    "track:Onboarding Completed",
)

# Caps of log1p-scaled values: the value at the cap maps to 1.0.
_CAP_COUNT = 1000.0
_CAP_STEP_ERRORS = 20.0
_CAP_STEP_SECONDS = 3600.0
_CAP_SESSIONS = 100.0
_CAP_5M = 300.0
_CAP_60M = 3000.0
_CAP_RECENCY_S = 30 * 86400.0
_CAP_AGE_S = 90 * 86400.0


def _is_map(d: Any) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(d, Mapping)``, at a dict's cost for a dict (what profiles are) and for None
    (a step, count or enrichment a profile lacks; an ABC check costs ten times as much)."""
    return type(d) is dict or (d is not None and isinstance(d, Mapping))


def _get(d: Any, key: str) -> Any:
    return d.get(key) if _is_map(d) else None


def fill_row(
    schema: FeatureSchema,
    out: dict[int, float],
    profile: Any,
    enrichment: Any,
    context: Any,
    now_ms: Any,
) -> None:
    """The features of these inputs that are not 0, by position (``out``: empty; a position may
    be written twice, the last value counts)."""
    pos = schema._pos
    if _is_map(profile) and profile:
        _fill_profile(schema, out, profile, as_number(now_ms))
    else:
        out[0] = 1.0  # cold
    if _is_map(enrichment) and enrichment.get("found") is True:
        out[pos.crm_found] = 1.0
    base = schema._hashed
    h = schema.hashing
    if h.threshold_weight == 1.0:  # a cross is worth cross_weight, every single token 1
        singles, _, crosses, _ = hashed_parts(h, profile, enrichment, context)
        cw = h.cross_weight
        for b in crosses:
            out[base + b] = cw
        for b in singles:  # a bucket shared with a single token is worth 1
            out[base + b] = 1.0
        return
    for b, value in hashed_features(h, profile, enrichment, context):
        out[base + b] = value  # in order of precedence (hashed_features): the last one counts


def _fill_profile(
    schema: FeatureSchema, out: dict[int, float], p: Mapping[str, Any], now: float
) -> None:
    pos = schema._pos
    out[1] = 1.0 if p.get("completedAt") is not None else 0.0
    done = p.get("stepsCompleted")
    done_set = (
        {s for s in done if isinstance(s, str)}
        if isinstance(done, list | tuple | set | frozenset)
        else ()
    )
    steps = p.get("steps")
    if not _is_map(steps):
        steps = {}
    n_done = 0
    for s, base in schema._steps:
        st = steps.get(s)
        if not _is_map(st) or not st:
            if s in done_set:
                out[base] = 1.0
                n_done += 1
            if st is not None:
                out[base + 1] = 1.0  # seen
            continue
        completed = s in done_set or as_number(st.get("completions")) > 0
        if completed:
            out[base] = 1.0
            n_done += 1
        out[base + 1] = 1.0  # seen (as_dict lists a step once any event named it)
        if as_number(st.get("abandons")) > 0:
            out[base + 2] = 1.0
        out[base + 3] = scaled(st.get("formErrors"), _CAP_STEP_ERRORS)
        out[base + 4] = scaled(as_number(st.get("timeMs")) / 1000.0, _CAP_STEP_SECONDS)
    out[2] = n_done / len(schema.steps) if schema.steps else 0.0
    counts = p.get("counts")
    if _is_map(counts) and counts:
        base = schema._counts
        for i, k in enumerate(EVENT_COUNTS):
            c = counts.get(k)
            if c is not None:
                out[base + i] = scaled(c, _CAP_COUNT)
    out[pos.form_errors] = scaled(p.get("formErrors"), _CAP_COUNT)
    out[pos.retries] = scaled(p.get("retries"), _CAP_COUNT)
    out[pos.sessions] = scaled(_get(p.get("sessions"), "count"), _CAP_SESSIONS)
    last, first = p.get("lastSeen"), p.get("firstSeen")
    if last is not None:
        out[pos.recency] = scaled((now - as_number(last)) / 1000.0, _CAP_RECENCY_S)
    if first is not None:
        out[pos.age] = scaled((now - as_number(first)) / 1000.0, _CAP_AGE_S)
    act = p.get("activity")
    if _is_map(act):
        out[pos.activity_5m] = scaled(act.get("last5m"), _CAP_5M)
        out[pos.activity_60m] = scaled(act.get("last60m"), _CAP_60M)
    current = p.get("currentStep")
    if isinstance(current, str):
        at = schema._current.get(current.strip().lower())
        if at is not None:
            out[at] = 1.0
