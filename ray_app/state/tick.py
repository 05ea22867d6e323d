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

The time of a tick is the partition's clock when it went quiet (its latest event time, or a
later decision's time) plus how long it has been quiet, measured by the worker
(:func:`tick_time`): event time moves on at the rate of the wall clock, from where the records
left it. So a partition written with past times (a backfill, a test) is not pulled to the present
by its first pause, and a live partition's ticks follow the collector's clock. A partition whose
time is behind the worker's clock by more than its allowed lateness (at least
:data:`LIVE_MS`) gets no tick at all: its records are past times (a backfill written straight
to the topic, a test's fixed dates), and only its own records move its time.

>>> tick_record(1_767_225_600_000, 3)
b'{"type":"onramp.tick","messageId":"tick:3:1767225600000","timestamp":"2026-01-01T00:00:00.000Z","partition":3}'
>>> decode_tick({"type": TICK, "timestamp": "2026-01-01T00:00:00.000Z"})
1767225600000
>>> tick_time(1_767_225_600_000, quiet_s=2.5)
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
#: A partition is live, and may get ticks, while its time is within this much (or its allowed
#: lateness, if longer) of the worker's clock.
LIVE_MS = 60_000


def tick_time(clock_ms: int, quiet_s: float) -> int:
    """The time of a tick: the partition's clock when it went quiet plus the quiet time."""
    return clock_ms + int(quiet_s * 1000)


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
