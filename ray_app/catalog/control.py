"""The control arm's static flow: a slot's ``default`` order, and its choice among eligible actions.

The control order lists the ``default`` actions first, then the slot's other actions in catalog
order; the control serves the eligible action that comes first in it.

>>> control_order([2, 0], 4)
((2, 0, 1, 3), (1, 2, 0, 3))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray_app.catalog.model import Slot

__all__ = ["control_choice", "control_order"]


def control_order(default: Sequence[int], size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(order, rank)`` of a slot of ``size`` actions whose ``default`` flow is these indices:
    the action indices in the control's order, and per action index its position in it."""
    order = list(default)
    order += [i for i in range(size) if i not in order]
    rank = [0] * size
    for pos, i in enumerate(order):
        rank[i] = pos
    return tuple(order), tuple(rank)


def control_choice(slot: Slot, eligible: Sequence[int]) -> int:
    """The first of ``eligible`` in the slot's control order; ``ValueError`` if it is empty."""
    if not eligible:
        raise ValueError(f"slot {slot.name!r}: no eligible action to choose from")
    return min(eligible, key=slot.control_rank.__getitem__)
