"""Worlds the feature code has never seen: configurable simulated customers for the learning
benchmarks (``bench/learning.py --world NAME``, ``bench/learning_twin.py``).

A :class:`World` is a hidden ground truth with the interface that :mod:`ray_app.sim.live` and
the benchmarks use (the same as :class:`ray_app.sim.v2.GroundTruth`): ``user(index)`` gives a
user with identify ``traits`` and a hidden ``segment`` label (for reporting only: it is never
sent), and ``p_complete``, ``eligible``, ``oracle_choice``, ``static_choice``,
``random_choice``, ``simulate_response``, ``expected_rate`` and ``drifted`` answer as the
ground truth. Worlds simulate the default catalog's ``next_step`` slot (after ``welcome``, six
steps are eligible; the static flow shows ``role``).

What every world (but ``v2``) has in common:

* **its own trait names and values**, none of them in :mod:`ray_app.sim.population` or in the
  feature code (a test checks it), so a model can only learn them from traffic;
* **preferences driven by two traits together**: each cell (a value of the first trait x a value
  of the second) has one favourite step (completion probability 0.76-0.86), one runner-up
  (0.58-0.64: the static flow's ``role`` in about three cells out of four) and four mediocre
  steps (0.30-0.45). The favourite is laid out as a Latin square over the two traits, so that
  neither trait alone tells it: given one trait, the best step on average is the runner-up
  (mostly the static flow's), which is the favourite of no cell;
* **a third trait that is pure noise** (independent of everything);
* **some users send their traits in ``context.traits``** (``context_share``, 30% by default),
  as RudderStack's browser SDK does, instead of top-level ``traits``;
* the static flow clearly beats uniform random and is far from the oracle;
* optional **drift** from user ``drift_at`` on: each cell's favourite swaps with one of its
  mediocre steps (the new favourite is again a Latin square over the two traits; the static flow
  and random keep their rates). ``abrupt``: every user from ``drift_at`` on lives in the drifted
  world; ``gradual``: the share of drifted users ramps linearly from 0 at ``drift_at`` to 1 at
  ``drift_at + drift_span``.

The worlds (:data:`WORLDS`; :func:`world` builds one by name):

``teams`` (the default)
    A collaboration tool. ``discipline`` (6 values) x ``crewSize`` (4 values) = 24 cells; noise:
    ``heardFrom``.
``clinics``
    Practice-management software. ``specialty`` (5 values) x ``beds``, a **number** (1 to 9,999)
    whose decade (1-9, 10-99, 100-999, 1000+) matters = 20 cells; noise: ``pmsVendor``.
``fleets``
    Fleet dispatch. ``cargo`` (5 values) x ``vehicles``, a **number** (1 to 1,999) whose band
    matters, on bounds that are neither decades nor powers of two (1-4, 5-24, 25-149, 150+) =
    20 cells; noise: ``dispatchApp``.
``campus``
    A course platform. ``faculty`` (6 values) x ``cohort`` (5 values) = 30 cells; noise:
    ``dormitory``.
``v2``
    The project's own simulator (:class:`ray_app.sim.v2.GroundTruth`, the feature code's
    original vocabulary), kept for continuity; no gradual drift.

Everything is deterministic: the preferences by the world's name, the users by ``seed`` and
their index, responses by the ``rng`` passed in.

>>> w = world("teams", seed=1)
>>> u = w.user(0)
>>> sorted(u.traits), u.segment == f"{u.traits['discipline']}/{u.traits['crewSize']}"
(['crewSize', 'discipline', 'heardFrom'], True)
>>> {p: round(w.expected_rate(p), 3) for p in ("random", "static", "oracle")}
{'random': 0.488, 'static': 0.555, 'oracle': 0.82}
>>> round(sum(w.user(i).traits_in_context for i in range(1000)) / 1000, 1)
0.3

The best step depends on both traits: two cells that share one trait prefer different steps.

>>> best = {c: w.catalog.slot("next_step").actions[w.oracle_choice(c, "next_step",
...         w.eligible(c, "next_step"))].id for c in w.cells}
>>> best["copywriter/solo"], best["copywriter/dozens"], best["data_wrangler/solo"]
('integrations', 'goals', 'team_size')

The numeric trait of ``clinics`` counts by its decade:

>>> c = world("clinics", seed=2)
>>> [(c.user(i).traits["beds"], c.user(i).segment) for i in range(2)]
[(6, 'dentistry/1-9'), (1911, 'veterinary/1000+')]

Drift moves every cell's favourite, and a gradual drift ramps the drifted share:

>>> d = world("teams", seed=1, drift_at=1_000)
>>> cell = "copywriter/solo"
>>> el = d.eligible(cell, "next_step")
>>> d.oracle_choice(cell, "next_step", el) != d.oracle_choice(cell, "next_step", el, drifted=True)
True
>>> g = world("teams", seed=1, drift_at=1_000, drift="gradual", drift_span=2_000)
>>> [round(sum(g.drifted(i) for i in range(s, s + 500)) / 500, 1) for s in (0, 1_000, 2_500, 3_000)]
[0.0, 0.1, 0.9, 1.0]
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ray_app.catalog import Catalog, load_catalog
from ray_app.sim.traits import Trait
from ray_app.sim.truth import POLICIES, ReferencePolicies
from ray_app.sim.v2 import _STEP_SECONDS, GroundTruth

__all__ = [
    "DEFAULT_WORLD",
    "DRIFTS",
    "WORLDS",
    "DriftKind",
    "Trait",
    "World",
    "WorldUser",
    "world",
]

DriftKind = Literal["abrupt", "gradual", "none"]
DRIFTS: tuple[str, ...] = ("abrupt", "gradual", "none")

#: The world the benchmarks run on unless told otherwise.
DEFAULT_WORLD = "teams"

_SLOT = "next_step"
#: The static flow's choice after ``welcome`` (the catalog's default order).
_STATIC = "role"
#: The other steps eligible after ``welcome``: favourites are laid out over these.
_OTHERS = ("team_size", "goals", "integrations", "invite_teammates", "first_project")
#: The gateway step: the same for everyone, never drifts (as in simulator v2).
_FIXED = {"welcome": 0.95}
_FLOOR = 0.05

_POLICIES = POLICIES


@dataclass(frozen=True)
class WorldUser:
    """A simulated user of a world: index in the run, id, hidden ``segment`` (the cell label
    ``"<first>/<second>"``, for reporting only), identify ``traits``, and whether the user's SDK
    sends them in ``context.traits`` instead of top-level ``traits``."""

    index: int
    user_id: str
    segment: str
    traits: dict[str, Any]
    traits_in_context: bool = False

    def profile(self, completed: Iterable[str] = ("welcome",)) -> dict[str, Any]:
        """A minimal live profile (``Profile.as_dict()`` shape): traits and completed steps.

        >>> world("campus").user(3).profile()["stepsCompleted"]
        ['welcome']
        """
        return {"traits": dict(self.traits), "stepsCompleted": list(completed)}


@functools.cache
def _preferences(
    name: str, first: int, second: int
) -> dict[bool, dict[tuple[int, int], dict[str, float]]]:
    """(drifted -> (first bucket, second bucket) -> step -> completion probability)."""
    rng = random.Random(f"onramp-world/{name}/preferences")
    n = len(_OTHERS)
    # Latin square: favourite = _OTHERS[(rows[i] + cols[j]) % n]; rows and cols are permutations
    # (cycled past n values), so two cells sharing either trait differ whenever the other differs
    rows, cols = list(range(n)), list(range(n))
    rng.shuffle(rows)
    rng.shuffle(cols)
    before: dict[tuple[int, int], dict[str, float]] = {}
    after: dict[tuple[int, int], dict[str, float]] = {}
    for i in range(first):
        for j in range(second):
            k = (rows[i % n] + cols[j % n]) % n
            fav, target = _OTHERS[k], _OTHERS[(k + 2) % n]
            p = {a: round(rng.uniform(0.30, 0.45), 3) for a in (_STATIC, *_OTHERS)}
            p[fav] = round(rng.uniform(0.76, 0.86), 3)
            # the static flow's step is the runner-up in three cells out of four
            side = _OTHERS[(k + rng.choice((1, 4))) % n]
            runner_up = side if (i + 2 * j) % 4 == 3 else _STATIC
            p[runner_up] = round(rng.uniform(0.58, 0.64), 3)
            before[(i, j)] = {**_FIXED, **p}
            swapped = dict(p)
            swapped[fav], swapped[target] = p[target], p[fav]
            after[(i, j)] = {**_FIXED, **swapped}
    return {False: before, True: after}


@dataclass(frozen=True)
class World(ReferencePolicies):
    """A simulated customer (see the module docstring): the traits its users send, the hidden
    preferences over the default catalog's ``next_step``, and their drift.

    ``drift_at``: the index of the first user who may live in the drifted world (``None``: no
    drift); ``drift``: ``abrupt`` (all users from ``drift_at`` on), ``gradual`` (a share ramping
    linearly to all over ``drift_span`` users) or ``none``. ``context_share``: the share of users
    whose identify call carries its traits in ``context.traits``.
    """

    name: str
    first: Trait
    second: Trait
    noise: Trait
    seed: int = 0
    drift_at: int | None = None
    drift: DriftKind = "abrupt"
    drift_span: int = 3_000
    context_share: float = 0.3
    catalog: Catalog = field(default_factory=load_catalog, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.drift not in DRIFTS:
            raise ValueError(f"drift must be one of {', '.join(DRIFTS)}, got {self.drift!r}")
        if self.drift_span < 1:
            raise ValueError(f"drift_span must be >= 1, got {self.drift_span!r}")
        if not 0.0 <= self.context_share <= 1.0:
            raise ValueError(f"context_share must be in [0, 1], got {self.context_share!r}")
        if self.first.numeric or self.noise.numeric:
            raise ValueError("only the second trait of a world may be numeric")
        if _SLOT not in self.catalog.slots:
            raise ValueError(f"the catalog has no slot {_SLOT!r} (worlds simulate it)")
        ids = {a.id for a in self.catalog.slot(_SLOT).actions}
        missing = {_STATIC, *_OTHERS, *_FIXED} - ids
        if missing:
            raise ValueError(f"the catalog's {_SLOT} has no {', '.join(sorted(missing))}")

    # ------------------------------------------------------------------------------- the cells

    @property
    def drift_at_user(self) -> int | None:
        """``drift_at`` under :class:`~ray_app.sim.v2.GroundTruth`'s name."""
        return None if self.drift == "none" else self.drift_at

    @property
    def trait_names(self) -> tuple[str, str, str]:
        """The identify traits users send: the two that matter, then the noise."""
        return (self.first.name, self.second.name, self.noise.name)

    def _label(self, i: int, j: int) -> str:
        return f"{self.first.values[i]}/{self.second.values[j]}"

    @functools.cached_property
    def _cells(self) -> dict[str, tuple[int, int, float]]:
        return {
            self._label(i, j): (i, j, self.first.weight(i) * self.second.weight(j))
            for i in range(len(self.first.values))
            for j in range(len(self.second.values))
        }

    @property
    def cells(self) -> dict[str, float]:
        """Cell label -> its share of the users."""
        return {c: w for c, (_, _, w) in self._cells.items()}

    # ---------------------------------------------------------------------------------- users

    def user(self, index: int) -> WorldUser:
        """User number ``index`` of this run (the same for the same seed and index)."""
        rng = random.Random(f"onramp-world/{self.name}/{self.seed}/{index}")
        i, a = self.first.draw(rng)
        j, b = self.second.draw(rng)
        _, z = self.noise.draw(rng)
        in_context = rng.random() < self.context_share
        traits = {self.first.name: a, self.second.name: b, self.noise.name: z}
        uid = f"{self.name}-{self.seed}-{index:07d}"
        return WorldUser(index, uid, self._label(i, j), traits, in_context)

    def drifted(self, user: WorldUser | int) -> bool:
        """Whether a user (or user index) lives in the drifted world."""
        index = user.index if isinstance(user, WorldUser) else int(user)
        at = self.drift_at_user
        if at is None or index < at:
            return False
        if self.drift == "abrupt":
            return True
        share = (index - at) / self.drift_span
        if share >= 1.0:
            return True
        return random.Random(f"onramp-world/{self.name}/{self.seed}/drift/{index}").random() < share

    # ------------------------------------------------------------------------------ the truth

    def p_complete(
        self, segment: str, slot: str, action: str | int, drifted: bool = False
    ) -> float:
        """The probability that a user of cell ``segment`` shown ``action`` (id or index) in
        ``slot`` completes it.

        >>> w = world("teams")
        >>> w.p_complete("copywriter/solo", "next_step", "integrations")
        0.8
        """
        cell = self._cells.get(segment)
        if slot != _SLOT or cell is None:
            raise ValueError(f"world {self.name!r}: no ground truth for {slot!r}, {segment!r}")
        table = _preferences(self.name, len(self.first.values), len(self.second.values))
        return table[bool(drifted)][cell[:2]].get(self._action_id(slot, action), _FLOOR)

    def eligible(
        self, user: WorldUser | str, slot: str, completed: Iterable[str] = ("welcome",)
    ) -> list[int]:
        """The catalog's eligible action indices for a user (or a cell) who has completed
        ``completed``."""
        traits = user.traits if isinstance(user, WorldUser) else {}
        return self.catalog.eligible(slot, {"traits": traits, "stepsCompleted": list(completed)})

    def simulate_response(
        self,
        user: WorldUser,
        slot: str,
        action: str | int,
        rng: random.Random,
        drifted: bool | None = None,
    ) -> tuple[bool, float]:
        """How ``user`` reacts to ``action`` in ``slot``: (completed, seconds until the
        completion or the drop-off). ``drifted=None`` follows :meth:`drifted`.

        >>> w = world("clinics", seed=2)
        >>> a = w.simulate_response(w.user(0), "next_step", "goals", random.Random(7))
        >>> a == w.simulate_response(w.user(0), "next_step", "goals", random.Random(7))
        True
        """
        in_drift = self.drifted(user) if drifted is None else drifted
        completed = rng.random() < self.p_complete(user.segment, slot, action, in_drift)
        median = _STEP_SECONDS.get(self._action_id(slot, action), 10.0)
        seconds = max(0.5, median * math.exp(rng.gauss(0.0, 0.5)))
        if not completed:
            seconds *= rng.uniform(0.2, 1.0)  # gave up part-way
        return completed, seconds

    # ----------------------------------------------------------------------- reference lines

    def expected_rate(
        self,
        policy: str,
        drifted: bool = False,
        slot: str = _SLOT,
        completed: Iterable[str] = ("welcome",),
    ) -> float:
        """The exact expected completion rate of one decision in ``slot`` for users who have
        completed ``completed``, over the cell mix, under ``policy``: ``static``, ``random``,
        ``oracle`` or ``stale_oracle`` (the pre-drift oracle, in the given world).

        >>> w = world("campus")
        >>> w.expected_rate("stale_oracle", drifted=True) < w.expected_rate("static", True)
        True
        """
        done = list(completed)
        el = self.eligible("", slot, done)
        if not el:
            return 0.0
        total = 0.0
        for cell, weight in self.cells.items():
            dist = self._distribution(policy, cell, slot, el, drifted)
            total += weight * sum(
                pa * self.p_complete(cell, slot, a, drifted) for a, pa in dist.items()
            )
        return total


