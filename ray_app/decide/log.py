"""The decision log: every answered decision, as one record in ``onramp.decisions``.

A decision is handed to Kafka before its answer leaves the replica, but the answer does not wait
for Kafka's acknowledgement (that round trip would double the latency of ``/v1/decide``), and the
request never waits for the producer either: :meth:`DecisionLog.offer` only counts and queues, and
one sender thread hands the records to the producer (which may block on metadata, a full buffer
or a reconnect: never on the event loop that serves requests). The sender is woken only when it
is idle and takes everything queued at once, so a burst of offers costs one wake-up, not one per
record. What keeps the log complete:

* the producer is idempotent with ``acks=all`` and retries on its own;
* at most ``decide.log_max_pending`` records may be queued or await their acknowledgement; beyond
  that the route answers 503 with Retry-After rather than serve decisions the log may not get;
* while the producer cannot be built (Kafka unreachable when the replica started), nothing is
  queued either: the route answers 503 and the sender tries again every second on its own (its
  records would fail at once, so the bound above never filled and every decision was served
  unlogged). Only the records offered before the first attempt failed are lost, counted;
* on shutdown the replica drains the queue and flushes the producer before it exits (``close``);
* every record that Kafka finally refuses, or that the producer would not take, is counted
  (``failed``) and logged with its id.

>>> from ray_app.kafka.memory import InMemoryBroker, InMemoryProducer
>>> broker = InMemoryBroker(partitions=2)
>>> log = DecisionLog(lambda: InMemoryProducer(broker), "onramp.decisions", max_pending=10)
>>> log.offer([(b"u1", {"decisionId": "d1"})])
True
>>> log.close(); (log.acked, log.failed, len(broker.records("onramp.decisions")))
(1, 0, 1)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ray_app.config import Settings
from ray_app.kafka.client import Delivered, OutRecord, Producer

__all__ = ["LINGER_MS", "DecisionLog", "lingering"]

log = logging.getLogger(__name__)

#: The decision log producer's ``linger_ms`` at least: no answer waits for a decision record's
#: acknowledgement, so its records may wait to share a produce request. At a thousand decisions
#: a second, ``kafka.linger_ms`` (1 ms) made about one produce request per record, each a full
#: round of the Python client's sender thread in the replica. 50 ms rather than 5: at 2,500
#: decisions a second over 8 partitions, 5 ms still made batches of one or two records a
#: partition, and the embedded broker spent 30% of a core writing them (13% at 50 ms), on the
#: same two cores as the replica (``bench/decide.py --client confluent``, same sitting: 0.46 ->
#: 0.51 of the trivial route at 64 connections, 0.37 -> 0.46 at 16, open-loop p99 97 -> 40 ms).
#: The stream joins a decision with its outcome seconds later; 50 ms more on its way costs none.
LINGER_MS = 50


def lingering(settings: Settings) -> Settings:
    """``settings`` for the decision log's producer: ``kafka.linger_ms`` raised to
    :data:`LINGER_MS`.

    >>> from ray_app.config import Settings
    >>> lingering(Settings()).kafka.linger_ms
    50
    """
    if settings.kafka.linger_ms >= LINGER_MS:
        return settings
    kafka = settings.kafka.model_copy(update={"linger_ms": LINGER_MS})
    return settings.model_copy(update={"kafka": kafka})


#: After the producer cannot be built, records fail at once for this long (no connect attempt per
#: record while Kafka is down); then the next record tries again.
_RETRY_AFTER_S = 1.0


class DecisionLog:
    """Sends decision records from a background thread, with a bound on the records queued or
    awaiting acknowledgement. The sender thread owns the producer: it builds it, sends with it
    and closes it, so nothing else touches it concurrently."""

    def __init__(
        self,
        producer_factory: Callable[[], Producer],
        topic: str,
        max_pending: int = 20_000,
        on_result: Callable[[int, int], None] | None = None,
        max_pending_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.topic = topic
        self.max_pending = max_pending
        #: The bytes queued or awaiting acknowledgement, at most: a record is a few hundred bytes,
        #: but one whose request context was as large as allowed is a hundred kilobytes, and
        #: ``max_pending`` of those while Kafka is slow would be gigabytes.
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0
        self._factory = producer_factory
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._on_result = on_result
        self._queue: list[tuple[bytes, bytes, Any]] = []  # taken whole by the sender
        self._idle = False  # the sender waits for records: the next offer wakes it
        self._sender: threading.Thread | None = None
        self._closed = False
        #: The producer could not be built at the last attempt: offers are refused until it is.
        self._down = False
        self._down_until = 0.0
        self._close_timeout_s = 10.0
        self.pending = 0
        self.acked = 0
        self.failed = 0

    def connect(self) -> None:
        """Start the sender thread (which builds the producer with the first record)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._sender is None and not self._closed:
            self._sender = threading.Thread(
                target=self._run, name="onramp-decision-log", daemon=True
            )
            self._sender.start()

    def offer(self, records: Sequence[tuple[bytes, dict[str, Any]]]) -> bool:
        """Queue (key, record) pairs; False (nothing queued) if that would pass the bound or the
        log is closed. Never blocks on Kafka; a record that cannot be encoded raises before
        anything is queued."""
        encoded = [(key, orjson.dumps(record), record.get("decisionId")) for key, record in records]
        size = sum(len(value) for _, value, _ in encoded)
        with self._lock:  # one lock for the check, the count and the queueing: close() waits
            if (
                self._closed
                or self._down
                or self.pending + len(encoded) > self.max_pending
                or (self.pending and self.pending_bytes + size > self.max_pending_bytes)
            ):
                return False
            self.pending += len(encoded)
            self.pending_bytes += size
            self._start_locked()
            self._queue += encoded
            if self._idle:
                self._idle = False
                self._wake.notify()
        return True

    def _take(self) -> list[tuple[bytes, bytes, Any]] | None:
        """Everything queued, waiting for it if nothing is; None once closed and drained; an
        empty list, after ``_RETRY_AFTER_S``, while the producer cannot be built (nothing is
        offered then: the sender tries to build it again on its own)."""
        with self._lock:
            while not self._queue:
                if self._closed:
                    return None
                self._idle = True
                if self._down:
                    self._wake.wait(_RETRY_AFTER_S)
                    self._idle = False
                    return []
                self._wake.wait()
            items, self._queue = self._queue, []
            self._idle = False
            return items

    def _run(self) -> None:
        while (items := self._take()) is not None:
            if not items:  # down: try to build the producer again
                self._producer_or_none()
                continue
            for key, value, decision_id in items:
                try:
                    producer = self._producer_or_none()
                    if producer is None:
                        raise ConnectionError("no Kafka producer (retrying shortly)")
                    producer.send(
                        OutRecord(self.topic, value, key=key), self._done(decision_id, len(value))
                    )
                except Exception as exc:  # refused or no producer: counted, never silent
                    self._done(decision_id, len(value))(None, exc)
        if self._producer is not None:
            try:
                self._producer.close(self._close_timeout_s)
            except Exception:
                log.warning("decision log: closing the producer failed", exc_info=True)
            self._producer = None

    def _producer_or_none(self) -> Producer | None:
        if self._producer is None:
            if time.monotonic() < self._down_until:
                return None
            try:
                self._producer = self._factory()
            except Exception as exc:
                self._down_until = time.monotonic() + _RETRY_AFTER_S
                with self._lock:
                    if not self._down:
                        log.warning("decision log: cannot connect to Kafka: %s", exc)
                    self._down = True
                return None
            with self._lock:
                if self._down:
                    log.warning("decision log: connected to Kafka again")
                self._down = False
        return self._producer

    def _done(
        self, decision_id: Any, size: int
    ) -> Callable[[Delivered | None, BaseException | None], None]:
        def callback(delivered: Delivered | None, error: BaseException | None) -> None:
            with self._lock:
                self.pending -= 1
                self.pending_bytes -= size
                if error is None:
                    self.acked += 1
                else:
                    self.failed += 1
            if error is not None:
                log.error("decision %s was not logged: %s", decision_id, error)
            if self._on_result:
                try:
                    self._on_result(1 if error is None else 0, 0 if error is None else 1)
                except Exception:  # a metrics hook must never stop the log
                    log.exception("decision log: on_result hook failed")

        return callback

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued, flush and close the producer (on the sender thread), then
        return; at most about ``2 * timeout_s``. Offers after this are refused."""
        with self._lock:
            if self._closed:
                return
            self._closed = True  # the sender sends what was offered before, then stops
            self._close_timeout_s = timeout_s
            sender = self._sender
            self._wake.notify()
        if sender is not None:
            sender.join(2 * timeout_s)
            if sender.is_alive():
                log.warning("decision log: %d records still unsent at shutdown", self.pending)

    @property
    def down(self) -> bool:
        """Whether the producer could not be built at the last attempt (offers are refused)."""
        return self._down

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "pending": self.pending,
                "pendingBytes": self.pending_bytes,
                "acked": self.acked,
                "failed": self.failed,
                "down": int(self._down),
            }
