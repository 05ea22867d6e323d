"""Hashed attributes: traits, CRM columns and context fields -> tokens -> buckets.

Every trait of the profile (whatever its key: ``identify`` traits and any call's
``context.traits``), every CRM column of the enrichment and every field of the request context
becomes a token ``t:key=value`` (``c:`` for CRM, ``x:`` for context), and every *pair* of
trait/CRM tokens a cross token ``t:a=1&t:b=2``, so that a preference that depends on two traits
together (role and company size, not each alone) is one feature. Tokens are hashed into
:attr:`Hashing.buckets` buckets (CRC-32: the same bucket in every process and release). Text is
case-folded; nested objects are flattened one level (``company.plan``).

A number becomes its decimal order of magnitude (``~2`` for 100-999) and a *thermometer*: one
token ``^k`` for each of the (at most) 16 quarter-octave thresholds ``2**(k/4)`` at or below it
(``^k``: "at least 2**(k/4)"; ``k >= 0`` from 1 up, so 140 gives ``^13`` ... ``^28``). Two
values near each other share most of their tokens and differ by the thresholds between them, so
a preference that changes at any size (seats 1-4 against 5-24, not only at a power of two or of
ten) is a few weights that every user on either side trains, and a band the model has not yet
split is learned as one. On the learning twin's ``fleets`` world (bands 1-4 / 5-24 / 25-149 /
150+, 8 seeds) the share of the oracle's gain by user 6,000 went from 0.42 (one log2 bucket per
number) to 0.54 (0.59 with the same encoding under other token names, and 0.56-0.59 with 2,048
hash buckets: a change that small moves an 8-seed mean by a few hundredths). Thresholds are
crossed with the other fields, but two numbers cross by their decimal orders only, so that a
profile of many numbers stays a few hundred tokens.

Each threshold, and each cross with one, is worth :attr:`Hashing.threshold_weight` in the
feature vector (1 by default, like every other token). A number sets up to 16 thresholds and as
many crosses with each other field where a categorical trait sets one token, and the online
learner's optimizer (Adam) gives each feature about the same step whatever its value, so a
number moves the logits further per reward than a categorical trait does. A lower weight evens
that out, at a price, measured on the learning twin (16 runs a world, 6,000 users, each run
with its own hash seed; share of the oracle's gain by user 6,000): at 0.5, 0.75 -> 0.78 on
``clinics``, whose preferences follow a number's decade (its ``~d`` token, worth 1 at any
weight), and 0.61 -> 0.57 on ``fleets``, whose bands only the thresholds spell out (0.62 in
another 16 runs that differed only in which token won a shared bucket: that world moves by a few
hundredths between near-identical settings); at 0.25, 0.80 and 0.56. Worlds without numbers do
not change. Weighing only a number's own thresholds (0.5, their crosses at 1; an experiment)
gave ``fleets`` 0.66 against 0.61 over those 16 runs and 0.65 against 0.65 over 16 others, and
``clinics`` 0.75 against 0.75. So the default stays 1, and a catalog whose numbers matter by
their order of magnitude may set 0.5.

Each cross is worth :attr:`Hashing.cross_weight`, 2 by default, and every single token 1. A
step that wins only for one pair of traits is learned from that pair's cross, which only that
cell's users train, while each of the two traits' own tokens is trained by every cell that has
it; when the step is poor for most other users of either trait, those two weights settle first
and add up to a confident, wrong rating of it where it wins, and a step rated that low is
seldom tried there again (on the learning twin's ``fleets``, the worst five cells of each of 16
runs rated their best step 0.50 on average against a truth of 0.81; the cells locked on another
step rated theirs 0.13-0.20 and served it to 0-2% of their users). Adam moves each weight by
about the same step whatever its feature's value, so a cross worth 2 moves the logits twice as
far per step as a single token, and a pair's own evidence catches up with the sum of its
traits' (and the scorer's uncertainty, which sums the squared values of the features an action
was not seen with, leans on an unseen cross 4 times as much as on a single token). On the learning twin (16 runs a world, 6,000 users, paired runs), the share of the
oracle's gain by user 6,000 went from 0.81 to 0.83 on ``teams``, 0.71 to 0.75 on ``campus``,
0.61 to 0.67 on ``fleets`` (0.65 to 0.65 on 16 other runs) and stayed at 0.75 on ``clinics``;
3 did worse than 2 (``teams`` 0.79, ``campus`` 0.74). A cross is then the one feature above 1:
the vector's values lie in [0, ``cross_weight``].

Identifiers and personal data are left out by default (keys like
``email``, ``name``, ``phone``, ``*Id``, ``*At``, values with an ``@`` or longer than 64
characters, keys longer than 128): they would be noise, one value per user.

Nothing is configured per value: a new trait value or a new trait key lands in its bucket, so a
growing vocabulary never changes the vector's layout. A catalog's ``features:`` section may
include, exclude or type keys (:class:`Hashing`).

>>> hashed_tokens(DEFAULT_HASHING, {"traits": {"role": "Admin", "accountId": "a-1"}}, None,
...               {"device": "mobile"})
['t:role=admin', 'x:device=mobile']
>>> t = hashed_tokens(DEFAULT_HASHING, {"traits": {"role": "admin", "seats": 2}})
>>> [x for x in t if "&" not in x]
['t:role=admin', 't:seats=~0', 't:seats=^0', 't:seats=^1', 't:seats=^2', 't:seats=^3', 't:seats=^4']
>>> [x for x in t if "&" in x][:2], len(t)  # and role crossed with each of seats' six
(['t:role=admin&t:seats=^0', 't:role=admin&t:seats=^1'], 13)
>>> u = hashed_tokens(DEFAULT_HASHING, {"traits": {"seats": 2, "age": 30}})
>>> len(u), [x for x in u if x.count("^") == 2]  # 6 + 17 tokens and 22 crosses, none of ^ x ^
(45, [])
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

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_HASHING",
    "Hashing",
    "bucket",
    "hashed_buckets",
    "hashed_features",
    "hashed_parts",
    "hashed_tokens",
]

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
_MAX_KEY = 128
#: Entries a :class:`Hashing` remembers of each of its answers (which keys it keeps, the bucket
#: of a token): the same traits come back with every user; past it the memory starts afresh.
_CACHE = 1 << 15
#: Sets of trait/CRM tokens whose crosses' buckets a :class:`Hashing` remembers (a few hundred
#: buckets each: a few MB), and the most tokens a set it remembers has (tens of MB at worst).
_CROSSES_CACHE = 1 << 12
_CROSSES_TOKENS = 64


def _is_number(v: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Hashing:
    """How traits, CRM columns and context fields become hashed features.

    ``include`` (when set) keeps only these keys; ``exclude`` adds to :data:`DEFAULT_EXCLUDE`;
    ``numeric`` keys are read as numbers (log2 and decimal buckets) even when sent as text; ``categorical``
    keys keep numbers as exact values. Keys are matched case-insensitively, a nested key as
    ``parent.child``. ``cross_fields``: at most this many trait/CRM fields (by key order) are
    crossed in pairs.

    ``threshold_weight`` is the value of a number's thresholds and of their crosses, in (0, 1]
    (the module docstring says when a lower one helps). ``cross_weight`` is the value of each
    cross, in [1, 8] (2 by default; times ``threshold_weight`` for a cross with a threshold;
    the module docstring says why).

    ``hash_seed`` (as Vowpal Wabbit's ``--hash_seed``) starts the CRC-32 of every token, so that
    a seed is another draw of which tokens share a bucket; 0, the default, is the plain CRC-32
    (the buckets of every release so far). With a few hundred tokens in 512 buckets, which of
    them collide moves a world's learning curve: on the learning twin the share of the oracle's
    gain at user 6,000 was 0.54 on ``fleets`` and 0.74 on ``campus`` over 4 world seeds under
    hash seed 0, and 0.55 and 0.73 over 8 world seeds each hashed with its own seed (0.60 and
    0.68 with another family of 8 seeds). ``bench/learning_twin.py`` therefore gives each run its
    own hash seed (``--hash-seed``), so that a setting is judged over collision patterns rather
    than for the one pattern seed 0 happens to draw.

    ``buckets``: 2,048 by default (512 until 2026-12-07). Three traits with a number among them
    make 300-500 tokens with their crosses, so in 512 buckets about half of them shared a bucket
    with another, and a shared bucket's weight is the sum of what unrelated cells need. Fitted
    offline to convergence on 6,000 uniformly logged users (``bench/learning_ceiling.py``, 4
    seeds a world), the wide scorer's share of the oracle's gain went from 0.85 to 0.90
    (``teams``), 0.85 to 0.88 (``campus``), 0.82 to 0.86 (``clinics``) and 0.70 to 0.73
    (``fleets``); learning online (the learning twin, 16 paired runs a world, by user 6,000)
    from 0.854 to 0.879, 0.775 to 0.825, 0.785 to 0.768 and 0.674 to 0.700. The vector is 3.7
    times as long, but it is sparse on the wire and in the learner's replay buffer (whose
    mini-batches are filled from that sparse form); a decision batch costs the same.
    """

    buckets: int = 2048
    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()
    numeric: frozenset[str] = frozenset()
    categorical: frozenset[str] = frozenset()
    crosses: bool = True
    cross_fields: int = 12
    hash_seed: int = 0
    threshold_weight: float = 1.0
    cross_weight: float = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.buckets, int) and 16 <= self.buckets <= 1 << 20):
            raise ValueError(
                f"features.buckets must be an integer in [16, 2**20], got {self.buckets!r}"
            )
        if not (isinstance(self.cross_fields, int) and self.cross_fields >= 2):
            raise ValueError(
                f"features.cross_fields must be an integer >= 2, got {self.cross_fields!r}"
            )
        if not (
            isinstance(self.hash_seed, int)
            and not isinstance(self.hash_seed, bool)
            and 0 <= self.hash_seed < 1 << 32
        ):
            raise ValueError(
                f"features.hash_seed must be an integer in [0, 2**32), got {self.hash_seed!r}"
            )
        w = self.threshold_weight
        if not (_is_number(w) and 0 < w <= 1):
            raise ValueError(f"features.threshold_weight must be a number in (0, 1], got {w!r}")
        object.__setattr__(self, "threshold_weight", float(w))
        c = self.cross_weight
        if not (_is_number(c) and 1 <= c <= 8):
            raise ValueError(f"features.cross_weight must be a number in [1, 8], got {c!r}")
        object.__setattr__(self, "cross_weight", float(c))
        for name in ("include", "exclude", "numeric", "categorical"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, frozenset(k.strip().lower() for k in v))
        if self.include is not None and not self.include:
            raise ValueError(
                "features.include is empty: it would keep no trait; leave it out to keep every one"
            )
        both = sorted(self.numeric & self.categorical)
        if both:
            raise ValueError(
                f"features.numeric and features.categorical both name {both[0]!r}: a key is read "
                "as a number or as exact values, not both"
            )
        # memories of keeps(), token_buckets(), an attribute's tokens and a cross's bucket: not
        # fields (not compared, not pickled)
        object.__setattr__(self, "_keeps", {})
        object.__setattr__(self, "_buckets", {})
        object.__setattr__(self, "_attrs", {})
        object.__setattr__(self, "_crosses", {})

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
                self.hash_seed,
                self.threshold_weight,
                self.cross_weight,
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
        """Canonical content (part of the schema hash); ``hash_seed`` only when set, so that the
        schema hashes of seed 0 are those of the releases before it existed, and
        ``threshold_weight`` and ``cross_weight`` only when not 1 (the weights of every release
        before them; the default ``cross_weight`` of 2 is written, so a model fitted to vectors
        whose crosses were worth 1 has another schema hash)."""
        out: dict[str, Any] = {
            "buckets": self.buckets,
            "include": None if self.include is None else sorted(self.include),
            "exclude": sorted(self.exclude),
            "numeric": sorted(self.numeric),
            "categorical": sorted(self.categorical),
            "crosses": self.crosses,
            "cross_fields": self.cross_fields,
        }
        if self.hash_seed:
            out["hash_seed"] = self.hash_seed
        if self.threshold_weight != 1.0:
            out["threshold_weight"] = self.threshold_weight
        if self.cross_weight != 1.0:
            out["cross_weight"] = self.cross_weight
        return out

    def keeps(self, key: str) -> bool:
        """Whether the attribute ``key`` (``parent.child`` when nested) becomes a token."""
        if len(key) > _MAX_KEY:
            return False  # nobody's feature, and not worth remembering
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
                b = bucket(token, self.buckets, self.hash_seed)
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


def _token_values(key: str, value: Any, h: Hashing) -> tuple[tuple[str, ...], bool]:
    """One attribute's value as the text of its tokens (none: leave it out), and whether they
    are a number's (:func:`_number_buckets`)."""
    if value is None:
        return (), False
    k = key.lower()
    if isinstance(value, bool):
        return ("true" if value else "false",), False
    if isinstance(value, int | float):
        if k in h.categorical:
            f = float(value)
            if not math.isfinite(f):
                return (), False
            return (str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f),), False
        return _number_buckets(as_number(value)), True
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _MISSING or len(v) > _MAX_TEXT or "@" in v or "://" in v:
            return (), False
        if k in h.numeric:
            f = as_number(v)
            return (_number_buckets(f), True) if f or v in ("0", "0.0") else ((), False)
        return (v,), False
    return (), False


