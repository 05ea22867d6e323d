"""Experiments: sticky, deterministic assignment of users to arms.

``control`` serves the catalog's static flow, ``treatment`` (and e.g. ``treatment_b``) a model.
A ``holdout`` share of users gets the control flow too, permanently, and is left out of learning,
so the long-term effect of personalization can be measured against it.

How a user is assigned (all hashes are sha256 of ``salt``, a role and the user key, read as a
number in [0, 1)):

1. **Holdout first**, by its own hash: the user is in the holdout iff that number is below
   ``holdout``. Changing ``arms`` never moves anyone into or out of the holdout; raising
   ``holdout`` only adds users to it, lowering it only releases some.
2. **Sticky**: a ``previous`` arm (the caller passes the arm recorded for the user) that still
   exists in ``arms`` is kept, even if its weight is now 0, unless ``reassign=True``. Remove an
   arm from ``arms`` to move its users; set its weight to 0 to stop adding new ones.
3. **New users** (or ``reassign``) go to the arm that wins a weighted rendezvous race: every arm
   ``a`` draws ``u_a`` from its own hash and the arm with the smallest ``-ln(u_a) / w_a`` wins,
   which happens with probability ``w_a / sum(w)``. Since an arm's draw does not depend on the
   other arms, raising one arm's weight only moves users *into* that arm (never between two
   others), lowering it only moves users *out* of it, and adding an arm only takes users into
   it: the nested-bucket property of GrowthBook-style ranges, for every arm at once.

>>> exp = Experiment(name="onboarding", salt="2026-11", arms={"control": 0.5, "treatment": 0.5})
>>> arm = exp.assign("user-1")
>>> arm in ("control", "treatment"), exp.assign("user-1") == arm
(True, True)
>>> exp.assign("user-1", previous="treatment")
'treatment'
>>> Experiment.from_dict({"name": "x", "salt": "s", "arms": {"treatment": 1.0}})
Traceback (most recent call last):
...
ray_app.experiments.ExperimentError: experiment.arms: must contain 'control' (the static flow)
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ray_app.errors import ConfigError, FieldError

__all__ = ["CONTROL", "HOLDOUT", "Experiment", "ExperimentError", "unit_hash"]

CONTROL = "control"
HOLDOUT = "holdout"
_ARM = re.compile(r"^[a-z0-9_]+$")


class ExperimentError(FieldError, ConfigError):
    """An invalid experiment definition: the ``field`` at fault and why. Picklable.

    >>> import pickle
    >>> pickle.loads(pickle.dumps(ExperimentError("experiment.holdout", "too big"))).field
    'experiment.holdout'
    """


def unit_hash(*parts: str) -> float:
    """sha256 of the parts joined by ``:`` as a number in [0, 1) (first 8 bytes).

    >>> 0.0 <= unit_hash("salt", "user") < 1.0, unit_hash("a", "b") == unit_hash("a", "b")
    (True, True)
    """
    h = hashlib.sha256(":".join(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 18446744073709551616.0  # 2**64


class Experiment(BaseModel):
    """One experiment's arms, split and holdout. Frozen and picklable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Experiment name, logged with every decision.", min_length=1)
    salt: str = Field(
        description="Hash salt: a new salt reshuffles every user (a new experiment).", min_length=1
    )
    arms: dict[str, float] = Field(
        default_factory=lambda: {CONTROL: 0.5, "treatment": 0.5},
        description="Arm name -> weight (>= 0, relative). Must contain 'control'.",
    )
    holdout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share of users held out: control flow, excluded from learning.",
    )
    version: int = Field(default=1, ge=1, description="Bumped on every change of the split.")

    @field_validator("arms")
    @classmethod
    def _check_arms(cls, arms: dict[str, float]) -> dict[str, float]:
        for name, weight in arms.items():
            if not _ARM.match(name):
                raise ValueError(f"arm name {name!r} must match [a-z0-9_]+")
            if name == HOLDOUT:
                raise ValueError("'holdout' is reserved: set the holdout share with `holdout`")
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"arm {name!r}: weight must be a finite number >= 0, got {weight}")
        if CONTROL not in arms:
            raise ValueError("must contain 'control' (the static flow)")
        if sum(arms.values()) <= 0:
            raise ValueError("weights must sum to more than 0")
        return arms

    @classmethod
    def from_dict(cls, data: Any, where: str = "experiment") -> Experiment:
        """Validate a mapping (from settings or YAML); :class:`ExperimentError` if invalid."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ExperimentError(f"{where}.{loc}" if loc else where, msg) from None

    @property
    def arm_names(self) -> tuple[str, ...]:
        """Every arm a user can be in, ``holdout`` included when the holdout share is > 0."""
        return (*self.arms, HOLDOUT) if self.holdout > 0 else tuple(self.arms)

    def shares(self) -> dict[str, float]:
        """The expected share of users in each arm (holdout included)."""
        total = sum(self.arms.values())
        out = {a: (1.0 - self.holdout) * w / total for a, w in self.arms.items()}
        if self.holdout > 0:
            out[HOLDOUT] = self.holdout
        return out

    def in_holdout(self, user_key: str) -> bool:
        """Whether the user is in the holdout (depends on ``salt`` and ``holdout`` only)."""
        return self.holdout > 0 and unit_hash(self.salt, HOLDOUT, user_key) < self.holdout

    def assign(self, user_key: str, previous: str | None = None, reassign: bool = False) -> str:
        """The user's arm (see the module docstring): ``holdout``, ``previous``, or a new draw."""
        if self.in_holdout(user_key):
            return HOLDOUT
        if previous is not None and not reassign and previous in self.arms:
            return previous
        best, best_key = CONTROL, math.inf
        for arm, weight in self.arms.items():
            if weight <= 0:
                continue
            u = unit_hash(self.salt, "arm", arm, user_key)
            race = -math.log1p(-u) / weight  # -ln(1 - u): u in [0, 1) never hits log(0)
            if race < best_key:
                best, best_key = arm, race
        return best

    @staticmethod
    def serves_control(arm: str) -> bool:
        """Whether an arm gets the static flow (``control`` and ``holdout``)."""
        return arm in (CONTROL, HOLDOUT)

    @staticmethod
    def learns_from(arm: str) -> bool:
        """Whether decisions of this arm feed learning (every arm but the holdout)."""
        return arm != HOLDOUT

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (for logs and ``/healthz``)."""
        return {**self.model_dump(), "shares": self.shares()}
