"""When the online learner explores on purpose: the warm-up and the boost, counted in rewards.

A learner that starts from an untrained (cold-start) model *warms up* for its first
``warmup_rewards`` trained rewards; after a drift or a rollback below control it is *boosted*
for the next ``boost_rewards``. While either runs it serves ``boost_epsilon`` and learns faster
(see :class:`~ray_app.learn.config.LearnerConfig`). Counted in trained rewards, not seconds, a
boost costs as many users at any traffic and always lasts long enough to learn from.

>>> s = BoostSchedule(warmup_rewards=0, boost_rewards=100)
>>> s.active(trained=0), s.start(trained=50), s.active(trained=149), s.left(trained=149)
(False, None, True, 1)
>>> s.active(trained=150), s.left(trained=150)
(False, 0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BoostSchedule"]


@dataclass
class BoostSchedule:
    """The learner's exploration schedule (all counts are ``counters["trained"]`` values)."""

    warmup_rewards: int
    boost_rewards: int
    warmup: bool = False
    """An untrained model is learning its first ``warmup_rewards`` rewards."""
    until: int | None = None
    """The trained count at which the running boost ends (``None``: none)."""
    explore_from: int = 0
    """The trained count since which squarecb's ``gamma`` grows and the step size decays (0: a
    cold model learns from 0; a learner started from trained weights sets it to minus what they
    had learned, so it is as sure as their lineage makes it)."""
    explored: bool = False
    """A version published while boosted is being served."""
    head_start: int = 0
    """Rewards squarecb's ``gamma`` counts as learned on top of those since ``explore_from`` (a
    restart after a drift explores around the cold-start weights less than an untrained model:
    see ``LearnerConfig.drift_gamma_head_start``)."""

    def active(self, trained: int) -> bool:
        """Whether the warm-up or a boost runs at ``trained`` (ended ones are forgotten)."""
        if self.warmup:  # explore while an untrained model learns its first rewards
            if trained < self.warmup_rewards:
                return True
            self.warmup = False
        if self.until is None:
            return False
        if trained < self.until:
            return True
        self.until = None
        return False

    def start(self, trained: int, head_start: int = 0) -> None:
        """Boost for the next ``boost_rewards`` rewards; exploration starts over (from
        ``head_start`` rewards for ``gamma``)."""
        self.until = trained + self.boost_rewards
        self.explore_from = trained
        self.head_start = head_start

    def left(self, trained: int) -> int:
        """Trained rewards until the boost ends (0: none runs; the warm-up is not counted)."""
        return 0 if self.until is None else max(self.until - trained, 0)

    def state(self) -> dict[str, Any]:
        """The schedule under the keys of a learner state."""
        return {
            "boost_until_trained": self.until,
            "explore_from": self.explore_from,
            "explored": self.explored,
            "gamma_head_start": self.head_start,
            "warmup": self.warmup,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` saved (a boost saved in seconds, ``boost_until``, is not
        carried over; a warm-up only if one is configured)."""
        boost = state.get("boost_until_trained")
        self.until = None if boost is None else int(boost)
        self.explore_from = int(state.get("explore_from", 0))
        self.explored = bool(state.get("explored", False))
        self.head_start = int(state.get("gamma_head_start", 0))
        self.warmup = bool(state.get("warmup", False)) and self.warmup_rewards > 0