#: A number's thermometer: thresholds per octave, and how many at most (the highest ones at or
#: below the number: 4 octaves).
_STEPS_PER_OCTAVE = 4
_THERMOMETER = 16


def _number_buckets(v: float) -> tuple[str, ...]:
    """``~d`` with ``d = floor(log10(|v|))`` (0 below 1), then ``^k`` for each threshold
    ``2**(k/4) <= |v|`` among the 16 highest (from ``^0``, which is 1, when ``|v| >= 1``);
    ``~-d`` and ``^-k`` below zero. 0 is ``~0`` alone.

    >>> _number_buckets(0.0), _number_buckets(1), _number_buckets(-2)
    (('~0',), ('~0', '^0'), ('~-0', '^-0', '^-1', '^-2', '^-3', '^-4'))
    >>> b = _number_buckets(140)
    >>> b[:3], b[-1], len(b)
    (('~2', '^13', '^14'), '^28', 17)
    >>> _number_buckets(0.5)[1:3]
    ('^-19', '^-18')
    """
    a = min(abs(v), 1e300)
    sign = "-" if v < 0 else ""
    d = int(math.log10(a)) if a >= 1.0 else 0
    if a <= 0.0:
        return (f"~{sign}{d}",)
    top = math.floor(_STEPS_PER_OCTAVE * math.log2(a))
    low = top - _THERMOMETER + 1
    if a >= 1.0:
        low = max(0, low)
    return (f"~{sign}{d}", *(f"^{sign}{k}" for k in range(low, top + 1)))


