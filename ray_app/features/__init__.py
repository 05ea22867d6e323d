"""Features: a profile, its CRM enrichment and the request context -> one fixed-size vector.

One code path for serving, online learning and offline training: all of them call
:meth:`FeatureSchema.featurize` (or :meth:`FeatureSchema.featurize_many`). The vector has two
parts:

* **Onboarding features**, named from the catalog's steps: which steps were seen, completed or
  abandoned, time and form errors per step, progress, event counts, sessions, recency, activity.
* **Hashed attributes**: every trait of the profile (whatever its key: ``identify`` traits and
  any call's ``context.traits``), every CRM column of the enrichment and every field of the
  request context becomes a token ``t:key=value`` (``c:`` for CRM, ``x:`` for context), and
  every *pair* of trait/CRM tokens a cross token ``t:a=1&t:b=2``, so that a preference that
  depends on two traits together (role and company size, not each alone) is one feature.
  Tokens are hashed into :attr:`Hashing.buckets` buckets (CRC-32: the same bucket in every
  process and release). Text is case-folded; numbers become log2 buckets (``#7`` for 128-255);
  nested objects are flattened one level (``company.plan``). Identifiers and personal data are
  left out by default (keys like ``email``, ``name``, ``phone``, ``*Id``, ``*At``, values with
  an ``@`` or longer than 64 characters): they would be noise, one value per user.

Nothing is configured per value: a new trait value or a new trait key lands in its bucket, so
zero configuration already personalizes, and a growing vocabulary never changes the vector's
layout. A catalog's ``features:`` section may include, exclude or type keys (:class:`Hashing`).
The schema's :attr:`~FeatureSchema.hash` covers every feature name, the hashing settings and
:data:`FEATURE_VERSION` (bump it when the meaning of a feature changes), so a model trained on
one schema is never served on another.

Every value is finite whatever the input: missing fields, ``None``, strings where numbers belong,
negative counts map to 0. Counts and durations are ``log1p``-scaled and clipped into ``[0, 1]``.

>>> from ray_app.catalog import load_catalog
>>> schema = FeatureSchema.from_catalog(load_catalog())
>>> x = schema.featurize(None, None, {"device": "mobile"}, now_ms=0)
>>> x.dtype, x.shape == (schema.dim,), float(x[schema.index("cold")])
(dtype('float32'), True, 1.0)
>>> float(x[schema.bucket("x:device=mobile")]), len(schema.hash)
(1.0, 16)
>>> p = {"traits": {"jobFunction": "Nurse", "seats": 40, "email": "a@b.c"}}
>>> sorted(schema.tokens(p, None, None))
['t:jobFunction=nurse', 't:jobFunction=nurse&t:seats=#5', 't:seats=#5']
>>> p = {"stepsCompleted": ["welcome"], "steps": {"welcome": {"completions": 1, "timeMs": "oops"}}}
>>> float(schema.featurize(p, None, None, now_ms=0)[schema.index("step:welcome:completed")])
1.0
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from ray_app.catalog import Catalog

__all__ = [
    "DEFAULT_HASHING",
    "EVENT_COUNTS",
    "FEATURE_VERSION",
    "FeatureSchema",
    "Hashing",
]

#: Bump when a feature's meaning changes without its name changing (it changes :attr:`hash`).
FEATURE_VERSION = 2

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

#: Values treated as "missing" for a categorical (no token).
_MISSING = frozenset({"", "unknown", "none", "null", "n/a", "undefined"})

# Caps of log1p-scaled values: the value at the cap maps to 1.0.
_CAP_COUNT = 1000.0
_CAP_STEP_ERRORS = 20.0
_CAP_STEP_SECONDS = 3600.0
_CAP_SESSIONS = 100.0
_CAP_5M = 300.0
_CAP_60M = 3000.0
_CAP_RECENCY_S = 30 * 86400.0
_CAP_AGE_S = 90 * 86400.0

#: Keys left out of hashing by default (case-insensitive): identifiers and personal data of the
#: Segment spec's reserved traits and context, and the enrichment's own bookkeeping.
DEFAULT_EXCLUDE: frozenset[str] = frozenset(
    {
        "email", "name", "firstname", "lastname", "phone", "username", "id", "avatar", "website",
        "description", "address", "birthday", "password", "token", "ip", "useragent",
        "useragentdata", "traits", "library", "page", "screen", "onramp", "found", "by",
        "messageid", "requestid", "sessionid",
    }
)  # fmt: skip
#: Keys that name an identifier or a time (``accountId``, ``account_id``, ``createdAt``).
_ID_OR_TIME = re.compile(r"(?:Id|ID|_id|At|_at)$")
_MAX_TEXT = 64


@dataclass(frozen=True)
class Hashing:
    """How traits, CRM columns and context fields become hashed features.

    ``include`` (when set) keeps only these keys; ``exclude`` adds to :data:`DEFAULT_EXCLUDE`;
    ``numeric`` keys are read as numbers (log2 buckets) even when sent as text; ``categorical``
    keys keep numbers as exact values. Keys are matched case-insensitively, a nested key as
    ``parent.child``. ``cross_fields``: at most this many trait/CRM fields (by key order) are
    crossed in pairs.
    """

    buckets: int = 512
    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()
    numeric: frozenset[str] = frozenset()
    categorical: frozenset[str] = frozenset()
    crosses: bool = True
    cross_fields: int = 12

    def __post_init__(self) -> None:
        if not (isinstance(self.buckets, int) and 16 <= self.buckets <= 1 << 20):
            raise ValueError(
                f"features.buckets must be an integer in [16, 2**20], got {self.buckets!r}"
            )
        if not (isinstance(self.cross_fields, int) and self.cross_fields >= 2):
            raise ValueError(
                f"features.cross_fields must be an integer >= 2, got {self.cross_fields!r}"
            )
        for name in ("include", "exclude", "numeric", "categorical"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, frozenset(k.strip().lower() for k in v))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Hashing:
        """From a catalog's ``features:`` section (``None``: the defaults)."""
        if not spec:
            return DEFAULT_HASHING
        kw: dict[str, Any] = dict(spec)
        for name in ("include", "exclude", "numeric", "categorical"):
            if kw.get(name) is not None:
                kw[name] = frozenset(kw[name])
        return cls(**kw)

    def as_dict(self) -> dict[str, Any]:
        """Canonical content (part of the schema hash)."""
        return {
            "buckets": self.buckets,
            "include": None if self.include is None else sorted(self.include),
            "exclude": sorted(self.exclude),
            "numeric": sorted(self.numeric),
            "categorical": sorted(self.categorical),
            "crosses": self.crosses,
            "cross_fields": self.cross_fields,
        }

    def keeps(self, key: str) -> bool:
        k = key.lower()
        if self.include is not None:
            return k in self.include
        if k in DEFAULT_EXCLUDE or k in self.exclude:
            return False
        leaf = key.rsplit(".", 1)[-1]
        return leaf.lower() not in DEFAULT_EXCLUDE and not _ID_OR_TIME.search(leaf)


