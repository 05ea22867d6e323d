"""The topic archiver: a bounded read of Kafka topics into JSON lines files at a filesystem URI.

Layout: ``<out>/<topic>/part-<partition>-<first offset>-<last offset>.jsonl``, one record per line:
the record's own JSON object plus ``"_kafka": {"partition", "offset", "timestampMs"}``, so a reader
(Ray Data for training, the replay for the parity check) knows where each record came from.
Records whose value is not a JSON object are not written; they are counted (``invalid``) and the
first few are named in :attr:`ArchiveReport.problems`.

The read is bounded: each partition is read from ``start`` (default: the beginning) until it has
reached the end offset it had when the archiver started (or, for one whose end was not known yet,
when its first fetch came back: waited for up to :data:`UNKNOWN_END_WAIT` idle periods) and a
poll of ``idle_s`` brings nothing new (the embedded broker under-reports end offsets, so the end
is confirmed by reading), or until
``max_seconds``, or until ``stop()`` says so (Ctrl-C in ``onramp archive``): what was read is
written either way, and :attr:`ArchiveReport.interrupted` tells an interrupted read.

>>> from ray_app.kafka.client import OutRecord
>>> from ray_app.kafka.memory import InMemoryBroker, InMemoryProducer, InMemoryConsumer
>>> import tempfile
>>> broker = InMemoryBroker(partitions=2)
>>> p = InMemoryProducer(broker)
>>> _ = p.send_all([OutRecord("t", b'{"a": %d}' % i, key=b"k%d" % i) for i in range(5)]).result(1)
>>> _ = p.send_all([OutRecord("t", b"not json", key=b"k")]).result(1)
>>> out = tempfile.mkdtemp()
>>> report = archive_topics(InMemoryConsumer(broker), ["t"], out, partitions=2, idle_s=0.01)
>>> report.records, report.invalid, sum(1 for f in report.files for _ in open(f))
(5, 1, 5)
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ray_app.errors import FieldError
from ray_app.kafka.client import Consumer
from ray_app.storage import Storage

#: What a reader of an archive takes for a JSON lines file.
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")

__all__ = ["ArchiveReport", "archive_topics", "archived_files"]


@dataclass
class ArchiveReport:
    """What an archive run wrote: records and invalid records per topic, files, problems."""

    out: str
    by_topic: dict[str, int] = field(default_factory=dict)
    invalid_by_topic: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    #: Partitions (``topic/partition``) read in part: their records up to the end offset they
    #: had when the read began were not all read when ``max_seconds`` ran out.
    truncated: list[str] = field(default_factory=list)
    partitions: int = 0
    #: Partitions whose end offset the broker never reported (all of them: nothing answered).
    unknown_ends: int = 0

    @property
    def records(self) -> int:
        return sum(self.by_topic.values())

    @property
    def invalid(self) -> int:
        return sum(self.invalid_by_topic.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "records": self.by_topic,
            "invalid": self.invalid_by_topic,
            "files": len(self.files),
            "problems": self.problems,
            "seconds": round(self.seconds, 2),
            "interrupted": self.interrupted,
            "truncated": self.truncated,
            "partitions": self.partitions,
            "unknown_ends": self.unknown_ends,
        }

    @property
    def unreachable(self) -> bool:
        """Nothing was read and no partition's end offset was ever reported: the broker did
        not answer (or has none of the topics)."""
        return self.records == 0 and self.partitions > 0 and self.unknown_ends == self.partitions


#: Idle periods (``idle_s``) the read waits for a partition whose end offset the broker has not
#: reported yet (a consumer knows it from its first fetch of the partition).
UNKNOWN_END_WAIT = 5


def archive_topics(
    consumer: Consumer,
    topics: Sequence[str],
    out: str | Path,
    partitions: int,
    *,
    idle_s: float = 1.0,
    max_seconds: float = 600.0,
    on_progress: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> ArchiveReport:
    """Read ``topics`` (``partitions`` each) through ``consumer`` into JSON lines under ``out``.

    ``on_progress(n)`` is called with the number of records read by each poll; ``stop()`` is
    asked after each poll and ends the read early (what was read is still written). The
    consumer is not closed.
    """
    store = Storage(out, field="out")
    started = time.monotonic()
    tps = [(t, p) for t in topics for p in range(partitions)]
    consumer.assign(tps, from_beginning=True)
    ends = {tp: consumer.highwater(*tp) for tp in tps}
    # where each partition's records begin: one whose records have all expired (its start at
    # or past its end) has nothing to give, and is not waited for
    starts = {tp: consumer.lowwater(*tp) for tp in tps}
    lines: dict[tuple[str, int], list[bytes]] = {tp: [] for tp in tps}
    past_end: set[tuple[str, int]] = set()  # partitions a record at or past their end came from
    first: dict[tuple[str, int], int] = {}
    last: dict[tuple[str, int], int] = {}
    report = ArchiveReport(str(out))
    quiet_since = time.monotonic()
    while time.monotonic() - started < max_seconds:
        if stop is not None and stop():
            report.interrupted = True
            break
        batch = consumer.poll(timeout_s=min(0.2, idle_s), max_records=5_000)
        if batch:
            quiet_since = time.monotonic()
        for rec in batch:
            tp = (rec.topic, rec.partition)
            end = ends.get(tp)
            if end is not None and rec.offset >= end:
                # written since the read began: the next archive's. And this partition is read
                # to its end, whatever held the offsets before it (a transaction marker)
                past_end.add(tp)
                continue
            last[tp] = rec.offset
            first.setdefault(tp, rec.offset)
            try:
                value = orjson.loads(rec.value)
            except orjson.JSONDecodeError as exc:
                value, why = None, f"not JSON ({exc})"
            else:
                why = f"not a JSON object ({type(value).__name__})"
            if not isinstance(value, dict):
                report.invalid_by_topic[rec.topic] = report.invalid_by_topic.get(rec.topic, 0) + 1
                if len(report.problems) < 20:
                    report.problems.append(f"{rec.topic}/{rec.partition}@{rec.offset}: {why}")
                continue
            value["_kafka"] = {
                "partition": rec.partition,
                "offset": rec.offset,
                "timestampMs": rec.timestamp_ms,
            }
            lines.setdefault(tp, []).append(orjson.dumps(value))
            report.by_topic[rec.topic] = report.by_topic.get(rec.topic, 0) + 1
        if on_progress is not None and batch:
            on_progress(len(batch))
        for tp in [tp for tp, end in ends.items() if end is None]:
            ends[tp] = consumer.highwater(*tp)  # known once a fetch of it has come back
        # a partition whose end the broker has not reported yet may still have everything to
        # give (on a loaded machine its first fetch took over a second): it is waited for, up to
        # UNKNOWN_END_WAIT idle periods, before the idle rule may end the read
        known = all(end is not None for end in ends.values())
        known = known or time.monotonic() - started >= UNKNOWN_END_WAIT * idle_s
        reached = known and all(
            end is None or tp in past_end or _read_from(tp, last, starts) >= end
            for tp, end in ends.items()
        )
        # every end known and reached: done, however busy the topic (it used to read on,
        # past the ends, until max_seconds); an end never reported waits for a quiet period
        settled = all(end is not None for end in ends.values()) or (
            not batch and time.monotonic() - quiet_since >= idle_s
        )
        if reached and settled:
            break
    for (topic, part), rows in sorted(lines.items()):
        if not rows:
            continue
        rel = (
            f"{topic}/part-{part:04d}-{first[(topic, part)]:012d}-{last[(topic, part)]:012d}.jsonl"
        )
        store.write(rel, b"\n".join(rows) + b"\n")
        report.files.append(store.path(rel))
    for t in topics:
        report.by_topic.setdefault(t, 0)
    report.partitions = len(tps)
    report.unknown_ends = sum(1 for end in ends.values() if end is None)
    if not report.interrupted:
        # not read to the end it had: cut short. One of which nothing came and whose start
        # the broker did not say is left out (most likely all expired: every partition is
        # fetched from the first poll on)
        report.truncated = [
            f"{t}/{p}"
            for (t, p), end in sorted(ends.items())
            if end is not None
            and ((t, p) in last or starts.get((t, p)) is not None)
            and (t, p) not in past_end
            and _read_from((t, p), last, starts) < end
        ]
    report.seconds = time.monotonic() - started
    return report


def _read_from(
    tp: tuple[str, int], last: dict[tuple[str, int], int], starts: dict[tuple[str, int], int | None]
) -> int:
    """The next offset to read of ``tp``: past the last record read, else where its records
    begin (0 when the broker did not say)."""
    if tp in last:
        return last[tp] + 1
    return starts.get(tp) or 0


def _folder(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _other_topic(uri: str, topic: str) -> bool:
    """Whether folder ``uri`` is, by its name, the archive folder of another topic of the same
    prefix as ``topic`` (``onramp.rewards`` when ``onramp.decisions`` was asked for)."""
    name, prefix = _folder(uri), topic.split(".", 1)[0] + "."
    return name != topic and name.startswith(prefix)


def archived_files(
    uri: str | Path, topic: str | None = None, field: str | None = None
) -> list[tuple[str, bytes]]:
    """The JSON lines files at ``uri`` (a path or filesystem URI, see :mod:`ray_app.storage`),
    as ``(name, bytes)`` in name order: the file itself; else the files of the folder
    ``<uri>/<topic>`` (an archive root written by :func:`archive_topics`); else those of the
    folder ``uri`` itself (one topic's folder, or any folder of ``*.jsonl``). ``.gz`` files are
    returned decompressed. A :class:`FieldError` (``field``, default ``uri`` itself) when there
    is nothing to read.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> Storage(root).write("onramp.rewards/part-0000-1-2.jsonl", b'{"a": 1}\\n')
    >>> [n.rsplit("/", 2)[-2:] for n, _ in archived_files(root, "onramp.rewards")]
    [['onramp.rewards', 'part-0000-1-2.jsonl']]
    """
    import gzip

    text = str(uri)
    field = field or text
    store = Storage(text, field=field)
    try:
        if store.is_file():
            data = store.read("") or b""
            return [(text, gzip.decompress(data) if text.endswith(".gz") else data)]
        if not store.exists():
            raise FieldError(field, "cannot read: no such file or directory")
        for rel in (*([topic] if topic else []), ""):
            names = [n for n in store.files(rel) if n.endswith(JSONL_SUFFIXES)]
            if names and rel == "" and topic and _other_topic(text, topic):
                raise FieldError(
                    field,
                    f"this is the folder of topic {_folder(text)!r}, not of {topic!r}: name the "
                    f"archive's root or its {topic}/ folder",
                )
            if names:
                out = []
                for n in names:
                    path = f"{text.rstrip('/')}/{rel}/{n}" if rel else f"{text.rstrip('/')}/{n}"
                    data = store.read(f"{rel}/{n}" if rel else n) or b""
                    out.append((path, gzip.decompress(data) if n.endswith(".gz") else data))
                return out
    except (OSError, EOFError, zlib.error) as exc:  # a corrupt .gz is a zlib.error
        raise FieldError(field, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    under = f" or under {topic}/" if topic else ""
    raise FieldError(field, f"no JSON lines files (*.jsonl) here{under}")
