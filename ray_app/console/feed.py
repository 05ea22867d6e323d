"""The replica's side of the console: the aggregator's latest panels, kept in the replica so that a
poll is answered from memory.

A poll returns the panels held; when they are older than ``refresh_s`` it starts one fetch in the
background (one actor call for every panel) and does not wait for it. Only the first poll of a
replica waits, for the first panels. A replica nobody polls fetches nothing.

>>> import asyncio
>>> class Actor:
...     class panels:
...         @staticmethod
...         async def remote():
...             return {"funnel": b'{"arms":{}}'}
>>> feed = ConsoleFeed(lambda: Actor())
>>> asyncio.run(feed.panel("funnel")), asyncio.run(feed.panel("nothing"))
(b'{"arms":{}}', None)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ConsoleFeed", "ConsoleUnavailable"]

log = logging.getLogger(__name__)


class ConsoleUnavailable(Exception):
    """The aggregator cannot be reached (starting, or restarting)."""


class ConsoleFeed:
    """See the module docstring. ``connect()`` returns the aggregator actor (starting it)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        refresh_s: float = 2.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connect = connect
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._actor: Any = None
        self._panels: dict[str, bytes] | None = None
        self._fetched = 0.0
        self._task: asyncio.Task[None] | None = None

    def _handle(self) -> Any:
        if self._actor is None:
            self._actor = self.connect()
        return self._actor

    async def _fetch(self) -> None:
        try:
            panels = await asyncio.wait_for(self._handle().panels.remote(), self.timeout_s)
        except Exception as exc:  # gone with the replica that owned it: start another
            self._actor = None
            log.warning("console aggregator unavailable: %s", exc)
            return
        self._fetched = self.clock()
        if panels:
            self._panels = panels

    async def panel(self, name: str) -> bytes | None:
        """The panel ``name`` as JSON bytes (None: no such panel); :class:`ConsoleUnavailable`
        before the first panels arrived."""
        if self._panels is None:
            if self._task is None or self._task.done():
                self._task = asyncio.ensure_future(self._fetch())
            await asyncio.shield(self._task)
            if self._panels is None:
                raise ConsoleUnavailable("the console's aggregation is starting; retry shortly")
        elif self.clock() - self._fetched >= self.refresh_s and (
            self._task is None or self._task.done()
        ):
            self._task = asyncio.ensure_future(self._fetch())
        return self._panels.get(name)

    async def user(self, user_key: str) -> list[dict[str, Any]] | None:
        """A user's recent decisions and rewards (None: none kept)."""
        try:
            history = await asyncio.wait_for(self._handle().user.remote(user_key), self.timeout_s)
        except Exception as exc:
            self._actor = None
            raise ConsoleUnavailable(f"the console's aggregation is unavailable: {exc}") from None
        return history if isinstance(history, list) else None
