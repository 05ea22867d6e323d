"""The decision batcher: the ``/v1/decide`` requests that arrive together, decided together.

Requests queue up while a batch is in flight; the next batch takes all of them: one profile
lookup per owning stream worker and one model forward per (arm, slot) for the whole batch.
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
from ray_app.stream.reader import StreamUnavailable

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


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


class DecisionBatcher:
    """Decides queued requests batch after batch on the running event loop.

    ``enrich`` turns a profile (or a stand-in ``{"userId": ..., "traits": {}}`` for an unknown
    user) into its CRM enrichment; ``deadline_s`` bounds the profile lookup, past which the batch
    is decided from cold-start features (cold reason ``deadline``); ``clock_ms`` is the decision
    time.
    """

    def __init__(
        self,
        decider: Decider,
        profiles: ProfileSource,
        enrich: Callable[[Profile], Profile | None] = _no_enrichment,
        deadline_s: float = 0.05,
        clock_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self.decider = decider
        self.profiles = profiles
        self.enrich = enrich
        self.deadline_s = deadline_s
        self.clock_ms = clock_ms
        self._queue: list[tuple[DecideRequest, asyncio.Future[Any]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None  # held, so the loop cannot drop it

    async def decide(self, request: DecideRequest) -> Decision | DecisionRequestError:
        """The decision for ``request``, or the catalog's reason it cannot be decided (an HTTP
        422); any other failure of its batch is raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((request, future))
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._run_batches())
        result = await future
        if isinstance(result, Exception) and not isinstance(result, DecisionRequestError):
            raise result
        return result  # type: ignore[no-any-return]

    async def _run_batches(self) -> None:
        """Decide what queued up, batch after batch, until the queue is empty. Requests that
        arrive while a batch waits for its profiles form the next one."""
        try:
            while self._queue:
                queued, self._queue = self._queue, []
                try:
                    results = await self.decide_batch([q[0] for q in queued])
                except Exception as exc:  # never leave a request hanging
                    log.exception("decide batch failed")
                    results = [exc] * len(queued)
                for (_, future), result in zip(queued, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running = False

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
        for r in requests:
            profile = profiles.get(r.user_key)
            items.append((r, profile, self.enrich(profile or {"userId": r.user_id, "traits": {}})))
            cold.append(why_cold or ("unknown_user" if profile is None else None))
        return self.decider.decide_many(items, now_ms=self.clock_ms(), cold_reasons=cold)