DEFAULT_HASHING = Hashing()


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


def _token_value(key: str, value: Any, h: Hashing) -> str | None:
    """One attribute's value as the text of its token; ``None`` to leave it out."""
    if value is None:
        return None
    k = key.lower()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if k in h.categorical:
            f = float(value)
            if not math.isfinite(f):
                return None
            return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)
        return _log2_bucket(_num(value))
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _MISSING or len(v) > _MAX_TEXT or "@" in v or "://" in v:
            return None
        if k in h.numeric:
            f = _num(v)
            return _log2_bucket(f) if f or v in ("0", "0.0") else None
        return v
    return None


def _log2_bucket(v: float) -> str:
    """``#n`` with ``n = floor(log2(1 + |v|))`` (``#-n`` below zero): 0 -> #0, 1 -> #1,
    2-3 -> #1..2, 128-254 -> #7."""
    n = int(math.log2(1.0 + min(abs(v), 1e300)))
    return f"#-{n}" if v < 0 else f"#{n}"


def _attributes(prefix: str, d: Any, h: Hashing, out: list[tuple[str, str]]) -> None:
    """(key, token) of every kept scalar attribute of ``d``, nested objects one level deep."""
    if not isinstance(d, Mapping):
        return
    for key, value in d.items():
        if not isinstance(key, str) or not key:
            continue
        if isinstance(value, Mapping):
            if h.include is None and not h.keeps(key):
                continue
            for sub, v in value.items():
                if isinstance(sub, str) and sub and not isinstance(v, Mapping):
                    name = f"{key}.{sub}"
                    if h.keeps(name) and (t := _token_value(name, v, h)) is not None:
                        out.append((name, f"{prefix}:{name}={t}"))
            continue
        if h.keeps(key) and (t := _token_value(key, value, h)) is not None:
            out.append((key, f"{prefix}:{key}={t}"))


