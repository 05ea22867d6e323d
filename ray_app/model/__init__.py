"""The decision model: a PyTorch scorer, its versioned bundle, and the exploring policies.

* :class:`Scorer` (:mod:`ray_app.model.scorer`): features -> logits of P(outcome | context,
  action) for every action of a slot; :func:`score_batch` runs it on numpy features.
* :class:`ModelBundle` (:mod:`ray_app.model.bundle`): a scorer with its feature-schema hash,
  catalog digest and version; bytes in and out, with :class:`ModelFileError` for anything bad;
  :func:`cold_start_bundle` is version 0, which reproduces the catalog's default flow.
* :class:`ModelRegistry` (:mod:`ray_app.model.registry`): versions with metadata at a filesystem
  URI; promote / rollback writes the served model file the replicas hot-swap.
* :class:`Policy` and :class:`ControlPolicy` (:mod:`ray_app.model.policy`): scores -> ranking,
  chosen action and its exact propensity, deterministic given the seed and the decision id.

>>> from ray_app.catalog import load_catalog
>>> from ray_app.features import FeatureSchema
>>> catalog = load_catalog()
>>> schema = FeatureSchema.from_catalog(catalog)
>>> bundle = cold_start_bundle(schema, catalog)
>>> slot = catalog.slot("next_step")
>>> profile = {"stepsCompleted": ["welcome", "role"]}
>>> eligible = catalog.eligible("next_step", profile)
>>> scores = score_batch(bundle, schema.featurize(profile, None, None, now_ms=0), slot.index)[0]
>>> choice = Policy("epsilon_greedy", epsilon=0.1, seed=3).choose(scores, eligible, key="d-1")
>>> slot.actions[choice.ranking[0]].id == slot.actions[catalog.control_choice("next_step", eligible)].id
True
"""

from __future__ import annotations

from ray_app.model.bundle import FORMAT, MAGIC, ModelBundle, ModelFileError, cold_start_bundle
from ray_app.model.policy import (
    Choice,
    ControlPolicy,
    Policy,
    PolicyKind,
    uncertainty_from_counts,
    uniform,
)
from ray_app.model.registry import ModelRegistry, ModelVersion, Promotion, RegistryError
from ray_app.model.scorer import Scorer, explore_scores, score_batch, serving_threads

__all__ = [
    "FORMAT",
    "MAGIC",
    "Choice",
    "ControlPolicy",
    "ModelBundle",
    "ModelFileError",
    "ModelRegistry",
    "ModelVersion",
    "Policy",
    "PolicyKind",
    "Promotion",
    "RegistryError",
    "Scorer",
    "cold_start_bundle",
    "explore_scores",
    "score_batch",
    "serving_threads",
    "uncertainty_from_counts",
    "uniform",
]
