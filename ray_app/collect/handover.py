"""Handing records from the event loop to the send thread, and their outcomes back: coalesced.

Each request's records go to the producer on a send thread (a producer call may block), and the
request waits for Kafka's acknowledgement of them. Done one request at a time, a single event
costs a thread hand-over (an executor job, its future and a wake-up of the send thread) and a
wake-up of the event loop for each of two futures, about as much as the event itself.
:class:`Handover` takes the requests that arrive in one turn of the event loop to the send thread
in one job, and gives the outcomes that settle together back to the loop in one wake-up. Every
request keeps its own records, its own producer call and its own outcome: an error on one
request's records fails that request alone, and a request is told its records were written only
once Kafka acknowledged them.

It serves one event loop at a time (a Serve replica's); the futures of a loop it no longer
serves (a test's earlier ``asyncio.run``) are never resolved, though their records are sent.

>>> import asyncio, concurrent.futures as cf
>>> def send(records, size):  # on the send thread: a producer's future, or None (no producer)
...     done = cf.Future()
...     done.set_result(records)
...     return done
>>> async def main():
...     handover = Handover(cf.ThreadPoolExecutor(1), send)
...     return await asyncio.gather(handover.submit(["a"], 1), handover.submit(["b"], 1))
>>> asyncio.run(main())
[['a'], ['b']]
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

__all__ = ["Handover", "NotConnected", "NotHandedOver"]

#: On the send thread: give ``records`` (of ``size`` reserved bytes) to the producer, returning
#: the future of their acknowledgement, or None when there is no producer. It owns the bytes:
#: they are released when the records settle, or by it when they never reach the producer.
Send = Callable[[Any, int], "cf.Future[Any] | None"]


class NotConnected(Exception):
    """There was no producer to take the records (it is being rebuilt)."""


class NotHandedOver(Exception):
    """The producer refused the records (``__cause__`` says why); nothing was queued."""


class Handover:
    """Coalesces the hand-overs of one loop turn into one send-thread job (see the module)."""

    def __init__(
        self, executor: cf.Executor, send: Send, release: Callable[[int], None] = lambda n: None
    ) -> None:
        self._executor = executor
        self._send = send
        self._release = release  # the bytes of a job the executor refused
        self._pending: list[tuple[Any, int, asyncio.Future[Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settled: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._wake_lock = threading.Lock()
        self._wake_due = False

    def submit(self, records: Any, size: int) -> asyncio.Future[Any]:
        """Queue ``records`` for the producer; the future resolves to their acknowledgement's
        result once Kafka acknowledged them all, or fails: :class:`NotConnected`,
        :class:`NotHandedOver`, or the delivery error. The send happens even if the future is
        cancelled (the bytes are given back when the records settle)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests): nobody waits for the old one's requests
            if self._pending:  # but their records still go out (and their bytes come back)
                self._flush()
            self._loop, self._settled = loop, deque()
            with self._wake_lock:
                self._wake_due = False
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((records, size, future))
        return future

    def _flush(self) -> None:
        """On the loop, once per turn: this turn's requests to the send thread, in order."""
        jobs, self._pending = self._pending, []
        try:
            self._executor.submit(self._hand_over, jobs)
        except BaseException as exc:  # shut down: nothing was queued
            for _, size, future in jobs:
                self._release(size)
                if not future.done():
                    future.set_exception(NotHandedOver(str(exc)))

    def _hand_over(self, jobs: list[tuple[Any, int, asyncio.Future[Any]]]) -> None:
        """On the send thread: each request's records to the producer, in order."""
        for records, size, future in jobs:
            try:
                sent = self._send(records, size)
            except Exception as exc:
                refused = NotHandedOver(f"{type(exc).__name__}: {exc}")
                refused.__cause__ = exc
                self._settle(future, None, refused)
                continue
            if sent is None:
                self._settle(future, None, NotConnected())
            else:
                sent.add_done_callback(partial(self._acknowledged, future))

    def _acknowledged(self, future: asyncio.Future[Any], done: cf.Future[Any]) -> None:
        """On the producer's thread: a request's records settled."""
        if done.cancelled():
            self._settle(future, None, NotHandedOver("the send was cancelled"))
            return
        error = done.exception()
        self._settle(future, None if error is not None else done.result(), error)

    def _settle(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        """From any thread: queue an outcome, and wake the loop unless a wake-up is due (an
        outcome for a loop that is no longer served is dropped: waking that loop would leave a
        wake-up due that never runs)."""
        if future.get_loop() is not self._loop:
            return
        self._settled.append((future, result, error))
        with self._wake_lock:
            if self._wake_due:
                return
            self._wake_due = True
        try:
            future.get_loop().call_soon_threadsafe(self._resolve)
        except RuntimeError:  # the loop is closed: nobody waits for these any more
            with self._wake_lock:
                self._wake_due = False

    def _resolve(self) -> None:
        """On the loop: every outcome that settled since the last wake-up, to its request."""
        with self._wake_lock:
            self._wake_due = False
        settled, loop = self._settled, asyncio.get_running_loop()
        while settled:
            future, result, error = settled.popleft()
            if future.done() or future.get_loop() is not loop:  # timed out, or cancelled
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
