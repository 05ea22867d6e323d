"""Turning one HTTP request of the Segment tracking API into Kafka records: pure, no I/O.

``parse_request`` decodes the body (gzip, JSON or ``text/plain``), authenticates the write key,
splits a batch, validates every event against the wire contract, corrects client clock skew and
returns the normalized records for ``onramp.events`` beside a DLQ record for every rejection.

Clock skew is corrected as Segment does::

    timestamp = receivedAt - (sentAt - originalTimestamp)

>>> import datetime as dt
>>> t = lambda s: dt.datetime.fromisoformat(s)
>>> correct_skew(t("2026-01-01T10:00:00+00:00"), t("2026-01-01T10:00:05+00:00"),
...              t("2026-01-01T09:00:07+00:00")).isoformat()
'2026-01-01T09:00:02+00:00'
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from validation.reasons import ReasonCode
from validation.wire import WireError, parse_call

__all__ = [
    "ROUTE_TYPES",
    "Limits",
    "ParsedRequest",
    "Rejection",
    "correct_skew",
    "decode_body",
    "iso",
    "iso_ms",
    "key_owner",
    "parse_request",
    "write_key_from_header",
]

# Route -> the call type it implies (None: a batch of any types).
ROUTE_TYPES: dict[str, str | None] = {
    "batch": None,
    "track": "track",
    "identify": "identify",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
}

DLQ_SCHEMA = "onramp.dlq/1"
EVENT_SCHEMA = "onramp.event/1"
_DLQ_RAW_CAP = 32 * 1024  # raw bytes kept in a DLQ record for request-level rejects


@dataclass(frozen=True)
class Limits:
    """Size limits of the collector (see ``collector.*`` settings)."""

    max_event_bytes: int = 32 * 1024
    max_request_bytes: int = 500 * 1024
    max_batch_events: int = 2500


@dataclass(frozen=True)
class Rejection:
    """One refused event (``index`` >= 0) or a refused request (``index`` is None)."""

    reason: ReasonCode
    field: str | None
    message: str
    index: int | None = None
    message_id: str | None = None

    def public(self) -> dict[str, Any]:
        """The rejection as the HTTP answer reports it."""
        out: dict[str, Any] = {
            "reason": self.reason.value,
            "field": self.field,
            "message": self.message,
        }
        if self.index is not None:
            out["index"] = self.index
        if self.message_id is not None:
            out["messageId"] = self.message_id
        return out


class RequestRejected(Exception):
    """The request as a whole cannot be read; carries the rejection."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.message)
        self.rejection = rejection


@dataclass
class ParsedRequest:
    """What one request becomes.

    ``events`` are (key, value) pairs for ``onramp.events``; ``dlq`` are (key, value) pairs for
    ``onramp.events.dlq``, one per rejection that may be written (requests that failed
    authentication are never written to Kafka).
    """

    source: str | None
    events: list[tuple[bytes, bytes]] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    dlq: list[tuple[bytes | None, bytes]] = field(default_factory=list)

    @property
    def status(self) -> int:
        """200 when every event was accepted, else the most severe rejection's status."""
        if not self.rejections:
            return 200
        statuses = [r.reason.http_status for r in self.rejections]
        for preferred in (401, 415, 413):
            if preferred in statuses:
                return preferred
        return 400


def iso(t: dt.datetime) -> str:
    """UTC ISO-8601 with milliseconds and ``Z``."""
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch -> :func:`iso` text."""
    return iso(dt.datetime.fromtimestamp(ms / 1000, dt.UTC))


def correct_skew(
    received_at: dt.datetime, sent_at: dt.datetime | None, original: dt.datetime | None
) -> dt.datetime:
    """Event time on the server's clock.

    With both the client's send time and event time, the device clock's offset cancels out;
    with only the event time it is trusted as is; with neither, the event happened on receipt.
    """
    if original is None:
        return received_at
    if sent_at is None:
        return original
    return received_at - (sent_at - original)


def write_key_from_header(authorization: str | None) -> str | None:
    """The write key of ``Authorization: Basic base64(writeKey:)``, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


def key_owner(key: str | None, keys: Mapping[str, str]) -> str | None:
    """The name whose secret is ``key`` (write or read keys), compared in constant time."""
    if not key:
        return None
    found = None
    for name, secret in keys.items():  # compare all, in constant time
        if hmac.compare_digest(key.encode(), secret.encode()):
            found = name
    return found


