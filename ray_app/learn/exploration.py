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

A fresh optimizer on weights that already learned *settles*: see :meth:`BoostSchedule.settle`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_app.learn.settling import information

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
    settle_from: int | None = None
    """The trained count at which a fresh optimizer was made on trained weights (``None``: the
    optimizer has been with the weights since they were cold, or has settled)."""
    settle_evidence: list[tuple[float, float, float]] | None = None
    """While settling and not judged yet: per new reward, the logit of its logged action under
    the weights before training on it, the reward and its row weight (see
    :meth:`judge_settling`)."""

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

    def fresh_optimizer(self, trained: int) -> None:
        """A new optimizer was made at ``trained`` on trained weights: it settles, and is judged
        first (:meth:`judge_settling`)."""
        self.settle_from = trained
        self.settle_evidence = []

    def settled(self) -> None:
        """No settling (any more): the full rate."""
        self.settle_from = self.settle_evidence = None

    def judge_settling(
        self, rows: list[tuple[float, float, float]], needed: int, threshold: float
    ) -> float | None:
        """Add new rewards as ``(logit, reward, weight)`` rows, predicted by the settling
        weights before training on them. Once ``needed`` are in, the weights are judged: unless
        their logits carry at least ``threshold`` of the rewards' information
        (:func:`~ray_app.learn.settling.information`), settling ends (weights learned in another
        world are the learner's to drop). Returns the information once judged, else ``None``
        (also when nothing is being judged).

        >>> s = BoostSchedule(warmup_rewards=0, boost_rewards=0)
        >>> s.fresh_optimizer(trained=0)
        >>> s.judge_settling([(0.5, 1.0, 1.0), (0.5, 0.0, 1.0)] * 30, 100, 0.02)  # not yet
        >>> s.judge_settling([(0.5, 1.0, 1.0), (0.5, 0.0, 1.0)] * 30, 100, 0.02)  # uninformed
        0.0
        >>> s.settle_from, s.settle(0, 0.1, 1_000)
        (None, 1.0)
        """
        if self.settle_evidence is None or self.settle_from is None:
            return None
        self.settle_evidence.extend(rows)
        if len(self.settle_evidence) < needed:
            return None
        z, y, w = np.array(self.settle_evidence, dtype=np.float64).T
        self.settle_evidence = None
        info = information(z, y, w)
        if info < threshold:
            self.settle_from = None
        return info

    def settle(self, trained: int, factor: float, rewards: int) -> float:
        """The step-size factor at ``trained``: ``factor`` when the optimizer is new on trained
        weights, growing geometrically to 1 over its first ``rewards`` rewards (1 when it has
        been with the weights since they were cold, or has settled).

        An adaptive optimizer normalizes each step by the gradients it has seen. One that has
        been with the weights since they were cold remembers the large gradients of an untrained
        model; a new one on trained weights sees only the small ones near the optimum, and its
        full-size steps walk the weights off it (on the learning twin a learner started from a
        5,000-user model file fell from 0.69 to 0.44 of the oracle's gain over its first 1,000
        users).

        >>> s = BoostSchedule(warmup_rewards=0, boost_rewards=0)
        >>> s.fresh_optimizer(trained=100)
        >>> [round(s.settle(t, 0.1, 1_000), 3) for t in (100, 600, 1_100, 9_000)]
        [0.1, 0.316, 1.0, 1.0]
        >>> s.settle_from is None
        True
        """
        now = self.settle_factor(trained, factor, rewards)
        if now == 1.0:
            self.settled()
        return now

    def settle_factor(self, trained: int, factor: float, rewards: int) -> float:
        """:meth:`settle`'s factor, without ending a settling that is over (for a status)."""
        if self.settle_from is None:
            return 1.0
        age = trained - self.settle_from
        if rewards <= 0 or age >= rewards:
            return 1.0
        return float(factor ** (1.0 - max(age, 0) / rewards))

    def state(self) -> dict[str, Any]:
        """The schedule under the keys of a learner state."""
        return {
            "boost_until_trained": self.until,
            "explore_from": self.explore_from,
            "explored": self.explored,
            "gamma_head_start": self.head_start,
            "warmup": self.warmup,
            "settle_from": self.settle_from,
            "settle_evidence": None
            if self.settle_evidence is None
            else [list(row) for row in self.settle_evidence],
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
        settle = state.get("settle_from")
        self.settle_from = None if settle is None else int(settle)
        ev = state.get("settle_evidence")
        self.settle_evidence = None if ev is None else [(r[0], r[1], r[2]) for r in ev]
