"""Simulator v2, live: simulated users walk into a running Onramp over HTTP and react to what
``/v1/decide`` shows them, so the whole loop runs for real (collector -> Kafka -> stream workers
-> decide -> outcomes -> rewards -> learner -> new weights -> decide).

Each user: signs up (``identify`` with their traits, then the ``welcome`` step viewed and
completed, one batch), reads the welcome screen for ``think_s``, asks ``/v1/decide`` for
``next_step``, and reacts as the hidden ground truth says: completes the step shown
(``Step Completed``, echoing the decision id) or gives up (``Step Abandoned``). The ground truth
is any world (duck-typed): one of :mod:`ray_app.sim.worlds` or simulator v2's
:class:`~ray_app.sim.v2.GroundTruth`. A world's user whose ``traits_in_context`` is set sends its
traits in ``context.traits``, as RudderStack's browser SDK does, instead of top-level
``traits`` (:func:`identify_call`). An :class:`Outcome`'s ``segment`` is the world's hidden
label of the user (a v2 segment, a world's cell). Users run ``concurrency`` at a time; times are
real (the watermark follows the clock), a user's reaction time is the ground truth's, scaled by
``time_scale``.

Events of all users in flight go out together, one ``/v1/batch`` every ``flush_s`` (as a
server-side Segment library batches many users' calls), so the HTTP path carries mostly
decisions. The run keeps, per user, the arm, the action and whether they completed it, so that completion
rates per arm over time come from what users did, not from Onramp's own counters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LearningRun", "Outcome", "identify_call"]


def identify_call(user: Any, message_id: str, timestamp: str) -> dict[str, Any]:
    """The Segment ``identify`` call of a simulated user (a world's or simulator v2's): traits
    top level, or in ``context.traits`` when the user's ``traits_in_context`` is set.

    >>> from ray_app.sim.worlds import world
    >>> w = world("teams", seed=1)
    >>> top, ctx = (identify_call(w.user(i), "m", "2026-01-01T00:00:00.000Z") for i in (0, 6))
    >>> top["traits"] == w.user(0).traits, ctx["context"]["traits"] == w.user(6).traits
    (True, True)
    >>> "traits" in ctx, w.user(6).traits_in_context
    (False, True)
    """
    call: dict[str, Any] = {
        "type": "identify",
        "userId": user.user_id,
        "timestamp": timestamp,
        "messageId": message_id,
    }
    if getattr(user, "traits_in_context", False):
        call["context"] = {"traits": dict(user.traits)}
    else:
        call["traits"] = dict(user.traits)
    return call


@dataclass(frozen=True)
class Outcome:
    index: int
    segment: str
    arm: str
    action: str
    completed: bool
    cold_start: bool
    model_version: int
    drifted: bool
    at: float
    cold_reason: str | None = None
    #: the model's top-scored eligible action (``None`` for the control arm's static choice)
    greedy: str | None = None
    #: the eligible actions the decision chose among
    eligible: tuple[str, ...] = ()
    propensity: float | None = None
    #: the model's predicted completion rate of each eligible action (the logits without the
    #: exploration bonus, through a sigmoid); only the learning twin fills it
    rated: Mapping[str, float] | None = None


@dataclass
class LearningRun:
    base_url: str
    write_key: str
    read_key: str
    #: the hidden ground truth: a :class:`~ray_app.sim.worlds.World` or a
    #: :class:`~ray_app.sim.v2.GroundTruth` (anything with their ``user``, ``drifted`` and
    #: ``simulate_response``)
    truth: Any
    users: int
    concurrency: int = 64
    think_s: float = 1.5
    time_scale: float = 0.05
    seed: int = 0
    flush_s: float = 0.05
    outcomes: list[Outcome] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    started: int = 0

    async def run(self, should_stop: Any = lambda: False) -> list[Outcome]:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=64)
        self._queue: list[tuple[list[dict[str, Any]], asyncio.Future[None]]] = []
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30, limits=limits) as http:
            flusher = asyncio.create_task(self._flush_loop(http))
            next_user = 0
            running: set[asyncio.Task[None]] = set()
            while next_user < self.users or running:
                while (
                    next_user < self.users and len(running) < self.concurrency and not should_stop()
                ):
                    user = self.truth.user(next_user)
                    running.add(asyncio.create_task(self._one(http, user)))
                    next_user += 1
                    self.started = next_user
                if should_stop() and not running:
                    break
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    exc = t.exception()
                    if exc is not None:
                        key = f"{type(exc).__name__}: {str(exc)[:80]}"
                        self.errors[key] = self.errors.get(key, 0) + 1
            flusher.cancel()
        return self.outcomes

    async def _flush_loop(self, http: Any) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            queued, self._queue = self._queue, []
            while queued:
                chunk, queued = queued[:200], queued[200:]
                batch = [e for events, _ in chunk for e in events]
                try:
                    await self._post(http, batch)
                except Exception as exc:
                    for _, fut in chunk:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for _, fut in chunk:
                    if not fut.done():
                        fut.set_result(None)

    async def _send(self, events: list[dict[str, Any]]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((events, fut))
        await fut

    async def _post(self, http: Any, batch: list[dict[str, Any]]) -> None:
        for attempt in range(5):
            r = await http.post("/v1/batch", json={"batch": batch}, auth=(self.write_key, ""))
            if r.status_code == 200:
                return
            if r.status_code in (429, 503):
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            raise RuntimeError(f"collector answered {r.status_code}: {r.text[:200]}")
        raise RuntimeError("collector kept answering 503")

    async def _one(self, http: Any, user: Any) -> None:
        rng = random.Random(f"{self.seed}/{user.index}")
        session = f"s-{user.user_id}"

        def event(name: str, step: str, seq: int, **props: Any) -> dict[str, Any]:
            return {
                "type": "track",
                "userId": user.user_id,
                "event": name,
                "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                "timestamp": _now_iso(),
                "properties": props,
                "context": {"onramp": {"sessionId": session, "seq": seq, "stepId": step}},
            }

        await self._send(
            [
                identify_call(user, str(uuid.UUID(int=rng.getrandbits(128))), _now_iso()),
                event("Step Viewed", "welcome", 0),
                event("Step Completed", "welcome", 1),
            ],
        )
        await asyncio.sleep(self.think_s * rng.uniform(0.7, 1.3))
        r = await http.post(
            "/v1/decide",
            json={"user_id": user.user_id, "slot": "next_step"},
            headers={"authorization": f"Bearer {self.read_key}"},
        )
        if r.status_code != 200:
            raise RuntimeError(f"decide answered {r.status_code}: {r.text[:200]}")
        a = r.json()
        action = a["chosen"]
        if action is None:
            return
        drifted = self.truth.drifted(user)
        completed, seconds = self.truth.simulate_response(user, "next_step", action, rng)
        await asyncio.sleep(min(seconds * self.time_scale, 10.0))
        outcome = "Step Completed" if completed else "Step Abandoned"
        await self._send(
            [
                event("Step Viewed", action, 2, decisionId=a["decisionId"]),
                event(outcome, action, 3, decisionId=a["decisionId"]),
            ],
        )
        self.outcomes.append(
            Outcome(
                user.index,
                user.segment,
                a["arm"],
                action,
                completed,
                a["coldStart"],
                a["modelVersion"],
                drifted,
                time.time(),
                a.get("coldReason"),
                _greedy(a.get("ranked") or []),
                tuple(r["action"] for r in a.get("ranked") or []),
                a.get("propensity"),
            )
        )


def _greedy(ranked: list[dict[str, Any]]) -> str | None:
    """The top of a model's ranking (``ranked`` is best first); ``None`` for the control arm."""
    return ranked[0]["action"] if ranked and ranked[0].get("score") is not None else None


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rates_by_arm(outcomes: list[Outcome], last: int | None = None) -> dict[str, float]:
    """Completion rate per arm over all outcomes, or the ``last`` ones (by user index)."""
    chosen = sorted(outcomes, key=lambda o: o.index)
    if last is not None:
        chosen = chosen[-last:]
    out: dict[str, list[int]] = {}
    for o in chosen:
        n = out.setdefault(o.arm, [0, 0])
        n[0] += 1
        n[1] += o.completed
    return {arm: k / n for arm, (n, k) in sorted(out.items()) if n}
