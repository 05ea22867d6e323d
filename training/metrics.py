"""Offline metrics of a scorer on logged rewards: loss, AUC / precision / recall of the outcome
prediction, and the estimated value of its greedy policy (IPS and self-normalized IPS with the
logged propensities).

A deliberately small, private estimator set for the training job's per-epoch report; the full
off-policy evaluation (direct method, doubly robust, bootstrap intervals) is ``training.ope``.

>>> import numpy as np
>>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
0.75
>>> auc(np.array([1, 1]), np.array([0.2, 0.3])) is None
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ray_app.learn.objective import greedy_ips, ips_loss
from ray_app.model import Scorer

__all__ = ["MIN_PROPENSITY", "auc", "evaluate", "logged_action_logits"]

#: Default floor of the propensities in the training weights (the job passes
#: ``learn.min_propensity``, the online learner's).
MIN_PROPENSITY = 0.5


def auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); ``None`` with a single class."""
    y = np.asarray(y) > 0.5
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def logged_action_logits(
    scorer: Scorer, x: torch.Tensor, slot: torch.Tensor, action: torch.Tensor
) -> torch.Tensor:
    """The logit of each row's logged action: every head runs on every row (so each parameter
    takes part in each forward, which DistributedDataParallel needs), then rows pick their slot."""
    h = torch.relu(F.linear(x, scorer.trunk.weight, scorer.trunk.bias))
    out = torch.zeros(len(x), dtype=h.dtype, device=h.device)
    for s, head in enumerate(scorer.heads):
        logits = head(h) + scorer.wide_logits(x, s)
        a = action.clamp(max=logits.shape[1] - 1)
        chosen = logits.gather(1, a.unsqueeze(1)).squeeze(1)
        out = torch.where(slot == s, chosen, out)
    return out


def evaluate(
    scorer: Scorer, data: dict[str, np.ndarray], min_propensity: float = MIN_PROPENSITY
) -> dict[str, Any]:
    """Metrics of ``scorer`` on the arrays of :meth:`training.data.RewardData.columns` plus
    ``mask`` (eligible actions): ``loss`` (:func:`~ray_app.learn.objective.ips_loss`, the log
    loss of the logged action importance-weighted with propensities clipped at
    ``min_propensity``, in float64), ``auc``, ``precision``/``recall`` at 0.5, ``ips``/``snips``
    (:func:`~ray_app.learn.objective.greedy_ips`: the value of the greedy policy, unclipped),
    ``logged`` (mean reward of the logging policy) and ``match`` (share of rows where the greedy
    choice is the logged one). With ``explored`` in ``data``, ``ips``/``snips``, ``logged`` and
    ``match`` are over the rows an exploring arm logged (``ips_records`` of them): the control
    arm's static flow shows one action with propensity 1, and rows that never show the greedy
    policy's other choices would bias its estimate (``logged_all``: the mean reward of every
    row)."""
    n = len(data["reward"])
    if n == 0:
        return {"records": 0}
    x = torch.tensor(data["x"], dtype=torch.float32)  # a copy: Ray hands read-only arrays
    slot = torch.tensor(data["slot"], dtype=torch.int64)
    action = torch.tensor(data["action"], dtype=torch.int64)
    y = data["reward"].astype(np.float64)
    propensity = data["propensity"].astype(np.float64)
    with torch.no_grad():
        logit = logged_action_logits(scorer, x, slot, action).numpy().astype(np.float64)
        greedy = np.zeros(n, dtype=np.int64)
        for s in np.unique(data["slot"]):
            rows = np.flatnonzero(data["slot"] == s)
            scores = scorer(x[rows], int(s)).numpy()
            mask = data["mask"][rows][:, : scores.shape[1]]
            greedy[rows] = np.where(mask, scores, -np.inf).argmax(axis=1)
    loss = ips_loss(
        torch.from_numpy(logit), torch.from_numpy(y), torch.from_numpy(propensity), min_propensity
    )
    p = 1.0 / (1.0 + np.exp(-logit))
    predicted = p >= 0.5
    positive = y > 0.5
    tp = int((predicted & positive).sum())
    logged = data["action"]
    explored = data.get("explored")
    e = np.ones(n, dtype=bool) if explored is None else np.asarray(explored, dtype=bool)
    out: dict[str, Any] = {
        "records": n,
        "loss": float(loss),
        "auc": auc(y, p),
        "precision": tp / int(predicted.sum()) if predicted.any() else None,
        "recall": tp / int(positive.sum()) if positive.any() else None,
        # unclipped propensities: IPS is unbiased (SNIPS is NaN, then None, with no match)
        "ips": greedy_ips(y[e], propensity[e], greedy[e], logged[e]) if e.any() else None,
        "snips": greedy_ips(y[e], propensity[e], greedy[e], logged[e], self_normalized=True)
        if e.any()
        else None,
        "ips_records": int(e.sum()),
        # the logging policy's value and the greedy policy's agreement with it on the same rows
        # as ips (with the control arm's rows in, a policy identical to the exploring arm's
        # read as a gain over it); logged_all: every row's mean reward
        "logged": float(y[e].mean()) if e.any() else None,
        "logged_all": float(y.mean()),
        "match": float((greedy[e] == logged[e]).mean()) if e.any() else None,
    }
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()
    }
