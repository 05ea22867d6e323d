"""The experiment a decision runs in: :class:`Arms` assigns each user an arm, sticky across
split changes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ray_app.config import DecideSettings
from ray_app.experiments import Experiment

__all__ = ["Arms"]


class Arms:
    """Experiment assignment, sticky across split changes without storing assignments.

    The current split is ``decide.arms``; ``decide.earlier_splits`` lists the splits before it
    with their start times. A user is assigned by the split that was in force when the stream
    first saw them (``firstSeen`` of their profile, which is exactly-once state); a user with no
    profile yet is new and gets the current split. So changing the split moves only users who
    arrive afterwards, unless ``decide.reassign`` is set. Holdout membership depends on the salt
    and the holdout share only.

    >>> from ray_app.config import DecideSettings
    >>> s = DecideSettings(arms={"control": 1.0, "treatment": 0.0}, earlier_splits=[
    ...     {"since": "2026-01-01T00:00:00Z", "arms": {"control": 0.0, "treatment": 1.0}}])
    >>> arms = Arms(s)
    >>> arms.assign("u1", {"firstSeen": 1_767_225_600_000 + 5})   # first seen under the old split
    'treatment'
    >>> arms.assign("u1", None)                                    # new user: the current split
    'control'
    """

    def __init__(self, settings: DecideSettings) -> None:
        def experiment(weights: dict[str, float], where: str = "decide") -> Experiment:
            return Experiment.from_dict(
                {
                    "name": settings.experiment,
                    "salt": settings.salt,
                    "arms": weights,
                    "holdout": settings.holdout,
                },
                where=where,
            )

        self.name = settings.experiment
        self.current = experiment(settings.arms)
        self.reassign = settings.reassign
        splits = sorted(settings.earlier_splits, key=lambda s: s.since)
        self.earlier: list[tuple[int, Experiment]] = [
            (_ms(sp.since), experiment(sp.arms, f"decide.earlier_splits[{n}]"))
            for n, sp in enumerate(splits)
        ]

    def in_force(self, first_seen_ms: int | None) -> Experiment:
        """The split in force at a time (None: now)."""
        if first_seen_ms is None or self.reassign:
            return self.current
        chosen = self.current
        for i, (since, exp) in enumerate(self.earlier):
            until = self.earlier[i + 1][0] if i + 1 < len(self.earlier) else None
            if first_seen_ms >= since and (until is None or first_seen_ms < until):
                chosen = exp
        return chosen

    def assign(self, user_key: str, profile: dict[str, Any] | None) -> str:
        """The user's arm. A person whose ids were merged (identity stitching) keeps the arm of
        the first id seen of them (the profile's ``assignmentKey``), whichever id asks.

        >>> from ray_app.config import DecideSettings
        >>> arms = Arms(DecideSettings())
        >>> merged = {"assignmentKey": "anon-7", "firstSeen": 1}
        >>> arms.assign("user-7", merged) == arms.assign("anon-7", None)
        True
        """
        first = profile.get("firstSeen") if profile else None
        key = profile.get("assignmentKey") if profile else None
        return self.in_force(first if isinstance(first, int) else None).assign(
            key if isinstance(key, str) and key else user_key
        )


def _ms(t: dt.datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)