# ------------------------------------------------------------------------------------ registry


def _decades(top: int) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    bounds = tuple((10**k, 10 ** (k + 1) - 1) for k in range(top))
    labels = tuple(f"{lo}-{hi}" if k < top - 1 else f"{lo}+" for k, (lo, hi) in enumerate(bounds))
    return labels, bounds


_BED_LABELS, _BED_BOUNDS = _decades(4)

_SPECS: dict[str, tuple[Trait, Trait, Trait]] = {
    "teams": (
        Trait(
            "discipline",
            (
                "illustrator",
                "copywriter",
                "data_wrangler",
                "quartermaster",
                "recruiter",
                "bookkeeper",
            ),
            (0.22, 0.20, 0.18, 0.16, 0.14, 0.10),
        ),
        Trait("crewSize", ("solo", "huddle", "dozens", "hundreds"), (0.35, 0.30, 0.20, 0.15)),
        Trait("heardFrom", ("podcast", "newsletter", "meetup", "billboard", "coworker")),
    ),
    "clinics": (
        Trait(
            "specialty",
            ("dentistry", "physiotherapy", "veterinary", "optometry", "dermatology"),
            (0.30, 0.25, 0.20, 0.15, 0.10),
        ),
        Trait("beds", _BED_LABELS, (0.40, 0.30, 0.20, 0.10), _BED_BOUNDS),
        Trait("pmsVendor", ("chartwise", "ledgerly", "paperbound", "stethodesk")),
    ),
    "fleets": (
        Trait("cargo", ("produce", "lumber", "furniture", "chemicals", "livestock")),
        Trait(
            "vehicles",
            ("1-4", "5-24", "25-149", "150+"),
            (0.35, 0.30, 0.20, 0.15),
            ((1, 4), (5, 24), (25, 149), (150, 1_999)),
        ),
        Trait("dispatchApp", ("routewise", "haulpad", "fleetbook", "truckly")),
    ),
    "campus": (
        Trait(
            "faculty",
            ("chemistry", "linguistics", "philosophy", "astronomy", "horticulture", "musicology"),
        ),
        Trait(
            "cohort",
            ("freshman", "sophomore", "junior", "senior", "postdoc"),
            (0.30, 0.25, 0.20, 0.15, 0.10),
        ),
        Trait("dormitory", ("north_hall", "riverside", "offsite", "lakeview")),
    ),
}


