"""Prometheus text for the online learner: model version, rewards by arm, guardrails, drift."""

from __future__ import annotations

from typing import Any

__all__ = ["learner_metrics_text"]


def learner_metrics_text(status: dict[str, Any]) -> str:
    """Render the learner's ``status()`` as Prometheus text.

    >>> s = {"version": 7, "counters": {"trained": 90, "rollbacks": 1}, "epsilon": 0.1,
    ...      "arms": {"treatment": {"rewards": 100, "positives": 60, "rate": 0.6}},
    ...      "drift": {"rewardStatistic": 2.5, "featureMaxPsi": 0.01, "alerts": [{}]},
    ...      "outcomeToWeightsMs": {"p50": 1500}}
    >>> print(learner_metrics_text(s), end="")  # doctest: +ELLIPSIS
    # HELP onramp_learner_model_version Version of the last published weights.
    # TYPE onramp_learner_model_version gauge
    onramp_learner_model_version 7
    ...
    onramp_learner_rollbacks_total{reason="loss"} 1
    onramp_learner_rollbacks_total{reason="below_control"} 0
    ...
    onramp_rewards_total{arm="treatment",reward="1"} 60
    onramp_rewards_total{arm="treatment",reward="0"} 40
    ...
    onramp_drift_settle_seconds NaN
    ...
    onramp_learner_control_rate{arm="treatment"} NaN
    ...
    """
    arms = status.get("arms", {})
    drift = status.get("drift", {})
    settle_ms = drift.get("settleMs")
    counters = status.get("counters", {})
    lines = [
        "# HELP onramp_learner_model_version Version of the last published weights.",
        "# TYPE onramp_learner_model_version gauge",
        f"onramp_learner_model_version {status.get('version', 0)}",
        "# HELP onramp_learner_epsilon Exploration the learner publishes (raised after drift).",
        "# TYPE onramp_learner_epsilon gauge",
        f"onramp_learner_epsilon {status.get('epsilon', 0)}",
        "# HELP onramp_learner_settle_factor Step-size factor of a new optimizer on trained "
        "weights (a model file, a promotion), growing to 1 (learn.settle_lr_factor); 1: not "
        "settling.",
        "# TYPE onramp_learner_settle_factor gauge",
        f"onramp_learner_settle_factor {status.get('settleFactor', 1.0)}",
        "# HELP onramp_learner_settle_information How well the trained weights the learner "
        "started from predicted this world's first rewards (below 0.01: learned elsewhere, "
        "dropped for the cold start); NaN before a judgment since the learner started.",
        "# TYPE onramp_learner_settle_information gauge",
        f"onramp_learner_settle_information {_num(status.get('settleInformation'))}",
        "# HELP onramp_learner_events_total Learner counters (trained, duplicates, rollbacks...).",
        "# TYPE onramp_learner_events_total counter",
        *[f'onramp_learner_events_total{{kind="{k}"}} {v}' for k, v in sorted(counters.items())],
        "# HELP onramp_learner_rollbacks_total Weights rolled back and republished, by reason: "
        "loss (a candidate worse than the last good weights on the guardrail slice), "
        "below_control (the treatment arm significantly below the static flow).",
        "# TYPE onramp_learner_rollbacks_total counter",
        f'onramp_learner_rollbacks_total{{reason="loss"}} {counters.get("rollbacks", 0)}',
        'onramp_learner_rollbacks_total{reason="below_control"} '
        f"{counters.get('control_rollbacks', 0)}",
        "# HELP onramp_rewards_total Rewards read by the learner, by arm and value.",
        "# TYPE onramp_rewards_total counter",
    ]
    for arm, a in sorted(arms.items()):
        lines.append(f'onramp_rewards_total{{arm="{arm}",reward="1"}} {a["positives"]}')
        lines.append(
            f'onramp_rewards_total{{arm="{arm}",reward="0"}} {a["rewards"] - a["positives"]}'
        )
    lines += [
        "# HELP onramp_drift_score Drift detectors: Page-Hinkley statistic of the model arms' "
        "and of the control arm's reward rate, max PSI of the features.",
        "# TYPE onramp_drift_score gauge",
        f'onramp_drift_score{{detector="reward_page_hinkley"}} {drift.get("rewardStatistic", 0)}',
        f'onramp_drift_score{{detector="control_page_hinkley"}} {drift.get("controlStatistic", 0)}',
        f'onramp_drift_score{{detector="feature_psi"}} {drift.get("featureMaxPsi", 0)}',
        "# HELP onramp_drift_alerts Drift alerts raised (recent).",
        "# TYPE onramp_drift_alerts gauge",
        f"onramp_drift_alerts {len(drift.get('alerts', []))}",
        "# HELP onramp_drift_settle_seconds How long the reward-rate detector waits for a "
        "decision's outcomes (the p99 of their lateness, at most learn.drift_settle_s).",
        "# TYPE onramp_drift_settle_seconds gauge",
        f"onramp_drift_settle_seconds {_num(None if settle_ms is None else settle_ms / 1000)}",
        "# HELP onramp_drift_outcomes_total Explicit outcomes the reward-rate detector was fed, "
        "and those that came after their turn (not fed).",
        "# TYPE onramp_drift_outcomes_total counter",
        f'onramp_drift_outcomes_total{{fed="true"}} {drift.get("fed", 0)}',
        f'onramp_drift_outcomes_total{{fed="late"}} {drift.get("late", 0)}',
    ]
    lines += _guardrail_lines(status)
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    """A gauge value; NaN for an unknown one."""
    return "NaN" if v is None else f"{float(v):g}"


def _guardrail_lines(status: dict[str, Any]) -> list[str]:
    """The guardrail against control and the outcome-to-weights latency."""
    lines: list[str] = []
    control = status.get("control") or {}
    lines += [
        "# HELP onramp_learner_control_rate Completion rate over the guardrail's recent rewards "
        "of the treatment arm and of the control arm (static flow); NaN before any.",
        "# TYPE onramp_learner_control_rate gauge",
        f'onramp_learner_control_rate{{arm="treatment"}} {_num(control.get("treatment_rate"))}',
        f'onramp_learner_control_rate{{arm="control"}} {_num(control.get("control_rate"))}',
        "# HELP onramp_learner_control_z Treatment against control, two-proportion z "
        "(negative: treatment worse; rolled back below -learn.control_z); NaN below the "
        "minimum samples.",
        "# TYPE onramp_learner_control_z gauge",
        f"onramp_learner_control_z {_num(control.get('z'))}",
    ]
    p50 = (status.get("outcomeToWeightsMs") or {}).get("p50")
    if p50 is not None:
        lines += [
            "# HELP onramp_outcome_to_weights_seconds Median time from an outcome to weights "
            "that include it.",
            "# TYPE onramp_outcome_to_weights_seconds gauge",
            f"onramp_outcome_to_weights_seconds {p50 / 1000:g}",
        ]
    return lines
