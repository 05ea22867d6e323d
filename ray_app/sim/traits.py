"""One identify trait of a simulated world (see :mod:`ray_app.sim.worlds`)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["Trait"]


@dataclass(frozen=True)
class Trait:
    """One identify trait of a world: its name, its values (or, for a numeric trait, the labels
    of its buckets) and their weights in the population (``None``: uniform).

    ``bounds`` makes the trait numeric: one inclusive ``(low, high)`` range per bucket; a user
    sends an integer drawn log-uniformly within their bucket's range.
    """

    name: str
    values: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    bounds: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"trait {self.name!r}: no values")
        if self.weights is not None and len(self.weights) != len(self.values):
            raise ValueError(f"trait {self.name!r}: {len(self.weights)} weights for values")
        if self.bounds is not None and len(self.bounds) != len(self.values):
            raise ValueError(f"trait {self.name!r}: {len(self.bounds)} bounds for values")

    @property
    def numeric(self) -> bool:
        return self.bounds is not None

    def weight(self, i: int) -> float:
        w = self.weights
        return 1.0 / len(self.values) if w is None else w[i] / sum(w)

    def draw(self, rng: random.Random) -> tuple[int, Any]:
        """(bucket index, the value the user sends)."""
        i = rng.choices(range(len(self.values)), self.weights)[0]
        if self.bounds is None:
            return i, self.values[i]
        low, high = self.bounds[i]
        value = int(math.exp(rng.uniform(math.log(low), math.log(high + 1))))
        return i, min(max(value, low), high)
