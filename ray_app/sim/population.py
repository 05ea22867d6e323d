"""A seeded synthetic population walking a multi-step onboarding flow (pure: no I/O, no clock).

Segments differ in role, company size and referral source, and in how they move through the
flow: how likely they drop off at each step, how long they spend on it, how often they hit a form
error and retry. Every journey is a list of Segment calls with ``context.onramp`` (session id,
per-session ``seq``, step id) and a deterministic ``messageId``.

>>> users = Population(seed=1, size=3).users
>>> [u.segment.name for u in users] == [u.segment.name for u in Population(seed=1, size=3).users]
True
>>> calls = journey(users[0], random.Random(0), start=0.0)
>>> calls[0].call["type"], calls[0].call["context"]["onramp"]["seq"]
('page', 0)
"""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SEGMENTS",
    "STEPS",
    "Population",
    "Segment",
    "SimCall",
    "SimUser",
    "crm_accounts",
    "journey",
    "virtual_iso",
]

_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the simulated devices' clock starts here


def virtual_iso(at: float) -> str:
    """Virtual seconds -> an ISO time on the simulated devices' clock."""
    from ray_app.timefmt import iso

    return iso(dt.datetime.fromtimestamp(_EPOCH + at, dt.UTC))


#: The onboarding flow, in its default order.
STEPS: tuple[str, ...] = (
    "welcome",
    "role",
    "team_size",
    "goals",
    "integrations",
    "invite_teammates",
    "first_project",
)

#: Base probability of leaving the flow at each step (before the segment's multiplier).
_BASE_DROP: dict[str, float] = {
    "welcome": 0.04,
    "role": 0.03,
    "team_size": 0.04,
    "goals": 0.06,
    "integrations": 0.12,
    "invite_teammates": 0.15,
    "first_project": 0.08,
}

#: Median seconds on each step.
_BASE_SECONDS: dict[str, float] = {
    "welcome": 6,
    "role": 8,
    "team_size": 7,
    "goals": 20,
    "integrations": 45,
    "invite_teammates": 30,
    "first_project": 60,
}

#: Steps with a form that can fail validation.
_FORM_STEPS = frozenset({"role", "team_size", "goals", "invite_teammates", "first_project"})


@dataclass(frozen=True)
class Segment:
    """A kind of user and how it behaves."""

    name: str
    weight: float
    roles: tuple[str, ...]
    company_sizes: tuple[str, ...]
    referrals: tuple[str, ...]
    drop_multiplier: float
    speed: float  # >1: faster than the median
    form_error_rate: float


SEGMENTS: tuple[Segment, ...] = (
    Segment(
        "startup_founder",
        0.25,
        ("founder", "ceo"),
        ("1-10",),
        ("product_hunt", "twitter"),
        1.2,
        1.5,
        0.08,
    ),
    Segment(
        "smb_manager",
        0.30,
        ("manager", "ops"),
        ("11-50", "51-200"),
        ("google", "referral"),
        0.9,
        1.0,
        0.12,
    ),
    Segment(
        "enterprise_admin",
        0.20,
        ("it_admin", "director"),
        ("201-1000", "1000+"),
        ("sales", "partner"),
        0.7,
        0.6,
        0.20,
    ),
    Segment(
        "developer",
        0.25,
        ("engineer",),
        ("1-10", "11-50", "51-200"),
        ("github", "docs", "google"),
        1.4,
        1.3,
        0.05,
    ),
)


@dataclass(frozen=True)
class SimUser:
    user_id: str
    anonymous_id: str
    segment: Segment
    traits: dict[str, Any]


@dataclass(frozen=True)
class SimCall:
    """One call a simulated client makes, at virtual time ``at`` (seconds)."""

    at: float
    user_id: str
    call: dict[str, Any]


@dataclass
class Population:
    """``size`` users drawn from :data:`SEGMENTS` with a seed."""

    seed: int = 7
    size: int = 1000
    users: list[SimUser] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        weights = [s.weight for s in SEGMENTS]
        self.users = []
        for i in range(self.size):
            seg = rng.choices(SEGMENTS, weights)[0]
            uid = f"u{self.seed}-{i:06d}"
            self.users.append(
                SimUser(
                    user_id=uid,
                    anonymous_id=str(uuid.UUID(int=rng.getrandbits(128))),
                    segment=seg,
                    traits={
                        "segment": seg.name,
                        "role": rng.choice(seg.roles),
                        "companySize": rng.choice(seg.company_sizes),
                        "referral": rng.choice(seg.referrals),
                        "accountId": f"acct-{rng.randrange(self.size // 3 + 1):05d}",
                        "email": f"{uid}@example.com",
                    },
                )
            )


