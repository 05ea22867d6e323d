"""The feature vector's layout: :class:`FeatureSchema`, its feature names and its hash.

The schema's :attr:`~FeatureSchema.hash` covers every feature name, the hashing settings and
:data:`FEATURE_VERSION` (bump it when the meaning of a feature changes), so a model trained on
one schema is never served on another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ray_app.features.featurize import EVENT_COUNTS, fill_row
from ray_app.features.hashing import DEFAULT_HASHING, Hashing, hashed_tokens

if TYPE_CHECKING:
    from ray_app.catalog import Catalog

__all__ = ["FEATURE_VERSION", "FeatureSchema"]

#: Bump when a feature's meaning changes without its name changing (it changes :attr:`hash`).
FEATURE_VERSION = 4


class _Positions(NamedTuple):
    """Where the fixed features (:data:`_FIXED_NAMES`, in this order) sit in the vector."""

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
        return self._hashed + self.hashing.token_buckets([token])[0]

    def tokens(
        self,
        profile: Mapping[str, Any] | None,
        enrichment: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """The hashed tokens of these inputs: traits, CRM columns, context fields and the crosses
        of trait/CRM pairs (what the ``hash:*`` features are made of)."""
        return hashed_tokens(self.hashing, profile, enrichment, context)

    # -------------------------------------------------------------------------- featurize

    def __reduce__(self) -> tuple[Any, ...]:
        # the layout is rebuilt from what it is made of (and the hashing's memories stay here)
        return (type(self), (self.steps, self.hashing, self.version))

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
        out: dict[int, float] = {}
        fill_row(self, out, profile, enrichment, context, now_ms)
        x = np.zeros(len(self.names), dtype=np.float32)
        x[list(out)] = list(out.values())
        return x

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
        rows: list[int] = []
        cols: list[int] = []
        values: list[float] = []
        for i in range(n):
            out: dict[int, float] = {}
            fill_row(
                self,
                out,
                profiles[i],
                None if enrichments is None else enrichments[i],
                None if contexts is None else contexts[i],
                nows[i],
            )
            rows += [i] * len(out)
            cols += out
            values += out.values()
        x = np.zeros((n, len(self.names)), dtype=np.float32)
        x[rows, cols] = values  # one scatter for the batch: the vectors are mostly zeros
        return x
