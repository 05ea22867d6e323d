"""The decision log: every answered decision, as one record in ``onramp.decisions``.

A decision is handed to Kafka before its answer leaves the replica, but the answer does not wait
for Kafka's acknowledgement (that round trip would double the latency of ``/v1/decide``). What
keeps the log complete instead:

* the producer is idempotent with ``acks=all`` and retries on its own;
* at most ``decide.log_max_pending`` records may wait for their acknowledgement; beyond that the
  route answers 503 with Retry-After rather than serve decisions the log may not get;
* on shutdown the replica flushes the producer before it exits (``close``);
* every record that Kafka finally refuses is counted (``failed``) and logged with its id.

>>> from ray_app.kafka.client import InMemoryBroker, InMemoryProducer
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
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ray_app.kafka.client import Delivered, OutRecord, Producer

__all__ = ["DecisionLog"]

log = logging.getLogger(__name__)


class DecisionLog:
    """Sends decision records with a bound on the records awaiting acknowledgement."""

    def __init__(
        self,
        producer_factory: Callable[[], Producer],
        topic: str,
        max_pending: int = 20_000,
        on_result: Callable[[int, int], None] | None = None,
    ) -> None:
        self.topic = topic
        self.max_pending = max_pending
        self._factory = producer_factory
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self._on_result = on_result
        self.pending = 0
        self.acked = 0
        self.failed = 0

    def connect(self) -> None:
        if self._producer is None:
            self._producer = self._factory()

    def offer(self, records: Sequence[tuple[bytes, dict[str, Any]]]) -> bool:
        """Queue (key, record) pairs; False (nothing queued) if that would pass the bound."""
        with self._lock:
            if self.pending + len(records) > self.max_pending:
                return False
            self.pending += len(records)
        self.connect()
        assert self._producer is not None
        for n, (key, record) in enumerate(records):
            try:
                self._producer.send(
                    OutRecord(self.topic, orjson.dumps(record), key=key),
                    self._done(record.get("decisionId")),
                )
            except Exception as exc:  # the queue refused it: count every unsent one as failed
                unsent = len(records) - n
                log.error("decision log: %d records not queued: %s", unsent, exc)
                with self._lock:
                    self.pending -= unsent
                    self.failed += unsent
                if self._on_result:
                    self._on_result(0, unsent)
                raise
        return True

    def _done(self, decision_id: Any) -> Callable[[Delivered | None, BaseException | None], None]:
        def callback(delivered: Delivered | None, error: BaseException | None) -> None:
            with self._lock:
                self.pending -= 1
                if error is None:
                    self.acked += 1
                else:
                    self.failed += 1
            if error is not None:
                log.error("decision %s was not logged: %s", decision_id, error)
            if self._on_result:
                self._on_result(1 if error is None else 0, 0 if error is None else 1)

        return callback

    def flush(self, timeout_s: float = 10.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued, then release the producer."""
        if self._producer is not None:
            self._producer.close(timeout_s)
            self._producer = None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"pending": self.pending, "acked": self.acked, "failed": self.failed}
