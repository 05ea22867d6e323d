"""What every simulated world shares: the reference policies (oracle, static flow, uniform
random) computed from a world's ``p_complete`` and ``catalog``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_app.catalog import Catalog

__all__ = ["POLICIES", "ReferencePolicies"]

#: The reference policies :meth:`ReferencePolicies.expected_rate`-style methods take.
POLICIES = ("static", "random", "oracle", "stale_oracle")


class ReferencePolicies:
    """Mixed into a world (a frozen dataclass with ``catalog``, ``user(index)`` and
    ``p_complete(segment, slot, action, drifted)``)."""

    catalog: Catalog

    def user(self, index: int) -> Any:  # pragma: no cover - every world defines it
        raise NotImplementedError

    def p_complete(
        self, segment: str, slot: str, action: str | int, drifted: bool = False
    ) -> float:  # pragma: no cover - every world defines it
        raise NotImplementedError

    def users(self, n: int, start: int = 0) -> list[Any]:
        """Users ``start .. start + n - 1``."""
        return [self.user(i) for i in range(start, start + n)]

    def _action_id(self, slot: str, action: str | int) -> str:
        if isinstance(action, str):
            return action
        return self.catalog.slot(slot).actions[action].id

    def oracle_choice(
        self, segment: str, slot: str, eligible: Sequence[int], drifted: bool = False
    ) -> int:
        """The eligible action with the highest completion probability (ties: lower index)."""
        if not eligible:
            raise ValueError(f"slot {slot!r}: no eligible action to choose from")
        return max(sorted(eligible), key=lambda a: self.p_complete(segment, slot, a, drifted))

    def static_choice(self, slot: str, eligible: Sequence[int]) -> int:
        """The static flow's choice: the first eligible action in the catalog's default order."""
        return self.catalog.control_choice(slot, eligible)

    @staticmethod
    def random_choice(eligible: Sequence[int], rng: random.Random) -> int:
        """A uniformly random eligible action."""
        if not eligible:
            raise ValueError("no eligible action to choose from")
        return rng.choice(sorted(eligible))

    def _distribution(
        self, policy: str, segment: str, slot: str, eligible: Sequence[int], drifted: bool
    ) -> dict[int, float]:
        if policy == "static":
            return {self.static_choice(slot, eligible): 1.0}
        if policy == "random":
            return {a: 1.0 / len(eligible) for a in eligible}
        if policy == "oracle":
            return {self.oracle_choice(segment, slot, eligible, drifted): 1.0}
        if policy == "stale_oracle":
            return {self.oracle_choice(segment, slot, eligible, False): 1.0}
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
