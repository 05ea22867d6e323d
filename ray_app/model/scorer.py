"""The PyTorch scorer: wide and deep. Per slot, the logit of each action is a linear function of
the features (the *wide* part) plus a linear head over a shared MLP trunk (the *deep* part).

``Scorer(x, slot_index)`` gives, for each row of ``x`` and each action of the slot, the logit of
P(outcome | context, action): the model scores every (context, action) pair of a slot in one
forward pass. The wide part starts at zero and learns the effect of each hashed trait and trait
cross on each action directly (what a contextual bandit with hand-written interactions learns,
and as fast); the trunk finds what the crosses do not spell out.

>>> import torch
>>> scorer = Scorer(dim=10, slot_sizes=(3, 4), hidden=8, seed=1)
>>> scorer(torch.zeros(2, 10), 1).shape
torch.Size([2, 4])
>>> bool((Scorer(10, (3, 4), 8, seed=1).heads[0].weight == scorer.heads[0].weight).all())
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import skip_init

if TYPE_CHECKING:
    from ray_app.model.bundle import ModelBundle

__all__ = ["Scorer", "score_batch", "serving_threads"]


class Scorer(nn.Module):
    """``dim`` features -> ``hidden`` (ReLU) -> one linear head of ``slot_sizes[k]`` per slot,
    plus one bias-free linear map ``dim -> slot_sizes[k]`` per slot (``wides``, zero at first).

    Initialized from ``seed`` alone (a private generator: the global torch RNG is untouched), so
    the same arguments give the same weights. Picklable (it crosses Ray as a plain module).
    """

    def __init__(
        self, dim: int, slot_sizes: Sequence[int], hidden: int = 48, seed: int = 0
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or not slot_sizes or min(slot_sizes) < 1:
            raise ValueError(
                f"Scorer needs dim >= 1, hidden >= 1 and slots of >= 1 action "
                f"(got dim={dim}, hidden={hidden}, slot_sizes={tuple(slot_sizes)})"
            )
        self.dim = int(dim)
        self.hidden = int(hidden)
        self.slot_sizes = tuple(int(n) for n in slot_sizes)
        # skip_init: no default init, so torch's global RNG is not consumed
        self.trunk = skip_init(nn.Linear, self.dim, self.hidden)
        self.heads = nn.ModuleList(skip_init(nn.Linear, self.hidden, n) for n in self.slot_sizes)
        self.wides = nn.ModuleList(
            skip_init(nn.Linear, self.dim, n, bias=False) for n in self.slot_sizes
        )
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for module in [self.trunk, *self.heads]:
                if isinstance(module, nn.Linear):  # torch's default init, from our generator
                    bound = 1.0 / math.sqrt(module.in_features)
                    module.weight.uniform_(-bound, bound, generator=gen)
                    module.bias.uniform_(-bound, bound, generator=gen)
            for module in self.wides:
                cast(nn.Linear, module).weight.zero_()

    @property
    def architecture(self) -> dict[str, Any]:
        """What rebuilds an empty scorer of the same shape (``Scorer(**architecture)``)."""
        return {"dim": self.dim, "hidden": self.hidden, "slot_sizes": list(self.slot_sizes)}

    def forward(self, x: torch.Tensor, slot_index: int) -> torch.Tensor:
        """``[B, dim]`` features -> ``[B, slot_sizes[slot_index]]`` logits (``[dim]`` -> ``[n]``)."""
        # functional calls on the layers' parameters: a third of the module-call overhead at B=1
        head = cast(nn.Linear, self.heads[slot_index])
        wide = cast(nn.Linear, self.wides[slot_index])
        h = torch.relu(F.linear(x, self.trunk.weight, self.trunk.bias))
        return F.linear(h, head.weight, head.bias) + F.linear(x, wide.weight)


def score_batch(bundle: ModelBundle | Scorer, x: np.ndarray, slot_index: int) -> np.ndarray:
    """Logits ``[B, n_actions]`` (float32) for features ``[B, dim]`` (or one ``[dim]`` row).

    Runs under ``torch.inference_mode()``; thread settings are left to the caller (a serving
    process sets them once with :func:`serving_threads`).

    >>> s = Scorer(4, (2,), hidden=3)
    >>> score_batch(s, np.zeros(4, dtype=np.float32), 0).shape
    (1, 2)
    """
    scorer = bundle if isinstance(bundle, Scorer) else bundle.scorer
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous):
        x = np.ascontiguousarray(x, dtype=np.float32)
    one = x.ndim == 1 or x.shape[0] == 1
    t = torch.from_numpy(x.reshape(-1) if one else x)
    with torch.inference_mode():
        out = scorer.forward(t, slot_index).numpy()
    # one row runs as a matrix-vector product: about half the cost of a [1, dim] matmul
    return out.reshape(1, -1) if one else out


def serving_threads(threads: int = 1) -> None:
    """Run this process's forwards on ``threads`` threads (a serving replica: 1).

    A decision batch is a few small matrix products (microseconds each): more threads do not make
    them faster, and on a machine whose cores are busy (the event loop, Kafka, the stream workers)
    a thread of the pool that is not scheduled makes the others spin and wait, so that one forward
    took milliseconds instead of tens of microseconds in the decide benchmark.
    """
    torch.set_num_threads(threads)
