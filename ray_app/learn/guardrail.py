"""The guardrail against the static flow: is the learner's model doing worse than ``control``?

The loss guardrail of :class:`~ray_app.learn.learner.OnlineLearner` compares a candidate with the
last good weights; it cannot see a model that is bad from the start (trained on another world,
resumed from a stranger's state) and stays as bad. :class:`ControlGuardrail` compares the live
completion rates of the model's arm and of the ``control`` arm, which serves the catalog's
static flow, on the rewards as they arrive.

**The test.** A one-sided two-proportion z-test, pooled variance::

    z = (p_t - p_c) / sqrt(p (1 - p) (1 / n_t + 1 / n_c))

over the last ``window`` rewards of the treatment arms and the last ``control_window`` rewards
of ``control`` (sliding windows counted in rewards, so the test means the same at any traffic).
After a :meth:`~ControlGuardrail.restart` (a rollback, a drift), control's count only from the
first decision of treatment's new window on: a change of the world between the two must not
read as a gap between the arms (after a drift the treatment window holds only the new world's
rewards, and a control window reaching back into the old one had fired false rollbacks). Once
control's window has turned over since, it is whole again, however small control's share.
With at least ``min_treatment`` and ``min_control`` rewards in them, ``z < -z`` **fires**
(treatment significantly below control), and ``p_t >= p_c`` **beats** control (the learner then
snapshots the weights it serves). The default ``z = 3.09`` (one-sided 0.1%) is stricter than a
single test needs because the test is repeated at every publish over overlapping windows:
simulated with both arms at a 60% rate, 50/50 traffic and a look every 64 rewards, 2.33 fired
falsely in 24% of 20k-user runs, 3.09 in 4% (and 0.8% of 3k-user runs); a 10-point gap
(50% vs 60%) still fires after a median of 770 users (about 380 treatment users), a 5-point gap
after about 2,900.

**What counts.** Only the arms named ``treatment_arms`` (default: ``treatment``, the arm the
online learner publishes to; ``treatment_b`` serves another model file) and ``control``; the
``holdout`` and any other arm are ignored. After a firing the learner publishes rolled-back
weights as version ``V`` and calls :meth:`ControlGuardrail.restart` with ``V``: the treatment
window is emptied and only rewards of decisions made by versions ``>= V`` count from then on, so
the bad version's late rewards cannot fire it again, and it needs ``min_treatment`` fresh rewards
before it can. The control window is kept (the static flow did not change).

**Delayed rewards.** Explicit outcomes (completed, abandoned) arrive within seconds, a
``timeout`` (no outcome at all) at the end of its attribution window. Both windows count rewards
as they arrive, timeouts included (a user who did nothing did not complete). After a restart of
the treatment window, the new version's timeouts come later than its explicit outcomes while
control's window is in steady state: treatment then looks better than it is until its first
timeouts arrive, so the bias delays a firing and never causes one.

Feed every reward once (the learner feeds them after its dedupe). Pure, clock-free, picklable.

>>> import random
>>> from types import SimpleNamespace as R
>>> rng = random.Random(0)
>>> g = ControlGuardrail()
>>> for i in range(1_000):
...     arm = "treatment" if i % 2 else "control"
...     g.observe(R(arm=arm, reward=float(rng.random() < (0.3 if i % 2 else 0.6)),
...                 model_version=4))
>>> c = g.compare()
>>> c.fires, c.treatment_n, c.control_n, round(c.z, 1)
(True, 500, 500, -8.5)
>>> g.restart(min_version=5)                      # after the rollback, published as version 5
>>> g.observe(R(arm="treatment", reward=0.0, model_version=4))    # a decision of the bad model
>>> g.compare().treatment_n, g.compare().fires
(0, False)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ray_app.experiments import CONTROL

__all__ = ["TREATMENT", "ControlComparison", "ControlGuardrail"]

#: The arm that serves the online learner's model.
TREATMENT = "treatment"


class _Reward(Protocol):
    @property
    def arm(self) -> str: ...
    @property
    def reward(self) -> float: ...
    @property
    def model_version(self) -> int: ...


#: The decision time of a reward without one: compared with every window entry.
_NO_TIME = -1


def _decided(record: Any) -> int:
    at = getattr(record, "decided_at_ms", None)
    return at if isinstance(at, int) else _NO_TIME


@dataclass(frozen=True)
class ControlComparison:
    """Treatment against control over the current windows.

    ``treatment_rate``/``control_rate``: mean reward in each window (``None`` if empty);
    ``z``: the test statistic (``None`` below the minimum samples; negative: treatment worse);
    ``enough``: both windows hold their minimum; ``fires``: ``z < -threshold``; ``beats``:
    ``enough`` and ``treatment_rate >= control_rate``; ``min_version``: the oldest model version
    whose decisions count for treatment; ``paused``: the learner explores on purpose (warm-up,
    boost) and does not act on the comparison (``fires`` and ``beats`` are then False).
    """

    treatment_n: int
    treatment_rate: float | None
    control_n: int
    control_rate: float | None
    z: float | None
    threshold: float
    enough: bool
    fires: bool
    beats: bool
    min_version: int
    paused: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (bundle metadata, the learner's status, logs)."""
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class ControlGuardrail:
    """Sliding windows of treatment and control rewards and the test between them (see the
    module docstring). ``min_version``: treatment rewards of decisions by older model versions
    are ignored (see :meth:`restart`)."""

    def __init__(
        self,
        window: int = 2_000,
        control_window: int = 2_000,
        min_treatment: int = 300,
        min_control: int = 100,
        z: float = 3.09,
        treatment_arms: Sequence[str] = (TREATMENT,),
        control_arm: str = CONTROL,
        min_version: int = 0,
    ) -> None:
        for name, v in (
            ("window", window),
            ("control_window", control_window),
            ("min_treatment", min_treatment),
            ("min_control", min_control),
        ):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if min_treatment > window or min_control > control_window:
            raise ValueError("the minimum samples must fit in their windows")
        if not (isinstance(z, int | float) and math.isfinite(z) and z > 0):
            raise ValueError(f"z must be a number > 0, got {z!r}")
        if control_arm in treatment_arms:
            raise ValueError(f"{control_arm!r} cannot be a treatment arm")
        self.window = window
        self.control_window = control_window
        self.min_treatment = min_treatment
        self.min_control = min_control
        self.z = float(z)
        self.treatment_arms = frozenset(treatment_arms)
        self.control_arm = control_arm
        #: Treatment rewards of decisions made by model versions below this are ignored.
        self.min_version = int(min_version)
        self._t: deque[tuple[int, float]] = deque(maxlen=window)  # (decided at, reward)
        self._c: deque[tuple[int, float]] = deque(maxlen=control_window)
        self._t_sum = 0.0
        self._c_sum = 0.0
        #: Rewards ignored because their version is older than ``min_version``.
        self.stale = 0
        #: Since the last restart: the first decision time of the treatment rewards counted
        #: (control's before it are left out); ``_NO_TIME``: no cut.
        self._since = _NO_TIME
        self._restarted = False

    def observe(self, record: _Reward) -> None:
        """Add one reward (anything with ``arm``, ``reward`` and ``model_version``)."""
        r = float(record.reward)
        if not math.isfinite(r):
            return
        if record.arm == self.control_arm:
            if len(self._c) == self._c.maxlen:
                self._c_sum -= self._c[0][1]
            self._c.append((_decided(record), r))
            self._c_sum += r
        elif record.arm in self.treatment_arms:
            if record.model_version < self.min_version:
                self.stale += 1
                return
            if len(self._t) == self._t.maxlen:
                self._t_sum -= self._t[0][1]
            at = _decided(record)
            self._t.append((at, r))
            self._t_sum += r
            if self._restarted:  # the cut: treatment's first decision since the restart
                self._since = at if self._since == _NO_TIME else min(self._since, at)
                self._restarted = at != _NO_TIME  # a reward without a time: compared whole

    def update(self, records: Iterable[_Reward]) -> None:
        """:meth:`observe` each record."""
        for r in records:
            self.observe(r)

    def _control_since(self, since: int) -> tuple[int, float]:
        """Control's rewards of decisions made at or after ``since``: (count, sum)."""
        if since <= _NO_TIME:
            return len(self._c), self._c_sum
        kept = [r for at, r in self._c if at >= since or at == _NO_TIME]
        return len(kept), math.fsum(kept)

    def compare(self) -> ControlComparison:
        """The test over the current windows (after a restart, control's since treatment's
        first decision counted)."""
        nt = len(self._t)
        nc, c_sum = self._control_since(self._since)
        pt = self._t_sum / nt if nt else None
        pc = c_sum / nc if nc else None
        enough = nt >= self.min_treatment and nc >= self.min_control
        z: float | None = None
        if enough and pt is not None and pc is not None:
            p = (self._t_sum + c_sum) / (nt + nc)
            se = math.sqrt(max(p * (1.0 - p), 0.0) * (1.0 / nt + 1.0 / nc))
            z = (pt - pc) / se if se > 0 else 0.0  # se 0: every reward alike, in both arms
        fires = z is not None and z < -self.z
        beats = enough and pt is not None and pc is not None and pt >= pc
        return ControlComparison(
            nt, pt, nc, pc, z, self.z, enough, fires, bool(beats), self.min_version
        )

    def restart(self, min_version: int, keep_control: bool = True) -> None:
        """Forget the treatment window; from now on only decisions of model versions
        ``>= min_version`` count for treatment. The control window is kept unless
        ``keep_control`` is False (a learner resumed from a saved state: its windows may come
        from another world)."""
        self._t.clear()
        self._t_sum = 0.0
        self.min_version = int(min_version)
        self._since, self._restarted = _NO_TIME, True
        if not keep_control:
            self._c.clear()
            self._c_sum = 0.0

    def state_dict(self) -> dict[str, Any]:
        """Plain data (``torch.save``-able with ``weights_only=True``) for :meth:`load_state`."""
        return {
            "treatment": [list(e) for e in self._t],
            "control": [list(e) for e in self._c],
            "min_version": self.min_version,
            "stale": self.stale,
            "since": self._since,
            "restarted": self._restarted,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore the windows of :meth:`state_dict` (trimmed to this guardrail's windows).

        >>> from types import SimpleNamespace as R
        >>> g = ControlGuardrail(min_treatment=1, min_control=1)
        >>> g.update([R(arm="treatment", reward=1.0, model_version=3),
        ...           R(arm="control", reward=0.0, model_version=0)])
        >>> h = ControlGuardrail(min_treatment=1, min_control=1)
        >>> h.load_state(g.state_dict())
        >>> h.compare() == g.compare()
        True
        """
        self._t = deque(map(_entry, state.get("treatment", ())), maxlen=self.window)
        self._c = deque(map(_entry, state.get("control", ())), maxlen=self.control_window)
        self._t_sum = math.fsum(r for _, r in self._t)
        self._c_sum = math.fsum(r for _, r in self._c)
        self.min_version = int(state.get("min_version", 0))
        self.stale = int(state.get("stale", 0))
        if "since" in state:
            self._since = int(state["since"])
            self._restarted = bool(state.get("restarted", False))
        else:  # saved before the cut was kept: from treatment's window, as it was then
            times = [at for at, _ in self._t if at != _NO_TIME]
            self._since, self._restarted = (min(times), True) if times else (_NO_TIME, False)


def _entry(saved: Any) -> tuple[int, float]:
    """A saved window entry: ``[decided at, reward]``, or a reward alone (a state saved before
    the windows kept decision times: compared whole)."""
    if isinstance(saved, list | tuple):
        return int(saved[0]), float(saved[1])
    return _NO_TIME, float(saved)
