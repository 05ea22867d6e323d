"""Settings of the stream workers, the CRM enrichment and the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from ray_app.config.base import Section as _Section
from ray_app.config.base import check_ray_resources

__all__ = ["EnrichSettings", "SimSettings", "StreamSettings"]


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
    skip_refetch_s: float = Field(
        0.5,
        ge=0,
        le=60,
        description="Offsets a fetch skipped are fetched again (at least 3 times) for this long "
        "before the skip is taken as a hole in the partition (transaction markers, compaction). "
        "0: after one fetch again; set 0 where another producer writes onramp.events or "
        "onramp.decisions with transactions, so that each marker costs one fetch, not this wait.",
    )
    allowed_lateness_ms: int = Field(
        300_000,
        ge=0,
        description="Events this far behind their partition's latest event time are late.",
    )
    watermark_tick_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="A partition of onramp.events whose event time has not moved for this "
        "long, where a decision's window or an event held for a missing seq waits on the "
        "watermark, gets a tick from its worker: a record that moves event time on by the time "
        "since the record that last moved it was written (so a decision without an outcome is "
        "rewarded 0 when its window ends, not at the partition's next event). 0: never (the "
        "watermark moves with events only).",
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
    profile_socket: bool = Field(
        True,
        description="Serve replicas read profiles from each stream worker over a persistent "
        "TCP connection to an ephemeral port of the worker's node (a random per-worker token, "
        "orjson frames, not encrypted) instead of a Ray actor call, which costs ~20x more CPU "
        "per read; off where traffic between nodes must be encrypted (Ray with TLS) or only "
        "Ray's own ports are open between nodes (reads then are actor calls; a socket that "
        "cannot be opened falls back to them anyway).",
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

    @field_validator("worker_resources")
    @classmethod
    def _worker_resources(cls, value: dict[str, float]) -> dict[str, float]:
        return check_ray_resources(value, "stream.worker_resources")

    worker_start_timeout_s: float = Field(
        600.0,
        gt=0,
        description="How long a stream worker may take to start: a process, its imports and "
        "the restore of its partitions' checkpoints (about 30 us a profile, plus reading them "
        "from the store). A start past it is killed and tried again from scratch, so one "
        "shorter than the restore never ends (it was 60-120 s, fixed).",
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
