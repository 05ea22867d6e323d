"""The learning objective, written once: the importance-weighted log loss of the logged action and
the IPS estimate of a greedy policy's value.

Every place that trains or judges a scorer on logged rewards calls these two functions: the
online learner's update step and its guardrail check (:mod:`ray_app.learn.learner`,
:mod:`ray_app.learn.loss_guardrail`), the offline training job's worker loop
(:mod:`training.train`) and its per-epoch metrics (:mod:`training.metrics`).

A logged reward is a context ``x_i``, the action ``a_i`` the logging policy chose with
probability ``p_i`` (its propensity) and the reward ``y_i`` in [0, 1]. The scorer's logit of the
logged action is ``z_i``. With a propensity floor ``m`` (the clip):

* :func:`ips_loss`: ``w_i = 1 / max(p_i, m)``, and the loss is the binary cross-entropy of
  ``z_i`` against ``y_i``, weighted by ``w_i`` and normalized by the weights::

      loss = sum_i w_i * BCE(z_i, y_i) / sum_i w_i
           = mean_i (w_i / mean(w)) * BCE(z_i, y_i)
      BCE(z, y) = -(y * log(sigmoid(z)) + (1 - y) * log(1 - sigmoid(z)))

  Actions the logging policy rarely shows count more than their share of the logs; the floor
  bounds the variance (training clips tightly, evaluation widely).
* :func:`greedy_ips`: the value of the policy that serves the action ``g_i`` (the scorer's
  best eligible one) in every logged context, estimated from the rows where it agrees with
  the logged action::

      IPS   = (1 / n) * sum_i y_i * [g_i == a_i] / max(p_i, m)
      SNIPS = sum_i y_i * [g_i == a_i] / max(p_i, m)  /  sum_i [g_i == a_i] / max(p_i, m)

  Unbiased for ``m = 0`` (the default: off-policy evaluation needs the real ratios).

>>> import numpy as np, torch
>>> z = torch.tensor([2.0, -1.0]); y = torch.tensor([1.0, 0.0]); p = torch.tensor([0.5, 0.25])
>>> round(float(ips_loss(z, y, p, min_propensity=0.05)), 4)   # (2 * 0.1269 + 4 * 0.3133) / 6
0.2512
>>> greedy_ips(np.array([1.0, 0.0]), np.array([0.5, 0.25]), np.array([1, 2]), np.array([1, 0]))
1.0
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["greedy_ips", "ips_loss"]


def ips_loss(
    logit: torch.Tensor,
    reward: torch.Tensor,
    propensity: torch.Tensor,
    min_propensity: float,
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """The self-normalized importance-weighted log loss of the logged actions (see the module
    docstring): ``sum_i w_i * BCE(z_i, y_i) / sum_i w_i`` with ``w_i = 1 / max(p_i,
    min_propensity)``.

    ``logit``, ``reward`` and ``propensity`` are 1-d tensors of one row per logged reward (the
    logit of the logged action, its reward, its propensity), of one dtype. ``reduction="none"``
    gives the per-row terms ``w_i / mean(w) * BCE(z_i, y_i)``, whose mean is the loss (what a
    caller needs to report the loss of a subset of the rows). Differentiable in ``logit``.

    >>> z = torch.tensor([0.0, 0.0]); y = torch.tensor([1.0, 1.0])
    >>> ips_loss(z, y, torch.tensor([0.1, 1.0]), 0.5, "none").tolist()  # weights 2 and 1
    [0.9241962432861328, 0.4620981216430664]
    >>> bool(torch.isclose(ips_loss(z, y, torch.tensor([0.1, 1.0]), 0.5), torch.log(torch.tensor(2.0))))
    True
    """
    w = 1.0 / propensity.clamp(min=min_propensity)
    w = w / w.mean()
    terms = F.binary_cross_entropy_with_logits(logit, reward, reduction="none") * w
    return terms if reduction == "none" else terms.mean()


def greedy_ips(
    reward: np.ndarray,
    propensity: np.ndarray,
    greedy: np.ndarray,
    logged: np.ndarray,
    min_propensity: float = 0.0,
    self_normalized: bool = False,
) -> float:
    """The IPS (or, with ``self_normalized``, SNIPS) estimate of the value of the policy that
    chooses ``greedy[i]`` in the context of row ``i`` (see the module docstring), from rewards
    logged under actions ``logged`` with propensities ``propensity`` floored at
    ``min_propensity``; computed in float64. NaN without rows (and, self-normalized, when the
    greedy choice never matches the logged one).

    >>> y, p = np.array([1.0, 1.0, 0.0]), np.array([0.5, 0.2, 0.5])
    >>> greedy_ips(y, p, greedy=np.array([0, 1, 1]), logged=np.array([0, 1, 1]))  # (2 + 5) / 3
    2.3333333333333335
    >>> greedy_ips(y, p, np.array([0, 1, 1]), np.array([0, 1, 1]), min_propensity=0.5)
    1.3333333333333333
    >>> greedy_ips(y, p, np.array([0, 1, 1]), np.array([0, 1, 1]), self_normalized=True)  # 7 / 9
    0.7777777777777778
    """
    hit = (np.asarray(greedy) == np.asarray(logged)).astype(np.float64)
    floor = np.maximum(np.asarray(propensity, dtype=np.float64), min_propensity)
    w = hit / floor
    value = float((np.asarray(reward, dtype=np.float64) * w).sum())
    total = float(w.sum()) if self_normalized else float(len(w))
    return value / total if total > 0 else float("nan")