_Token = tuple[str, str, bool]
#: Attribute values whose tokens are remembered (by value and type: ``True`` is not ``1``).
_SCALARS = (str, int, float, bool)


def _attributes(prefix: str, d: Any, h: Hashing, out: list[_Token]) -> None:
    """(key, token, whether it is a number's threshold) of every kept scalar attribute of
    ``d``, nested objects one level deep."""
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
                        out += _attribute_tokens(h, prefix, name, v)
            continue
        if h.keeps(key):
            out += _attribute_tokens(h, prefix, key, value)


def _attribute_tokens(h: Hashing, prefix: str, key: str, value: Any) -> tuple[_Token, ...]:
    """(key, token, whether it is a number's threshold) of one kept attribute, remembered: the
    same traits and CRM columns come back with every decision of a user."""
    memory: dict[tuple[str, str, Any, type], tuple[_Token, ...]] = h._attrs  # type: ignore[attr-defined]
    kind = type(value)
    # a text too long to be a token is not remembered either (it would only hold memory)
    remember = kind in _SCALARS and (kind is not str or len(value) <= _MAX_TEXT)
    if remember:
        known = memory.get((prefix, key, value, kind))
        if known is not None:
            return known
    texts, number = _token_values(key, value, h)
    tokens = tuple((key, f"{prefix}:{key}={t}", number and t[0] == "^") for t in texts)
    if remember:
        if len(memory) >= _CACHE:
            memory.clear()
        memory[(prefix, key, value, kind)] = tokens
    return tokens


