"""Decisions: what a user should see next, from the live profile, a model and an exploring policy.

The pieces (each pure and tested alone) come together here, without HTTP or Ray:

* :mod:`~ray_app.decide.request` - :class:`DecideRequest`, the request body of ``/v1/decide``,
  validated with precise errors by :func:`parse_decide`;
* :mod:`~ray_app.decide.arms` - :class:`Arms`, the experiment: which arm a user is in, sticky
  across split changes (a user keeps the arm of the split in force when they were first seen);
* :mod:`~ray_app.decide.decider` - :class:`Decider`: catalog eligibility -> features -> one
  batched model forward per (arm, slot) -> policy (control: the static flow with propensity 1;
  model arms: the exploring policy and the exact propensity of what it chose) -> :class:`Decision`,
  which is also the decision log record;
* :mod:`~ray_app.decide.batcher` - the requests that arrive together, decided together;
* :mod:`~ray_app.decide.log` - :class:`~ray_app.decide.log.DecisionLog`, which logs every decision
  to ``onramp.decisions``;
* :mod:`~ray_app.decide.service` - :class:`~ray_app.decide.service.DecisionService`: a request ->
  its answer (status, JSON body once encoded, headers), logged and counted.

``deployments/ingress.py`` serves it over HTTP.

>>> from ray_app.config import Settings
>>> d = Decider.from_settings(Settings())
>>> [dec] = d.decide_many([(DecideRequest(user_id="u1", slot="next_step", decision_id="d1"),
...                         None, None)], now_ms=1_767_225_600_000)
>>> dec.chosen, dec.propensity, dec.cold_start, dec.model_version
('welcome', 1.0, True, 0)
"""

from __future__ import annotations

from ray_app.decide.arms import Arms
from ray_app.decide.decider import Decider, Decision, policy_for
from ray_app.decide.request import (
    MAX_DECIDE_BYTES,
    DecideRefused,
    DecideRequest,
    decide_query,
    parse_decide,
)
from ray_app.experiments import CONTROL, HOLDOUT

__all__ = [
    "MAX_DECIDE_BYTES",
    "Arms",
    "DecideRefused",
    "DecideRequest",
    "Decider",
    "Decision",
    "decide_query",
    "parse_decide",
    "policy_for",
]

# Re-exported for the HTTP layer.
HOLDOUT_ARM = HOLDOUT
CONTROL_ARM = CONTROL
