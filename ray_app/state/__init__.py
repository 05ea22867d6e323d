"""The pure state core: events, per-user profiles, dedupe, ordering, windows, watermarks.

No Ray, no Kafka, no clock: everything here is driven by a list of records, so it is unit-tested
directly and replayed exactly after a crash. Stream workers (Ray actors) only call it.
"""

from ray_app.state.dedupe import Deduplicator
from ray_app.state.event import Event, RecordRejected, decode_event
from ray_app.state.ordering import Reorderer
from ray_app.state.profile import Profile, ProfileConfig, apply
from ray_app.state.shard import BatchResult, SessionShard, ShardStats, StateConfig
from ray_app.state.windows import SessionWindows, TumblingCounts

__all__ = [
    "BatchResult",
    "Deduplicator",
    "Event",
    "RecordRejected",
    "Profile",
    "ProfileConfig",
    "Reorderer",
    "SessionShard",
    "SessionWindows",
    "ShardStats",
    "StateConfig",
    "TumblingCounts",
    "apply",
    "decode_event",
]
