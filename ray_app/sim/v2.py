"""Simulator v2: a hidden ground truth of what each kind of user responds to, and an oracle.

Every segment of :data:`ray_app.sim.population.SEGMENTS` prefers different actions in each slot
of the default catalog: :meth:`GroundTruth.p_complete` is the probability that a user of a
segment, shown an action, completes it (for ``next_step``: completes the step shown next; for the
content slots: follows the content shown). The preferences are designed so that

* the static flow (the catalog's ``default`` order) is never the best choice for ``next_step``
  and clearly beats uniform random, and the oracle clearly beats both;
* the best action differs by segment, and a user's segment can be read from the identify traits
  alone (``segment``, ``role``, ``companySize``, ``referral``);
* the **drift** scenario swaps each segment's favourite and least favourite action in every slot
  (from user ``drift_at_user`` on): the pre-drift optimum becomes the worst choice, the rest is
  unchanged, so the static flow and random keep their rates and only a learner that explores
  finds the new optimum.

Everything is deterministic given ``seed``: users by their index, responses by the ``rng`` passed
in. :meth:`GroundTruth.expected_rate` and :meth:`GroundTruth.journey_rate` give the exact expected
completion rates of the reference policies (static, random, oracle) over the segment mix.

>>> gt = GroundTruth(seed=1, drift_at_user=10_000)
>>> user = gt.user(0)
>>> user.traits["segment"] == user.segment, gt.drifted(user), gt.drifted(gt.user(10_000))
(True, False, True)
>>> rates = {p: round(gt.expected_rate(p), 4) for p in ("random", "static", "oracle")}
>>> rates
{'random': 0.5033, 'static': 0.5915, 'oracle': 0.85}
>>> slot = gt.catalog.slot("next_step")
>>> before = gt.oracle_choice("developer", "next_step", gt.eligible("developer", "next_step"))
>>> after = gt.oracle_choice("developer", "next_step", gt.eligible("developer", "next_step"),
...                          drifted=True)
>>> slot.actions[before].id, slot.actions[after].id, gt.p_complete("developer", "next_step", before, True)
('first_project', 'invite_teammates', 0.25)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ray_app.catalog import Catalog, load_catalog
from ray_app.sim.population import _BASE_SECONDS, SEGMENTS
from ray_app.sim.truth import POLICIES, ReferencePolicies

__all__ = [
    "PREFERENCES",
    "GroundTruth",
    "PolicyName",
    "SimUserV2",
]

PolicyName = Literal["static", "random", "oracle", "stale_oracle"]
_POLICIES = POLICIES

#: slot -> segment -> (action, completion probability), favourite first. Actions a segment cannot
#: get (``talk_to_sales`` outside its audiences) are left out and complete with ``_FLOOR``.
PREFERENCES: dict[str, dict[str, tuple[tuple[str, float], ...]]] = {
    "next_step": {
        "startup_founder": (
            ("goals", 0.85),
            ("role", 0.65),
            ("first_project", 0.52),
            ("invite_teammates", 0.42),
            ("team_size", 0.33),
            ("integrations", 0.25),
        ),
        "smb_manager": (
            ("invite_teammates", 0.85),
            ("role", 0.65),
            ("team_size", 0.52),
            ("goals", 0.42),
            ("integrations", 0.33),
            ("first_project", 0.25),
        ),
        "enterprise_admin": (
            ("integrations", 0.85),
            ("team_size", 0.65),
            ("role", 0.52),
            ("invite_teammates", 0.42),
            ("goals", 0.33),
            ("first_project", 0.25),
        ),
        "developer": (
            ("first_project", 0.85),
            ("integrations", 0.65),
            ("role", 0.52),
            ("goals", 0.42),
            ("team_size", 0.33),
            ("invite_teammates", 0.25),
        ),
    },
    "welcome_content": {
        "startup_founder": (
            ("template_gallery", 0.80),
            ("checklist_intro", 0.62),
            ("video_tour", 0.30),
        ),
        "smb_manager": (
            ("video_tour", 0.80),
            ("checklist_intro", 0.62),
            ("talk_to_sales", 0.40),
            ("template_gallery", 0.22),
        ),
        "enterprise_admin": (
            ("talk_to_sales", 0.80),
            ("checklist_intro", 0.62),
            ("video_tour", 0.40),
            ("template_gallery", 0.22),
        ),
        "developer": (
            ("video_tour", 0.80),
            ("checklist_intro", 0.62),
            ("template_gallery", 0.30),
        ),
    },
    "checklist_order": {
        "startup_founder": (
            ("invite_team", 0.80),
            ("create_project", 0.60),
            ("explore_templates", 0.45),
            ("import_data", 0.35),
            ("connect_integration", 0.25),
        ),
        "smb_manager": (
            ("import_data", 0.80),
            ("create_project", 0.60),
            ("invite_team", 0.45),
            ("connect_integration", 0.35),
            ("explore_templates", 0.25),
        ),
        "enterprise_admin": (
            ("connect_integration", 0.80),
            ("import_data", 0.60),
            ("create_project", 0.45),
            ("invite_team", 0.35),
            ("explore_templates", 0.25),
        ),
        "developer": (
            ("explore_templates", 0.80),
            ("create_project", 0.60),
            ("connect_integration", 0.45),
            ("import_data", 0.35),
            ("invite_team", 0.25),
        ),
    },
}

#: Actions that are the same for everyone and never drift (the gateway step).
_FIXED: dict[str, dict[str, float]] = {"next_step": {"welcome": 0.95}}
_FLOOR = 0.05

#: Median seconds to complete what a slot shows (steps: by step id).
_STEP_SECONDS = _BASE_SECONDS  # the same medians as simulator v1
_SLOT_SECONDS: dict[str, float] = {"welcome_content": 12, "checklist_order": 40}

_SEGMENTS = {s.name: s for s in SEGMENTS}


def _tables(drifted: bool) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for slot, by_segment in PREFERENCES.items():
        out[slot] = {}
        for seg, ranked in by_segment.items():
            actions = [a for a, _ in ranked]
            values = [p for _, p in ranked]
            if drifted:  # the favourite and the least favourite swap
                values[0], values[-1] = values[-1], values[0]
            out[slot][seg] = {**_FIXED.get(slot, {}), **dict(zip(actions, values, strict=True))}
    return out


_TABLES = {False: _tables(False), True: _tables(True)}


@dataclass(frozen=True)
class SimUserV2:
    """A simulated user: its index in the run, ids, hidden segment and identify traits
    (``segment``, ``role``, ``companySize``, ``referral``, ``accountId``)."""

    index: int
    user_id: str
    segment: str
    traits: dict[str, Any]

    def profile(self, completed: Iterable[str] = ("welcome",)) -> dict[str, Any]:
        """A minimal live profile (``Profile.as_dict()`` shape): traits and completed steps.

        >>> GroundTruth(seed=3).user(5).profile()["stepsCompleted"]
        ['welcome']
        """
        return {"traits": dict(self.traits), "stepsCompleted": list(completed)}


@dataclass(frozen=True)
class GroundTruth(ReferencePolicies):
    """The hidden preferences, the users and their responses (see the module docstring).

    ``drift_at_user``: the index of the first user who lives in the drifted world (``None``: no
    drift). ``catalog``: the catalog whose slots and actions are simulated (the default one).
    """

    seed: int = 0
    drift_at_user: int | None = None
    catalog: Catalog = field(default_factory=load_catalog, compare=False, repr=False)

    def __post_init__(self) -> None:
        for slot in PREFERENCES:
            if slot not in self.catalog.slots:
                raise ValueError(f"the catalog has no slot {slot!r} (simulator v2 needs it)")

    # ---------------------------------------------------------------------------------- users

    def user(self, index: int) -> SimUserV2:
        """User number ``index`` of this run (the same for the same seed and index)."""
        rng = random.Random(f"onramp-sim-v2/{self.seed}/{index}")
        seg = rng.choices(SEGMENTS, [s.weight for s in SEGMENTS])[0]
        traits = {
            "segment": seg.name,
            "role": rng.choice(seg.roles),
            "companySize": rng.choice(seg.company_sizes),
            "referral": rng.choice(seg.referrals),
            "accountId": f"acct-{self.seed}-{rng.randrange(100_000):05d}",
        }
        return SimUserV2(index, f"sim2-{self.seed}-{index:07d}", seg.name, traits)

    def drifted(self, user: SimUserV2 | int) -> bool:
        """Whether a user (or user index) lives in the drifted world."""
        index = user.index if isinstance(user, SimUserV2) else int(user)
        return self.drift_at_user is not None and index >= self.drift_at_user

    # ------------------------------------------------------------------------------ the truth

    def p_complete(
        self, segment: str, slot: str, action: str | int, drifted: bool = False
    ) -> float:
        """The probability that a user of ``segment`` shown ``action`` (id or index) in ``slot``
        completes it.

        >>> GroundTruth().p_complete("smb_manager", "next_step", "invite_teammates")
        0.85
        """
        try:
            table = _TABLES[bool(drifted)][slot][segment]
        except KeyError:
            raise ValueError(f"no ground truth for slot {slot!r}, segment {segment!r}") from None
        return table.get(self._action_id(slot, action), _FLOOR)

    def eligible(
        self, user: SimUserV2 | str, slot: str, completed: Iterable[str] = ("welcome",)
    ) -> list[int]:
        """The catalog's eligible action indices for a user (or a segment) who has completed
        ``completed``."""
        traits = user.traits if isinstance(user, SimUserV2) else {"segment": user}
        return self.catalog.eligible(slot, {"traits": traits, "stepsCompleted": list(completed)})

    def simulate_response(
        self,
        user: SimUserV2,
        slot: str,
        action: str | int,
        rng: random.Random,
        drifted: bool | None = None,
    ) -> tuple[bool, float]:
        """How ``user`` reacts to ``action`` in ``slot``: (completed, seconds until the
        completion or the drop-off). ``drifted=None`` follows ``drift_at_user``.

        >>> gt = GroundTruth(seed=2)
        >>> a = gt.simulate_response(gt.user(0), "next_step", "goals", random.Random(7))
        >>> a == gt.simulate_response(gt.user(0), "next_step", "goals", random.Random(7))
        True
        """
        world = self.drifted(user) if drifted is None else drifted
        p = self.p_complete(user.segment, slot, action, world)
        completed = rng.random() < p
        aid = self._action_id(slot, action)
        median = (
            _STEP_SECONDS.get(aid, 10.0) if slot == "next_step" else _SLOT_SECONDS.get(slot, 10.0)
        )
        seg = _SEGMENTS.get(user.segment)
        speed = seg.speed if seg is not None else 1.0
        seconds = max(0.5, median / speed * math.exp(rng.gauss(0.0, 0.5)))
        if not completed:
            seconds *= rng.uniform(0.2, 1.0)  # gave up part-way
        return completed, seconds

    # ----------------------------------------------------------------------- reference lines

    def expected_rate(
        self,
        policy: PolicyName,
        drifted: bool = False,
        slot: str = "next_step",
        completed: Iterable[str] = ("welcome",),
    ) -> float:
        """The exact expected completion rate of one decision in ``slot`` for users who have
        completed ``completed``, over the segment mix, under ``policy``: ``static`` (the catalog
        flow), ``random`` (uniform over the eligible actions), ``oracle`` (the best action) or
        ``stale_oracle`` (the pre-drift oracle, in the given world).

        >>> gt = GroundTruth()
        >>> gt.expected_rate("stale_oracle", drifted=True) < gt.expected_rate("random", True)
        True
        """
        done = list(completed)
        total = weight = 0.0
        for seg in SEGMENTS:
            el = self.eligible(seg.name, slot, done)
            if not el:
                continue
            dist = self._distribution(policy, seg.name, slot, el, drifted)
            total += seg.weight * sum(
                pa * self.p_complete(seg.name, slot, a, drifted) for a, pa in dist.items()
            )
            weight += seg.weight
        return total / weight if weight else 0.0

    def journey_rate(
        self, policy: PolicyName, drifted: bool = False, start: Iterable[str] = ("welcome",)
    ) -> float:
        """The exact expected per-decision completion rate of whole ``next_step`` journeys: from
        ``start`` completed, the user is shown a step, completes it (and asks again) or drops
        off (and leaves); expected completions / expected decisions over the segment mix.

        >>> gt = GroundTruth()
        >>> [round(gt.journey_rate(p), 3) for p in ("random", "static", "oracle")]
        [0.49, 0.522, 0.653]
        """
        decisions = completions = 0.0
        done = frozenset(start)
        for seg in SEGMENTS:
            d, c = self._journey(policy, seg.name, drifted, done, {})
            decisions += seg.weight * d
            completions += seg.weight * c
        return completions / decisions if decisions else 0.0

    def _journey(
        self,
        policy: str,
        segment: str,
        drifted: bool,
        done: frozenset[str],
        memo: dict[frozenset[str], tuple[float, float]],
    ) -> tuple[float, float]:
        """(expected decisions, expected completions) of a journey from ``done`` on."""
        if done in memo:
            return memo[done]
        slot = "next_step"
        el = self.eligible(segment, slot, sorted(done))
        d = c = 0.0
        if el:
            d = 1.0
            for a, pa in self._distribution(policy, segment, slot, el, drifted).items():
                p = self.p_complete(segment, slot, a, drifted)
                sub = done | {self._action_id(slot, a)}
                sub_d, sub_c = self._journey(policy, segment, drifted, sub, memo)
                d += pa * p * sub_d
                c += pa * p * (1.0 + sub_c)
        memo[done] = (d, c)
        return d, c
