"""Policies: scores of a slot's actions -> a ranking, one chosen action and its exact propensity.

Each policy turns the scores of the eligible actions into a probability distribution and draws
the chosen action from it with **one uniform number derived from** ``(seed, key)`` (a BLAKE2b
hash: counter-based, no global RNG state), where ``key`` is the decision id. So a decision is
reproducible from its id, and the logged ``propensity`` is exactly the probability that this
policy, given these scores, picks the chosen action: what off-policy evaluation needs.

Kinds:

* ``epsilon_greedy``: the best-scored action with probability ``1 - epsilon``, else a uniform
  eligible one: ``p(a) = (1 - epsilon) * [a is best] + epsilon / n``. Ties go to the lower action
  index, deterministically.
* ``squarecb``: inverse gap weighting (Foster & Rakhlin's SquareCB, as in Vowpal Wabbit's
  ``--squarecb``): with ``y = sigmoid(score)`` the predicted completion rate, each action other
  than the best gets ``p(a) = 1 / (n + gamma * (y_best - y(a)))`` and the best the rest. An
  action predicted nearly as good as the best is explored nearly as often; a clearly worse one
  rarely. ``gamma`` grows as the model learns (the learner publishes it with the weights,
  ``gamma_scale * sqrt(rewards)``), so exploration fades where the model is sure, and starts
  over after a drift.
* ``softmax``: ``p = (1 - floor) * softmax(scores / temperature) + floor / n``.
* ``thompson``: each action's score is perturbed by Gaussian noise (``uncertainty`` per action,
  e.g. :func:`uncertainty_from_counts`, else ``prior_std``) and the best perturbed action wins.
  The win probabilities are estimated with ``draws`` fixed Gaussian draws (common random numbers
  seeded by ``seed``), which makes them a deterministic function of the scores; the chosen action is
  then drawn from ``(1 - floor) * wins + floor / n``. The policy that runs is that distribution,
  so its propensity is exact (not an estimate of an estimate), and the cost is one
  ``[draws, n]`` numpy operation.

With ``epsilon > 0`` (epsilon-greedy), any finite ``gamma`` (squarecb) or ``floor > 0`` (softmax,
thompson) every eligible action has a probability > 0.

>>> policy = Policy("epsilon_greedy", epsilon=0.2, seed=7)
>>> c = policy.choose(np.array([0.1, 2.0, 0.5]), [0, 1, 2], key="decision-1")
>>> c.ranking, round(c.probabilities[1], 4), c == policy.choose(np.array([0.1, 2.0, 0.5]), [0, 1, 2], "decision-1")
([1, 2, 0], 0.8667, True)
>>> ControlPolicy((0, 1, 2)).choose(np.zeros(3), [1, 2], key="d").chosen
1
>>> p = Policy("squarecb", gamma=50.0).probabilities(np.array([0.0, 2.0, 1.9]), [0, 1, 2])
>>> [round(p[a], 3) for a in (0, 1, 2)]   # the near-best action is explored far more
[0.045, 0.673, 0.282]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from ray_app.catalog import Catalog

__all__ = ["Choice", "ControlPolicy", "Policy", "PolicyKind", "uncertainty_from_counts", "uniform"]

PolicyKind = Literal["softmax", "epsilon_greedy", "thompson", "squarecb"]
_KINDS = ("softmax", "epsilon_greedy", "thompson", "squarecb")
_BIG = 1e30


def uniform(seed: int, key: str, counter: int = 0) -> float:
    """A uniform number in (0, 1) that depends only on ``(seed, key, counter)``.

    >>> uniform(1, "a") == uniform(1, "a") != uniform(2, "a")
    True
    """
    h = hashlib.blake2b(f"{seed}\x1f{key}\x1f{counter}".encode(), digest_size=8).digest()
    return (int.from_bytes(h, "big") + 0.5) / 18446744073709551616.0  # 2**64


def uncertainty_from_counts(
    counts: np.ndarray | Sequence[float], prior_std: float = 1.0
) -> np.ndarray:
    """Per-action standard deviation for Thompson sampling: ``prior_std / sqrt(1 + count)``.

    >>> uncertainty_from_counts([0, 3]).tolist()
    [1.0, 0.5]
    """
    c = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    return prior_std / np.sqrt(1.0 + c)


@dataclass(frozen=True)
class Choice:
    """What a policy decided for one request.

    ``ranking``: the eligible action indices, best first; ``chosen``: the action served;
    ``propensity``: the probability the policy had of choosing it; ``probabilities``: that
    probability for every eligible action (they sum to 1).
    """

    ranking: list[int]
    chosen: int
    propensity: float
    probabilities: dict[int, float]

    @property
    def explored(self) -> bool:
        """Whether the chosen action is not the top-ranked one."""
        return self.chosen != self.ranking[0]


def _prepare(
    scores: np.ndarray | Sequence[float], eligible: Sequence[int]
) -> tuple[list[int], list[float]]:
    """Eligible indices in ascending order (the policy does not depend on the caller's order)
    and their scores as floats, NaN as the lowest. Plain Python: n is small, numpy's per-call
    overhead would dominate."""
    if len(eligible) == 0:
        raise ValueError("no eligible action to choose from")
    s = np.asarray(scores, dtype=np.float64).reshape(-1).tolist()
    el = sorted(int(i) for i in eligible)
    if len(set(el)) != len(el):
        raise ValueError(f"eligible holds duplicates: {el}")
    if el[0] < 0 or el[-1] >= len(s):
        raise ValueError(f"eligible {el} out of range for {len(s)} scores")
    vals = [s[i] for i in el]
    for j, v in enumerate(vals):
        if v - v != 0.0:  # nan or inf
            vals[j] = _BIG if v == math.inf else -_BIG
    return el, vals


def _rank(el: list[int], vals: list[float]) -> list[int]:
    """Best score first; ties by lower action index (``el`` is ascending, the sort stable)."""
    return [el[j] for j in sorted(range(len(el)), key=lambda j: -vals[j])]


def _sigmoid(v: float) -> float:
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-min(v, 700.0)))
    e = math.exp(max(v, -700.0))
    return e / (1.0 + e)


def _draw(p: list[float], u: float) -> int:
    """Inverse CDF: the position whose cumulative share first exceeds ``u`` (never a 0 share)."""
    target = u * sum(p)
    acc = 0.0
    last = 0
    for j, pj in enumerate(p):
        if pj > 0.0:
            acc += pj
            last = j
            if target < acc:
                return j
    return last


@dataclass(frozen=True)
class Policy:
    """An exploring policy; deterministic given ``(seed, key)``. Picklable."""

    kind: PolicyKind = "epsilon_greedy"
    epsilon: float = 0.1
    gamma: float = 10.0
    temperature: float = 0.5
    floor: float = 0.05
    prior_std: float = 1.0
    draws: int = 64
    seed: int = 0
    _normals: dict[int, np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"policy kind must be one of {', '.join(_KINDS)}, got {self.kind!r}")
        for name in ("epsilon", "floor"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        for name in ("temperature", "prior_std", "gamma"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not (isinstance(self.draws, int) and self.draws >= 1):
            raise ValueError(f"draws must be a positive integer, got {self.draws!r}")

    def probabilities(
        self,
        scores: np.ndarray | Sequence[float],
        eligible: Sequence[int],
        uncertainty: np.ndarray | Sequence[float] | None = None,
    ) -> dict[int, float]:
        """The distribution this policy draws from, over ``eligible`` (no key needed)."""
        el, vals = _prepare(scores, eligible)
        return dict(zip(el, self._probs(el, vals, uncertainty), strict=True))

    def choose(
        self,
        scores: np.ndarray | Sequence[float],
        eligible: Sequence[int],
        key: str,
        uncertainty: np.ndarray | Sequence[float] | None = None,
    ) -> Choice:
        """Rank the eligible actions by score and draw the chosen one (see the module docstring).

        ``scores`` holds one score per action of the slot (indexed by action index), ``eligible``
        the action indices allowed, ``key`` the decision id, ``uncertainty`` (``thompson`` only)
        one standard deviation per action of the slot. NaN scores count as the lowest.
        """
        el, vals = _prepare(scores, eligible)
        p = self._probs(el, vals, uncertainty)
        j = _draw(p, uniform(self.seed, key))
        probs = dict(zip(el, p, strict=True))
        return Choice(_rank(el, vals), el[j], p[j], probs)

    def _probs(
        self,
        el: list[int],
        vals: list[float],
        uncertainty: np.ndarray | Sequence[float] | None,
    ) -> list[float]:
        n = len(el)
        if self.kind == "epsilon_greedy":
            p = [self.epsilon / n] * n
            best = max(range(n), key=vals.__getitem__)  # the first maximum: the lowest index
            p[best] += 1.0 - self.epsilon
            return p
        if self.kind == "squarecb":
            best = max(range(n), key=vals.__getitem__)  # the first maximum: the lowest index
            y = [_sigmoid(v) for v in vals]
            p = [
                0.0 if j == best else 1.0 / (n + self.gamma * (y[best] - yj))
                for j, yj in enumerate(y)
            ]
            p[best] = 1.0 - sum(p)
            return p
        if self.kind == "softmax":
            top, t = max(vals), self.temperature
            e = [math.exp((v - top) / t) for v in vals]
            total = sum(e)
            base = [x / total for x in e]
        else:
            std: np.ndarray | float = self.prior_std
            if uncertainty is not None:
                u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
                if u.shape[0] <= el[-1]:
                    raise ValueError(
                        f"uncertainty has {u.shape[0]} values, action {el[-1]} needs one"
                    )
                std = np.nan_to_num(np.abs(u[el]), nan=self.prior_std, posinf=self.prior_std)
            sampled = np.asarray(vals) + self._table(n) * std
            wins = np.bincount(np.argmax(sampled, axis=1), minlength=n)
            base = (wins / self.draws).tolist()
        keep, spread = 1.0 - self.floor, self.floor / n
        return [keep * b + spread for b in base]

    def _table(self, n: int) -> np.ndarray:
        t = self._normals.get(n)
        if t is None:
            t = np.random.default_rng([self.seed, n]).standard_normal((self.draws, n))
            self._normals[n] = t
        return t


@dataclass(frozen=True)
class ControlPolicy:
    """The static flow: the eligible action first in the slot's control order, propensity 1.

    ``control_rank`` is the slot's :attr:`ray_app.catalog.Slot.control_rank`; build it with
    :meth:`for_slot`. The ranking is the control order, not the scores.
    """

    control_rank: tuple[int, ...]

    @classmethod
    def for_slot(cls, catalog: Catalog, slot: str) -> ControlPolicy:
        return cls(catalog.slot(slot).control_rank)

    def choose(
        self,
        scores: np.ndarray | Sequence[float] | None,
        eligible: Sequence[int],
        key: str,
        uncertainty: np.ndarray | Sequence[float] | None = None,
    ) -> Choice:
        """The control's choice (``scores``, ``key`` and ``uncertainty`` are ignored)."""
        if len(eligible) == 0:
            raise ValueError("no eligible action to choose from")
        ranking = sorted(eligible, key=self.control_rank.__getitem__)
        chosen = ranking[0]
        return Choice(
            list(ranking), chosen, 1.0, {a: 1.0 if a == chosen else 0.0 for a in eligible}
        )
