"""What a stream worker's ``status()`` reports per partition: offsets, watermark, lag, counters,
data quality, rejections, profiles, identity merges and the reward join."""

from __future__ import annotations

from typing import Any

from ray_app.state import SessionShard
from ray_app.state.identity import MergeOutcome
from ray_app.state.profile import CAPS

__all__ = ["partition_status"]


def partition_status(
    shard: SessionShard,
    next_offset: int,
    lag: int | None,
    redelivered: int = 0,
    offset_gaps: int = 0,
    fetched_again: int = 0,
    ticks_written: int = 0,
) -> dict[str, Any]:
    """One partition's entry of the worker's status (``lag``: None before it was measured;
    ``redelivered``, ``offset_gaps`` and ``fetched_again``: what the worker's client did, see
    :meth:`~ray_app.stream.worker.StreamWorker._in_order`; ``ticks_written``: the ticks this
    worker wrote to the partition, :meth:`~ray_app.stream.worker.StreamWorker._tick_quiet`,
    where ``ticks`` counts those the partition took, checkpointed)."""
    return {
        "nextOffset": next_offset,
        "redelivered": redelivered,
        "offsetGaps": offset_gaps,
        "fetchedAgain": fetched_again,
        "ticksWritten": ticks_written,
        "buffered": shard.buffered,
        "watermark": shard.watermark,
        "lag": lag,
        **shard.stats.as_dict(),
        "quality": shard.quality.as_dict() if shard.quality is not None else {},
        "rejectedByReason": dict(shard.rejected_by_reason),
        "decisionOffset": shard.decision_offset,
        "decisionsRejectedByReason": dict(shard.decisions_rejected),
        "profiles": len(shard.profiles),
        "profilesEvicted": shard.profiles_evicted,
        "profileCaps": {c: shard.cap_hits.get(c, 0) for c in CAPS},
        "aliases": len(shard.aliases),
        "identity": {o.value: shard.identity.get(o.value, 0) for o in MergeOutcome},
        **shard.rewards.stats(),
    }
