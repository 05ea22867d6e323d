"""The console's aggregation: everything its panels show, fed record by record from Onramp's own
topics and built into compact JSON panels a few times a minute, never per poll.

:class:`ConsoleState` takes the records of ``onramp.decisions``, ``onramp.rewards``,
``onramp.events.dlq`` and, of ``onramp.events``, only step and onboarding completions (a byte test
skips the rest without decoding them), plus what the service around it reads from elsewhere (the
exposition ``/metrics`` serves, the learner's status, the model history). :meth:`panels` renders
each panel once as JSON bytes; a poll then costs a dict lookup.

Experiment figures come from :func:`ray_app.experiments.report.analyze` over
:meth:`~ray_app.console.cohorts.Cohorts.frame`, the function ``onramp report`` calls, over the
users first seen in each time range of :data:`RANGES`.

>>> s = ConsoleState(shares={"control": 0.5, "treatment": 0.5}, clock=lambda: 100.0)
>>> for i in range(40):
...     arm = ("control", "treatment")[i % 2]
...     s.feed("decisions", orjson.dumps({"decisionId": f"d{i}", "userKey": f"u{i}", "arm": arm,
...         "experiment": "e", "chosen": "role", "slot": "next_step", "timestamp": 50_000}))
...     s.feed("rewards", orjson.dumps({"decisionId": f"d{i}", "userKey": f"u{i}", "arm": arm,
...         "reward": float(i % 3 == 0), "outcome": "completed", "action": "role",
...         "decidedAtMs": 50_000}))
>>> p = orjson.loads(s.panels()["experiments/all"])
>>> p["experiments"]["e"]["arms"]["control"]["users"]
20
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from ray_app.console.cohorts import Cohorts
from ray_app.console.health import DlqSamples, HealthWindow, figures
from ray_app.console.timeline import ModelVersions, Timeline
from ray_app.console.userlog import UserLog
from ray_app.timefmt import record_ms

__all__ = ["RANGES", "ConsoleState"]

log = logging.getLogger(__name__)

#: The experiment panel's time ranges: users first seen in the last ... (None: all of them).
RANGES: dict[str, int | None] = {
    "15m": 15 * 60_000,
    "1h": 3_600_000,
    "24h": 86_400_000,
    "all": None,
}

_STEP_COMPLETED = b'"Step Completed"'
_ONBOARDING_COMPLETED = b'"Onboarding Completed"'


def _dumps(x: Any) -> bytes:
    return orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class ConsoleState:
    """See the module docstring. ``shares``: the configured split (for the SRM check);
    ``steps``: the catalog's onboarding steps in order (the funnel's rows)."""

    def __init__(
        self,
        shares: Mapping[str, float] | None = None,
        control: str = "control",
        level: float = 0.95,
        steps: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        users: int = 20_000,
    ) -> None:
        self.shares = dict(shares) if shares else None
        self.control = control
        self.level = level
        self.steps = list(steps)
        self.clock = clock
        self.cohorts = Cohorts(self.steps, counted=self._counted, merged=self._merged)
        self.timeline = Timeline()
        self.served = ModelVersions()
        self.userlog = UserLog(users=users)
        self.dlq = DlqSamples()
        self.health = HealthWindow()
        self.learner: dict[str, Any] = {}
        self.model_events: list[dict[str, Any]] = []
        self.counts = {"decisions": 0, "rewards": 0, "dlq": 0, "events": 0, "unreadable": 0}
        self._experiments: tuple[float, dict[str, bytes]] | None = None  # (built at, panels)

    # -- records --------------------------------------------------------------------------------

    def feed(self, kind: str, value: bytes | None, ts_ms: int = 0) -> None:
        """One record of the topic ``kind`` (``decisions``, ``rewards``, ``dlq``, ``events``)."""
        if value is None:
            return
        if kind == "events":
            if _STEP_COMPLETED in value or _ONBOARDING_COMPLETED in value:
                self._event(value)
            return
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "dlq":
            self.dlq.add(value, ts_ms or int(self.clock() * 1000))
            return
        try:
            d = orjson.loads(value)
            if not isinstance(d, dict):
                raise ValueError("not an object")
        except ValueError:
            self.counts["unreadable"] += 1
            return
        if kind == "decisions":
            self._decision(d)
        elif kind == "rewards":
            self.cohorts.reward(d)  # counted now, or when its decision arrives: _counted

    def _decision(self, d: dict[str, Any]) -> None:
        if not self.cohorts.decision(d):
            return
        ms = record_ms(d["timestamp"])
        self.userlog.decision(d, ms, self.cohorts.person(str(d["userKey"])))
        version = d.get("modelVersion")
        if isinstance(version, int):
            self.served.add(str(d.get("arm")), version, ms)

    def _merged(self, old: str, into: str) -> None:
        self.userlog.fold(old, into)  # a person's decisions and rewards under one id

    def _counted(self, r: Mapping[str, Any]) -> None:
        self.userlog.reward(r, self.cohorts.person(str(r.get("userKey"))))
        decided = r.get("decidedAtMs")
        if isinstance(decided, int):
            self.timeline.add(str(r.get("arm")), decided, float(r.get("reward") or 0.0))

    def _event(self, value: bytes) -> None:
        self.counts["events"] += 1
        try:
            d = orjson.loads(value)
            user, name = d.get("userKey"), d.get("event")
        except (ValueError, AttributeError):
            return
        if not isinstance(user, str):
            return
        if name == "Step Completed" and isinstance(d.get("stepId"), str):
            self.cohorts.step_completed(user, d["stepId"])
        elif name == "Onboarding Completed":
            self.cohorts.onboarding_completed(user)

    # -- what the service reads elsewhere ------------------------------------------------------

    def metrics(self, exposition: str) -> None:
        """The exposition ``/metrics`` serves, as of now."""
        self.health.add(figures(exposition))

    # -- panels --------------------------------------------------------------------------------

    def panels(self, experiments_every_s: float = 5.0) -> dict[str, bytes]:
        """Every panel as JSON bytes: ``experiments/<range>`` for each of :data:`RANGES` (at most
        every ``experiments_every_s``), ``learning``, ``funnel`` and ``health``."""
        now = self.clock()
        return {
            **self._experiment_panels(now, experiments_every_s),
            "learning": _dumps(self.learning(now)),
            "funnel": _dumps(self.funnel(now)),
            "health": _dumps(self.health_panel(now)),
        }

    def _experiment_panels(self, now: float, every_s: float) -> dict[str, bytes]:
        cached = self._experiments
        # at most every ``every_s``, changed or not: a range of the last 15 minutes moves with
        # the clock (reused while no record came, it kept users of hours ago, and its asOf)
        if cached is not None and now - cached[0] < every_s:
            return cached[1]
        panels = {f"experiments/{r}": _dumps(p) for r, p in self.experiments(now).items()}
        self._experiments = (now, panels)
        return panels

    def experiments(self, now: float) -> dict[str, dict[str, Any]]:
        """Per range of :data:`RANGES`, per experiment,
        :func:`~ray_app.experiments.report.analyze`'s summary of the users first seen in it."""
        from ray_app.experiments.report import analyze

        out: dict[str, dict[str, Any]] = {}
        now_ms = int(now * 1000)
        for name, span in RANGES.items():
            found: dict[str, Any] = {}
            for exp in sorted(self.cohorts.experiments):
                users = self.cohorts.frame(exp, None if span is None else now_ms - span)
                try:
                    found[exp] = analyze(users, self.shares, self.control, self.level)
                except ValueError as exc:  # no control user (yet) in this range
                    found[exp] = {"users": len(users), "error": str(exc)}
            out[name] = {
                "asOf": now,
                "range": name,
                "ranges": list(RANGES),
                "sinceMs": None if span is None else now_ms - span,
                "control": self.control,
                "level": self.level,
                "shares": self.shares,
                "experiments": found,
            }
        return out

    def learning(self, now: float) -> dict[str, Any]:
        s = self.learner
        drift = s.get("drift") or {}
        return {
            "asOf": now,
            "completion": self.timeline.series(),
            "learner": None
            if not s
            else {
                "version": s.get("version"),
                "exploration": s.get("epsilon"),
                "counters": s.get("counters", {}),
                "control": s.get("control"),
                "recentRate": s.get("recentRate", {}),
                "error": s.get("error"),
            },
            "drift": {
                "rewardStatistic": drift.get("rewardStatistic"),
                "controlStatistic": drift.get("controlStatistic"),
                "featureMaxPsi": drift.get("featureMaxPsi"),
                "alerts": list(reversed(drift.get("alerts", [])))[:20],
            },
            "versions": self.model_events[:50],
            "served": self.served.as_list()[-50:],
        }

    def funnel(self, now: float) -> dict[str, Any]:
        by_arm = self.cohorts.funnel()
        steps = list(self.steps)
        for counts in by_arm.values():  # steps completed that the catalog does not list, last
            steps += [s for s in counts["steps"] if s not in steps]
        arms: dict[str, Any] = {}
        for arm, f in by_arm.items():
            rows, before = [], f["users"]
            for i, step in enumerate(steps):
                reached = f["steps"].get(step, 0)
                # of those who completed the step before, the share who did not complete this one
                kept = reached if i == 0 else f["after"].get(step, 0)
                # a step the catalog does not list has no step before it: no drop-off (it read
                # 100% whoever completed it)
                listed = i == 0 or step in self.steps
                rows.append(
                    {
                        "step": step,
                        "users": reached,
                        "rate": reached / f["users"] if f["users"] else None,
                        "dropOff": 1 - kept / before if before and listed else None,
                    }
                )
                before = reached
            arms[arm] = {"users": f["users"], "steps": rows, "completed": f["completed"]}
        return {"asOf": now, "steps": steps, "arms": arms}

    def health_panel(self, now: float) -> dict[str, Any]:
        return {
            "asOf": now,
            **self.health.panel(),
            "dlqExamples": self.dlq.as_dict(),
            "console": {**self.counts, **self.cohorts.stats(), "usersKept": len(self.userlog)},
        }

    def user(self, user: str) -> list[dict[str, Any]] | None:
        """The person's entries, asked by any of their ids."""
        return self.userlog.entries(self.cohorts.person(user))
