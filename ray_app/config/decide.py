"""Settings of decisions, experiments, the online learner, the model registry and telemetry."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from ray_app.config.base import Section as _Section
from ray_app.config.base import check_ray_resources

__all__ = [
    "DecideSettings",
    "ExperimentSplit",
    "LearnSettings",
    "RegistrySettings",
    "TelemetrySettings",
]


#: The arms a decision replica serves: the static flow and the two model files' arms.
SERVED_ARMS = ("control", "treatment", "treatment_b")


class ExperimentSplit(_Section):
    """An earlier split of the experiment, in force from ``since`` until the next one."""

    since: dt.datetime = Field(description="When this split started (ISO-8601, UTC if no zone).")
    arms: dict[str, float] = Field(description="Arm -> weight, as in decide.arms.")


class DecideSettings(_Section):
    """``/v1/decide``: the catalog, the model and its policy, the experiment, serving limits."""

    catalog_path: Path | None = Field(
        None, description="Onboarding catalog (YAML); empty: the packaged default catalog."
    )
    model_path: Path | None = Field(
        None,
        description="Model file of the treatment arm (an Onramp model bundle), watched for "
        "changes and hot-swapped; empty: <state_dir>/models/treatment.onramp, where the "
        "learner publishes (the cold start from the catalog's default flow until it does).",
    )
    model_b_path: Path | None = Field(
        None, description="Model file of the optional arm treatment_b (empty: cold start)."
    )
    model_poll_s: float = Field(
        0.25,
        gt=0,
        allow_inf_nan=False,
        description="How often replicas check the model files (a stat of each; a changed "
        "file is loaded). 0.25 (was 1): a new version reaches the decisions 0.4 s sooner on "
        "average, which matters most while the learner warms up (learn.boost_publish_factor).",
    )
    policy: Literal["squarecb", "epsilon_greedy", "softmax", "thompson"] = Field(
        "squarecb",
        description="Exploration of the model arms. squarecb (inverse gap weighting, as Vowpal "
        "Wabbit's --squarecb) explores actions in proportion to how close the model rates them "
        "to the best, less as it learns (gamma rides in the model file); epsilon_greedy explores "
        "a fixed share uniformly.",
    )
    epsilon: float = Field(0.1, ge=0, le=1, description="epsilon_greedy: share explored.")
    gamma: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="squarecb: gamma until the learner publishes its own (it grows as "
        "learn.gamma_scale * sqrt(rewards learned)).",
    )
    temperature: float = Field(
        0.5, gt=0, allow_inf_nan=False, description="softmax: temperature of the scores."
    )
    seed: int = Field(
        0, ge=0, description="Seed of the policy's draws (with the decision id); not negative."
    )
    experiment: str = Field("onboarding", min_length=1, description="Experiment name.")
    salt: str = Field("onramp", min_length=1, description="Hash salt of the arm assignment.")
    arms: dict[str, float] = Field(
        default_factory=lambda: {"control": 0.5, "treatment": 0.5},
        description="Arm -> weight. control gets the static flow, treatment the model, "
        "treatment_b the second model.",
    )
    holdout: float = Field(
        0.0, ge=0, lt=1, description="Share of users who always get the static flow."
    )
    earlier_splits: list[ExperimentSplit] = Field(
        default_factory=list,
        description="Earlier splits: a user keeps the arm of the split in force when they were "
        "first seen, so changing decide.arms does not reassign users already assigned. Each is "
        "in force from its since until the next one's, the last until decide.arms_since.",
    )
    arms_since: dt.datetime | None = Field(
        None,
        description="When the current split (decide.arms) started (ISO-8601, UTC if no zone); "
        "required with earlier_splits: users first seen since then get the current split.",
    )
    reassign: bool = Field(
        False, description="Assign every user by the current split (ignore earlier_splits)."
    )
    profile_deadline_ms: float = Field(
        200.0, gt=0, description="Wait this long for the live profile, then answer cold-start."
    )
    log_max_pending: int = Field(
        20_000,
        ge=1,
        description="Decisions waiting for Kafka's ack; beyond it /v1/decide answers 503 "
        "(no decision is served that is not logged).",
    )
    # How the ingress replicas (collector + /v1/decide) are scaled and placed: set here, for
    # `onramp up` and `serve deploy` alike (a Serve config sets them in `args.settings`; its own
    # autoscaling_config / ray_actor_options would override these silently, and
    # `python -m deployments.check` refuses them).
    min_replicas: int = Field(1, ge=0, description="Autoscaling: fewest ingress replicas.")
    max_replicas: int = Field(2, ge=1, description="Autoscaling: most ingress replicas.")
    target_ongoing_requests: float = Field(
        32.0, gt=0, description="Autoscaling: requests in flight per replica to aim for."
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, description="Autoscaling: how long the load must stay high to add replicas."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="Autoscaling: how long it must stay low to remove replicas."
    )
    look_back_period_s: float = Field(
        30.0,
        gt=10,
        description="Autoscaling: the window Serve averages ongoing requests over (shorter "
        "reacts to a change of load sooner, and to a short burst too); more than Serve's 10 s "
        "metrics interval.",
    )
    replica_cpus: float = Field(
        0.25, gt=0, description="CPUs each ingress replica reserves from Ray (2 on a cluster)."
    )
    replica_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each ingress replica asks for, e.g. "
        '{"onramp_decide": 1} to place replicas on cluster.yaml\'s decide nodes.',
    )

    @field_validator("replica_resources")
    @classmethod
    def _replica_resources(cls, value: dict[str, float]) -> dict[str, float]:
        return check_ray_resources(value, "decide.replica_resources")

    @model_validator(mode="after")
    def _replica_bounds(self) -> DecideSettings:
        if self.min_replicas > self.max_replicas:  # was raised to min silently
            raise ValueError(
                f"decide.min_replicas ({self.min_replicas}) is more than decide.max_replicas "
                f"({self.max_replicas})"
            )
        return self

    @model_validator(mode="after")
    def _served_arms(self) -> DecideSettings:
        splits = [("decide.arms", self.arms)] + [
            (f"decide.earlier_splits[{n}].arms", sp.arms)
            for n, sp in enumerate(self.earlier_splits)
        ]
        for where, arms in splits:
            # what the experiment refuses when a replica starts, said when the settings are read
            for name, weight in arms.items():
                if weight < 0:
                    raise ValueError(f"{where}.{name}: a weight must be >= 0, got {weight}")
            if "control" not in arms:
                raise ValueError(f"{where}: must name control (the static flow)")
            if sum(arms.values()) <= 0:
                raise ValueError(f"{where}: the weights must sum to more than 0")
            unknown = sorted(set(arms) - set(SERVED_ARMS))
            if unknown:  # a model arm needs a model file to serve it: only these have one
                raise ValueError(
                    f"{where}.{unknown[0]}: unknown arm {unknown[0]!r}; the arms served are "
                    f"{', '.join(SERVED_ARMS)} (decide.model_path serves treatment, "
                    "decide.model_b_path treatment_b)"
                )
        return self

    @model_validator(mode="after")
    def _current_split_start(self) -> DecideSettings:
        if not self.earlier_splits:
            return self
        if self.arms_since is None:
            raise ValueError(
                "decide.arms_since is required with decide.earlier_splits: when did the current "
                "split (decide.arms) start? Users first seen since then get it; without it the "
                "last earlier split would never end"
            )
        latest = max(_utc(sp.since) for sp in self.earlier_splits)
        if _utc(self.arms_since) <= latest:
            raise ValueError(
                f"decide.arms_since ({self.arms_since.isoformat()}) must be after the start of "
                f"every earlier split (the latest: {latest.isoformat()})"
            )
        return self


class LearnSettings(_Section):
    """The online learner: rewards in, guarded model versions out."""

    enabled: bool = Field(True, description="Run the online learner with the stream workers.")
    lr: float = Field(0.01, gt=0, description="Learning rate (Adam).")
    batch_size: int = Field(64, ge=1, description="Rewards per update.")
    hidden: int = Field(
        0,
        ge=0,
        description="Hidden units of the scorer's deep part (an MLP trunk beside the wide "
        "weights) in a model that starts cold: the learner's and onramp train's. 0, the default: "
        "the wide part alone. On the learning twin (8 runs a world, 6,000 users) the share of "
        "the oracle's gain by user 6,000 went from 0.73 to 0.79 (teams), 0.62 to 0.74 (campus) "
        "and 0.71 to 0.75 (clinics) without the 48 units it had, and stayed at 0.59 (fleets): "
        "online, from a few thousand rewards, the trunk mostly learned noise. It pays later: "
        "over 20,000 users of teams it reached 0.96 against the wide part's 0.92, so 48 suits "
        "a deployment with a long, stable history. A model file keeps the shape it was written "
        "with.",
    )
    publish_interval_s: float = Field(
        2.0, gt=0, description="Publish new weights at most this often."
    )
    boost_publish_factor: float = Field(
        0.25,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="While the learner is boosted (the warm-up of a cold start, and "
        "boost_rewards after a drift or a rollback below control), publish at most every "
        "publish_interval_s times this (0.25: every 0.5 s at the default 2 s; 1: no faster). A "
        "model learning from scratch is most wrong and changes most between versions then, and "
        "each version served sooner is fewer users served by the one before: on the learning "
        "twin (8 seeds a world, with decide.model_poll_s 0.25) the share of the oracle's gain "
        "over the first 1,000 users went from -0.016 to 0.008 (teams), -0.082 to -0.039 "
        "(campus), -0.052 to -0.040 (clinics) and -0.160 to -0.101 (fleets); after an abrupt "
        "drift on fleets (8 seeds) the longest run of treatment below control went from "
        "808-1,218 users (6 runs over 1,000) to 626-1,005 (1 run, by 5 users); over users "
        "4,000-6,000 it is within the noise (teams, 16 seeds: 0.881 -> 0.873; campus, 8: 0.839 "
        "-> 0.822). A publish writes the learner state and the model file, and every replica "
        "loads the model (about 5 ms each, 2 ms and 60 ms with 20,000 replayed rewards for the "
        "writes), so the steady state keeps publish_interval_s; a factor, not a time, so that "
        "a deployment that publishes seldom on purpose publishes seldom while boosted too.",
    )
    guardrail_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the rewards (by a hash of the decision id) never trained on: the "
        "loss guardrail's slice, on which each candidate is compared with the last good "
        "weights before it is published. 0, the default: every reward is trained on and only "
        "the guardrail against the static flow judges. 0.1 until 2026-12-06: on the learning "
        "twin (16 paired runs a world) training on every reward raised the share of the "
        "oracle's gain by user 6,000 from 0.83 to 0.85 (teams), 0.75 to 0.77 (campus), 0.75 "
        "to 0.78 (clinics) and 0.669 to 0.674 (fleets); the slice's rollbacks of the wide "
        "model were not worth the tenth of the rewards it held out.",
    )
    guardrail_tolerance: float = Field(
        0.1,
        ge=0,
        description="Roll back when the candidate's log loss on the guardrail slice is worse "
        "than the last good weights' by more than this share (with guardrail_share > 0).",
    )
    replay_size: int = Field(
        20_000,
        ge=0,
        description="Recent rewards replayed in later updates (0: none). 20,000 (was 5,000): "
        "a segment a fiftieth of the traffic keeps its rewards in the updates long enough to "
        "be learned; on the learning twin (teams, 4 seeds, no drift) the share of the oracle's "
        "gain from user 13,000 to 20,000 went from 0.81-0.87 to 0.86-0.91. About 1.3 KB of "
        "memory a reward (features held sparse); saved with the learner state, each encoded once.",
    )
    replay_steps: int = Field(
        8,
        ge=0,
        description="Replayed mini-batches per batch_size new rewards. 8: on the twin's teams "
        "world (8 seeds) 0.03 more of the oracle's gain by users 2,000-7,000 than 4; 16 and 0 "
        "were worse.",
    )
    warmup_rewards: int = Field(
        1_000,
        ge=0,
        description="A learner starting from an untrained model learns at boost_lr_factor "
        "times the rate (and, under an epsilon_greedy policy, explores at boost_epsilon) until "
        "it has trained on this many rewards (0: no warm-up).",
    )
    lr_decay_rewards: int = Field(
        3_000,
        ge=0,
        description="The learning rate shrinks as lr / sqrt(1 + n / lr_decay_rewards), n the "
        "rewards learned since a cold start, drift or rollback (0: constant). On the learning "
        "twin (4 seeds, 20k users) it takes the treatment arm from 0.76 to 0.87 of the oracle's "
        "gain at 20,000 users, for 0.67 -> 0.63 at 6,000: a constant step keeps moving the "
        "weights by one step's noise.",
    )
    settle_lr_factor: float = Field(
        0.1,
        gt=0,
        le=1,
        description="A learner that starts from trained weights with a new optimizer (the model "
        "file of an earlier run, a registry promotion) steps at this factor of the scheduled "
        "rate at first, growing to the full rate over settle_rewards (1: no settling). Adam "
        "normalizes steps by the gradients it has seen, and a new one near the optimum takes "
        "full-size steps off it: on the learning twin a learner started from a 5,000-user model "
        "fell from 0.69 to 0.44 of the oracle's gain without settling and went on at 0.74 with "
        "it. Weights whose logits hardly predict the first 1,024 new rewards (learned in another "
        "world) are dropped for the cold-start weights, as after a drift.",
    )
    settle_rewards: int = Field(
        20_000,
        ge=0,
        description="Trained rewards over which settle_lr_factor grows to 1 (0: no settling).",
    )
    weight_decay: float = Field(
        0.3,
        ge=0,
        description="Decoupled weight decay (AdamW). Profiles carry many features that predict "
        "nothing (CRM fields, activity counts, recency); without decay the scorer fits their "
        "noise in the recent rewards it replays.",
    )
    min_propensity: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Importance weights are 1/max(propensity, this): 0.5 clips them at 2. The "
        "scorer is a reward model of every (context, action), which unclipped weights (up to "
        "1/propensity of a rarely explored action) make noisy: on simulator v2, 0.05 left 8-19% "
        "of greedy choices wrong after 5k users, 0.5 left 0.4-3%.",
    )
    boost_epsilon: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The epsilon served for a while after a drift alert or a rollback below "
        "the control arm, and during the warm-up, when decide.policy is epsilon_greedy. "
        "squarecb (the default) has no epsilon: its gamma starts over instead (gamma_scale, "
        "drift_gamma_head_start).",
    )
    gamma_scale: float = Field(
        40.0,
        gt=0,
        description="squarecb exploration (decide.policy): the learner publishes gamma = "
        "gamma_scale * sqrt(1 + rewards learned since a cold start, drift or rollback); a larger "
        "scale explores less. 40 (was 10, Vowpal Wabbit's default): the optimism bonus already "
        "explores where the model is unsure, and squarecb's undirected exploration on top of "
        "it cost more than it taught. On the learning twin (16 hash-seeded runs a world, "
        "7,000 users) the share of the oracle's gain at user 6,000 went 0.55 -> 0.62 (fleets), "
        "0.66 -> 0.70 (clinics), 0.76 -> 0.78 (teams), 0.69 -> 0.67 (campus, within the noise).",
    )
    optimism: float = Field(
        1.0,
        ge=0,
        allow_inf_nan=False,
        description="Exploration where the model is unsure: the learner publishes it with the "
        "weights and the decision replicas rank a model arm's actions by logit + optimism * "
        "(uncertainty - the context's surest action's), the uncertainty from the rewards each "
        "action was learned from in each context (LinUCB's, diagonal). squarecb then keeps trying an action in a segment that "
        "never saw it, instead of exploring everywhere alike. On the learning twin it raised "
        "the share of the oracle's gain at user 6,000 from 0.63 to 0.70 (teams), 0.57 to 0.66 "
        "(campus) and 0.42 to 0.44 (clinics); 0 ranks by the logits alone.",
    )
    boost_rewards: int = Field(
        1_000,
        ge=0,
        description="How long the boost lasts, in rewards trained on (as warmup_rewards): as many "
        "users at any traffic (0: no boost).",
    )
    drift_restart: bool = Field(
        True,
        description="After a reward-rate drift alert the learner goes back to the cold-start "
        "weights (the static flow's choices) and relearns from there, instead of serving "
        "weights fitted to the world before the drift while it unlearns them (after an abrupt "
        "drift those were below the static flow). On the learning twin (teams, 4 seeds, the "
        "service's detector) recovery within 5,000 users went from 2 to 3 seeds, and the "
        "longest run below control from 1,026-1,215 users to 672-1,178.",
    )
    drift_gamma_head_start: int = Field(
        4_000,
        ge=0,
        description="After a drift restart, squarecb's gamma grows as if this many rewards had "
        "been learned: it explores around the static flow rather than nearly uniformly, which "
        "is below the static flow (0: from gamma_scale). 4,000 (was 1,000): on the learning "
        "twin (16 runs each of teams, clinics, fleets, an abrupt drift at user 7,000) the runs "
        "with treatment below control for over 1,000 users went from 15 to 11 of 48, the mean "
        "longest run below control from 654 / 905 / 1,169 users to 636 / 820 / 1,042, the "
        "curve after the drift was as good or better, and 35 runs recovered within 5,000 users "
        "(36 at 1,000).",
    )
    control_z: float = Field(
        3.09,
        ge=0,
        description="Guardrail against the static flow: roll back when the treatment arm's "
        "completion rate is below the control arm's with z < -control_z (one-sided "
        "two-proportion test, repeated at every publish; 3.09: 0.1%). 0 turns it off.",
    )
    control_window: int = Field(
        2_000, ge=1, description="Guardrail against the static flow: recent rewards per arm."
    )
    control_min_treatment: int = Field(
        300,
        ge=1,
        description="Guardrail against the static flow: treatment rewards it needs to judge "
        "(after a rollback: of the new version's decisions).",
    )
    control_min_control: int = Field(
        100, ge=1, description="Guardrail against the static flow: control rewards it needs."
    )
    drift_delta: float = Field(
        0.05, ge=0, description="Page-Hinkley on the reward rate: tolerated change of the mean."
    )
    drift_threshold: float = Field(
        25.0,
        gt=0,
        description="Page-Hinkley: cumulative deviation that raises an alert. 25 (was 50) halves "
        "the rewards a drop takes to find; false alarms stay rare (about exp(-2 * delta * "
        "threshold / 0.25) per stretch: exp(-10)); none in 4 x 20,000 users of the learning twin.",
    )
    drift_min_samples: int = Field(
        1_500, ge=1, description="Page-Hinkley: rewards seen before (and after each) alert."
    )
    drift_settle_s: float = Field(
        60.0,
        ge=0,
        description="Page-Hinkley is fed explicit outcomes (not timeouts) in decision order, once "
        "their decision's outcomes are in: it waits for drift_settle_quantile of how late this "
        "stream's outcomes arrive (with a quarter more and 0.25 s to spare), and at most this "
        "long; outcomes later than the wait are not fed (counted). Every second of wait delays a "
        "drift alert by a second of traffic. Was a fixed 5 s: tuned to users who answer within "
        "a second, it fed a product that reports abandonments 20 s after completions only the "
        "completions, and found no drift.",
    )
    drift_settle_quantile: float = Field(
        0.99,
        ge=0,
        le=1,
        description="Which quantile of the outcomes' lateness the drift detector waits for "
        "(0: wait drift_settle_s, fixed).",
    )
    psi_window: int = Field(
        2_000, ge=10, description="Feature drift: decisions per PSI window (and reference)."
    )
    state_path: Path | None = Field(
        None, description="Learner state (weights, offsets); empty: <state_dir>/learner.state."
    )

    @model_validator(mode="after")
    def _control_windows(self) -> LearnSettings:
        if max(self.control_min_treatment, self.control_min_control) > self.control_window:
            raise ValueError(
                "learn.control_min_treatment and learn.control_min_control must not exceed "
                "learn.control_window"
            )
        return self


class RegistrySettings(_Section):
    """The model registry: trained and online model versions, and which one is promoted."""

    uri: str | None = Field(
        None,
        description="Where the registry lives: a directory, file://..., or any pyarrow "
        "filesystem URI (s3://bucket/prefix); empty: <state_dir>/registry.",
    )


class TelemetrySettings(_Section):
    """Traces and metrics over OpenTelemetry (metrics are also served as Prometheus text)."""

    traces: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of collector requests and decisions traced (W3C trace context in "
        "Kafka record headers, followed by the stream workers and into the decisions the "
        "event influenced); 0 turns tracing off: no spans, no headers, no cost.",
    )
    otlp_endpoint: str = Field(
        "",
        description="OTLP/HTTP receiver base URL (e.g. http://otel-collector:4318); traces go to "
        "<url>/v1/traces and metrics to <url>/v1/metrics. Empty: no OTLP export.",
    )
    otlp_headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Headers sent with every OTLP export (e.g. API keys)."
    )
    export_interval_s: float = Field(
        5.0, gt=0, description="How often spans and metrics are sent to the OTLP endpoint."
    )
    service_name: str = Field(
        "onramp", min_length=1, description="OpenTelemetry service.name of every process."
    )

    @model_validator(mode="after")
    def _exporter(self) -> TelemetrySettings:
        if self.traces > 0 and not self.otlp_endpoint:
            raise ValueError(
                "telemetry.traces > 0 needs somewhere to send spans: set telemetry.otlp_endpoint"
            )
        return self


def _utc(t: dt.datetime) -> dt.datetime:
    """``t`` with UTC for a time given without a zone (as the splits are read)."""
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)
