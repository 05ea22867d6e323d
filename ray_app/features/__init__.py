"""Features: a profile, its CRM enrichment and the request context -> one fixed-size vector.

One code path for serving, online learning and offline training: all of them call
:meth:`FeatureSchema.featurize` (or :meth:`FeatureSchema.featurize_many`). The schema is built from
a catalog's steps and the categorical vocabularies of :class:`Vocabularies`; its :attr:`hash`
covers every feature name and :data:`FEATURE_VERSION` (bump it when the meaning of a feature
changes), so a model trained on one schema is never served on another.

Every value is finite whatever the input: missing fields, ``None``, strings where numbers belong,
negative counts and unknown categories all map to 0 or to the ``other`` bucket of their group.
Counts and durations are ``log1p``-scaled and clipped into ``[0, 1]``.

>>> from ray_app.catalog import load_catalog
>>> schema = FeatureSchema.from_catalog(load_catalog())
>>> x = schema.featurize(None, None, {"device": "mobile"}, now_ms=0)
>>> x.dtype, x.shape == (schema.dim,), float(x[schema.index("cold")])
(dtype('float32'), True, 1.0)
>>> float(x[schema.index("ctx:device:mobile")]), len(schema.hash)
(1.0, 16)
>>> p = {"stepsCompleted": ["welcome"], "steps": {"welcome": {"completions": 1, "timeMs": "oops"}}}
>>> float(schema.featurize(p, None, None, now_ms=0)[schema.index("step:welcome:completed")])
1.0
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from ray_app.catalog import Catalog

__all__ = [
    "DEFAULT_VOCABULARIES",
    "EVENT_COUNTS",
    "FEATURE_VERSION",
    "FeatureSchema",
    "Vocabularies",
]

#: Bump when a feature's meaning changes without its name changing (it changes :attr:`hash`).
FEATURE_VERSION = 1

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

#: Values treated as "missing" for a categorical (all zeros, not ``other``).
_MISSING = frozenset({"", "unknown", "none", "null", "n/a"})

# Caps of log1p-scaled values: the value at the cap maps to 1.0.
_CAP_COUNT = 1000.0
_CAP_STEP_ERRORS = 20.0
_CAP_STEP_SECONDS = 3600.0
_CAP_SESSIONS = 100.0
_CAP_5M = 300.0
_CAP_60M = 3000.0
_CAP_RECENCY_S = 30 * 86400.0
_CAP_AGE_S = 90 * 86400.0
_CAP_EMPLOYEES = 100_000.0


@dataclass(frozen=True)
class Vocabularies:
    """The known values of each categorical feature; anything else goes to ``other``.

    The defaults match the simulator's population and CRM (:mod:`ray_app.sim.population`).
    """

    roles: tuple[str, ...] = (
        "founder",
        "ceo",
        "manager",
        "ops",
        "it_admin",
        "director",
        "engineer",
    )
    company_sizes: tuple[str, ...] = ("1-10", "11-50", "51-200", "201-1000", "1000+")
    segments: tuple[str, ...] = ("startup_founder", "smb_manager", "enterprise_admin", "developer")
    referrals: tuple[str, ...] = (
        "product_hunt",
        "twitter",
        "google",
        "referral",
        "sales",
        "partner",
        "github",
        "docs",
    )
    plans: tuple[str, ...] = ("free", "starter", "team", "enterprise")
    industries: tuple[str, ...] = ("saas", "fintech", "retail", "health", "education")
    regions: tuple[str, ...] = ("na", "emea", "apac")
    devices: tuple[str, ...] = ("desktop", "mobile", "tablet")
    referrers: tuple[str, ...] = (
        "direct",
        "google",
        "github",
        "docs",
        "twitter",
        "product_hunt",
        "partner",
        "email",
    )


DEFAULT_VOCABULARIES = Vocabularies()


def _num(value: Any) -> float:
    """Any value -> a finite float (0.0 for what is not a finite number or numeric text)."""
    t = type(value)
    if t is float:
        return value if value - value == 0.0 else 0.0  # inf - inf and nan - nan are nan
    if t is int:
        return float(value) if -1e300 < value < 1e300 else 0.0
    if value is None:
        return 0.0
    if isinstance(value, bool | int | float | str | np.number):
        try:
            f = float(value)
        except (ValueError, OverflowError, TypeError):
            return 0.0
        return f if math.isfinite(f) else 0.0
    return 0.0


def _scaled(value: Any, cap: float) -> float:
    """log1p of a non-negative number, as a share of log1p(cap), clipped to [0, 1]."""
    v = value if type(value) is float and value - value == 0.0 else _num(value)
    if v <= 0.0:
        return 0.0
    if v >= cap:
        return 1.0
    return math.log1p(v) / math.log1p(cap)


def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, Mapping) else None


def _category(value: Any) -> str | None:
    """A categorical value as lower-case text; ``None`` when missing."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
    elif isinstance(value, int | float):
        v = str(value)
    else:
        return None
    return None if v in _MISSING else v


