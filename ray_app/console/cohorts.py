"""The console's experiment and funnel figures, kept up to date record by record.

:class:`Cohorts` holds, per experiment, one row per user with the columns of
:data:`ray_app.experiments.report.USER_COLUMNS`, built by the rules of
:func:`~ray_app.experiments.report.users_from_logs` (what ``onramp report`` reads the logs with),
but incrementally: a decision record opens (or extends) its user's row and waits for its reward;
the first reward of a waiting decision counts (decisions and rewards are written at least once:
a second copy of either is ignored). Rows are kept column-wise in plain lists, so that
:meth:`Cohorts.frame` hands :func:`~ray_app.experiments.report.analyze` a DataFrame without a pass
over the users in Python: the console's numbers come from the report's own code.

The funnel counts, per arm, the users who completed each onboarding step (``Step Completed``
events, from the events topic) and who completed onboarding (``Onboarding Completed``): a user's
steps are remembered as a bit mask, and counted under their arm once their first decision says
which arm that is.

>>> c = Cohorts()
>>> c.decision({"decisionId": "d1", "userKey": "u1", "arm": "control", "experiment": "e",
...             "chosen": "role", "slot": "next_step", "timestamp": 1000})
True
>>> c.reward({"decisionId": "d1", "reward": 1.0, "outcome": "completed", "action": "role"})
True
>>> c.reward({"decisionId": "d1", "reward": 1.0, "outcome": "completed", "action": "role"})
False
>>> c.frame("e")[["arm", "decisions", "positives", "steps"]].to_dict("records")
[{'arm': 'control', 'decisions': 1, 'positives': 1, 'steps': 1}]
>>> c.step_completed("u1", "welcome"); c.funnel()["control"]["steps"]["welcome"]
1
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from ray_app.records.decision import forwarded_copy
from ray_app.timefmt import record_ms

__all__ = ["Cohorts", "ExperimentRows"]

#: Decided ids remembered to ignore a second copy of a decision or reward (at least once).
DONE_IDS = 1_000_000
#: Rewards whose decision has not been read yet (the two topics are read side by side).
ORPHANS = 100_000
#: Decisions waiting for a reward, at most (a decision whose reward never comes is dropped).
PENDING = 1_000_000
#: Steps the funnel counts beyond the catalog's (its rows after the catalog's): a stepId is
#: whatever a client sends with the public write key, so past these a new one is ignored.
EXTRA_STEPS = 32
#: Users the funnel follows (a user id too is whatever a client sends): past it, new users
#: are not counted in it (``funnelIgnored``).
FUNNEL_USERS = 1_000_000
#: Users an experiment's rows hold, and ids merged into others remembered: past either, a new
#: user's decisions (``usersIgnored``) or a new merge (``mergesIgnored``) are not counted. A
#: decide key is public: without a bound, minted ids grew the aggregator for ever.
EXPERIMENT_USERS = 1_000_000
MERGES = 1_000_000


@dataclass
class ExperimentRows:
    """One experiment's users, column-wise (row ``i`` is ``users[i]``)."""

    index: dict[str, int] = field(default_factory=dict)
    users: list[str | None] = field(default_factory=list)
    arm: list[int] = field(default_factory=list)
    first_ms: list[int] = field(default_factory=list)
    #: The id of the decision ``first_ms`` is of: decisions of one time are ordered by id.
    first_id: list[str] = field(default_factory=list)
    decisions: list[int] = field(default_factory=list)
    positives: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    step_mask: list[int] = field(default_factory=list)
    activated: list[int] = field(default_factory=list)
    #: Rows folded into another by a merge: row -> the row it went to (its user is None).
    moved: dict[int, int] = field(default_factory=dict)

    def at(self, i: int) -> int:
        """Row ``i``, or the row it was folded into."""
        while i in self.moved:
            i = self.moved[i]
        return i

    def fold(self, old: str, into: str) -> None:
        """``old``'s row becomes ``into``'s (the stream merged the two ids): its counts are
        added, its steps joined, and the merged row takes the arm of the earlier first
        decision (of two at one time, the one with the smaller id)."""
        i = self.index.pop(old, None)
        if i is None:
            return
        j = self.index.get(into)
        if j is None:
            self.index[into] = i
            self.users[i] = into
            return
        if (self.first_ms[i], self.first_id[i]) < (self.first_ms[j], self.first_id[j]):
            self.first_ms[j], self.first_id[j] = self.first_ms[i], self.first_id[i]
            self.arm[j] = self.arm[i]
        self.decisions[j] += self.decisions[i]
        self.positives[j] += self.positives[i]
        self.activated[j] = max(self.activated[j], self.activated[i])
        self.step_mask[j] |= self.step_mask[i]
        self.steps[j] = self.step_mask[j].bit_count()
        self.users[i] = None
        self.moved[i] = j

    def row(self, user: str, arm: int, ms: int, did: str) -> int:
        """``user``'s row, opened or extended by decision ``did`` of ``arm`` at ``ms``."""
        i = self.index.get(user)
        if i is None:
            i = self.index[user] = len(self.users)
            self.users.append(user)
            self.arm.append(arm)
            self.first_ms.append(ms)
            self.first_id.append(did)
            for col in (self.decisions, self.positives, self.steps, self.step_mask):
                col.append(0)
            self.activated.append(0)
        elif (ms, did) < (self.first_ms[i], self.first_id[i]):
            self.first_ms[i], self.first_id[i], self.arm[i] = ms, did, arm
        return i


