"""The late and DLQ records a stream worker writes for the records it does not apply (see
:mod:`ray_app.records` for their schemas)."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from ray_app.records import DlqRecord, LateRecord, stream_origin

__all__ = ["dlq_record", "late_record"]

#: Raw bytes of a record kept in its DLQ record.
_DLQ_RAW_CAP = 32 * 1024


def _origin(rec: Any) -> dict[str, Any]:
    return stream_origin(rec.topic, rec.partition, rec.offset)


def late_record(value: bytes, why: dict[str, Any], rec: Any) -> bytes:
    """The :class:`LateRecord` of an event behind the watermark (``why``: what the shard says)."""
    try:
        event: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        event = value.decode("utf-8", "replace")
    return LateRecord(
        event=event,
        watermark=why["watermark"],
        behind_ms=why["behindMs"],
        allowed_lateness_ms=why["allowedLatenessMs"],
        origin=_origin(rec),
        reason=why["reason"],
    ).encode()


def dlq_record(value: bytes | None, exc: Any, rec: Any) -> bytes:
    """The :class:`DlqRecord` of a rejected record: reason, field, message, origin, and at most
    32 KB of the raw value (``rawText`` if UTF-8, else ``rawBase64``; a tombstone has
    ``rawSize`` 0 and ``tombstone`` true)."""
    raw: dict[str, Any]
    if value is None:
        raw = {"raw_size": 0, "tombstone": True}
    else:
        kept = bytes(value[:_DLQ_RAW_CAP])
        raw = {"raw_size": len(value), "raw_truncated": len(value) > len(kept)}
        text = _utf8(kept, truncated=len(value) > len(kept))
        if text is not None:
            raw["raw_text"] = text
        else:
            raw["raw_base64"] = base64.b64encode(kept).decode("ascii")
    return DlqRecord(
        reason=exc.reason, field=exc.field, message=exc.message, origin=_origin(rec), **raw
    ).encode()


def _utf8(data: bytes, truncated: bool) -> str | None:
    """``data`` as text if it is UTF-8 (a character the cut split at the end is left out)."""
    for trim in range(4 if truncated else 1):
        try:
            return data[: len(data) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None
