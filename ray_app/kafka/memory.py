"""The in-memory twin of Kafka, for unit tests: topics as lists, producers that acknowledge at
once (or hold records during a simulated outage), consumers that read by position. Keys are
partitioned with Kafka's own murmur2, so partition assignment in unit tests is the one a real
broker would see.

>>> broker = InMemoryBroker(partitions=4)
>>> producer = InMemoryProducer(broker)
>>> producer.send_all([OutRecord("onramp.events", b'{"a":1}', key=b"u1")]).result(timeout=1)
[Delivered(topic='onramp.events', partition=0, offset=0)]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ray_app.errors import KafkaUnavailable
from ray_app.kafka.client import (
    Callback,
    Delivered,
    OutRecord,
    Record,
    _ProducerBase,
    partition_for,
)

__all__ = ["InMemoryBroker", "InMemoryConsumer", "InMemoryProducer"]


@dataclass
class InMemoryBroker:
    """Topics as lists in memory. ``available = False`` leaves sends unacknowledged (an outage)."""

    partitions: int = 8
    topics: dict[str, list[list[Record]]] = field(default_factory=dict)
    available: bool = True
    pending: list[tuple[OutRecord, Callback]] = field(default_factory=list)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Producers on several threads (stream workers in one process) append one at a time."""

    def append(self, record: OutRecord) -> Delivered:
        with self.lock:
            parts = self.topics.setdefault(record.topic, [[] for _ in range(self.partitions)])
            p = partition_for(record.key, self.partitions) if record.key else 0
            offset = len(parts[p])
            parts[p].append(
                Record(
                    record.topic,
                    p,
                    offset,
                    record.key,
                    record.value,
                    int(time.time() * 1000),
                    record.headers,
                )  # CreateTime, as a producer sets it
            )
        return Delivered(record.topic, p, offset)

    def records(self, topic: str) -> list[Record]:
        return [r for part in self.topics.get(topic, []) for r in part]

    def recover(self) -> None:
        """End the outage: acknowledge what was pending."""
        self.available = True
        pending, self.pending = self.pending, []
        for record, callback in pending:
            callback(self.append(record), None)


class InMemoryProducer(_ProducerBase):
    """Producer twin over :class:`InMemoryBroker`; acknowledges synchronously."""

    client_name = "in-memory"

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker

    def send(self, record: OutRecord, callback: Callback) -> None:
        if not self.broker.available:
            self.broker.pending.append((record, callback))
            return
        callback(self.broker.append(record), None)

    def flush(self, timeout_s: float) -> None:
        if self.broker.pending:
            raise KafkaUnavailable(f"{len(self.broker.pending)} records unacknowledged")

    def close(self, timeout_s: float = 5.0) -> None:
        pass


class InMemoryConsumer:
    """Consumer twin over :class:`InMemoryBroker`."""

    client_name = "in-memory"

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker
        self._positions: dict[tuple[str, int], int] = {}

    def assign(self, partitions: Iterable[tuple[str, int]], from_beginning: bool = True) -> None:
        for t, p in partitions:
            end = len(self.broker.topics.get(t, [[]] * (p + 1))[p])
            self._positions[(t, p)] = 0 if from_beginning else end

    def assign_at(self, offsets: dict[tuple[str, int], int]) -> None:
        self._positions = dict(offsets)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        if (topic, partition) not in self._positions:
            raise KafkaUnavailable(f"seek on {topic}[{partition}], which is not assigned")
        self._positions[(topic, partition)] = offset

    def commit(self, offsets: dict[tuple[str, int], int], wait: bool = False) -> None:
        self.broker.committed.update(offsets)

    def committed(self, topic: str, partition: int) -> int | None:
        return self.broker.committed.get((topic, partition))

    def highwater(self, topic: str, partition: int) -> int | None:
        parts = self.broker.topics.get(topic, [])
        return len(parts[partition]) if partition < len(parts) else None

    def lowwater(self, topic: str, partition: int) -> int | None:
        """Nothing expires here: 0 for a partition there is."""
        parts = self.broker.topics.get(topic, [])
        return 0 if partition < len(parts) else None

    def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list[Record]:
        out: list[Record] = []
        for (t, p), pos in self._positions.items():
            part = self.broker.topics.get(t, [])
            recs = part[p][pos : pos + max_records - len(out)] if p < len(part) else []
            out += recs
            self._positions[(t, p)] = pos + len(recs)
        if not out and timeout_s > 0:
            time.sleep(min(timeout_s, 0.01))  # as a real poll waits: no busy loop when idle
        return out

    def close(self) -> None:
        pass
