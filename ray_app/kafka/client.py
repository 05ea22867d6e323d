"""A thin adapter over the Kafka client libraries (the in-memory twin for unit tests is
:mod:`ray_app.kafka.memory`).

Onramp's code talks to :class:`Producer` and :class:`Consumer`; which library sits behind them is
a setting (``kafka.client``): ``confluent`` (librdkafka, the default) or ``kafka-python`` (pure
Python, for where librdkafka cannot be installed; about a twentieth of the producer throughput).
Producers are always idempotent with ``acks=all``: a record counts as written only once every
in-sync replica has it.

>>> partition_for(b"u1", 4)
0
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol

from ray_app.config import KafkaSettings
from ray_app.errors import ConfigError, KafkaUnavailable
from ray_app.kafka.security import security_confluent, security_kafka_python

log = logging.getLogger(__name__)

__all__ = [
    "ConfluentConsumer",
    "ConfluentProducer",
    "Consumer",
    "Delivered",
    "KafkaPythonConsumer",
    "KafkaPythonProducer",
    "OutRecord",
    "Producer",
    "Record",
    "key_for_partition",
    "make_consumer",
    "make_producer",
    "partition_for",
]

Callback = Callable[["Delivered | None", "BaseException | None"], None]


class OutRecord(NamedTuple):
    """A record to produce (a named tuple: the collector builds one an event, where a frozen
    dataclass cost 0.56 us against 0.15)."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Delivered:
    """Where an acknowledged record landed."""

    topic: str
    partition: int
    offset: int


class Record(NamedTuple):
    """A consumed record (a named tuple: built for every record a worker takes, where a frozen
    dataclass costs three times as much)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partition of a key (murmur2, positive, modulo the partition count)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def key_for_partition(name: str, partition: int, partitions: int) -> bytes:
    """The first key ``name/0``, ``name/1``, ... that Kafka's default partitioner puts on
    ``partition`` of a topic of ``partitions``: a record a worker writes to one partition (a
    tick) goes through the same producer call as every keyed record.

    >>> key = key_for_partition("onramp.tick/5", 5, 64)
    >>> partition_for(key, 64), key.startswith(b"onramp.tick/5/")
    (5, True)
    """
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is not in 0..{partitions - 1}")
    n = 0
    while partition_for(f"{name}/{n}".encode(), partitions) != partition:
        n += 1
    return f"{name}/{n}".encode()


class Producer(Protocol):
    """What Onramp needs from a Kafka producer."""

    client_name: str

    def send(self, record: OutRecord, callback: Callback) -> None:
        """Queue one record; ``callback(delivered, error)`` runs once, on any thread."""

    def send_all(self, records: Sequence[OutRecord]) -> cf.Future[list[Delivered]]:
        """Queue records; the future resolves when all are acknowledged, or fails on the first error."""

    def send_many(self, records: Sequence[OutRecord]) -> cf.Future[int]:
        """As ``send_all``, without where each record landed: the future resolves to the number
        of records once all are acknowledged. The collector's and the stream's path."""

    def flush(self, timeout_s: float) -> None:
        """Block until queued records are acknowledged or failed, or the timeout passes."""

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush, then release the connection."""


class _ProducerBase:
    client_name = "base"

    def send(self, record: OutRecord, callback: Callback) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def send_all(self, records: Sequence[OutRecord]) -> cf.Future[list[Delivered]]:
        acks = _Acks(len(records))
        for i, record in enumerate(records):
            try:
                self.send(record, partial(acks.settle_at, i))
            except Exception as exc:  # queue refused it: fail the whole batch now
                acks.refuse(exc)
                break
        return acks.future

    def send_many(self, records: Sequence[OutRecord]) -> cf.Future[int]:
        count = _Count(len(records))
        for record in records:  # one callback shared by all the records
            try:
                self.send(record, count.settle)
            except Exception as exc:  # queue refused it: fail the whole batch now
                count.refuse(exc)
                break
        return count.future


