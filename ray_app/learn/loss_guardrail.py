"""The loss guardrail: a candidate scorer against the last good weights on the guardrail slice.

The online learner never trains on a deterministic share of the rewards (the *guardrail
slice*). Before each publish the candidate and the last good weights are both scored on it:
the :func:`~ray_app.learn.objective.ips_loss` of the logged actions (propensities floored at
``eval_min_propensity``: wide, an estimate needs the real ratios) and the
:func:`~ray_app.learn.objective.greedy_ips` value of each one's greedy policy over the eligible
actions. A candidate whose loss exceeds the last good one's by more than ``tolerance``
(relative) is *breached*: the learner rolls it back. Below ``min_records`` records the check
cannot judge and the candidate passes.

>>> from ray_app.model import Scorer
>>> from ray_app.records import RewardRecord
>>> good, worse = Scorer(2, (2,), hidden=3, seed=0), Scorer(2, (2,), hidden=3, seed=0)
>>> _ = worse.wides[0].weight.data.fill_(-5.0)   # predicts no completion at all
>>> records = [RewardRecord(f"d{i}", "u", "s", "b", 1, "treatment", 0.5, [1.0, 1.0], 1.0,
...                         "completed", 0, 1, 0) for i in range(10)]
>>> check = check_candidate(worse, good, records, {"s": 0}, {"s": {"a": 0, "b": 1}},
...                         min_records=5, tolerance=0.1, eval_min_propensity=0.05)
>>> check.records, check.breached, check.loss > check.last_good_loss
(10, True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from ray_app.learn.objective import greedy_ips, ips_loss
from ray_app.learn.update import feature_matrix
from ray_app.model import Scorer
from ray_app.records import RewardRecord

__all__ = ["GuardrailCheck", "SliceGroup", "check_candidate", "slice_groups", "slice_metrics"]


@dataclass(frozen=True)
class GuardrailCheck:
    """A candidate against the last good weights on the guardrail slice.

    ``loss``/``last_good_loss``: importance-weighted log loss (lower is better; ``None`` below
    ``guardrail_min_records``); ``ips_value``/``last_good_ips_value``: IPS estimates of the
    completion rate of each one's greedy policy; ``breached``: the candidate was rolled back.
    """

    records: int
    loss: float | None
    last_good_loss: float | None
    ips_value: float | None
    last_good_ips_value: float | None
    tolerance: float
    breached: bool

    @classmethod
    def unjudged(cls, records: int, tolerance: float) -> GuardrailCheck:
        """A check that could not judge (too few records, or none made): passed."""
        return cls(records, None, None, None, None, tolerance, False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the ``guardrail`` entry of a published bundle's metadata): a loss that
        is not finite (a NaN candidate, a breach) is ``None``, which a model file can hold."""
        return {
            k: ((round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v)
            for k, v in asdict(self).items()
        }


class SliceGroup(NamedTuple):
    """Guardrail records of one slot as tensors (built once per check, scored twice)."""

    slot: int
    x: torch.Tensor
    a: torch.Tensor
    y: torch.Tensor
    p: torch.Tensor
    mask: torch.Tensor
    """``[B, n_actions]``: the eligible actions of each row (all, if it names no candidates)."""


def slice_groups(
    records: Sequence[RewardRecord],
    slot_index: Mapping[str, int],
    action_index: Mapping[str, Mapping[str, int]],
) -> list[SliceGroup]:
    """The records as tensors, one group per slot, in order of first appearance."""
    by_slot: dict[str, list[RewardRecord]] = {}
    for r in records:
        by_slot.setdefault(r.slot, []).append(r)
    groups = []
    for name, rs in by_slot.items():
        index = action_index[name]
        mask = np.ones((len(rs), len(index)), dtype=np.bool_)
        for row, r in enumerate(rs):
            if r.candidates:
                cols = [index[c] for c in r.candidates if c in index]
                if cols:
                    mask[row] = False
                    mask[row, cols] = True
        groups.append(
            SliceGroup(
                slot=slot_index[name],
                x=torch.from_numpy(feature_matrix(rs)),
                a=torch.tensor([r.action_index for r in rs], dtype=torch.int64),
                y=torch.tensor([r.reward for r in rs], dtype=torch.float32),
                p=torch.tensor([r.propensity for r in rs], dtype=torch.float32),
                mask=torch.from_numpy(mask),
            )
        )
    return groups


def slice_metrics(
    scorer: Scorer, groups: Sequence[SliceGroup], min_propensity: float
) -> tuple[float, float]:
    """(:func:`~ray_app.learn.objective.ips_loss`, :func:`~ray_app.learn.objective.greedy_ips`)
    of ``scorer`` on the groups, propensities floored at ``min_propensity``."""
    chosen, greedy = [], []
    with torch.no_grad():
        for g in groups:
            logits = scorer(g.x, g.slot)
            chosen.append(logits.gather(1, g.a.unsqueeze(1)).squeeze(1))
            greedy.append(logits.masked_fill(~g.mask, -math.inf).argmax(dim=1))
        y = torch.cat([g.y for g in groups])
        p = torch.cat([g.p for g in groups])
        loss = float(ips_loss(torch.cat(chosen), y, p, min_propensity))
    a = torch.cat([g.a for g in groups]).numpy()
    ips = greedy_ips(y.numpy(), p.numpy(), torch.cat(greedy).numpy(), a, min_propensity)
    return loss, ips


def check_candidate(
    candidate: Scorer,
    last_good: Scorer,
    records: Sequence[RewardRecord],
    slot_index: Mapping[str, int],
    action_index: Mapping[str, Mapping[str, int]],
    *,
    min_records: int,
    tolerance: float,
    eval_min_propensity: float,
) -> GuardrailCheck:
    """``candidate`` against ``last_good`` on the guardrail ``records`` (see the module
    docstring)."""
    if len(records) < min_records:
        return GuardrailCheck.unjudged(len(records), tolerance)
    groups = slice_groups(records, slot_index, action_index)
    loss, ips = slice_metrics(candidate, groups, eval_min_propensity)
    good_loss, good_ips = slice_metrics(last_good, groups, eval_min_propensity)
    # a loss that is not a number (weights gone to NaN) is a breach, not a pass
    breached = not loss <= good_loss * (1.0 + tolerance) + 1e-12
    return GuardrailCheck(len(records), loss, good_loss, ips, good_ips, tolerance, breached)
