"""Hashed attributes: traits, CRM columns and context fields -> tokens -> buckets.

Every trait of the profile (whatever its key: ``identify`` traits and any call's
``context.traits``), every CRM column of the enrichment and every field of the request context
becomes a token ``t:key=value`` (``c:`` for CRM, ``x:`` for context), and every *pair* of
trait/CRM tokens a cross token ``t:a=1&t:b=2``, so that a preference that depends on two traits
together (role and company size, not each alone) is one feature. Tokens are hashed into
:attr:`Hashing.buckets` buckets (CRC-32: the same bucket in every process and release). Text is
case-folded; a number becomes two tokens, its log2 bucket (``#7`` for 128-255) and its decimal
order of magnitude (``~2`` for 100-999), so that a preference that changes at some size is
learnable from the coarse bands when the fine ones are still thin (both are crossed with the
other fields, not with each other); nested objects are flattened one level (``company.plan``). Identifiers and personal data are left out by default (keys like
``email``, ``name``, ``phone``, ``*Id``, ``*At``, values with an ``@`` or longer than 64
characters): they would be noise, one value per user.

Nothing is configured per value: a new trait value or a new trait key lands in its bucket, so a
growing vocabulary never changes the vector's layout. A catalog's ``features:`` section may
include, exclude or type keys (:class:`Hashing`).

>>> hashed_tokens(DEFAULT_HASHING, {"traits": {"role": "Admin", "accountId": "a-1"}}, None,
...               {"device": "mobile"})
['t:role=admin', 'x:device=mobile']
>>> hashed_tokens(DEFAULT_HASHING, {"traits": {"role": "admin", "seats": 140}})
['t:role=admin', 't:seats=#7', 't:seats=~2', 't:role=admin&t:seats=#7', 't:role=admin&t:seats=~2']
>>> bucket("t:role=admin", 512) == bucket("t:role=admin", 512) < 512
True
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray_app.features.values import as_number

__all__ = ["DEFAULT_EXCLUDE", "DEFAULT_HASHING", "Hashing", "bucket", "hashed_tokens"]

#: Values treated as "missing" for a categorical (no token).
_MISSING = frozenset({"", "unknown", "none", "null", "n/a", "undefined"})

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
#: Entries a :class:`Hashing` remembers of each of its answers (which keys it keeps, the bucket
#: of a token): the same traits come back with every user; past it the memory starts afresh.
_CACHE = 1 << 15


@dataclass(frozen=True)
class Hashing:
    """How traits, CRM columns and context fields become hashed features.

    ``include`` (when set) keeps only these keys; ``exclude`` adds to :data:`DEFAULT_EXCLUDE`;
    ``numeric`` keys are read as numbers (log2 and decimal buckets) even when sent as text; ``categorical``
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
        # memories of keeps() and token_buckets(): not fields (not compared, not pickled)
        object.__setattr__(self, "_keeps", {})
        object.__setattr__(self, "_buckets", {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (
                self.buckets,
                self.include,
                self.exclude,
                self.numeric,
                self.categorical,
                self.crosses,
                self.cross_fields,
            ),
        )

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
        """Whether the attribute ``key`` (``parent.child`` when nested) becomes a token."""
        memory: dict[str, bool] = self._keeps  # type: ignore[attr-defined]
        kept = memory.get(key)
        if kept is None:
            kept = self._keeps_now(key)
            if len(memory) >= _CACHE:
                memory.clear()
            memory[key] = kept
        return kept

    def token_buckets(self, tokens: list[str]) -> list[int]:
        """The bucket of each token (:func:`bucket` among :attr:`buckets`)."""
        memory: dict[str, int] = self._buckets  # type: ignore[attr-defined]
        out = []
        for token in tokens:
            b = memory.get(token)
            if b is None:
                b = bucket(token, self.buckets)
                if len(memory) >= _CACHE:
                    memory.clear()
                memory[token] = b
            out.append(b)
        return out

    def _keeps_now(self, key: str) -> bool:
        k = key.lower()
        if self.include is not None:
            return k in self.include
        if k in DEFAULT_EXCLUDE or k in self.exclude:
            return False
        leaf = key.rsplit(".", 1)[-1]
        return leaf.lower() not in DEFAULT_EXCLUDE and not _ID_OR_TIME.search(leaf)


DEFAULT_HASHING = Hashing()


def _token_values(key: str, value: Any, h: Hashing) -> tuple[str, ...]:
    """One attribute's value as the text of its tokens (none: leave it out)."""
    if value is None:
        return ()
    k = key.lower()
    if isinstance(value, bool):
        return ("true" if value else "false",)
    if isinstance(value, int | float):
        if k in h.categorical:
            f = float(value)
            if not math.isfinite(f):
                return ()
            return (str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f),)
        return _number_buckets(as_number(value))
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _MISSING or len(v) > _MAX_TEXT or "@" in v or "://" in v:
            return ()
        if k in h.numeric:
            f = as_number(v)
            return _number_buckets(f) if f or v in ("0", "0.0") else ()
        return (v,)
    return ()


def _number_buckets(v: float) -> tuple[str, str]:
    """``#n`` with ``n = floor(log2(1 + |v|))`` and ``~d`` with ``d = floor(log10(|v|))`` (0
    below 1); ``#-n``, ``~-d`` below zero: 0 -> #0 ~0, 1 -> #1 ~0, 2-3 -> #1..2, 128-254 -> #7,
    100-999 -> ~2.

    >>> _number_buckets(140), _number_buckets(-3), _number_buckets(0.0)
    (('#7', '~2'), ('#-2', '~-0'), ('#0', '~0'))
    """
    a = min(abs(v), 1e300)
    n, d = int(math.log2(1.0 + a)), int(math.log10(a)) if a >= 1.0 else 0
    return (f"#-{n}", f"~-{d}") if v < 0 else (f"#{n}", f"~{d}")


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
                    if h.keeps(name):
                        out += [(name, f"{prefix}:{name}={t}") for t in _token_values(name, v, h)]
            continue
        if h.keeps(key):
            out += [(key, f"{prefix}:{key}={t}") for t in _token_values(key, value, h)]


def bucket(token: str, buckets: int) -> int:
    """The bucket of a token among ``buckets`` (CRC-32 of its UTF-8: stable across processes)."""
    return zlib.crc32(token.encode("utf-8", "surrogatepass")) % buckets


def hashed_tokens(
    h: Hashing,
    profile: Mapping[str, Any] | None,
    enrichment: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> list[str]:
    """The tokens of these inputs under ``h``: traits, CRM columns (of a ``found`` row), context
    fields and the crosses of trait/CRM pairs (what the ``hash:*`` features are made of)."""
    user: list[tuple[str, str]] = []
    traits = profile.get("traits") if isinstance(profile, Mapping) else None
    _attributes("t", traits, h, user)
    if isinstance(enrichment, Mapping) and enrichment.get("found") is True:
        _attributes("c", enrichment, h, user)
    ctx: list[tuple[str, str]] = []
    _attributes("x", context, h, ctx)
    out = [t for _, t in user] + [t for _, t in ctx]
    if h.crosses and len(user) > 1:
        fields = sorted({k for k, _ in user})[: h.cross_fields]
        crossed = sorted((t, k) for k, t in user if k in fields)
        out += [
            f"{a}&{b}"
            for i, (a, ka) in enumerate(crossed)
            for b, kb in crossed[i + 1 :]
            if ka != kb
        ]
    return out