class _Count:
    """What one ``send_many`` waits for: every record acknowledged, or the first error. One
    callback for all the records (no object a record), settled from whichever thread serves
    the delivery reports. An acknowledgement takes no lock: ``next`` of an
    :func:`itertools.count` is one atomic step, so two threads serving reports (the poller and a
    ``flush``) never lose one; only the last one, or an error, takes the lock to settle the
    future (0.64 -> 0.1 us a record)."""

    __slots__ = ("_acked", "_count", "_lock", "future")

    def __init__(self, count: int) -> None:
        self.future: cf.Future[Any] = cf.Future()
        self._count = count
        self._acked = itertools.count(1).__next__
        self._lock = threading.Lock()
        if not count:
            self.future.set_result(self._result())

    def _result(self) -> Any:
        return self._count

    def settle(self, delivered: Delivered | None, error: BaseException | None) -> None:
        """A :data:`Callback` for any of the records."""
        if error is not None:
            self.refuse(error)
        elif self._acked() == self._count:
            self._complete()

    def _complete(self) -> None:
        with self._lock:
            if not self.future.done():  # else an error came first
                self.future.set_result(self._result())

    def librdkafka_report(self, err: Any, msg: Any) -> None:
        """librdkafka's delivery report of any of the records (``on_delivery``): no
        :class:`Delivered` built. Never raises into librdkafka (see ``_confluent_report``)."""
        if err is None:
            if self._acked() == self._count:
                try:
                    self._complete()
                except Exception:
                    log.exception("a delivery report of the producer failed")
            return
        try:
            self.refuse(KafkaUnavailable(f"delivery failed: {err}", topic=msg.topic()))
        except Exception:
            log.exception("a delivery report of the producer failed")

    def refuse(self, error: BaseException) -> None:
        """The batch fails now: the producer would not take a record, or one failed."""
        with self._lock:
            if not self.future.done():
                self.future.set_exception(error)


class _Acks(_Count):
    """What one ``send_all`` waits for: every record's :class:`Delivered`, in the records'
    order, or the first error."""

    __slots__ = ("_out",)

    def __init__(self, count: int) -> None:
        self._out: list[Any] = [None] * count
        super().__init__(count)

    def _result(self) -> Any:
        return self._out

    def settle_at(
        self, index: int, delivered: Delivered | None, error: BaseException | None
    ) -> None:
        """A :data:`Callback` for record ``index`` (with ``functools.partial``)."""
        if error is None:
            self._out[index] = delivered  # before the count that may complete the list
        self.settle(delivered, error)


class KafkaPythonProducer(_ProducerBase):
    """Idempotent ``acks=all`` producer on kafka-python."""

    client_name = "kafka-python"

    def __init__(self, bootstrap: str, settings: KafkaSettings, **overrides: Any) -> None:
        from kafka import KafkaProducer

        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap.split(","),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": settings.linger_ms,
            # kafka-python refuses less than its request timeout (30 s) plus linger
            "delivery_timeout_ms": max(
                int(settings.delivery_timeout_s * 1000), 30_000 + settings.linger_ms + 1
            ),
            "max_block_ms": int(settings.ack_timeout_s * 1000),
            "client_id": "onramp",
            **security_kafka_python(settings),
            **overrides,
        }
        self._producer = KafkaProducer(**config)

    def send(self, record: OutRecord, callback: Callback) -> None:
        future = self._producer.send(
            record.topic, value=record.value, key=record.key, headers=list(record.headers) or None
        )
        future.add_callback(lambda md: callback(Delivered(md.topic, md.partition, md.offset), None))
        future.add_errback(lambda exc: callback(None, exc))

    def partitions_for(self, topic: str) -> set[int]:
        """Fetch (and cache) a topic's partitions; makes later sends non-blocking."""
        return set(self._producer.partitions_for(topic) or ())

    def flush(self, timeout_s: float) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except Exception as exc:  # kafka-python raises KafkaTimeoutError
            raise KafkaUnavailable(f"flush did not finish in {timeout_s}s: {exc}") from None

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.close(timeout=timeout_s)


