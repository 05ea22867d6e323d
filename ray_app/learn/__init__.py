"""Learning online: reward records, the online learner's pure core, and drift detectors.

* :class:`RewardRecord` (:mod:`ray_app.records`): a logged decision joined with its outcome
  (schema ``onramp.reward/2``), what the learner trains on.
* :class:`OnlineLearner` (:mod:`ray_app.learn.learner`): importance-weighted mini-batch updates
  from reward records, guarded publishes (a holdout slice of rewards decides between the candidate
  and the last good weights, with rollback), exploration boosts after drift and while an untrained
  model learns its first rewards, and a state that
  survives restarts (weights, optimizer, dedupe memory, reward offsets).
* :func:`~ray_app.learn.objective.ips_loss` and :func:`~ray_app.learn.objective.greedy_ips`
  (:mod:`ray_app.learn.objective`): the importance-weighted loss and the IPS value of a greedy
  policy, the one objective the online learner, its guardrail and offline training share.
* :class:`PageHinkley`, :func:`psi`, :class:`FeatureDrift` (:mod:`ray_app.learn.drift`): drift of
  the reward rate and of the feature distributions.
* :class:`ControlGuardrail` (:mod:`ray_app.learn.guardrail`): the treatment arm against the static
  flow, live; a model significantly worse than control is rolled back.

All of it is pure: lists of records and a clock in, bundles and reports out. The Ray actor that
reads the reward topic and ships bundles to the decision replicas only calls it.

>>> from ray_app.catalog import load_catalog
>>> from ray_app.features import FeatureSchema
>>> from ray_app.model import cold_start_bundle
>>> catalog = load_catalog()
>>> learner = OnlineLearner(cold_start_bundle(FeatureSchema.from_catalog(catalog), catalog))
>>> learner.version, learner.exploration(now=0.0)   # untrained: the warm-up's boost epsilon
(0, 0.5)
"""

from __future__ import annotations

from ray_app.learn.drift import DriftReport, FeatureDrift, PageHinkley, RewardRateDrift, psi
from ray_app.learn.guardrail import ControlComparison, ControlGuardrail
from ray_app.learn.learner import (
    GuardrailCheck,
    LearnerConfig,
    LearnerStateError,
    LearnReport,
    OnlineLearner,
)
from ray_app.records import (
    OUTCOMES,
    REWARD_SCHEMA,
    Outcome,
    RewardRecord,
    RewardRecordError,
    reward_of,
)

__all__ = [
    "OUTCOMES",
    "REWARD_SCHEMA",
    "ControlComparison",
    "ControlGuardrail",
    "DriftReport",
    "FeatureDrift",
    "GuardrailCheck",
    "LearnReport",
    "LearnerConfig",
    "LearnerStateError",
    "OnlineLearner",
    "Outcome",
    "PageHinkley",
    "RewardRecord",
    "RewardRateDrift",
    "RewardRecordError",
    "psi",
    "reward_of",
]