class Cohorts:
    """Per experiment, the per-user rows of the report; per arm, the onboarding funnel."""

    def __init__(
        self,
        steps: tuple[str, ...] | list[str] = (),
        counted: Callable[[Mapping[str, Any]], None] | None = None,
        merged: Callable[[str, str], None] | None = None,
    ) -> None:
        order = list(steps)
        self._catalog_steps = frozenset(order)
        self.funnel_ignored = 0  # step completions of steps or users past the bounds
        self.users_ignored = 0  # decisions of new users past EXPERIMENT_USERS
        self.merges_ignored = 0  # merges past MERGES
        #: Called with each reward when it counts: at once, or when its decision arrives after it.
        self.counted = counted
        #: Called with (old, into) when a decision says the stream merged ``old`` into ``into``.
        self.merged = merged
        self._prev = {b: a for a, b in pairwise(order)}  # step -> the step before it
        self._next = {a: b for a, b in pairwise(order)}
        self.experiments: dict[str, ExperimentRows] = {}
        self.arms: list[str] = []  # arm code -> name
        self._arm_codes: dict[str, int] = {}
        self._actions: dict[str, int] = {}  # action -> bit of the rows' step masks
        self._pending: OrderedDict[str, tuple[str, int]] = OrderedDict()  # id -> (exp, row)
        self._done: OrderedDict[str, None] = OrderedDict()
        self._orphans: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._alias: dict[str, str] = {}  # a merged user key -> the key it was merged into
        # funnel: user -> (arm code or -1, completed step mask, onboarding completed)
        self._user_arm: dict[str, int] = {}
        # user -> (time, id) of the decision their arm is of
        self._user_first: dict[str, tuple[int, str]] = {}
        self._user_steps: dict[str, int] = {}
        self._user_done: set[str] = set()
        self._steps: dict[str, int] = {}  # step -> bit of the funnel masks
        self._reached: dict[int, dict[str, int]] = {}  # arm code -> step -> users
        self._completed: dict[int, int] = {}  # arm code -> users who completed onboarding
        self._arm_users: dict[int, int] = {}  # arm code -> users with a decision
        self._after: dict[
            int, dict[str, int]
        ] = {}  # arm -> step -> users with it and the one before
        self.version = 0  # grows with every change that moves a figure
        self.ignored = 0

    # -- decisions and rewards (the report's rows) ---------------------------------------------

    def _arm(self, name: str) -> int:
        code = self._arm_codes.get(name)
        if code is None:
            code = self._arm_codes[name] = len(self.arms)
            self.arms.append(name)
        return code

    def decision(self, d: Mapping[str, Any]) -> bool:
        """A decision record (``onramp.decision/2``); False when it does not count (it served
        nothing, is a second copy, or is unreadable)."""
        try:
            if d.get("chosen") is None:
                return False
            if forwarded_copy(d):  # the original counts; the copy says who it merged into
                old, into = d.get("forwardedFrom"), d.get("userKey")
                if isinstance(old, str) and isinstance(into, str):
                    self._merge(self.person(old), self.person(into))
                return False
            did = str(d["decisionId"])
            if did in self._pending or did in self._done:
                return False
            exp = str(d.get("experiment", "default"))
            user = self.person(str(d["userKey"]))
            arm = self._arm(str(d["arm"]))
            ms = record_ms(d["timestamp"])
        except (KeyError, TypeError, ValueError):
            self.ignored += 1
            return False
        merged = d.get("mergedFrom")
        if merged and isinstance(merged, list | tuple):
            for old in merged:
                self._merge(self.person(str(old)), user)
        rows = self.experiments.setdefault(exp, ExperimentRows())
        if user not in rows.index and len(rows.index) >= EXPERIMENT_USERS:
            self.users_ignored += 1
            return False
        self._pending[did] = (exp, rows.row(user, arm, ms, did))
        if len(self._pending) > PENDING:
            self._pending.popitem(last=False)
        self._assign(user, arm, (ms, did))
        self.version += 1
        orphan = self._orphans.pop(did, None)
        if orphan is not None:
            self.reward(orphan)
        return True

    def person(self, user: str) -> str:
        """The key that ``user`` was merged into, last (itself if none)."""
        while user in self._alias:
            user = self._alias[user]
        return user

    def _merge(self, old: str, into: str) -> None:
        """The stream merged ``old`` into ``into``: one user of every experiment from now on
        (the report's rule, :func:`~ray_app.experiments.report.users_from_logs`)."""
        if old == into:
            return
        if len(self._alias) >= MERGES:
            self.merges_ignored += 1
            return
        self._alias[old] = into
        for rows in self.experiments.values():
            rows.fold(old, into)
        self._merge_funnel(old, into)
        if self.merged is not None:
            self.merged(old, into)
        self.version += 1

    def reward(self, r: Mapping[str, Any]) -> bool:
        """A reward record (``onramp.reward/2``); True when it counted (the first reward of a
        decision read before it; a reward ahead of its decision waits for it)."""
        try:
            did = str(r["decisionId"])
            value = float(r["reward"])
        except (KeyError, TypeError, ValueError):
            self.ignored += 1
            return False
        where = self._pending.pop(did, None)
        if where is None:
            if did not in self._done:
                self._orphans[did] = r
                if len(self._orphans) > ORPHANS:
                    self._orphans.popitem(last=False)
            return False
        self._done[did] = None
        if len(self._done) > DONE_IDS:
            self._done.popitem(last=False)
        rows = self.experiments[where[0]]
        i = rows.at(where[1])
        rows.decisions[i] += 1
        if value > 0:
            rows.positives[i] += 1
            outcome = r.get("outcome")
            if outcome == "converted":
                rows.activated[i] = 1
            elif outcome == "completed":
                bit = 1 << self._actions.setdefault(str(r.get("action")), len(self._actions))
                if not rows.step_mask[i] & bit:
                    rows.step_mask[i] |= bit
                    rows.steps[i] += 1
        self.version += 1
        if self.counted is not None:
            self.counted(r)
        return True

    def frame(self, experiment: str, since_ms: int | None = None) -> pd.DataFrame:
        """The experiment's per-user frame (:data:`~ray_app.experiments.report.USER_COLUMNS`),
        only users first seen at or after ``since_ms`` when given."""
        rows = self.experiments[experiment]
        names = np.array(self.arms, dtype=object)
        first = np.array(rows.first_ms, dtype=np.int64)
        df = pd.DataFrame(
            {
                "user": np.array(rows.users, dtype=object),
                "arm": names[np.array(rows.arm, dtype=np.int64)],
                "first_ms": first,
                "decisions": np.array(rows.decisions, dtype=np.int64),
                "positives": np.array(rows.positives, dtype=np.int64),
                "steps": np.array(rows.steps, dtype=np.int64),
                "activated": np.array(rows.activated, dtype=np.int64),
            }
        )
        keep = None if not rows.moved else df["user"].notna().to_numpy()
        if since_ms is not None:
            after = first >= since_ms
            keep = after if keep is None else keep & after
        if keep is not None:
            df = df[keep].reset_index(drop=True)
        return df

    # -- the funnel ---------------------------------------------------------------------------

    def _assign(self, user: str, arm: int, first: tuple[int, str]) -> None:
        """The user's funnel arm: the arm of their earliest decision (as the report's rows),
        whatever the order decisions are read in; ``first`` is the decision's (time, id)."""
        if user in self._user_arm:
            if first < self._user_first[user]:
                self._user_first[user] = first
                if arm != self._user_arm[user]:
                    self._count(user, -1)
                    self._user_arm[user] = arm
                    self._count(user, 1)
            return
        if len(self._user_arm) >= FUNNEL_USERS:
            self.funnel_ignored += 1
            return
        self._user_arm[user] = arm
        self._user_first[user] = first
        self._count(user, 1)

    def _count(self, user: str, sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) what ``user`` counts in their arm's funnel."""
        arm = self._user_arm.get(user)
        if arm is None:
            return
        self._arm_users[arm] = self._arm_users.get(arm, 0) + sign
        mask = self._user_steps.get(user, 0)
        if mask:
            reached = self._reached.setdefault(arm, {})
            for step, bit in self._steps.items():
                if mask & (1 << bit):
                    reached[step] = reached.get(step, 0) + sign
                    if self._done_step(mask, self._prev.get(step)):
                        after = self._after.setdefault(arm, {})
                        after[step] = after.get(step, 0) + sign
        if user in self._user_done:
            self._completed[arm] = self._completed.get(arm, 0) + sign

    def _merge_funnel(self, old: str, into: str) -> None:
        """``old``'s steps, completion and arm become ``into``'s: one user of the funnel, in
        the arm of the earlier of the two ids' first decisions (as the report's rows)."""
        if old not in self._user_arm and old not in self._user_steps and old not in self._user_done:
            return
        self._count(old, -1)
        self._count(into, -1)
        arm, first = self._user_arm.pop(old, None), self._user_first.pop(old, None)
        if (
            arm is not None
            and first is not None
            and (into not in self._user_arm or first < self._user_first[into])
        ):  # the arm of the person's earliest decision, under either id
            self._user_arm[into], self._user_first[into] = arm, first
        mask = self._user_steps.pop(old, 0) | self._user_steps.get(into, 0)
        if mask:
            self._user_steps[into] = mask
        if old in self._user_done:
            self._user_done.discard(old)
            self._user_done.add(into)
        self._count(into, 1)

    def step_completed(self, user: str, step: str) -> None:
        """A ``Step Completed`` of ``step`` by ``user`` (a second one changes nothing). Steps
        the catalog does not list are counted up to :data:`EXTRA_STEPS` of them, users up to
        :data:`FUNNEL_USERS`; past either, the completion is ignored (and counted as such)."""
        user = self.person(user)  # an id merged into another counts as that one
        if step not in self._steps and step not in self._catalog_steps:
            if len(self._steps) - len(self._catalog_steps & self._steps.keys()) >= EXTRA_STEPS:
                self.funnel_ignored += 1
                return
        if user not in self._user_steps and len(self._user_steps) >= FUNNEL_USERS:
            self.funnel_ignored += 1
            return
        bit = 1 << self._steps.setdefault(step, len(self._steps))
        mask = self._user_steps.get(user, 0)
        if mask & bit:
            return
        self._user_steps[user] = mask | bit
        arm = self._user_arm.get(user)
        if arm is not None:
            reached = self._reached.setdefault(arm, {})
            reached[step] = reached.get(step, 0) + 1
            after = self._after.setdefault(arm, {})
            if self._done_step(mask, self._prev.get(step)):
                after[step] = after.get(step, 0) + 1
            following = self._next.get(step)
            if following is not None and self._done_step(mask, following):
                after[following] = after.get(following, 0) + 1
        self.version += 1

    def _done_step(self, mask: int, step: str | None) -> bool:
        bit = None if step is None else self._steps.get(step)
        return bit is not None and bool(mask & (1 << bit))

    def onboarding_completed(self, user: str) -> None:
        """An ``Onboarding Completed`` by ``user``."""
        user = self.person(user)
        if user in self._user_done:
            return
        if len(self._user_done) >= FUNNEL_USERS:
            self.funnel_ignored += 1
            return
        self._user_done.add(user)
        arm = self._user_arm.get(user)
        if arm is not None:
            self._completed[arm] = self._completed.get(arm, 0) + 1
        self.version += 1

    def funnel(self) -> dict[str, dict[str, Any]]:
        """Per arm: its users (with a decision), users who completed each step, users who
        completed each step and the one before it in catalog order (``after``), and users who
        completed onboarding."""
        return {
            self.arms[a]: {
                "users": n,
                "steps": dict(self._reached.get(a, {})),
                "after": dict(self._after.get(a, {})),
                "completed": self._completed.get(a, 0),
            }
            for a, n in sorted(self._arm_users.items())
        }

    def stats(self) -> dict[str, int]:
        """Sizes, to show the aggregation stays bounded."""
        return {
            "users": sum(len(r.users) - len(r.moved) for r in self.experiments.values()),
            "funnelUsers": len(self._user_steps),
            "pending": len(self._pending),
            "orphans": len(self._orphans),
            "ignored": self.ignored,
            "funnelSteps": len(self._steps),
            "funnelIgnored": self.funnel_ignored,
            "usersIgnored": self.users_ignored,
            "mergesIgnored": self.merges_ignored,
        }