def decode_body(body: bytes, content_encoding: str | None, limits: Limits) -> Any:
    """Bytes -> JSON value; raises :class:`RequestRejected` with the reason code."""
    if len(body) > limits.max_request_bytes:
        raise RequestRejected(
            Rejection(
                ReasonCode.BODY_TOO_LARGE,
                None,
                f"request body is {len(body)} bytes; the limit is {limits.max_request_bytes}",
            )
        )
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        body = _gunzip(body, limits.max_request_bytes)
    elif encoding not in ("identity", ""):
        raise RequestRejected(
            Rejection(
                ReasonCode.UNSUPPORTED_ENCODING,
                "Content-Encoding",
                f"Content-Encoding {encoding!r} is not supported; use gzip or none",
            )
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejected(
            Rejection(
                ReasonCode.INVALID_UTF8,
                None,
                f"body is not UTF-8: {exc.reason} at byte {exc.start}",
            )
        ) from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = (
            f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else "body is not JSON: nested too deeply"
        )
        raise RequestRejected(Rejection(ReasonCode.INVALID_JSON, None, msg)) from None


def _gunzip(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise RequestRejected(
                Rejection(
                    ReasonCode.BODY_TOO_LARGE,
                    None,
                    f"request body is over {limit} bytes once decompressed",
                )
            )
        out += d.flush()
    except zlib.error as exc:
        raise RequestRejected(
            Rejection(ReasonCode.INVALID_GZIP, "Content-Encoding", f"body is not valid gzip: {exc}")
        ) from None
    if not d.eof:
        raise RequestRejected(
            Rejection(ReasonCode.INVALID_GZIP, "Content-Encoding", "gzip stream is truncated")
        )
    return out


def _compact(value: Any) -> bytes:
    """Compact UTF-8 JSON. orjson for speed (the collector's hottest step); the standard library
    for what orjson refuses (integers over 64 bits, lone surrogates from ``\\ud800`` escapes),
    ASCII-escaped so that even a lone surrogate stays valid JSON."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def _derived_message_id(source: str, raw: Mapping[str, Any]) -> str:
    # A retried identical payload gets the same id, so downstream dedupe still works.
    digest = hashlib.sha256(source.encode() + b"\0" + _compact(raw)).hexdigest()
    return f"onramp-{digest[:32]}"


def _raw_payload(raw: Any) -> dict[str, Any]:
    return {"raw": raw}


def _raw_bytes_payload(body: bytes) -> dict[str, Any]:
    kept = body[:_DLQ_RAW_CAP]
    out: dict[str, Any] = {"rawSize": len(body), "rawTruncated": len(body) > len(kept)}
    try:
        out["rawText"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        out["rawBase64"] = base64.b64encode(kept).decode("ascii")
    return out


def _dlq_record(
    rejection: Rejection, origin: Mapping[str, Any], raw: dict[str, Any], key: bytes | None
) -> tuple[bytes | None, bytes]:
    record = {
        "schema": DLQ_SCHEMA,
        "reason": rejection.reason.value,
        "field": rejection.field,
        "message": rejection.message,
        "messageId": rejection.message_id,
        "origin": {**origin, "index": rejection.index},
        **raw,
    }
    return key, _compact(record)


def parse_request(
    route: str,
    body: bytes,
    *,
    content_encoding: str | None,
    authorization: str | None,
    write_keys: Mapping[str, str],
    received_at: dt.datetime,
    limits: Limits = Limits(),
    origin: Mapping[str, Any] | None = None,
) -> ParsedRequest:
    """Parse one request to ``/v1/<route>``. Never raises for bad input: it reports it."""
    route_type = ROUTE_TYPES[route]
    received_iso = iso(received_at)
    base_origin: dict[str, Any] = {
        "route": f"/v1/{route}",
        "receivedAt": received_iso,
        **(origin or {}),
    }
    header_key = write_key_from_header(authorization)
    header_source = key_owner(header_key, write_keys)
    header_key_given = header_key is not None

    def reject_request(rej: Rejection, source: str | None) -> ParsedRequest:
        out = ParsedRequest(source=source, rejections=[rej])
        if source is not None:
            out.dlq.append(
                _dlq_record(rej, {**base_origin, "source": source}, _raw_bytes_payload(body), None)
            )
        return out

    if header_key_given and header_source is None:
        return ParsedRequest(
            None,
            rejections=[Rejection(ReasonCode.AUTH_INVALID, "Authorization", "unknown write key")],
        )
    try:
        payload = decode_body(body, content_encoding, limits)
    except RequestRejected as exc:
        return reject_request(exc.rejection, header_source)

    source = header_source
    if source is None:
        body_key = payload.get("writeKey") if isinstance(payload, dict) else None
        if not isinstance(body_key, str) or not body_key:
            return ParsedRequest(
                None,
                rejections=[
                    Rejection(
                        ReasonCode.AUTH_MISSING,
                        "writeKey",
                        "no write key: send HTTP Basic auth (the key as user name) or writeKey",
                    )
                ],
            )
        source = key_owner(body_key, write_keys)
        if source is None:
            return ParsedRequest(
                None,
                rejections=[Rejection(ReasonCode.AUTH_INVALID, "writeKey", "unknown write key")],
            )
    event_origin = {**base_origin, "source": source}

    if not isinstance(payload, dict):
        return reject_request(
            Rejection(
                ReasonCode.NOT_AN_OBJECT,
                None,
                f"body must be a JSON object, got {type(payload).__name__}",
            ),
            source,
        )

    envelope: dict[str, Any] = {}
    if route_type is None:
        batch = payload.get("batch")
        if not isinstance(batch, list) or not batch:
            return reject_request(
                Rejection(
                    ReasonCode.INVALID_BATCH, "batch", "batch must be a non-empty list of events"
                ),
                source,
            )
        if len(batch) > limits.max_batch_events:
            return reject_request(
                Rejection(
                    ReasonCode.TOO_MANY_EVENTS,
                    "batch",
                    f"{len(batch)} events in one request; the limit is {limits.max_batch_events}",
                ),
                source,
            )
        envelope = payload
        raws: list[Any] = batch
    else:
        raws = [{k: v for k, v in payload.items() if k != "writeKey"}]

    out = ParsedRequest(source=source)
    env_sent_at = envelope.get("sentAt")
    env_context = envelope.get("context") if isinstance(envelope.get("context"), dict) else None
    for index, raw in enumerate(raws):
        field_prefix = f"batch[{index}]" if route_type is None else ""
        event_index = index if route_type is None else None
        try:
            key, record, message_id = _normalize(
                raw, route_type, source, received_at, received_iso, env_sent_at, env_context, limits
            )
        except WireError as exc:
            raw_id = raw.get("messageId") if isinstance(raw, dict) else None
            rej = Rejection(
                exc.reason,
                _join(field_prefix, exc.field),
                exc.message,
                index=event_index,
                message_id=raw_id if isinstance(raw_id, str) else None,
            )
            out.rejections.append(rej)
            key_raw = raw.get("userId") or raw.get("anonymousId") if isinstance(raw, dict) else None
            dlq_key = str(key_raw).encode() if isinstance(key_raw, str | int) else None
            out.dlq.append(_dlq_record(rej, event_origin, _raw_payload(raw), dlq_key))
            continue
        out.events.append((key, record))
        out.event_ids.append(message_id)
    return out


def _join(prefix: str, field: str | None) -> str | None:
    if not prefix:
        return field
    if not field:
        return prefix
    return f"{prefix}{field}" if field.startswith("[") else f"{prefix}.{field}"


def _normalize(
    raw: Any,
    route_type: str | None,
    source: str,
    received_at: dt.datetime,
    received_iso: str,
    env_sent_at: Any,
    env_context: dict[str, Any] | None,
    limits: Limits,
) -> tuple[bytes, bytes, str]:
    if isinstance(raw, dict):
        size = len(_compact(raw))
        if size > limits.max_event_bytes:
            raise WireError(
                ReasonCode.EVENT_TOO_LARGE,
                None,
                f"event is {size} bytes; the limit is {limits.max_event_bytes}",
            )
        if env_sent_at is not None and "sentAt" not in raw:
            raw = {**raw, "sentAt": env_sent_at}
        if env_context and isinstance(raw.get("context", {}), dict):
            raw = {**raw, "context": {**env_context, **raw.get("context", {})}}
    call = parse_call(raw, route_type)
    message_id = call.messageId or _derived_message_id(source, raw)
    original = call.timestamp or call.originalTimestamp
    timestamp = correct_skew(received_at, call.sentAt, original)
    record = call.model_dump(mode="json", exclude_none=True)
    onramp = call.context.onramp
    step_id = onramp.stepId if onramp and onramp.stepId else None
    if step_id is None:
        props = getattr(call, "properties", None) or {}
        candidate = props.get("stepId")
        step_id = candidate if isinstance(candidate, str) and candidate else None
    record.update(
        {
            "schema": EVENT_SCHEMA,
            "messageId": message_id,
            "timestamp": iso(timestamp),
            "receivedAt": received_iso,
            "source": source,
            "userKey": call.user_key,
        }
    )
    if original is not None:
        record["originalTimestamp"] = iso(original)
    if onramp is not None and onramp.sessionId is not None:
        record["sessionId"] = onramp.sessionId
    if onramp is not None and onramp.seq is not None:
        record["seq"] = onramp.seq
    if step_id is not None:
        record["stepId"] = step_id
    return call.user_key.encode(), _compact(record), message_id
