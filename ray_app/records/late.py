"""Late records (schema ``onramp.late/1``): events the stream read behind their partition's
watermark, kept for operators rather than applied."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ray_app.records._read import _integer, _schema, _text
from ray_app.records.errors import LateRecordError

__all__ = ["LATE_SCHEMA", "LateRecord"]

LATE_SCHEMA = "onramp.late/1"


@dataclass(frozen=True)
class LateRecord:
    """An event that arrived behind its partition's watermark, as the late topic receives it
    (schema ``onramp.late/1``): the ``watermark``, how far behind it the event was
    (``behind_ms``), the ``allowed_lateness_ms`` in force, the ``event`` as read (its JSON
    object, or its text if it was not JSON) and where the stream read it (``origin``,
    :func:`~ray_app.records.dlq.stream_origin`).

    >>> from ray_app.records import stream_origin
    >>> r = LateRecord({"messageId": "m1"}, watermark=5000, behind_ms=4000,
    ...                allowed_lateness_ms=1000, origin=stream_origin("onramp.events", 0, 9))
    >>> LateRecord.from_json(orjson.loads(r.encode())) == r
    True
    >>> list(r.to_json())
    ['schema', 'reason', 'watermark', 'behindMs', 'allowedLatenessMs', 'event', 'origin']
    >>> LateRecord.from_json({**r.to_json(), "behindMs": "4s"})
    Traceback (most recent call last):
    ...
    ray_app.records.errors.LateRecordError: behindMs: expected an integer, got '4s'
    """

    event: Any
    watermark: int
    behind_ms: int
    allowed_lateness_ms: int
    origin: dict[str, Any]
    reason: str = "late"

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (schema ``onramp.late/1``)."""
        return {
            "schema": LATE_SCHEMA,
            "reason": self.reason,
            "watermark": self.watermark,
            "behindMs": self.behind_ms,
            "allowedLatenessMs": self.allowed_lateness_ms,
            "event": self.event,
            "origin": self.origin,
        }

    def encode(self) -> bytes:
        """:meth:`to_json` as JSON bytes."""
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> LateRecord:
        """Read and validate a decoded late record; :class:`LateRecordError` if bad."""
        if not isinstance(data, Mapping):
            raise LateRecordError("", f"expected a JSON object, got {type(data).__name__}")
        _schema(data, LATE_SCHEMA, LateRecordError)
        if "event" not in data:
            raise LateRecordError("event", "missing")
        origin = data.get("origin")
        if not isinstance(origin, dict):
            raise LateRecordError("origin", f"expected an object, got {origin!r}")
        return cls(
            event=data["event"],
            watermark=_integer(data, "watermark", LateRecordError),
            behind_ms=_integer(data, "behindMs", LateRecordError),
            allowed_lateness_ms=_integer(data, "allowedLatenessMs", LateRecordError),
            origin=origin,
            reason=_text(data, "reason", LateRecordError),
        )