def bucket(token: str, buckets: int, seed: int = 0) -> int:
    """The bucket of a token among ``buckets`` (CRC-32 of its UTF-8, started from ``seed``:
    stable across processes).

    >>> bucket("t:role=admin", 512) != bucket("t:role=admin", 512, seed=1)
    True
    """
    return zlib.crc32(token.encode("utf-8", "surrogatepass"), seed) % buckets


def _fields(
    h: Hashing,
    profile: Mapping[str, Any] | None,
    enrichment: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
) -> tuple[list[_Token], list[_Token]]:
    """The tokens of the trait/CRM attributes (what is crossed) and of the context fields."""
    user: list[_Token] = []
    traits = profile.get("traits") if isinstance(profile, Mapping) else None
    _attributes("t", traits, h, user)
    if isinstance(enrichment, Mapping) and enrichment.get("found") is True:
        _attributes("c", enrichment, h, user)
    ctx: list[_Token] = []
    _attributes("x", context, h, ctx)
    return user, ctx


def _pairs(h: Hashing, user: list[_Token]) -> list[tuple[str, str]]:
    """The pairs of trait/CRM tokens that are crossed (``a < b``): two fields' tokens, of the
    first :attr:`Hashing.cross_fields` fields, but not two numbers' thresholds."""
    if not (h.crosses and len(user) > 1):
        return []
    crossed = _crossed(h, user)
    return [(a, b) for i, (a, _, _) in enumerate(crossed) for b, _ in _partners(crossed, i)]