class ConfluentProducer(_ProducerBase):
    """Idempotent ``acks=all`` producer on confluent-kafka (librdkafka), polled by a thread."""

    client_name = "confluent-kafka"

    def __init__(self, bootstrap: str, settings: KafkaSettings, **overrides: Any) -> None:
        confluent = _import_confluent()
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            # Java's (and kafka-python's) murmur2: a key lands on the same partition whichever
            # client wrote it, so key -> partition -> owning worker holds across clients.
            "partitioner": "murmur2_random",
            "linger.ms": settings.linger_ms,
            # librdkafka's default is 1 GiB: a collector whose broker fell behind held every
            # record it had answered 503 for (RSS +675 MiB in a 20 s flood of 500 kB batches)
            "queue.buffering.max.kbytes": settings.buffer_bytes // 1024,
            # librdkafka's default is 300 s: an idempotent producer whose broker came back
            # without its state (the embedded broker's memory storage) hung every record, new
            # ones included, that long; failed, the collector builds a new producer
            "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
            "client.id": "onramp",
            **security_confluent(settings),
            **overrides,
        }
        self._producer = confluent.Producer(config)
        self._queue_wait_s = settings.ack_timeout_s
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="onramp-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        # A metadata request at once: without it librdkafka's idempotent producer asks for its
        # producer id on a timer, and the first records wait 0.5-1 s for it (measured against
        # the embedded broker; with it they are acknowledged ~50 ms after the producer starts).
        # On this thread, so a broker that is down does not block the constructor; briefly, as
        # no delivery report is served while it waits.
        try:
            self._producer.list_topics(timeout=min(self._queue_wait_s, 2.0))
        except Exception as exc:  # unreachable for now: records wait for it as before
            log.debug("producer metadata request failed: %s", exc)
        while not self._stop.is_set():
            try:
                self._producer.poll(0.05)
            except Exception:  # the thread must live on, or no later record is acknowledged
                log.exception("the producer's poll failed")

    def send(self, record: OutRecord, callback: Callback) -> None:
        self._produce(record, partial(_confluent_report, callback))

    def send_many(self, records: Sequence[OutRecord]) -> cf.Future[int]:
        """librdkafka's own report for every record, no :class:`Delivered` built for each
        (3.2-4.2 us of process CPU a record against 8.5-16.6 us through ``send_all``), and
        ``produce`` called in a tight loop, with headers only where a record has some (1.2 ->
        0.9 us a record): only when librdkafka's queue is full do the rest go through
        :meth:`_produce`, which waits for room."""
        count = _Count(len(records))
        report = count.librdkafka_report
        produce = self._producer.produce
        queued = 0
        try:
            for topic, value, key, headers in records:
                if headers:
                    produce(topic, value, key, on_delivery=report, headers=list(headers))
                else:
                    produce(topic, value, key, on_delivery=report)
                queued += 1
        except BufferError:  # the queue is full: the rest wait for room, one at a time
            try:
                for record in records[queued:]:
                    self._produce(record, report)
            except Exception as exc:  # still no room: the batch fails now
                count.refuse(exc)
        except Exception as exc:  # the producer refused a record: the batch fails now
            count.refuse(exc)
        return count.future

    def _produce(self, record: OutRecord, on_delivery: Callable[[Any, Any], None]) -> None:
        """Hand one record to librdkafka; while its queue is full, wait up to
        ``ack_timeout_s`` for room (delivery reports served meanwhile)."""
        deadline: float | None = None
        while True:
            try:
                self._producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=list(record.headers) if record.headers else None,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:  # librdkafka's local queue is full: wait for deliveries
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._queue_wait_s
                elif now > deadline:
                    raise KafkaUnavailable(
                        f"producer queue full for {self._queue_wait_s}s", topic=record.topic
                    ) from None
                self._producer.poll(0.05)

    def flush(self, timeout_s: float) -> None:
        left = self._producer.flush(timeout_s)
        if left:
            raise KafkaUnavailable(f"{left} records still unacknowledged after {timeout_s}s")

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush for up to ``timeout_s``; what is still not acknowledged then fails in its
        callback (purged), so that no caller waits for a record this producer will never send."""
        try:
            self._producer.flush(timeout_s)
        finally:
            self._stop.set()
            self._poller.join(timeout=1.0)
            try:
                self._producer.purge()
                self._producer.poll(0)  # serve the purged records' delivery reports
            except Exception as exc:  # a producer that cannot purge cannot send either
                log.debug("producer purge failed: %s", exc)


def _confluent_report(callback: Callback, err: Any, msg: Any) -> None:
    """librdkafka's delivery report of one record, to a :data:`Callback`. What the callback
    raises is logged here: raised into librdkafka, ``poll()`` would re-raise it on the poller
    thread, and the exception it keeps would hold the producer alive."""
    try:
        if err is None:
            callback(Delivered(msg.topic(), msg.partition(), msg.offset()), None)
        else:
            callback(None, KafkaUnavailable(f"delivery failed: {err}", topic=msg.topic()))
    except Exception:
        log.exception("a delivery callback of the producer failed")


class Consumer(Protocol):
    """What Onramp needs from a Kafka consumer: owned partitions, no group rebalancing."""

    client_name: str

    def assign(
        self, partitions: Iterable[tuple[str, int]], from_beginning: bool = True
    ) -> None: ...

    def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list[Record]: ...

    def assign_at(self, offsets: dict[tuple[str, int], int]) -> None: ...

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read an assigned partition from ``offset`` on: records of it fetched already and not
        yet handed over are dropped (a stream worker fetches again what a fetch skipped)."""

    def highwater(self, topic: str, partition: int) -> int | None:
        """The end offset last reported by the broker for an assigned partition (no request)."""

    def lowwater(self, topic: str, partition: int) -> int | None:
        """The first offset the broker still holds for a partition (a request; ``None`` when
        it cannot say): at or past the end offset, every record has expired."""

    def commit(self, offsets: dict[tuple[str, int], int], wait: bool = False) -> None:
        """Commit next offsets to the consumer's group (``kafka.consumer_group``) in the
        background (or, with ``wait``, before returning); a failure is logged and counted in ``commit_failures``, never raised: the
        checkpoint, not the group, is what a restarted worker resumes from."""

    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed next offset of a partition (a blocking broker call)."""

    def close(self) -> None: ...


class KafkaPythonConsumer:
    """Consumer on kafka-python using ``assign()`` (the embedded broker holds group joins)."""

    client_name = "kafka-python"

    def __init__(self, bootstrap: str, settings: KafkaSettings, **overrides: Any) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="onramp",
            group_id=settings.consumer_group,
            fetch_max_wait_ms=50,  # freshness: do not let an idle fetch sit for 500 ms
            **security_kafka_python(settings),
            **overrides,
        )

    def assign(self, partitions: Iterable[tuple[str, int]], from_beginning: bool = True) -> None:
        from kafka import TopicPartition

        tps = [TopicPartition(t, p) for t, p in partitions]
        self._consumer.assign(tps)
        if from_beginning:
            self._consumer.seek_to_beginning(*tps)

    def assign_at(self, offsets: dict[tuple[str, int], int]) -> None:
        """Own these partitions and read each from the given offset."""
        from kafka import TopicPartition

        self._consumer.assign([TopicPartition(t, p) for t, p in offsets])
        for (t, p), off in offsets.items():
            self._consumer.seek(TopicPartition(t, p), off)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        from kafka import TopicPartition

        self._consumer.seek(TopicPartition(topic, partition), offset)

    commit_failures = 0

    def commit(self, offsets: dict[tuple[str, int], int], wait: bool = False) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        def done(_offsets: Any, result: Any) -> None:
            if isinstance(result, Exception):
                self.commit_failures += 1
                log.warning("offset commit failed: %s", result)

        if not offsets:
            return
        tps = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        if not wait:
            self._consumer.commit_async(tps, callback=done)
            return
        try:
            self._consumer.commit(tps)
        except Exception as exc:
            done(None, exc)

    def committed(self, topic: str, partition: int) -> int | None:
        from kafka import TopicPartition

        off = self._consumer.committed(TopicPartition(topic, partition))
        return None if off is None else int(off)

    def highwater(self, topic: str, partition: int) -> int | None:
        from kafka import TopicPartition

        hw = self._consumer.highwater(TopicPartition(topic, partition))
        return None if hw is None else int(hw)

    def lowwater(self, topic: str, partition: int) -> int | None:
        from kafka import TopicPartition

        tp = TopicPartition(topic, partition)
        try:
            low = self._consumer.beginning_offsets([tp]).get(tp)
        except Exception:  # the broker did not say
            return None
        return None if low is None or low < 0 else int(low)

    def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list[Record]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [
            Record(
                r.topic,
                r.partition,
                r.offset,
                r.key,
                r.value,
                r.timestamp if r.timestamp is not None else 0,  # None: message format v0
                tuple((k, v) for k, v in (r.headers or ())),
            )
            for recs in batches.values()
            for r in recs
        ]

    def close(self) -> None:
        self._consumer.close()


class ConfluentConsumer:
    """Consumer on confluent-kafka using ``assign()``."""

    client_name = "confluent-kafka"

    def __init__(self, bootstrap: str, settings: KafkaSettings, **overrides: Any) -> None:
        confluent = _import_confluent()
        self._confluent = confluent
        self._consumer = confluent.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": settings.consumer_group,
                "on_commit": self._committed_cb,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                **security_confluent(settings),
                **overrides,
            }
        )

    def assign(self, partitions: Iterable[tuple[str, int]], from_beginning: bool = True) -> None:
        offset = self._confluent.OFFSET_BEGINNING if from_beginning else self._confluent.OFFSET_END
        self._consumer.assign([self._confluent.TopicPartition(t, p, offset) for t, p in partitions])

    def assign_at(self, offsets: dict[tuple[str, int], int]) -> None:
        """Own these partitions and read each from the given offset."""
        self._consumer.assign(
            [self._confluent.TopicPartition(t, p, off) for (t, p), off in offsets.items()]
        )

    def seek(self, topic: str, partition: int, offset: int) -> None:
        # librdkafka drops what it fetched of the partition before the seek (op versions)
        self._consumer.seek(self._confluent.TopicPartition(topic, partition, offset))

    commit_failures = 0

    def commit(self, offsets: dict[tuple[str, int], int], wait: bool = False) -> None:
        if not offsets:
            return
        tps = [self._confluent.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=not wait)
        except Exception as exc:
            self._committed_cb(exc, tps)

    def _committed_cb(self, err: Any, _partitions: Any) -> None:
        if err is not None:
            self.commit_failures += 1
            log.warning("offset commit failed: %s", err)

    def committed(self, topic: str, partition: int) -> int | None:
        (tp,) = self._consumer.committed([self._confluent.TopicPartition(topic, partition)], 10)
        return None if tp.offset < 0 else int(tp.offset)

    def highwater(self, topic: str, partition: int) -> int | None:
        try:
            _, high = self._consumer.get_watermark_offsets(
                self._confluent.TopicPartition(topic, partition), cached=True
            )
        except Exception:  # not fetched yet
            return None
        return None if high is None or high < 0 else int(high)

    def lowwater(self, topic: str, partition: int) -> int | None:
        try:
            low, _ = self._consumer.get_watermark_offsets(
                self._confluent.TopicPartition(topic, partition), timeout=2, cached=False
            )
        except Exception:  # the broker did not say
            return None
        return None if low is None or low < 0 else int(low)

    def poll(self, timeout_s: float = 0.5, max_records: int = 5000) -> list[Record]:
        """What is fetched already, at once; else the first record within ``timeout_s`` and
        whatever came with it. (librdkafka's ``consume(n, timeout)`` waits for ``n`` records or
        the whole timeout: at a steady trickle every poll would wait the timeout out, which
        kafka-python's poll does not.)"""
        out = []
        got = self._consumer.consume(num_messages=max_records, timeout=0)
        if not got:
            got = self._consumer.consume(num_messages=1, timeout=timeout_s)
            if got and max_records > 1:
                got += self._consumer.consume(num_messages=max_records - 1, timeout=0)
        for m in got:
            if m.error():
                if m.error().code() == self._confluent.KafkaError._PARTITION_EOF:
                    continue
                raise KafkaUnavailable(f"consume failed: {m.error()}", topic=m.topic())
            out.append(
                Record(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.key(),
                    m.value(),
                    m.timestamp()[1],
                    tuple(m.headers() or ()),
                )
            )
        return out

    def close(self) -> None:
        self._consumer.close()


def _import_confluent() -> Any:
    try:
        import confluent_kafka
    except ImportError:
        raise ConfigError(
            "kafka.client is 'confluent' but confluent-kafka is not installed "
            "(pip install confluent-kafka)",
            setting="kafka.client",
        ) from None
    return confluent_kafka


def make_producer(bootstrap: str, settings: KafkaSettings, **overrides: Any) -> Producer:
    """The producer that ``settings.client`` selects."""
    cls = ConfluentProducer if settings.client == "confluent" else KafkaPythonProducer
    return cls(bootstrap, settings, **overrides)


def make_consumer(bootstrap: str, settings: KafkaSettings, **overrides: Any) -> Consumer:
    """The consumer that ``settings.client`` selects."""
    cls = ConfluentConsumer if settings.client == "confluent" else KafkaPythonConsumer
    return cls(bootstrap, settings, **overrides)
