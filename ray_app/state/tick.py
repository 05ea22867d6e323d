"""Ticks: the time, written into a quiet partition of ``onramp.events`` by the worker that owns it.

A partition's watermark moves with the event times of its records (:mod:`ray_app.state.shard`).
While no record arrives it stands still, and what waits on it waits for the partition's next
event, however long that takes: a decision whose user left without an outcome is not rewarded
0 when its window ends (the learner never hears of it), and events the reorder buffer holds for
a missing ``seq`` are not applied. On a quiet night, or a deployment with little traffic spread
over many partitions, that is hours.

A worker that sees one of its partitions quiet (no record for ``stream.watermark_tick_s``) while
something in it waits on the watermark (:meth:`~ray_app.state.SessionShard.due_ms`) writes a
tick to that partition: a record of a type no client can send (the collector accepts Segment
call types only), with a time. The shard takes it in offset order with the events, as an event
of that time would move the watermark, and applies nothing. Because the tick is a record, a
replay from a checkpoint reads the same ticks at the same offsets: the state stays a function of
the records, never of the clock of the worker that replays them.

The time of a tick is the partition's event time (``max_ts``) plus the time since the record
that moved it was written (``SessionShard.clock_kafka_ms``: its Kafka timestamp; for an event
forwarded from a merged id, or a record without a timestamp, its ``receivedAt``), against the
worker's clock now (:func:`tick_time`), and never past the worker's clock. Event time moves on
at the rate of the wall clock, from where the records left it. ``clock_kafka_ms`` is part of
the state, a function of the records like the rest, so a restarted worker, or one that caught
up with a backlog, goes on from the records' own times; a tick that moves event time moves it
by as much, so a chain of ticks keeps the gap the events left, whatever the tick's own trip
through Kafka. A partition whose event time was more than its allowed lateness (at least
:data:`LIVE_MS`) behind the time its last moving record was written gets no tick: its records
are past times written now (a backfill straight to the topic, a test's fixed dates), and only
its own records move its time. Decisions do not move event time and do not time ticks (a
replica's clock is not the partition's); a partition that has taken decisions only, or was
restored from a checkpoint written before ticks, gets its first tick after its next event. The
clocks of the producers (the collector's hosts) and of the workers must agree within the
allowed lateness, as they must for ``receivedAt``.

A tick names its partition; a shard takes a tick for another partition (written with a
partition count other than the topic's) without moving its time.

>>> tick_record(1_767_225_600_000, 3)
b'{"type":"onramp.tick","messageId":"tick:3:1767225600000","timestamp":"2026-01-01T00:00:00.000Z","partition":3}'
>>> decode_tick({"type": TICK, "timestamp": "2026-01-01T00:00:00.000Z"})
1767225600000
>>> tick_time(1_767_225_600_000, written_ms=1_767_225_600_040, now_ms=1_767_225_602_540)
1767225602500
"""

from __future__ import annotations

from typing import Any

import orjson

from ray_app.state.event import RecordRejected, parse_ms
from ray_app.timefmt import iso_ms
from validation.reasons import ReasonCode

__all__ = ["LIVE_MS", "TICK", "decode_tick", "tick_record", "tick_time"]

TICK = "onramp.tick"
#: A partition is live, and may get ticks, when its event time was within this much (or its
#: allowed lateness, if longer) of the timestamp of the record that last moved it.
LIVE_MS = 60_000


def tick_time(event_ms: int, written_ms: int, now_ms: int) -> int:
    """The time of a tick: the partition's event time plus the time since the record that moved
    it was written."""
    return event_ms + (now_ms - written_ms)


def tick_record(at_ms: int, partition: int) -> bytes:
    """The value of a tick of ``at_ms`` for ``partition`` (its key is one that hashes to the
    partition: :func:`~ray_app.kafka.client.key_for_partition`)."""
    return orjson.dumps(
        {
            "type": TICK,
            "messageId": f"tick:{partition}:{at_ms}",
            "timestamp": iso_ms(at_ms),
            "partition": partition,
        }
    )


def decode_tick(d: dict[str, Any]) -> int:
    """A tick record (a JSON object whose ``type`` is :data:`TICK`) -> its time in ms; raises
    :class:`RecordRejected` without a valid ``timestamp``."""
    if d.get("timestamp") is None:
        raise RecordRejected(ReasonCode.MISSING_FIELD, "timestamp", "a tick record needs a time")
    return parse_ms(d["timestamp"], "timestamp")
