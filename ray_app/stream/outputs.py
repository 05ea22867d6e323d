"""The late and DLQ records a stream worker writes for the records it does not apply (see
:mod:`ray_app.records` for their schemas)."""

from __future__ import annotations

from typing import Any

import orjson

from ray_app.records import DlqRecord, LateRecord, raw_payload, stream_origin

__all__ = ["dlq_record", "late_record"]


def _origin(rec: Any) -> dict[str, Any]:
    return stream_origin(rec.topic, rec.partition, rec.offset)


def late_record(value: bytes, why: dict[str, Any], rec: Any) -> bytes:
    """The :class:`LateRecord` of an event behind the watermark (``why``: what the shard says)."""
    try:
        event: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        event = value.decode("utf-8", "replace")

    def record(event: Any) -> bytes:
        return LateRecord(
            event=event,
            watermark=why["watermark"],
            behind_ms=why["behindMs"],
            allowed_lateness_ms=why["allowedLatenessMs"],
            origin=_origin(rec),
            reason=why["reason"],
        ).encode()

    try:
        return record(event)
    except (TypeError, ValueError):  # read, but not writable (nested past the encoder's depth)
        return record(value.decode("utf-8", "replace"))  # kept as text: still nothing lost


def dlq_record(value: bytes | None, exc: Any, rec: Any) -> bytes:
    """The :class:`DlqRecord` of a rejected record: reason, field, message, origin, and what
    :func:`~ray_app.records.raw_payload` keeps of the raw value (a tombstone keeps nothing)."""
    return DlqRecord(
        reason=exc.reason,
        field=exc.field,
        message=exc.message,
        origin=_origin(rec),
        **raw_payload(value),
    ).encode()