def _bucket(token: str, buckets: int) -> int:
    return zlib.crc32(token.encode("utf-8", "surrogatepass")) % buckets


class _Positions(NamedTuple):
    form_errors: int
    retries: int
    sessions: int
    recency: int
    age: int
    activity_5m: int
    activity_60m: int
    crm_found: int


_FIXED_NAMES = (
    "form_errors",
    "retries",
    "sessions",
    "recency",
    "age",
    "activity:last5m",
    "activity:last60m",
    "crm:found",
)


@dataclass(frozen=True)
class FeatureSchema:
    """The feature vector's layout for a set of onboarding steps and hashing settings.

    Picklable and immutable; build it once per catalog (:meth:`from_catalog`) and share it.
    """

    steps: tuple[str, ...]
    hashing: Hashing = DEFAULT_HASHING
    version: int = FEATURE_VERSION
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    hash: str = field(init=False, repr=False, compare=False)
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _current: dict[str, int] = field(init=False, repr=False, compare=False)
    _steps: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False)
    _counts: int = field(init=False, repr=False, compare=False)
    _pos: _Positions = field(init=False, repr=False, compare=False)
    _hashed: int = field(init=False, repr=False, compare=False)

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> FeatureSchema:
        """The schema for a catalog's known steps and its ``features:`` section."""
        return cls(tuple(catalog.known_steps), Hashing.from_spec(catalog.features))

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
        current = len(names)
        names += [f"current_step:{s}" for s in self.steps]
        hashed = len(names)
        names += [f"hash:{i}" for i in range(self.hashing.buckets)]
        if len(set(names)) != len(names):
            raise ValueError("feature names collide: check the catalog's steps")
        digest = hashlib.sha256(
            json.dumps(
                {"version": self.version, "names": names, "hashing": self.hashing.as_dict()}
            ).encode()
        ).hexdigest()
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "hash", digest[:16])
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})
        object.__setattr__(
            self, "_current", {s.strip().lower(): current + i for i, s in enumerate(self.steps)}
        )
        object.__setattr__(self, "_hashed", hashed)
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

    def bucket(self, token: str) -> int:
        """Position of a hashed token's bucket (e.g. ``t:role=admin``, ``x:device=mobile``)."""
        return self._hashed + _bucket(token, self.hashing.buckets)

    def tokens(
        self,
        profile: Mapping[str, Any] | None,
        enrichment: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """The hashed tokens of these inputs: traits, CRM columns, context fields and the crosses
        of trait/CRM pairs (what the ``hash:*`` features are made of)."""
        h = self.hashing
        user: list[tuple[str, str]] = []
        traits = profile.get("traits") if isinstance(profile, Mapping) else None
        _attributes("t", traits, h, user)
        if isinstance(enrichment, Mapping) and enrichment.get("found") is True:
            _attributes("c", enrichment, h, user)
        ctx: list[tuple[str, str]] = []
        _attributes("x", context, h, ctx)
        out = [t for _, t in user] + [t for _, t in ctx]
        if h.crosses and len(user) > 1:
            crossed = sorted(t for _, t in user)[: h.cross_fields]
            out += [f"{a}&{b}" for i, a in enumerate(crossed) for b in crossed[i + 1 :]]
        return out

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
        (any fields: ``device``, ``referrer``, ``locale``...) and ``now_ms`` the decision time
        (for recency).
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
        pos = self._pos
        if isinstance(profile, Mapping) and profile:
            self._fill_profile(out, profile, _num(now_ms))
        else:
            out[0] = 1.0  # cold
        if isinstance(enrichment, Mapping) and enrichment.get("found") is True:
            out[pos.crm_found] = 1.0
        base, n = self._hashed, self.hashing.buckets
        for token in self.tokens(profile, enrichment, context):
            out[base + _bucket(token, n)] = 1.0

    def _fill_profile(self, out: list[float], p: Mapping[str, Any], now: float) -> None:
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
        if isinstance(current, str):
            at = self._current.get(current.strip().lower())
            if at is not None:
                out[at] = 1.0
