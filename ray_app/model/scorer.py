"""The PyTorch scorer: wide, and deep when asked. Per slot, the logit of each action is a
linear function of the features (the *wide* part) plus the action's bias, and with ``hidden``
units a linear head over a shared MLP trunk (the *deep* part) instead of the bias alone.

``Scorer(x, slot_index)`` gives, for each row of ``x`` and each action of the slot, the logit of
P(outcome | context, action): the model scores every (context, action) pair of a slot in one
forward pass. The wide part starts at zero and learns the effect of each hashed trait and trait
cross on each action directly (what a contextual bandit with hand-written interactions learns,
and as fast).

**No deep part by default** (``hidden=0``; ``learn.hidden`` for the models Onramp starts cold).
A trunk can find what the crosses do not spell out, but learning online from a few thousand
rewards it mostly fitted noise: on the learning twin (8 runs a world, 6,000 users, shipped
settings) dropping the 48 hidden units it had raised the share of the oracle's gain by user
6,000 from 0.73 to 0.79 (``teams``), 0.62 to 0.74 (``campus``) and 0.71 to 0.75 (``clinics``),
left ``fleets`` at 0.59, and the loss guardrail, which rolled the deep model back 1-4 times a
run on ``clinics`` and ``fleets``, hardly fired. The trunk pays later, with many rewards: over
20,000 users of ``teams`` (4 runs) the wide scorer captured 0.78 / 0.88 / 0.92 by users 6,000 /
12,000 / 20,000 and the deep one 0.77 / 0.92 / 0.96, so ``hidden=48`` suits a deployment with a
long, stable history. With ``hidden=0`` the trunk and the heads'
weights are empty tensors (the state dict keeps its keys), so model files of either shape load
as they were written.

**Wide scales.** The wide weight of action ``a`` on feature ``i`` is ``wide[a, i] * scale[i]``,
with one ``scale`` per feature shared by the slot's actions (1 at first, and 1 for weights saved
before it existed: the same logits). Weight decay acting on both factors of a product acts like
a group penalty on each feature's weights across the actions: a feature that tells the actions
apart keeps its scale, one that only carries noise (the crosses of a trait that does not matter,
which a model cannot know in advance) is shrunk as a whole. Why: with three traits the crosses
of the two that matter are one of three pair families; a logistic regression fitted to
convergence on the learning twin's first 5,000 users (``teams``, two seeds) picked the oracle's
step for 75% / 85% of the next 2,000 users, the same regression without the two noise families
for 88% / 93%, and with these scales 86% / 96% (the online learner, without them: 74% / 85%).
On the learning twin (4 seeds, 7,000 users) the share of the oracle's gain by user 6,000 went
from 0.70 to 0.75 (``teams``), 0.66 to 0.74 (``campus``) and 0.63 to 0.67 (``clinics``);
``fleets`` stayed within its noise (0.45, 0.41), its limit being the numeric bands.

The scorer also keeps its *evidence*: per slot, per action and per feature, the sum of the
squared feature values of the rewards it learned from (:meth:`Scorer.observe`). That is the
diagonal of the wide part's design matrix, as LinUCB keeps the whole of it, so
:meth:`Scorer.uncertainty` says how little the model has seen of an action in a context:
``sqrt(sum_i x_i**2 / (1 + evidence[a, i]))``. A context whose trait cross was never shown an
action keeps that action's uncertainty high however many rewards the others brought;
:func:`score_batch` adds ``optimism`` times each action's uncertainty above the context's surest
action to the logits, so the exploring policy tries an action where it is unsure of it rather
than everywhere alike. A context seen alike under every action (or never: a cold model has no
evidence) keeps its logits. The online learner counts each new reward it learns from; offline
training (:mod:`training.loop`) counts each of its training rows once, the same way.

>>> import torch
>>> scorer = Scorer(dim=10, slot_sizes=(3, 4), hidden=8, seed=1)
>>> scorer(torch.zeros(2, 10), 1).shape
torch.Size([2, 4])
>>> bool((Scorer(10, (3, 4), 8, seed=1).heads[0].weight == scorer.heads[0].weight).all())
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import skip_init

if TYPE_CHECKING:
    from ray_app.model.bundle import ModelBundle

__all__ = ["Scorer", "explore_scores", "score_batch", "serving_threads"]


class Scorer(nn.Module):
    """``dim`` features -> ``hidden`` (ReLU) -> one linear head of ``slot_sizes[k]`` per slot
    (with ``hidden=0``, the default, only the heads' biases count),
    plus one bias-free linear map ``dim -> slot_sizes[k]`` per slot (``wides``, zero at first),
    and per slot a buffer ``evidence_k`` of ``[slot_sizes[k], dim]`` (zero at first; see the
    module docstring). Weights saved without evidence (before it existed) load with none.

    Initialized from ``seed`` alone (a private generator: the global torch RNG is untouched), so
    the same arguments give the same weights. Picklable (it crosses Ray as a plain module).
    """

    def __init__(self, dim: int, slot_sizes: Sequence[int], hidden: int = 0, seed: int = 0) -> None:
        super().__init__()
        if dim < 1 or hidden < 0 or not slot_sizes or min(slot_sizes) < 1:
            raise ValueError(
                f"Scorer needs dim >= 1, hidden >= 0 and slots of >= 1 action "
                f"(got dim={dim}, hidden={hidden}, slot_sizes={tuple(slot_sizes)})"
            )
        self.dim = int(dim)
        self.hidden = int(hidden)
        self.slot_sizes = tuple(int(n) for n in slot_sizes)
        # skip_init: no default init, so torch's global RNG is not consumed; with no hidden
        # units the trunk and the heads' weights are empty (the same state-dict keys)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.trunk = skip_init(nn.Linear, self.dim, self.hidden)
            self.heads = nn.ModuleList(
                skip_init(nn.Linear, self.hidden, n) for n in self.slot_sizes
            )
        self.wides = nn.ModuleList(
            skip_init(nn.Linear, self.dim, n, bias=False) for n in self.slot_sizes
        )
        # per slot, one scale per feature, shared by the slot's actions (module docstring)
        self.wide_scales = nn.ParameterList(
            nn.Parameter(torch.ones(self.dim)) for _ in self.slot_sizes
        )
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for module in [self.trunk, *self.heads]:
                if isinstance(module, nn.Linear):  # torch's default init, from our generator
                    bound = 1.0 / math.sqrt(max(module.in_features, 1))
                    module.weight.uniform_(-bound, bound, generator=gen)
                    module.bias.uniform_(-bound, bound, generator=gen)
            for module in self.wides:
                cast(nn.Linear, module).weight.zero_()
        for k, n in enumerate(self.slot_sizes):
            self.register_buffer(f"evidence_{k}", torch.zeros(n, self.dim))

    @property
    def architecture(self) -> dict[str, Any]:
        """What rebuilds an empty scorer of the same shape (``Scorer(**architecture)``)."""
        return {"dim": self.dim, "hidden": self.hidden, "slot_sizes": list(self.slot_sizes)}

    def evidence(self, slot_index: int) -> torch.Tensor:
        """``[n_actions, dim]``: the summed squared features learned from, per action."""
        return cast(torch.Tensor, getattr(self, f"evidence_{slot_index}"))

    @torch.no_grad()
    def observe(self, x: torch.Tensor, actions: torch.Tensor, slot_index: int) -> None:
        """Count rewards learned from: rows ``x`` ``[B, dim]`` whose logged actions are
        ``actions`` ``[B]`` (indices of the slot's head)."""
        self.evidence(slot_index).index_add_(0, actions, x * x)

    def uncertainty(self, x: torch.Tensor, slot_index: int) -> torch.Tensor:
        """``[B, n_actions]`` (``[n_actions]`` for one ``[dim]`` row): how little the model has
        seen of each action in each row's context (see the module docstring).

        >>> s = Scorer(dim=2, slot_sizes=(2,), hidden=1)
        >>> s.observe(torch.tensor([[1.0, 0.0]] * 3), torch.tensor([0, 0, 0]), 0)
        >>> s.uncertainty(torch.tensor([1.0, 0.0]), 0).tolist()   # action 0 seen 3 times here
        [0.5, 1.0]
        """
        return torch.sqrt(F.linear(x * x, 1.0 / (1.0 + self.evidence(slot_index))))

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """As ``nn.Module.load_state_dict``; a state written before the evidence buffers or the
        wide scales existed loads with zero evidence and scales of 1 (the same logits)."""
        full = dict(state_dict)
        for name, buf in self.named_buffers():
            full.setdefault(name, torch.zeros_like(buf))
        for name, param in self.wide_scales.named_parameters(prefix="wide_scales"):
            full.setdefault(name, torch.ones_like(param))
        return super().load_state_dict(full, strict=strict, assign=assign)

    def wide_logits(self, x: torch.Tensor, slot_index: int) -> torch.Tensor:
        """The wide part's logits ``[B, n_actions]``: ``x @ (wide * scale).T``."""
        wide = cast(nn.Linear, self.wides[slot_index])
        return F.linear(x, wide.weight * self.wide_scales[slot_index])

    def forward(self, x: torch.Tensor, slot_index: int) -> torch.Tensor:
        """``[B, dim]`` features -> ``[B, slot_sizes[slot_index]]`` logits (``[dim]`` -> ``[n]``)."""
        # functional calls on the layers' parameters: a third of the module-call overhead at B=1
        head = cast(nn.Linear, self.heads[slot_index])
        if not self.hidden:  # wide only: the head is the actions' biases
            return head.bias + self.wide_logits(x, slot_index)
        h = torch.relu(F.linear(x, self.trunk.weight, self.trunk.bias))
        return F.linear(h, head.weight, head.bias) + self.wide_logits(x, slot_index)


def score_batch(
    bundle: ModelBundle | Scorer, x: np.ndarray, slot_index: int, optimism: float = 0.0
) -> np.ndarray:
    """Logits ``[B, n_actions]`` (float32) for features ``[B, dim]`` (or one ``[dim]`` row),
    plus ``optimism`` times each action's :meth:`~Scorer.uncertainty` above the row's least
    uncertain action (what an exploring policy ranks by: see :func:`explore_scores`).

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
        logits = scorer.forward(t, slot_index)
        if optimism:
            u = scorer.uncertainty(t, slot_index)
            # relative to the row's surest action: a context seen alike for every action (or not
            # at all) keeps its logits, whatever the policy makes of their level
            logits = logits + optimism * (u - u.min(dim=-1, keepdim=True).values)
        out = logits.numpy()
    # one row runs as a matrix-vector product: about half the cost of a [1, dim] matmul
    return out.reshape(1, -1) if one else out


def explore_scores(bundle: ModelBundle, x: np.ndarray, slot_index: int) -> np.ndarray:
    """What a model arm's policy ranks by: :func:`score_batch` with the ``optimism`` the bundle's
    metadata carries (the online learner publishes ``learn.optimism``; none: 0, the plain logits).

    >>> from ray_app.catalog import load_catalog
    >>> from ray_app.features import FeatureSchema
    >>> from ray_app.model import cold_start_bundle
    >>> c = load_catalog()
    >>> b = cold_start_bundle(FeatureSchema.from_catalog(c), c)
    >>> x = np.ones(b.scorer.dim, dtype=np.float32)
    >>> b.metadata["optimism"] = 1.0    # no evidence yet: the same bonus for every action
    >>> d = explore_scores(b, x, 0) - score_batch(b, x, 0)
    >>> bool(np.allclose(d, d[0, 0]))
    True
    """
    o = bundle.metadata.get("optimism", 0.0)
    ok = isinstance(o, int | float) and not isinstance(o, bool) and math.isfinite(o) and o > 0
    return score_batch(bundle, x, slot_index, float(o) if ok else 0.0)


def serving_threads(threads: int = 1) -> None:
    """Run this process's forwards on ``threads`` threads (a serving replica: 1).

    A decision batch is a few small matrix products (microseconds each): more threads do not make
    them faster, and on a machine whose cores are busy (the event loop, Kafka, the stream workers)
    a thread of the pool that is not scheduled makes the others spin and wait, so that one forward
    took milliseconds instead of tens of microseconds in the decide benchmark.
    """
    torch.set_num_threads(threads)
