"""Onramp's own model on the Open Bandit Dataset: train on old Random logs, evaluate on newer ones.

The model is Onramp's :class:`ray_app.model.scorer.Scorer`: a shared MLP trunk over the user's
context (one-hot user features and the 80 user-item affinities), with one head per *position*
of the recommendation list, each scoring every item (so the 3 positions are the scorer's 3
"slots" of 80 actions). It is trained with binary cross-entropy on the clicks of the first 70%
of the Random logs (by time; the Random policy is uniform, so no importance weights are needed)
and evaluated off-policy on the last 30%, with two policies over 80 items x 3 positions:

* ``greedy``: in each row the 3 items with the highest predicted click probability (averaged
  over positions), the best in position 0, the next in position 1, ...: a deterministic list,
  as obp's slate policies act (one ``action_dist[row, :, position]`` per position);
* ``softmax``: per position, items drawn with probability ``softmax(logit / temperature)``.

Their CTR (clicks per impression) is estimated by IPS, SNIPS and DR (with the same model as the
outcome model: it never saw the held-out rows) with bootstrap CIs, beside the logged policies'
on-policy CTR: the Random policy's on the held-out rows and the BTS policy's on the BTS logs, and
the production BTS prior's OPE estimate on the same held-out rows.

>>> x = np.zeros((4, 3), dtype=np.float32)
>>> from ray_app.model.scorer import Scorer
>>> d = policy_action_dist(Scorer(3, (5, 5), hidden=4, seed=0), x, "greedy")
>>> d.shape, d.sum(axis=1).tolist()[0]
((4, 5, 2), [1.0, 1.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ray_app.errors import FieldError
from ray_app.model.scorer import Scorer
from training.obd import ObdLogs, bts_action_dist, load_bts_prior, load_obd
from training.ope import Estimate, evaluate

__all__ = [
    "ObdPolicyReport",
    "PolicyName",
    "evaluate_onramp_on_obd",
    "init_obd_scorer",
    "obd_features",
    "obd_training_columns",
    "policy_action_dist",
    "predict_clicks",
    "train_obd_scorer",
]

PolicyName = Literal["greedy", "softmax"]


def obd_features(logs: ObdLogs) -> np.ndarray:
    """``[n, d]`` float32: one-hot user features and the user-item affinity columns."""
    affinity = logs.data.loc[:, logs.data.columns.str.startswith("user-item_affinity")]
    return np.ascontiguousarray(
        np.c_[logs.context, affinity.to_numpy(dtype=float)], dtype=np.float32
    )


def _all_logits(scorer: Scorer, x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x)
    return torch.stack([scorer(t, k) for k in range(len(scorer.slot_sizes))], dim=2)


def predict_clicks(scorer: Scorer, x: np.ndarray) -> np.ndarray:
    """``q[row, item, position]``: the scorer's click probabilities."""
    with torch.inference_mode():
        return torch.sigmoid(_all_logits(scorer, x)).double().numpy()


def init_obd_scorer(train: ObdLogs, hidden: int = 32, seed: int = 0) -> Scorer:
    """The starting :class:`Scorer` for ``train``: one head of ``n_actions`` items per position,
    seeded, every head's bias at the log-odds of ``train``'s click rate (clicks are rare, ~0.4%,
    and a head starting at p = 0.5 spends its first epochs learning only that)."""
    dim = obd_features(train).shape[1]
    scorer = Scorer(dim, (train.n_actions,) * train.len_list, hidden=hidden, seed=seed)
    ctr = float(np.clip(train.reward.mean(), 1e-4, 1 - 1e-4))
    with torch.no_grad():
        for head in scorer.heads:
            cast(nn.Linear, head).bias.fill_(float(np.log(ctr / (1 - ctr))))
    return scorer