@dataclass(frozen=True)
class _OneHot:
    offset: int  # position of the first value; ``other`` follows the known values
    positions: dict[str, int]
    other: int

    def set(self, out: list[float], value: Any) -> None:
        v = _category(value)
        if v is not None:
            out[self.positions.get(v, self.other)] = 1.0


class _Positions(NamedTuple):
    form_errors: int
    retries: int
    sessions: int
    recency: int
    age: int
    activity_5m: int
    activity_60m: int
    crm_found: int
    crm_employees: int


_FIXED_NAMES = (
    "form_errors",
    "retries",
    "sessions",
    "recency",
    "age",
    "activity:last5m",
    "activity:last60m",
    "crm:found",
    "crm:employees",
)


@dataclass(frozen=True)
class FeatureSchema:
    """The feature vector's layout for a set of onboarding steps and vocabularies.

    Picklable and immutable; build it once per catalog (:meth:`from_catalog`) and share it.
    """

    steps: tuple[str, ...]
    vocab: Vocabularies = DEFAULT_VOCABULARIES
    version: int = FEATURE_VERSION
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    hash: str = field(init=False, repr=False, compare=False)
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _hot: dict[str, _OneHot] = field(init=False, repr=False, compare=False)
    _steps: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False)
    _counts: int = field(init=False, repr=False, compare=False)
    _pos: _Positions = field(init=False, repr=False, compare=False)

    @classmethod
    def from_catalog(
        cls, catalog: Catalog, vocab: Vocabularies = DEFAULT_VOCABULARIES
    ) -> FeatureSchema:
        """The schema for a catalog's known steps."""
        return cls(tuple(catalog.known_steps), vocab)

    def __post_init__(self) -> None:
        names: list[str] = ["cold", "onboarding_completed", "progress"]
        for s in self.steps:
            names += [
                f"step:{s}:completed",
                f"step:{s}:seen",
                f"step:{s}:abandoned",
                f"step:{s}:form_errors",
                f"step:{s}:time",
            ]
        names += [f"count:{k}" for k in EVENT_COUNTS]
        names += _FIXED_NAMES
        hot: dict[str, _OneHot] = {}
        v = self.vocab
        groups: dict[str, tuple[str, ...]] = {
            "current_step": self.steps,
            "trait:role": v.roles,
            "trait:company_size": v.company_sizes,
            "trait:segment": v.segments,
            "trait:referral": v.referrals,
            "crm:plan": v.plans,
            "crm:industry": v.industries,
            "crm:region": v.regions,
            "ctx:device": v.devices,
            "ctx:referrer": v.referrers,
        }
        for group, values in groups.items():
            offset = len(names)
            known = tuple(dict.fromkeys(x.strip().lower() for x in values))
            names += [f"{group}:{x}" for x in known] + [f"{group}:other"]
            hot[group] = _OneHot(
                offset, {x: offset + i for i, x in enumerate(known)}, offset + len(known)
            )
        if len(set(names)) != len(names):
            raise ValueError("feature names collide: check the steps and vocabularies")
        digest = hashlib.sha256(
            json.dumps({"version": self.version, "names": names}).encode()
        ).hexdigest()
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "hash", digest[:16])
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})
        object.__setattr__(self, "_hot", hot)
        index = self._index
        object.__setattr__(
            self, "_steps", tuple((st, index[f"step:{st}:completed"]) for st in self.steps)
        )
        object.__setattr__(self, "_counts", index[f"count:{EVENT_COUNTS[0]}"])
        object.__setattr__(self, "_pos", _Positions(*(index[n] for n in _FIXED_NAMES)))

    @property
    def dim(self) -> int:
        """Length of the feature vector."""
        return len(self.names)

    def index(self, name: str) -> int:
        """Position of a feature by name (``KeyError`` if unknown)."""
        return self._index[name]

    def describe(self, x: np.ndarray) -> dict[str, float]:
        """The non-zero features of a vector by name (for logs and debugging)."""
        return {self.names[i]: float(x[i]) for i in np.flatnonzero(x)}

    # -------------------------------------------------------------------------- featurize

    def featurize(
        self,
        profile: Mapping[str, Any] | None,
        enrichment: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        now_ms: int | float = 0,
    ) -> np.ndarray:
        """One feature vector (float32, length :attr:`dim`), finite whatever the inputs.

        ``profile`` is a ``Profile.as_dict()`` (``None``: unknown user, the ``cold`` feature is 1),
        ``enrichment`` the CRM row of ``CrmTable.enrich``, ``context`` the request's context
        (``device``, ``referrer``) and ``now_ms`` the decision time (for recency).
        """
        out = [0.0] * len(self.names)
        self._fill(out, profile, enrichment, context, now_ms)
        return np.array(out, dtype=np.float32)

    def featurize_many(
        self,
        profiles: Sequence[Mapping[str, Any] | None],
        enrichments: Sequence[Mapping[str, Any] | None] | None = None,
        contexts: Sequence[Mapping[str, Any] | None] | None = None,
        now_ms: int | float | Sequence[int | float] = 0,
    ) -> np.ndarray:
        """A ``[len(profiles), dim]`` float32 matrix, row ``i`` = ``featurize`` of the i-th inputs.

        ``enrichments``/``contexts`` (``None``: all missing) and a sequence ``now_ms`` must be as
        long as ``profiles``.

        >>> from ray_app.catalog import load_catalog
        >>> schema = FeatureSchema.from_catalog(load_catalog())
        >>> schema.featurize_many([None, {"counts": {"track": 3}}], now_ms=[0, 1]).shape[0]
        2
        """
        n = len(profiles)
        for name, seq in (("enrichments", enrichments), ("contexts", contexts)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name}: {len(seq)} rows for {n} profiles")
        nows: Sequence[int | float]
        if isinstance(now_ms, int | float):
            nows = [now_ms] * n
        else:
            nows = now_ms
            if len(nows) != n:
                raise ValueError(f"now_ms: {len(nows)} rows for {n} profiles")
        x = np.zeros((n, len(self.names)), dtype=np.float32)
        for i in range(n):
            out = [0.0] * len(self.names)
            self._fill(
                out,
                profiles[i],
                None if enrichments is None else enrichments[i],
                None if contexts is None else contexts[i],
                nows[i],
            )
            x[i] = out
        return x

    def _fill(
        self,
        out: list[float],
        profile: Any,
        enrichment: Any,
        context: Any,
        now_ms: Any,
    ) -> None:
        hot = self._hot
        pos = self._pos
        if isinstance(profile, Mapping) and profile:
            self._fill_profile(out, profile, _num(now_ms))
        else:
            out[0] = 1.0  # cold
        if isinstance(enrichment, Mapping):
            if enrichment.get("found") is True:
                out[pos.crm_found] = 1.0
            out[pos.crm_employees] = _scaled(enrichment.get("employees"), _CAP_EMPLOYEES)
            hot["crm:plan"].set(out, enrichment.get("plan"))
            hot["crm:industry"].set(out, enrichment.get("industry"))
            hot["crm:region"].set(out, enrichment.get("region"))
        if isinstance(context, Mapping):
            hot["ctx:device"].set(out, context.get("device"))
            hot["ctx:referrer"].set(out, context.get("referrer"))

    def _fill_profile(self, out: list[float], p: Mapping[str, Any], now: float) -> None:
        hot = self._hot
        pos = self._pos
        out[1] = 1.0 if p.get("completedAt") is not None else 0.0
        done = p.get("stepsCompleted")
        done_set = (
            {s for s in done if isinstance(s, str)}
            if isinstance(done, list | tuple | set | frozenset)
            else ()
        )
        steps = p.get("steps")
        if not isinstance(steps, Mapping):
            steps = {}
        n_done = 0
        for s, base in self._steps:
            st = steps.get(s)
            if not isinstance(st, Mapping) or not st:
                if s in done_set:
                    out[base] = 1.0
                    n_done += 1
                if st is not None:
                    out[base + 1] = 1.0  # seen
                continue
            completed = s in done_set or _num(st.get("completions")) > 0
            if completed:
                out[base] = 1.0
                n_done += 1
            out[base + 1] = 1.0  # seen (as_dict lists a step once any event named it)
            if _num(st.get("abandons")) > 0:
                out[base + 2] = 1.0
            out[base + 3] = _scaled(st.get("formErrors"), _CAP_STEP_ERRORS)
            out[base + 4] = _scaled(_num(st.get("timeMs")) / 1000.0, _CAP_STEP_SECONDS)
        out[2] = n_done / len(self.steps) if self.steps else 0.0
        counts = p.get("counts")
        if isinstance(counts, Mapping) and counts:
            base = self._counts
            for i, k in enumerate(EVENT_COUNTS):
                c = counts.get(k)
                if c is not None:
                    out[base + i] = _scaled(c, _CAP_COUNT)
        out[pos.form_errors] = _scaled(p.get("formErrors"), _CAP_COUNT)
        out[pos.retries] = _scaled(p.get("retries"), _CAP_COUNT)
        out[pos.sessions] = _scaled(_get(p.get("sessions"), "count"), _CAP_SESSIONS)
        last, first = p.get("lastSeen"), p.get("firstSeen")
        if last is not None:
            out[pos.recency] = _scaled((now - _num(last)) / 1000.0, _CAP_RECENCY_S)
        if first is not None:
            out[pos.age] = _scaled((now - _num(first)) / 1000.0, _CAP_AGE_S)
        act = p.get("activity")
        if isinstance(act, Mapping):
            out[pos.activity_5m] = _scaled(act.get("last5m"), _CAP_5M)
            out[pos.activity_60m] = _scaled(act.get("last60m"), _CAP_60M)
        current = p.get("currentStep")
        if current is not None:
            hot["current_step"].set(out, current)
        traits = p.get("traits")
        if isinstance(traits, Mapping) and traits:
            hot["trait:role"].set(out, traits.get("role"))
            hot["trait:company_size"].set(out, traits.get("companySize"))
            hot["trait:segment"].set(out, traits.get("segment"))
            hot["trait:referral"].set(out, traits.get("referral"))