def _factory(name: str) -> Callable[..., World]:
    first, second, noise = _SPECS[name]

    def make(
        seed: int = 0,
        drift_at: int | None = None,
        drift: DriftKind = "abrupt",
        drift_span: int = 3_000,
        context_share: float = 0.3,
        catalog: Catalog | None = None,
    ) -> World:
        return World(
            name, first, second, noise, seed, drift_at, drift, drift_span, context_share,
            catalog if catalog is not None else load_catalog(),
        )  # fmt: skip

    make.__name__ = make.__qualname__ = name
    make.__doc__ = f"The {name!r} world (see :mod:`ray_app.sim.worlds`)."
    return make


def _v2(
    seed: int = 0,
    drift_at: int | None = None,
    drift: DriftKind = "abrupt",
    catalog: Catalog | None = None,
    **_: Any,
) -> GroundTruth:
    """Simulator v2 (:class:`~ray_app.sim.v2.GroundTruth`): abrupt drift only."""
    if drift == "gradual":
        raise ValueError("world 'v2' has no gradual drift")
    at = None if drift == "none" else drift_at
    if catalog is None:
        return GroundTruth(seed=seed, drift_at_user=at)
    return GroundTruth(seed=seed, drift_at_user=at, catalog=catalog)


#: World name -> a factory ``(seed=0, drift_at=None, drift="abrupt", **options)``.
WORLDS: dict[str, Callable[..., World | GroundTruth]] = {
    **{name: _factory(name) for name in _SPECS},
    "v2": _v2,
}


def world(
    name: str = DEFAULT_WORLD,
    seed: int = 0,
    drift_at: int | None = None,
    drift: DriftKind = "abrupt",
    **options: Any,
) -> World | GroundTruth:
    """The world called ``name`` (a :class:`World`, or a :class:`~ray_app.sim.v2.GroundTruth`
    for ``v2``); ``options``: ``drift_span``, ``context_share``, ``catalog``.

    >>> world("campus", seed=3, drift_at=5_000, drift="none").drifted(9_000)
    False
    >>> world("atlantis")
    Traceback (most recent call last):
    ...
    ValueError: unknown world 'atlantis' (known: teams, clinics, fleets, campus, v2)
    """
    try:
        make = WORLDS[name]
    except KeyError:
        raise ValueError(f"unknown world {name!r} (known: {', '.join(WORLDS)})") from None
    return make(seed=seed, drift_at=drift_at, drift=drift, **options)
