"""DLQ records (schema ``onramp.dlq/1``): what the collector refused (a request, an event) and what
the stream could not apply (a record of ``onramp.events`` or ``onramp.decisions``), one shape for
both writers."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ray_app.records._read import _flag, _maybe_text, _schema
from ray_app.records.errors import DlqRecordError
from validation.reasons import ReasonCode

__all__ = ["DLQ_SCHEMA", "RAW_CAP", "DlqRecord", "fit_text", "raw_payload", "stream_origin"]

DLQ_SCHEMA = "onramp.dlq/1"

#: Bytes a DLQ record keeps of the refused value, once encoded (JSON text or base64).
RAW_CAP = 32 * 1024


def stream_origin(topic: str, partition: int, offset: int) -> dict[str, Any]:
    """Where the stream read a record it did not apply: the ``origin`` of its DLQ and late
    records.

    >>> stream_origin("onramp.events", 3, 41)
    {'stage': 'stream', 'topic': 'onramp.events', 'partition': 3, 'offset': 41}
    """
    return {"stage": "stream", "topic": topic, "partition": partition, "offset": offset}


@dataclass(frozen=True)
class DlqRecord:
    """Something refused, as the DLQ topic receives it (schema ``onramp.dlq/1``).

    Two writers: the collector (a request it refused, with its body; an event of a request, as
    sent) and the stream (a record of ``onramp.events`` or ``onramp.decisions`` it cannot apply).
    ``reason`` is the reason code, ``field`` the field at fault (if known) and ``message`` why;
    ``message_id`` the refused event's ``messageId`` when it had a usable one (``null`` in records
    of a request or of the stream); ``origin`` where it was refused: the collector's ``route``,
    ``receivedAt``, ``source``, ``requestId``, ``ip``, ``userAgent`` and the event's ``index`` in
    its batch, or the stream's ``stage``, ``topic``, ``partition`` and ``offset``
    (:func:`stream_origin`).

    At most one form of the refused value is kept (32 KB at most): ``raw_json``, the JSON text of
    an event that fits (``raw`` on the wire, as JSON); ``raw_text``, the start of its text;
    ``raw_base64``, the start of bytes that are not UTF-8. ``raw_size`` is the value's full size in
    bytes and ``raw_truncated`` whether the kept part is cut short. A tombstone (a Kafka record
    with no value) keeps nothing and has ``tombstone`` set (written only when set).

    >>> d = DlqRecord(ReasonCode.INVALID_JSON, None, "not JSON", stream_origin("t", 0, 7),
    ...               raw_size=8, raw_text="not json")
    >>> DlqRecord.from_json(orjson.loads(d.encode())) == d
    True
    >>> sorted(orjson.loads(d.encode()))  # doctest: +NORMALIZE_WHITESPACE
    ['field', 'message', 'messageId', 'origin', 'rawSize', 'rawText', 'rawTruncated', 'reason',
     'schema']
    >>> DlqRecord.from_json({**orjson.loads(d.encode()), "rawSize": -1})
    Traceback (most recent call last):
    ...
    ray_app.records.errors.DlqRecordError: rawSize: expected an integer >= 0, got -1
    """

    reason: ReasonCode
    field: str | None
    message: str
    origin: dict[str, Any]
    raw_size: int
    raw_truncated: bool = False
    raw_json: bytes | None = None
    raw_text: str | None = None
    raw_base64: str | None = None
    message_id: str | None = None
    tombstone: bool = False

    def __post_init__(self) -> None:
        kept = [k for k in (self.raw_json, self.raw_text, self.raw_base64) if k is not None]
        if len(kept) > 1 or (self.tombstone and kept):
            raise DlqRecordError(
                "raw", "keeps at most one of raw, rawText and rawBase64, none for a tombstone"
            )

    def to_json(self) -> dict[str, Any]:
        """The record as a dict for ``orjson`` (``raw`` is an ``orjson.Fragment``)."""
        out: dict[str, Any] = {
            "schema": DLQ_SCHEMA,
            "reason": self.reason.value,
            "field": self.field,
            "message": self.message,
            "messageId": self.message_id,
            "origin": self.origin,
        }
        if self.raw_json is not None:
            out["raw"] = orjson.Fragment(self.raw_json)
        elif self.raw_text is not None:
            out["rawText"] = self.raw_text
        elif self.raw_base64 is not None:
            out["rawBase64"] = self.raw_base64
        out["rawSize"] = self.raw_size
        out["rawTruncated"] = self.raw_truncated
        if self.tombstone:
            out["tombstone"] = True
        return out

    def encode(self) -> bytes:
        """:meth:`to_json` as JSON bytes (``TypeError`` if a field is not encodable, e.g. text
        with a lone surrogate: a writer that may hold one sanitizes :meth:`to_json` first)."""
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> DlqRecord:
        """Read and validate a decoded DLQ record; :class:`DlqRecordError` if bad. A record
        without ``rawSize`` (the collector once left it out of events kept whole) reads as the
        size of what it kept."""
        if not isinstance(data, Mapping):
            raise DlqRecordError("", f"expected a JSON object, got {type(data).__name__}")
        _schema(data, DLQ_SCHEMA, DlqRecordError)
        code = data.get("reason")
        try:
            reason = ReasonCode(code if isinstance(code, str) else "")
        except ValueError:
            raise DlqRecordError("reason", f"not a reason code: {code!r}") from None
        message = data.get("message")
        if not isinstance(message, str):
            raise DlqRecordError("message", f"expected a string, got {message!r}")
        origin = data.get("origin")
        if not isinstance(origin, dict):
            raise DlqRecordError("origin", f"expected an object, got {origin!r}")
        raw_json = None if "raw" not in data else _json_bytes(data["raw"])
        raw_text = _maybe_text(data, "rawText", DlqRecordError)
        raw_b64 = _maybe_text(data, "rawBase64", DlqRecordError)
        if raw_b64 is not None:
            try:
                kept = len(base64.b64decode(raw_b64, validate=True))
            except binascii.Error:
                raise DlqRecordError("rawBase64", "not base64") from None
        else:
            kept = len(raw_json or (raw_text or "").encode())
        size = data.get("rawSize", kept)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise DlqRecordError("rawSize", f"expected an integer >= 0, got {size!r}")
        return cls(
            reason=reason,
            field=_maybe_text(data, "field", DlqRecordError),
            message=message,
            origin=origin,
            raw_size=size,
            raw_truncated=_flag(data, "rawTruncated", DlqRecordError),
            raw_json=raw_json,
            raw_text=raw_text,
            raw_base64=raw_b64,
            message_id=_maybe_text(data, "messageId", DlqRecordError),
            tombstone=_flag(data, "tombstone", DlqRecordError),
        )


def _json_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        raise DlqRecordError("raw", "not a JSON value") from None


def raw_payload(value: bytes | None) -> dict[str, Any]:
    """What a DLQ record keeps of refused bytes, as :class:`DlqRecord` arguments: nothing for a
    tombstone (``None``); else their start as text when they are UTF-8 (a character the cut
    split is left out), or as base64 when not, taking at most :data:`RAW_CAP` bytes once
    encoded. The collector (a body it cannot read) and the stream (a record it cannot apply)
    both keep what this keeps.

    >>> raw_payload(b"not json")
    {'raw_text': 'not json', 'raw_size': 8, 'raw_truncated': False}
    >>> raw_payload(bytes([255, 254]))
    {'raw_base64': '//4=', 'raw_size': 2, 'raw_truncated': False}
    >>> raw_payload(None)
    {'raw_size': 0, 'tombstone': True}
    """
    if value is None:
        return {"raw_size": 0, "tombstone": True}
    kept = bytes(value[:RAW_CAP])
    text = _utf8(kept, truncated=len(value) > len(kept))
    if text is None:
        kept = bytes(value[: RAW_CAP // 4 * 3])  # base64 takes 4 bytes for 3
        return {
            "raw_base64": base64.b64encode(kept).decode("ascii"),
            "raw_size": len(value),
            "raw_truncated": len(value) > len(kept),
        }
    fitted = fit_text(text, RAW_CAP)
    return {
        "raw_text": fitted,
        "raw_size": len(value),
        "raw_truncated": len(value) > len(kept) or len(fitted) < len(text),
    }


def fit_text(text: str, cap: int = RAW_CAP) -> str:
    """``text`` cut so that it takes at most ``cap`` bytes as a JSON string: escapes (quotes,
    control characters) can make the encoding several times longer than the text."""
    size = len(orjson.dumps(text))
    while size > cap:
        text = text[: max(0, len(text) * cap // size - 8)]
        size = len(orjson.dumps(text))
    return text


def _utf8(data: bytes, truncated: bool) -> str | None:
    """``data`` as text if it is UTF-8 (a character the cut split at the end is left out)."""
    for trim in range(4 if truncated else 1):
        try:
            return data[: len(data) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None
