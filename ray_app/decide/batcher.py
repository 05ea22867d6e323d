"""The decision batcher: the ``/v1/decide`` requests that arrive together, decided together.

Requests queue up; a batch takes what has queued (at most ``max_batch``): one profile lookup per
owning stream worker and one model forward per (arm, slot) for the whole batch. With no batch in
flight the next one starts at once (on the next turn of the event loop, so that the requests that
arrived together go together); while ``max_inflight`` batches wait for their profiles, the
requests arriving meanwhile queue for the next free turn, and a batch that is not the only one in
flight waits up to ``linger_s`` to fill. So a profile lookup (a round trip to the stream worker)
overlaps the deciding of the batch before it, and each batch is as large as the load makes it.
No Serve and no HTTP here: the ingress awaits :meth:`DecisionBatcher.decide`, and a test drives it
with a fake profile source.

>>> import asyncio
>>> from ray_app.config import Settings
>>> from ray_app.decide import Decider, DecideRequest
>>> class NoProfiles:
...     async def get_many(self, user_keys):
...         return {}
>>> batcher = DecisionBatcher(Decider.from_settings(Settings()), NoProfiles(), deadline_s=1.0)
>>> req = DecideRequest(user_id="u1", slot="next_step", decision_id="d1")
>>> decision = asyncio.run(batcher.decide(req))
>>> decision.chosen, decision.cold_start
('welcome', True)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ray_app.catalog import DecisionRequestError
from ray_app.stream.reader import StreamUnavailable, not_read

if TYPE_CHECKING:
    from ray_app.decide import Decider, DecideRequest, Decision

__all__ = ["DecisionBatcher", "ProfileSource"]

log = logging.getLogger("onramp.decide")

Profile = dict[str, Any]


class ProfileSource(Protocol):
    """Where live profiles come from (:class:`ray_app.stream.reader.ProfileReader`, or a fake):
    user key -> profile, ``None`` for a user with no events applied; raises
    :class:`~ray_app.stream.reader.StreamUnavailable` while the stream workers are down."""

    async def get_many(self, user_keys: list[str]) -> dict[str, Profile | None]: ...


def _no_enrichment(profile: Profile) -> Profile | None:
    return None


def _identified(profile: Profile, key: str) -> bool:
    """Whether ``profile``, read for the id ``key``, is a signed-in user's: it has a user id, or
    ``key`` was merged into another id."""
    return profile.get("userId") is not None or profile.get("userKey", key) != key


#: What an unverified visitor's CRM enrichment is looked up by: nothing (the defaults).
_NOBODY: Profile = {"traits": {}}


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


class DecisionBatcher:
    """Decides queued requests in batches on the running event loop.

    ``enrich`` turns a profile (or a stand-in ``{"userId": ..., "traits": {}}`` for an unknown
    user) into its CRM enrichment; ``deadline_s`` bounds the profile lookup, past which the batch
    is decided from cold-start features (cold reason ``deadline``); ``clock_ms`` is the decision
    time. ``max_batch``, ``max_inflight`` and ``linger_s`` shape the batches (module docstring).
    """

    def __init__(
        self,
        decider: Decider,
        profiles: ProfileSource,
        enrich: Callable[[Profile], Profile | None] = _no_enrichment,
        deadline_s: float = 0.05,
        clock_ms: Callable[[], int] = _wall_clock_ms,
        max_batch: int = 256,
        max_inflight: int = 2,
        linger_s: float = 0.002,
    ) -> None:
        if max_batch < 1 or max_inflight < 1 or linger_s < 0:
            raise ValueError("max_batch and max_inflight must be >= 1 and linger_s >= 0")
        self.decider = decider
        self.profiles = profiles
        self.enrich = enrich
        self.deadline_s = deadline_s
        self.clock_ms = clock_ms
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.linger_s = linger_s
        self._queue: list[tuple[DecideRequest, asyncio.Future[Any]]] = []
        self._inflight = 0
        self._timer: asyncio.Handle | None = None  # the pending start of the next batch
        self._tasks: set[asyncio.Task[None]] = set()  # held, so the loop cannot drop them

    async def decide(self, request: DecideRequest) -> Decision | DecisionRequestError:
        """The decision for ``request``, or the catalog's reason it cannot be decided (an HTTP
        422); any other failure of its batch is raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((request, future))
        if self._timer is None:
            self._schedule(loop)
        result = await future
        if isinstance(result, Exception) and not isinstance(result, DecisionRequestError):
            raise result
        return result  # type: ignore[no-any-return]

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arrange the start of the next batch, if one may start (see the module docstring)."""
        if not self._queue or self._inflight >= self.max_inflight:
            return  # a finishing batch schedules the next one
        if self._inflight == 0 or len(self._queue) >= self.max_batch or not self.linger_s:
            self._timer = loop.call_soon(self._start)
        else:
            self._timer = loop.call_later(self.linger_s, self._start)

    def _start(self) -> None:
        self._timer = None
        if not self._queue or self._inflight >= self.max_inflight:
            return
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._queue:  # more than one batch's worth queued: the next may start too
            self._schedule(asyncio.get_running_loop())

    async def _run(self, queued: list[tuple[DecideRequest, asyncio.Future[Any]]]) -> None:
        """Decide one batch and answer each of its requests (never leaving one hanging)."""
        try:
            try:
                results = await self.decide_batch([q[0] for q in queued])
            except Exception as exc:  # never leave a request hanging
                log.exception("decide batch failed")
                results = [exc] * len(queued)
            for (_, future), result in zip(queued, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._inflight -= 1
            if self._timer is not None and self._inflight == 0:  # no lingering when idle
                self._timer.cancel()
                self._timer = None
            if self._timer is None:
                self._schedule(asyncio.get_running_loop())

    async def decide_batch(self, requests: list[DecideRequest]) -> list[Any]:
        """One batch: the profiles of all its users in one lookup, then one
        :meth:`~ray_app.decide.Decider.decide_many`."""
        profiles: dict[str, Profile | None] = {}
        why_cold: str | None = None
        try:
            profiles = await asyncio.wait_for(
                self.profiles.get_many([r.user_key for r in requests]), self.deadline_s
            )
        except TimeoutError:
            why_cold = "deadline"  # answer from cold-start features within the deadline
        except StreamUnavailable:
            why_cold = "stream_unavailable"
        items = []
        cold: list[str | None] = []
        enrich = self.enrich
        for r in requests:
            profile, reason = profiles.get(r.user_key), why_cold
            if not_read(profile):  # its partition is not being consumed right now
                profile, reason = None, "stream_unavailable"
            elif profile is not None and r.anonymous_only and _identified(profile, r.user_key):
                profile = None  # a signed-in user's, and the request is not verified as theirs
            if r.anonymous_only:
                # an unverified visitor's CRM row is nobody's: its anonymous id, or a group or
                # account it claimed, could name a customer's, whose columns (a plan) would
                # then shape, and through eligibility show in, what this browser is answered
                crm = enrich(_NOBODY)
            else:
                crm = enrich(profile or {"userId": r.user_id, "traits": {}})
            items.append((r, profile, crm))
            cold.append(reason or ("unknown_user" if profile is None else None))
        now_ms = self.clock_ms()
        try:
            return self.decider.decide_many(items, now_ms=now_ms, cold_reasons=cold)
        except Exception:  # one request's failure is its own: the rest are decided alone
            log.exception(
                "a decision batch failed: deciding its %d requests one by one", len(items)
            )
        results: list[Any] = []
        for item, reason in zip(items, cold, strict=True):
            try:
                results += self.decider.decide_many([item], now_ms=now_ms, cold_reasons=[reason])
            except Exception as exc:
                results.append(exc)
        return results