def _crossed(h: Hashing, user: list[_Token]) -> list[tuple[str, str, bool]]:
    """(token, key, threshold) of the tokens of the first :attr:`Hashing.cross_fields` fields,
    sorted by token."""
    fields = sorted({k for k, _, _ in user})[: h.cross_fields]
    return sorted((t, k, thr) for k, t, thr in user if k in fields)


def _partners(crossed: list[tuple[Any, str, bool]], i: int) -> list[tuple[Any, bool]]:
    """The tokens after the ``i``-th that it is crossed with (another field's, and not two
    numbers' thresholds), each with whether the cross has a number's threshold in it."""
    _, ka, ta = crossed[i]
    return [(b, ta or tb) for b, kb, tb in crossed[i + 1 :] if ka != kb and not (ta and tb)]


def _cross_buckets(h: Hashing, user: list[_Token]) -> tuple[list[int], list[bool]]:
    """The buckets of :func:`_pairs`' crosses, in their order, and whether each crosses a
    number's threshold: CRC-32 runs on from ``a&`` over ``b``, so no cross is written out."""
    raw = [(t.encode("utf-8", "surrogatepass"), k, thr) for t, k, thr in _crossed(h, user)]
    n, crc = h.buckets, zlib.crc32
    out: list[int] = []
    thresholds: list[bool] = []
    for i, (a, _, _) in enumerate(raw):
        head = crc(a + b"&", h.hash_seed)
        for b, threshold in _partners(raw, i):
            out.append(crc(b, head) % n)
            thresholds.append(threshold)
    return out, thresholds