_PLANS = {
    "startup_founder": "starter",
    "smb_manager": "team",
    "enterprise_admin": "enterprise",
    "developer": "free",
}
_INDUSTRIES = ("saas", "fintech", "retail", "health", "education")
_REGIONS = ("na", "emea", "apac")


def crm_accounts(population: Population, missing_share: float = 0.1) -> dict[str, dict[str, Any]]:
    """A CRM row per account of the population (seeded), with ``missing_share`` of the accounts
    left out, as a real CRM never knows everyone."""
    rng = random.Random(population.seed * 7919 + 1)
    rows: dict[str, dict[str, Any]] = {}
    for user in population.users:
        acct = user.traits["accountId"]
        if acct in rows or rng.random() < missing_share:
            rows.setdefault(acct, {})
            continue
        size = user.traits["companySize"]
        low = int(size.split("-")[0].rstrip("+"))
        rows[acct] = {
            "plan": _PLANS[user.segment.name],
            "industry": rng.choice(_INDUSTRIES),
            "employees": low + rng.randrange(max(low, 10)),
            "region": rng.choice(_REGIONS),
        }
    return {k: v for k, v in rows.items() if v}


def _lognormal_seconds(rng: random.Random, median: float, speed: float) -> float:
    return max(0.5, median / speed * math.exp(rng.gauss(0.0, 0.6)))


def journey(user: SimUser, rng: random.Random, start: float) -> list[SimCall]:
    """The calls of one user's onboarding session, in order, starting at virtual time ``start``."""
    seg = user.segment
    session = str(uuid.UUID(int=rng.getrandbits(128)))
    calls: list[SimCall] = []
    t = start
    seq = 0

    def emit(kind: str, step: str | None, **fields: Any) -> None:
        nonlocal seq
        onramp: dict[str, Any] = {"sessionId": session, "seq": seq}
        if step:
            onramp["stepId"] = step
        identity: dict[str, Any] = {"anonymousId": user.anonymous_id}
        if seq > 0 or kind == "identify":
            identity["userId"] = user.user_id
        call = {
            "type": kind,
            "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
            "timestamp": virtual_iso(t),
            **identity,
            "context": {"onramp": onramp, "library": {"name": "onramp-sim", "version": "1"}},
            **fields,
        }
        calls.append(SimCall(t, user.user_id, call))
        seq += 1

    emit("page", "welcome", name="Sign up", properties={"path": "/signup"})
    t += rng.uniform(5, 30)
    emit("identify", None, traits=dict(user.traits))
    for step in STEPS:
        t += rng.uniform(0.2, 1.5)
        emit("page", step, name=step, properties={"path": f"/onboarding/{step}"})
        emit("track", step, event="Step Viewed", properties={"stepId": step})
        spent = _lognormal_seconds(rng, _BASE_SECONDS[step], seg.speed)
        if step in _FORM_STEPS:
            retries = 0
            while rng.random() < seg.form_error_rate and retries < 3:
                t += spent * rng.uniform(0.3, 0.8)
                emit(
                    "track",
                    step,
                    event="Form Error",
                    properties={
                        "stepId": step,
                        "field": rng.choice(("name", "email", "size", "goal")),
                    },
                )
                retries += 1
        if rng.random() < _BASE_DROP[step] * seg.drop_multiplier:
            t += spent * rng.uniform(0.2, 1.0)
            emit(
                "track",
                step,
                event="Step Abandoned",
                properties={"stepId": step, "durationMs": int(spent * 1000)},
            )
            return calls
        t += spent
        emit(
            "track",
            step,
            event="Step Completed",
            properties={"stepId": step, "durationMs": int(spent * 1000)},
        )
    t += rng.uniform(0.5, 2)
    emit("track", None, event="Onboarding Completed", properties={"steps": len(STEPS)})
    return calls
