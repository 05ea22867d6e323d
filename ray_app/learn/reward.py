"""Reward records, as the learner reads them: re-exported from :mod:`ray_app.records`, the one
definition that the stream (which writes them), the learner and training share."""

from __future__ import annotations

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
    "Outcome",
    "RewardRecord",
    "RewardRecordError",
    "reward_of",
]