def obd_training_columns(logs: ObdLogs, mask: bool = False) -> dict[str, np.ndarray]:
    """``logs`` as the columns the training job (:mod:`training.train`) trains on: ``x``
    (:func:`obd_features`), ``slot`` (the position: the scorer's head), ``action`` (the item),
    ``reward`` (the click), ``propensity`` (the logging policy's), and with ``mask`` every item
    eligible (``[n, n_actions]`` all true) as the per-epoch metrics need."""
    out = {
        "x": obd_features(logs),
        "slot": np.ascontiguousarray(logs.position, dtype=np.int64),
        "action": np.ascontiguousarray(logs.action, dtype=np.int64),
        "reward": np.ascontiguousarray(logs.reward, dtype=np.float32),
        "propensity": np.ascontiguousarray(logs.pscore, dtype=np.float32),
    }
    if mask:
        out["mask"] = np.ones((logs.n_rounds, logs.n_actions), dtype=bool)
    return out


def train_obd_scorer(
    train: ObdLogs,
    epochs: int = 3,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    hidden: int = 32,
    seed: int = 0,
) -> Scorer:
    """Fit a :class:`Scorer` (one head per position) to ``train``'s clicks; seeded, CPU."""
    if epochs < 1 or batch_size < 1:
        raise FieldError("epochs", f"epochs and batch_size must be >= 1 ({epochs}, {batch_size})")
    x = obd_features(train)
    scorer = init_obd_scorer(train, hidden=hidden, seed=seed)
    opt = torch.optim.Adam(scorer.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    item = torch.from_numpy(np.array(train.action))
    pos = torch.from_numpy(np.array(train.position))
    y = torch.from_numpy(train.reward.astype(np.float32))
    rows = torch.arange(x.shape[0])
    scorer.train()
    for _ in range(epochs):
        for batch in torch.randperm(x.shape[0], generator=gen).split(batch_size):
            logits = _all_logits(scorer, xt[batch].numpy())  # [B, items, positions]
            chosen = logits[rows[: batch.shape[0]], item[batch], pos[batch]]
            loss = F.binary_cross_entropy_with_logits(chosen, y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    scorer.eval()
    return scorer


def policy_action_dist(
    scorer: Scorer, x: np.ndarray, policy: PolicyName = "greedy", temperature: float = 0.1
) -> np.ndarray:
    """``action_dist[row, item, position]`` of ``policy`` (see the module docstring)."""
    with torch.inference_mode():
        logits = _all_logits(scorer, x).double()
    n, n_items, n_pos = logits.shape
    if policy == "greedy":
        if n_pos > n_items:
            raise FieldError("policy", f"a list of {n_pos} distinct items needs >= {n_pos} items")
        score = torch.sigmoid(logits).mean(dim=2)
        top = torch.argsort(score, dim=1, descending=True, stable=True)[:, :n_pos]
        dist = np.zeros((n, n_items, n_pos))
        rows = np.arange(n)
        for k in range(n_pos):
            dist[rows, top[:, k].numpy(), k] = 1.0
        return dist
    if policy == "softmax":
        if not temperature > 0:
            raise FieldError("temperature", f"must be > 0, got {temperature}")
        return torch.softmax(logits / temperature, dim=1).numpy()
    raise FieldError("policy", f"expected 'greedy' or 'softmax', got {policy!r}")


@dataclass(frozen=True)
class ObdPolicyReport:
    """Estimated CTRs on the held-out Random logs, and the logged policies' on-policy CTRs."""

    campaign: str
    n_train: int
    n_test: int
    policies: dict[str, dict[str, Estimate]]
    on_policy: dict[str, Estimate]
    train_seconds: float
    heldout: dict[str, float]
    """Outcome-model quality on the held-out rows: ``auc``, ``logloss``, ``baseline_logloss``
    (always predicting the training CTR), ``clicks``."""
    effective_sample_size: dict[str, float]
    """Per policy, ``(sum w)^2 / sum w^2`` of its importance weights: how many held-out rows
    its IPS estimate effectively rests on."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "campaign": self.campaign,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "policies": {
                p: {k: e.to_json() for k, e in est.items()} for p, est in self.policies.items()
            },
            "on_policy": {k: e.to_json() for k, e in self.on_policy.items()},
            "train_seconds": self.train_seconds,
            "heldout": self.heldout,
            "effective_sample_size": self.effective_sample_size,
        }


def _on_policy(name: str, reward: np.ndarray, n_bootstrap: int, seed: int) -> Estimate:
    """The mean reward of a log as an :class:`Estimate` (IPS of the logging policy itself)."""
    n = reward.shape[0]
    est = evaluate(
        _self_log(reward), np.ones((n, 1)), estimators=["ips"], n_bootstrap=n_bootstrap, seed=seed
    )["ips"]
    return Estimate(name, est.value, est.ci_low, est.ci_high, est.bootstrap_mean, n,
                    n_bootstrap, est.ci_level)  # fmt: skip


def _self_log(reward: np.ndarray) -> Any:
    from training.ope import BanditLog

    return BanditLog(np.zeros(reward.shape[0], dtype=np.int64), reward, np.ones(reward.shape[0]))


def evaluate_onramp_on_obd(
    campaign: str = "all",
    cache_dir: str | Path | None = None,
    train_fraction: float = 0.7,
    epochs: int = 3,
    seed: int = 0,
    temperature: float = 0.1,
    n_bootstrap: int = 1000,
    scorer: Scorer | None = None,
    train_seconds: float | None = None,
) -> ObdPolicyReport:
    """Train in-process (or take ``scorer``, e.g. from the Ray Train job ``onramp train --obd``)
    and evaluate it on the held-out OBD rows; ``train_seconds`` is what the report states as the
    training time when ``scorer`` is given (default 0)."""
    import time

    logs = load_obd("random", campaign, cache_dir)
    train, test = logs.split(train_fraction)
    started = time.perf_counter()
    if scorer is None:
        scorer = train_obd_scorer(train, epochs=epochs, seed=seed)
        train_s = time.perf_counter() - started
    else:
        train_s = float(train_seconds or 0.0)
    x_test = obd_features(test)
    if scorer.dim != x_test.shape[1]:
        raise FieldError("scorer", f"expects {scorer.dim} features, OBD gives {x_test.shape[1]}")
    q = predict_clicks(scorer, x_test)
    log = test.bandit_log()
    rows = np.arange(test.n_rounds)
    alpha, beta = load_bts_prior(campaign, cache_dir)
    bts = bts_action_dist(alpha, beta, logs.len_list)
    dists = {
        f"onramp_{name}": policy_action_dist(scorer, x_test, name, temperature)
        for name in ("greedy", "softmax")
    }
    dists["bts_prior"] = np.broadcast_to(bts, (test.n_rounds, *bts.shape))
    policies: dict[str, dict[str, Estimate]] = {}
    ess: dict[str, float] = {}
    for name, dist in dists.items():
        policies[name] = evaluate(
            log, dist, q, ["ips", "snips", "dr"], n_bootstrap=n_bootstrap, seed=seed
        )
        w = dist[rows, test.action, test.position] / test.pscore
        ess[name] = float(w.sum() ** 2 / (w**2).sum()) if (w > 0).any() else 0.0
    heldout = _heldout_quality(q[rows, test.action, test.position], test.reward, train.reward)
    bts_logs = load_obd("bts", campaign, cache_dir)
    on_policy = {
        "random_heldout": _on_policy("random_heldout", test.reward, n_bootstrap, seed),
        "bts_logs": _on_policy("bts_logs", bts_logs.reward, n_bootstrap, seed),
    }
    return ObdPolicyReport(
        campaign, train.n_rounds, test.n_rounds, policies, on_policy, round(train_s, 2),
        heldout, ess,
    )  # fmt: skip


def _heldout_quality(p: np.ndarray, y: np.ndarray, y_train: np.ndarray) -> dict[str, float]:
    def logloss(pred: np.ndarray) -> float:
        pred = np.clip(pred, 1e-7, 1 - 1e-7)
        return float(-(y * np.log(pred) + (1 - y) * np.log(1 - pred)).mean())

    pos, neg = p[y == 1], p[y == 0]
    # AUC as P(score of a click > score of a non-click), ties counted half
    auc = (
        float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())
        if pos.size and neg.size
        else float("nan")
    )
    return {
        "auc": auc,
        "logloss": logloss(p),
        "baseline_logloss": logloss(np.full_like(p, float(y_train.mean()))),
        "clicks": float(y.sum()),
    }
