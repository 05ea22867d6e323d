"""The online learner's settings, counters and state error.

:class:`LearnerConfig` says how :class:`~ray_app.learn.learner.OnlineLearner` trains, guards and
publishes (see :mod:`ray_app.learn.learner` for what each part does); it is frozen and checked
when built.

>>> LearnerConfig(batch_size=8).batch_size
8
>>> LearnerConfig(optimizer="rmsprop")
Traceback (most recent call last):
...
ValueError: optimizer must be 'adam' or 'sgd', got 'rmsprop'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ray_app.errors import OnrampError
from ray_app.experiments import CONTROL, HOLDOUT
from ray_app.learn.guardrail import TREATMENT

__all__ = ["COUNTERS", "LearnerConfig", "LearnerStateError"]

COUNTERS = (
    "received",
    "trained",
    "duplicates",
    "holdout",
    "guardrail",
    "invalid",
    "updates",
    "publishes",
    "rollbacks",
    "control_rollbacks",
    "drifts",
    "refused_at_start",
    "foreign_weights",
)
"""Counter names. ``rollbacks``: loss-guardrail rollbacks; ``control_rollbacks``: rollbacks of
the guardrail against the static flow; ``refused_at_start``: learner states or model files
the service found on start and did not adopt (another feature schema or catalog, unreadable);
``foreign_weights``: trained weights the learner started from (or adopted) whose logits hardly
predicted the first new rewards, so the learner restarted from the cold-start weights (or, with
none, relearned at the full rate) instead of settling (``settle_lr_factor``,
:mod:`ray_app.learn.settling`)."""


class LearnerStateError(OnrampError):
    """A learner state (``state_dict`` / bytes) that cannot be restored, and why."""


@dataclass(frozen=True)
class LearnerConfig:
    """How the learner trains, guards and publishes (see the module docstring)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 0.01
    hidden: int = 0
    """Hidden units of a cold-start model the learner service builds (``LearnSettings.hidden``);
    a learner restored from a state or a model file keeps that one's shape."""
    batch_size: int = 64
    min_propensity: float = 0.5
    """Training: importance weights are ``1 / max(propensity, min_propensity)``."""
    eval_min_propensity: float = 0.05
    """The guardrail's loss and IPS value: the same weights clipped much wider (an estimate of a
    policy's value needs the real ratios; only the training step trades them for variance)."""
    guardrail_share: float = 0.0
    """The share of rewards (by a hash of the decision id) held out of training as the loss
    guardrail's slice (see :mod:`~ray_app.learn.loss_guardrail`); 0, the default: every reward
    is trained on and the loss guardrail does not judge (the guardrail against the static flow
    still does). 0.1 until 2026-12-06: on the learning twin (16 paired runs a world, 6,000
    users) training on every reward raised the share of the oracle's gain by user 6,000 from
    0.83 to 0.85 (``teams``, 13 runs of 16 better), 0.75 to 0.77 (``campus``), 0.75 to 0.78
    (``clinics``, every run at 0.70 or more; 12 of 16 before) and 0.669 to 0.674 (``fleets``),
    and the slice's rollbacks of the wide model (0-4 a run on ``clinics``, 0-1 on ``fleets`` and ``teams``) were
    not worth the tenth of the rewards it never learned from (``LearnSettings.guardrail_share``)."""
    guardrail_window: int = 2_000
    guardrail_min_records: int = 100
    guardrail_tolerance: float = 0.1
    publish_interval_s: float = 5.0
    boost_publish_factor: float = 0.25
    """While the learner is boosted (the warm-up of a cold start, and ``boost_rewards`` after a
    drift or a rollback below control), publish at most every ``publish_interval_s`` times
    this: a model learning from scratch is most wrong and changes most between versions then,
    and its state is small (``LearnSettings.boost_publish_factor``)."""
    dedupe_horizon: int = 1_000_000
    epsilon: float = 0.1
    boost_epsilon: float = 0.5
    boost_rewards: int = 1_000
    """After a drift or a rollback to beat the static flow, serve ``boost_epsilon`` (to an
    ``epsilon_greedy`` policy; ``squarecb`` has no epsilon, its ``gamma`` starts over instead)
    and learn at ``boost_lr_factor`` times ``lr`` until this many more rewards were trained on
    (0: no boost); counted like ``warmup_rewards``."""
    boost_lr_factor: float = 3.0
    drift_restart: bool = True
    """On a drift, go back to the cold-start weights (the static flow's choices, see
    :meth:`~OnlineLearner.set_cold_start`) and learn from there, instead of going on from
    weights fitted to a world that is gone; the last weights that beat control are forgotten
    too (they beat it in that world). False: keep the weights and only boost."""
    drift_gamma_head_start: int = 4_000
    """After a drift restart (``drift_restart``), squarecb's ``gamma`` grows as if this many
    rewards had been learned already: the cold-start weights are the static flow, which is
    worth exploring around, not away from (gamma ``gamma_scale`` explores the other actions
    of a cold start far more than ``gamma_scale * sqrt(4001)``); the step size still starts
    over. 4,000 rather than 1,000: the treatment arm spends fewer users below control after a
    drift and relearns as fast (see ``LearnSettings.drift_gamma_head_start``)."""
    lr_decay_rewards: int = 3_000
    lr_decay_power: float = 0.5
    """The step size shrinks as the model learns: ``lr * (1 + n / lr_decay_rewards) **
    -lr_decay_power``, ``n`` the rewards trained on since the learner started from a cold model,
    or since the last drift or rollback below control (it starts over then, like exploration;
    weights published by a learner carry their ``n`` as ``learned``, and a learner started from
    them counts on from it);
    0 keeps ``lr`` constant. A constant step keeps the weights moving around the optimum by as
    much as one step's noise, which costs about a tenth of the oracle's gain after 10,000 users
    on the learning twin; a decay that starts this late costs a few points in the first 6,000."""
    settle_lr_factor: float = 0.1
    settle_rewards: int = 20_000
    """A fresh optimizer on trained weights (a learner started from a model file, a model of
    ``onramp train`` or a promotion; an old learner state's optimizer that no longer fits) steps
    at ``settle_lr_factor`` times the scheduled rate at first, growing geometrically to the full
    rate over ``settle_rewards`` trained rewards (``settle_lr_factor`` 1 or ``settle_rewards`` 0:
    no settling; Adam only, plain SGD keeps no memory to lose). Adam normalizes
    each step by the gradients it has seen: a new one sees only the small gradients near the
    optimum, and its full-size steps walk the weights off it. On the learning twin (``teams``,
    4 seeds) a learner started from a 5,000-user model file captured 0.44 / 0.54 / 0.63 / 0.69
    of the oracle's gain over its next four 1,000 users without settling, 0.74 / 0.80 / 0.83 /
    0.87 with it (the learner that went on without a restart: 0.75 / 0.79 / 0.80 / 0.83).
    Weights from another world must not settle: the first ``SETTLE_JUDGE_REWARDS`` new rewards
    are predicted by them before they are trained on, and unless their logits carry information
    about them (:mod:`ray_app.learn.settling`), they are dropped for the cold-start weights as
    after a drift (counted as ``foreign_weights``).
    A rollback to the last good weights keeps the running settling and starts none."""
    gamma_scale: float = 40.0
    gamma_exponent: float = 0.5
    """The ``gamma`` published for a ``squarecb`` policy: ``gamma_scale * (1 + n) **
    gamma_exponent``, ``n`` the rewards trained on since the learner started from a cold model,
    or since the last drift or rollback below control (exploration starts over then). The
    exponent is Vowpal Wabbit's; its scale is 10, and 40 here because the optimism bonus
    (``optimism``) already explores where the model is unsure (see ``LearnSettings``)."""
    optimism: float = 1.0
    """Published with the weights: a model arm's policy ranks by the logits plus this many times
    the scorer's uncertainty (:meth:`~ray_app.model.Scorer.uncertainty`, from the rewards each
    action was learned from in each context), so squarecb explores an action where the model has
    not seen it (a segment whose best action was never shown there) instead of fading
    exploration everywhere alike; 0 ranks by the logits. On the learning twin (4 seeds, 7,000
    users) it raised the share of the oracle's gain at users 2,000 / 6,000 from 0.24 / 0.63 to
    0.27 / 0.70 (teams), 0.23 / 0.57 to 0.29 / 0.66 (campus) and 0.13 / 0.42 to 0.16 / 0.44
    (clinics); 0.5 did less."""
    weight_decay: float = 0.3
    """Decoupled weight decay (AdamW; plain L2 for SGD) per step."""
    replay_size: int = 20_000
    """Recent trained rewards kept for replay (0: none). Emptied on drift, but for the rewards
    decided since the detector's change point (:meth:`~OnlineLearner.drift`). Large enough that a
    rare segment's rewards stay in the updates until its cells are learned (5,000 left the
    learning twin at 0.85 of the oracle's gain at 20,000 users; 20,000 reached 0.91)."""
    replay_steps: int = 8
    """Extra mini-batches drawn from the replay buffer per ``batch_size`` new rewards (however
    the rewards are split over :meth:`~OnlineLearner.learn` calls): each reward is then
    learned from several times while it is recent, which online updates need here (a single
    pass over ε-greedy logs learns the rarely explored actions far too slowly)."""
    warmup_rewards: int = 1_000
    """A learner that starts from an untrained model (a cold-start bundle) learns as after a
    drift (``boost_lr_factor`` times ``lr``; under ``epsilon_greedy`` it also explores at
    ``boost_epsilon``) until it has trained on this many rewards (0: no warm-up). Under
    ``squarecb`` the faster first steps are what counts: on the learning twin (8 runs a world,
    7,000 users) the share of the oracle's gain at user 6,000 fell from 0.71 to 0.63
    (``clinics``) and from 0.64 to 0.55 (``fleets``) without the warm-up, and to 0.65 and 0.56
    with it at ``boost_lr_factor`` 1; ``teams`` did not move and ``campus`` gained 0.04
    (+-0.02) without it; 400 and 2,000 rewards were no better over the four worlds. Under
    ``epsilon_greedy``, with ``epsilon`` alone a segment whose best action the first updates
    underrate sees that action ``epsilon / n`` of the time and stays on a worse one for
    thousands of users. Counted in rewards, not seconds, so it lasts as long at any traffic."""
    control_z: float = 3.09
    """The guardrail against the static flow fires when treatment's completion rate is below
    control's with ``z < -control_z`` (one-sided; 3.09: 0.1%); 0 turns it off."""
    control_window: int = 2_000
    """Rewards of each arm (treatment, control) that the comparison looks at, most recent."""
    control_min_treatment: int = 300
    control_min_control: int = 100
    """Rewards each window needs before the comparison can fire or a snapshot be taken."""
    treatment_arms: tuple[str, ...] = (TREATMENT,)
    """The arms that serve this learner's model (compared with ``control_arm``)."""
    control_arm: str = CONTROL
    guardrail_salt: str = "onramp-guardrail"
    holdout_arm: str = HOLDOUT

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        for name in (
            "lr",
            "publish_interval_s",
            "boost_lr_factor",
            "weight_decay",
            "control_z",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not (math.isfinite(self.gamma_scale) and self.gamma_scale > 0):
            raise ValueError(f"gamma_scale must be a number > 0, got {self.gamma_scale!r}")
        if not (math.isfinite(self.gamma_exponent) and 0 <= self.gamma_exponent <= 1):
            raise ValueError(f"gamma_exponent must be in [0, 1], got {self.gamma_exponent!r}")
        if not (
            isinstance(self.boost_publish_factor, int | float)
            and 0 < self.boost_publish_factor <= 1
        ):
            raise ValueError(
                f"boost_publish_factor must be in (0, 1], got {self.boost_publish_factor!r}"
            )
        if not self.boost_lr_factor > 0:
            raise ValueError(f"boost_lr_factor must be > 0, got {self.boost_lr_factor!r}")
        if not (math.isfinite(self.lr_decay_power) and 0 <= self.lr_decay_power <= 1):
            raise ValueError(f"lr_decay_power must be in [0, 1], got {self.lr_decay_power!r}")
        if not (isinstance(self.settle_lr_factor, int | float) and 0 < self.settle_lr_factor <= 1):
            raise ValueError(f"settle_lr_factor must be in (0, 1], got {self.settle_lr_factor!r}")
        for name in ("warmup_rewards", "boost_rewards", "lr_decay_rewards", "settle_rewards"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in (
            "batch_size",
            "guardrail_window",
            "dedupe_horizon",
            "control_window",
            "control_min_treatment",
            "control_min_control",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.guardrail_min_records, int) and self.guardrail_min_records >= 1):
            raise ValueError(
                f"guardrail_min_records must be an integer >= 1, got {self.guardrail_min_records!r}"
            )
        if not (math.isfinite(self.optimism) and self.optimism >= 0):
            raise ValueError(f"optimism must be a number >= 0, got {self.optimism!r}")
        for name in ("min_propensity", "eval_min_propensity", "epsilon", "boost_epsilon"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        for name in ("min_propensity", "eval_min_propensity"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not (0.0 <= self.guardrail_share < 1.0):
            raise ValueError(f"guardrail_share must be in [0, 1), got {self.guardrail_share!r}")
        if not (math.isfinite(self.guardrail_tolerance) and self.guardrail_tolerance >= 0):
            raise ValueError(
                f"guardrail_tolerance must be a number >= 0, got {self.guardrail_tolerance!r}"
            )
        if max(self.control_min_treatment, self.control_min_control) > self.control_window:
            raise ValueError(
                "control_min_treatment and control_min_control must fit control_window"
            )
        if self.control_arm in self.treatment_arms:
            raise ValueError(f"{self.control_arm!r} cannot be a treatment arm")
