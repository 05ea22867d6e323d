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
    ...     {"since": "2026-01-01T00:00:00Z", "arms": {"control": 0.0, "treatment": 1.0}}],
    ...     arms_since="2026-02-01T00:00:00Z")
    >>> arms = Arms(s)
    >>> arms.assign("u1", {"firstSeen": 1_767_225_600_000 + 5})   # first seen under the old split
    'treatment'
    >>> arms.assign("u1", {"firstSeen": 1_769_904_000_000})       # first seen since the change
    'control'
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
        splits = sorted(settings.earlier_splits, key=lambda s: _ms(s.since))
        self.earlier: list[tuple[int, Experiment]] = [
            (_ms(sp.since), experiment(sp.arms, f"decide.earlier_splits[{n}]"))
            for n, sp in enumerate(splits)
        ]
        #: When the current split started (``decide.arms_since``; set with earlier splits).
        self.current_since = None if settings.arms_since is None else _ms(settings.arms_since)
        #: user key -> (assignment key, first seen) of the last profile read, for the users
        #: whose arm their key alone does not tell: what :meth:`assign_unread` goes by when a
        #: profile cannot be read in time (least recently read first out past ``_REMEMBERED``).
        self._basis: dict[str, tuple[str | None, int | None]] = {}

    def in_force(self, first_seen_ms: int | None) -> Experiment:
        """The split in force at a time (None: now): each earlier split from its start until
        the next one's, the last until the current split's (``decide.arms_since``)."""
        if first_seen_ms is None or self.reassign:
            return self.current
        chosen = self.current
        ends = [since for since, _ in self.earlier[1:]] + [self.current_since]
        for (since, exp), until in zip(self.earlier, ends, strict=False):  # none: no earlier
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
        first = first if isinstance(first, int) else None
        key = key if isinstance(key, str) and key else None
        split = self.in_force(first)
        basis = self._basis
        if (key is not None and key != user_key) or split is not self.current:
            # what assign_unread could not tell without this profile: remembered, the least
            # recently read user forgotten first
            basis.pop(user_key, None)
            if len(basis) >= _REMEMBERED:
                del basis[next(iter(basis))]
            basis[user_key] = (key, first)
        elif basis:
            basis.pop(user_key, None)  # assign_unread's default is this user's arm
        return split.assign(key or user_key)

    def assign_unread(self, user_key: str) -> str:
        """The arm of a user whose profile could not be read in time (a deadline, the stream
        down): by what the last profile read of them said (their first id, when they were
        first seen), so that a stitched user or one assigned under an earlier split does not
        switch arms for a decision; a user this replica has not read yet by the current split.

        >>> from ray_app.config import DecideSettings
        >>> arms = Arms(DecideSettings())
        >>> read = arms.assign("user-7", {"assignmentKey": "anon-7", "firstSeen": 1})
        >>> arms.assign_unread("user-7") == read == arms.assign("anon-7", None)
        True
        """
        key, first = self._basis.get(user_key, (None, None))
        return self.in_force(first).assign(key or user_key)


#: Users whose assignment basis an :class:`Arms` remembers (a few MB), the least recently read
#: forgotten first: only those whose arm a replica could not tell from their id (merged ids,
#: or first seen under an earlier split). Before, every user read was remembered and the whole
#: memory was emptied when it filled, so a deadline missed after that switched such users' arms.
_REMEMBERED = 1 << 16


def _ms(t: dt.datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)
