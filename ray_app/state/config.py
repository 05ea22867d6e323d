"""What a partition's state is configured with (:class:`StateConfig`) and counts
(:class:`ShardStats`). Both are pickled in snapshots (see :mod:`ray_app.state.snapshot`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ray_app.state.profile import ProfileConfig
from ray_app.state.rewards import NEGATIVE_EVENTS

__all__ = ["ShardStats", "StateConfig"]

_DAY_MS = 86_400_000


@dataclass(frozen=True)
class StateConfig:
    """Semantics of the stream state; see each field."""

    allowed_lateness_ms: int = 5 * 60_000
    """Events more than this behind the latest event time of their partition are late."""
    dedupe_horizon_ms: int = 0
    """Ids are remembered until the watermark is this far past their event time (>= 0: exact)."""
    dedupe_max_ids: int = 2_000_000
    """Safety cap on remembered ids per partition."""
    reorder_max_buffer: int = 64
    """Most events one session may hold back while waiting for a missing ``seq``."""
    reorder_wait_ms: int = 2_000
    """Event time a session waits for a missing ``seq`` before giving up on it."""
    session_idle_ms: int = 30 * 60_000
    """A session's ordering cursor is dropped this long (event time) after its last event."""
    max_age_ms: int = 30 * _DAY_MS
    """Events whose time is more than this before their ``receivedAt`` are rejected."""
    max_future_ms: int = 5 * 60_000
    """...and those more than this after it."""
    known_steps: frozenset[str] | None = None
    """Step ids of the onboarding catalog; others are rejected (None: any step id)."""
    max_user_events_per_s: int = 50
    """More events from one user in one second of event time are rejected as implausible."""
    attribution_window_ms: int = 300_000
    """Rewards: how long after a decision (event time) its outcome counts."""
    step_slots: frozenset[str] = frozenset({"next_step"})
    """Slots whose actions are steps (rewarded when that step is completed)."""
    negative_events: frozenset[str] = NEGATIVE_EVENTS
    """``track`` events that reward 0 at once (the catalog's ``negative_events``)."""
    profile_idle_ttl_ms: int = 30 * _DAY_MS
    """A profile is evicted once the watermark is this far past its last event time (an alias
    of a merged id, this far past the last record it forwarded)."""
    allow_known_merge: bool = False
    """Identity stitching may merge a known user (a profile with a ``userId``) into another."""
    profile: ProfileConfig = field(default_factory=ProfileConfig)


@dataclass
class ShardStats:
    """Running totals of one partition since its state began (they survive checkpoints)."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: int = 0
    forwarded: int = 0
    """Events of merged ids sent on to the id they were merged into (counted again there)."""
    control: int = 0
    """Link and merge records taken (identity stitching: :mod:`ray_app.state.identity`)."""
    relayed: int = 0
    """Forwarded events received from other partitions (each is then one of applied,
    duplicate, late or rejected here). Records a client wrote = records - control - relayed."""
    ticks: int = 0
    """Ticks taken (:mod:`ray_app.state.tick`: the time, written by the worker into a quiet
    partition); not in ``records``."""

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}