def hashed_tokens(
    h: Hashing,
    profile: Mapping[str, Any] | None,
    enrichment: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> list[str]:
    """The tokens of these inputs under ``h``: traits, CRM columns (of a ``found`` row), context
    fields and the crosses of trait/CRM pairs (what the ``hash:*`` features are made of)."""
    user, ctx = _fields(h, profile, enrichment, context)
    singles = [t for _, t, _ in user] + [t for _, t, _ in ctx]
    return singles + [f"{a}&{b}" for a, b in _pairs(h, user)]


def hashed_buckets(
    h: Hashing,
    profile: Mapping[str, Any] | None,
    enrichment: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> list[int]:
    """The bucket of each of :func:`hashed_tokens`, in the same order, without writing out the
    crosses (remembered for each set of trait/CRM tokens: a user's come back with every decision).

    >>> p = {"traits": {"role": "admin", "seats": 40}}
    >>> hashed_buckets(DEFAULT_HASHING, p) == [
    ...     bucket(t, 2048) for t in hashed_tokens(DEFAULT_HASHING, p)]
    True
    """
    singles, _, crosses, _ = hashed_parts(h, profile, enrichment, context)
    return singles + crosses


def hashed_features(
    h: Hashing,
    profile: Mapping[str, Any] | None,
    enrichment: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> list[tuple[int, float]]:
    """:func:`hashed_buckets` with the value of each: 1 for a token, :attr:`Hashing.threshold_weight`
    for a number's threshold, and :attr:`Hashing.cross_weight` times that for a cross. A bucket
    that several tokens share takes the value of a single token over a cross's, and of a token
    without a threshold over one with: the list is in that order of precedence, last first
    (crosses with a threshold, crosses, thresholds, tokens), so the last value written for a
    bucket is the one kept, whatever the order of the traits.

    >>> p = {"traits": {"role": "a", "seats": 2}}
    >>> values = hashed_features(DEFAULT_HASHING, p)
    >>> sorted(set(v for _, v in values)), len(values)  # role, seats' ~0 and 5 thresholds; 6 crosses
    ([1.0, 2.0], 13)
    >>> sorted(b for b, _ in values) == sorted(hashed_buckets(DEFAULT_HASHING, p))
    True
    >>> half = Hashing(threshold_weight=0.5, cross_weight=1)
    >>> sorted(set(v for _, v in hashed_features(half, p)))
    [0.5, 1.0]
    """
    singles, single_thr, crosses, cross_thr = hashed_parts(h, profile, enrichment, context)
    tw, cw = h.threshold_weight, h.cross_weight
    return [
        *((b, cw * tw) for b, t in zip(crosses, cross_thr, strict=True) if t),
        *((b, cw) for b, t in zip(crosses, cross_thr, strict=True) if not t),
        *((b, tw) for b, t in zip(singles, single_thr, strict=True) if t),
        *((b, 1.0) for b, t in zip(singles, single_thr, strict=True) if not t),
    ]


def hashed_parts(
    h: Hashing,
    profile: Mapping[str, Any] | None,
    enrichment: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
) -> tuple[list[int], list[bool], list[int], list[bool]]:
    """The buckets of the single tokens of :func:`hashed_tokens` and whether each is a number's
    threshold, then the same of the crosses, each in :func:`hashed_tokens`' order."""
    user, ctx = _fields(h, profile, enrichment, context)
    out = h.token_buckets([t for _, t, _ in user] + [t for _, t, _ in ctx])
    thresholds = [thr for _, _, thr in user] + [thr for _, _, thr in ctx]
    if not (h.crosses and len(user) > 1):
        return out, thresholds, [], []
    if len(user) > _CROSSES_TOKENS:
        crosses = _cross_buckets(h, user)
    else:
        memory: dict[tuple[_Token, ...], tuple[list[int], list[bool]]] = h._crosses  # type: ignore[attr-defined]
        key = tuple(user)
        kept = memory.get(key)
        if kept is None:
            kept = _cross_buckets(h, user)
            if len(memory) >= _CROSSES_CACHE:
                memory.clear()
            memory[key] = kept
        crosses = kept
    return out, thresholds, crosses[0], crosses[1]
