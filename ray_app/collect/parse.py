"""Turning one HTTP request of the Segment tracking API into Kafka records: pure, no I/O.

``parse_request`` decodes the body (gzip, JSON or ``text/plain``), authenticates the write key,
splits a batch, validates every event against the wire contract, corrects client clock skew and
returns the normalized records for ``onramp.events`` beside a DLQ record for every rejection.

It never raises for any request, and its work is linear in the request's size plus, for each
accepted event, the size of the record it writes. A bad event is a rejection of that event alone
(reason code, field, message, and a DLQ record); a body that cannot be read is a rejection of the
request (4xx). The limits, and the reason code (status) each one answers with:

* request body, compressed and once decompressed: ``Limits.max_request_bytes`` (500 KB)
  -> ``body_too_large`` (413);
* JSON nesting the body decoder can follow: about 1000 levels -> ``invalid_json`` (400);
* events in one batch: ``Limits.max_batch_events`` (2500) -> ``too_many_events`` (413);
* one event *after* it takes the batch's ``sentAt`` and ``context``: ``Limits.max_event_bytes``
  (32 KB) -> ``event_too_large`` (413);
* the batch's ``context`` times the events that take it: ``Limits.max_expanded_bytes`` (8 MiB)
  -> ``body_too_large`` (413), before any event is built;
* objects/arrays nested in one event: 32 levels -> ``nesting_too_deep`` (400);
* integers within signed 64 bits; floats finite, no number literal over 64 characters
  -> ``number_out_of_range`` (400);
* strings and keys valid Unicode (no lone surrogate from a ``\\ud800`` escape)
  -> ``invalid_string`` (400);
* ``timestamp``, ``originalTimestamp``, ``sentAt`` within the years 1970..2200
  -> ``invalid_timestamp`` (400), so that skew correction cannot overflow;
* anything else that fails one event (the last-resort catch) -> ``unprocessable`` (400).

The per-event bounds are :mod:`validation.wire`'s (``MAX_NESTING_DEPTH``, ``INT_MIN``/``INT_MAX``,
``MAX_NUMBER_CHARS``, ``TIME_MIN_YEAR``/``TIME_MAX_YEAR``). Every accepted record is within them,
so any consumer can decode it with orjson, and no value can make this module or a consumer
recurse without end or overflow a date. They cost little on the hot path (about 1.3 us per
event): the decoder puts a marker in place of a number out of range (no exception, no whole-body
failure; its hook on integers runs only for a body holding a run of 19 digits), orjson's encoding
of each event (needed for its size anyway) refuses markers, surrogates and very deep values, and
only an event whose encoding holds more than 32 brackets gets an iterative depth scan. The field
is looked for only once an event is refused.

An event's size after the merge is its own compact size plus the compact sizes of the batch's
``context`` and ``sentAt``, each encoded once per request: an upper bound, known before the
merged event is built. The DLQ record of a refused event keeps the event as sent (not merged):
as JSON under ``raw`` when it fits in 32 KB, else its first 32 KB of text under ``rawText`` with
``rawSize`` and ``rawTruncated``. Messages are cut to 512 characters and fields to 256.

``reserve``, when given, is asked for the bytes (key + value + ``RECORD_OVERHEAD_BYTES``, what
the objects carrying a record to Kafka cost on top of its bytes) of each record as it is built, so
that one request cannot build more than the collector's in-flight budget holds: at the first
refusal parsing stops, ``over_budget`` is set, and ``reserved`` is what the caller must release.

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
import datetime as dt
import hashlib
import hmac
import json
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ray_app.records import DlqRecord
from ray_app.timefmt import iso, iso_ms
from validation.reasons import ReasonCode
from validation.wire import (
    INT_MAX,
    INT_MIN,
    MAX_NESTING_DEPTH,
    MAX_NUMBER_CHARS,
    UnrepresentableNumber,
    WireError,
    check_json_value,
    nesting_depth_exceeds,
    parse_call,
    safe_text,
)

__all__ = [
    "RECORD_OVERHEAD_BYTES",
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

EVENT_SCHEMA = "onramp.event/1"
_DLQ_RAW_CAP = 32 * 1024  # bytes of a refused body or event kept in its DLQ record
_MESSAGE_CHARS = 512  # longest message a rejection carries
_ID_CHARS = 256  # longest id used as a DLQ key or reported messageId (the wire's IdString)
_TOO_DEEP = f"<nested deeper than {MAX_NESTING_DEPTH} levels>"
_CONTEXT_KEY_BYTES = len(b',"context":')
_SENT_AT_KEY_BYTES = len(b',"sentAt":')

#: Takes the byte size of a record about to be built; False when the in-flight budget is spent.
Reserve = Callable[[int], bool]


#: Memory a record costs beyond its key and value while it waits for Kafka (the client's record,
#: future and callbacks): counted against the in-flight budget, so that a flood of tiny events
#: is bounded like a flood of large ones.
RECORD_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class Limits:
    """Size limits of the collector (see ``collector.*`` settings).

    ``max_event_bytes`` applies to an event once it has taken the batch's ``sentAt`` and
    ``context``: what is written is what is bounded.
    """

    max_event_bytes: int = 32 * 1024
    max_request_bytes: int = 500 * 1024
    max_batch_events: int = 2500
    #: What the batch's ``context`` may add to a request once merged into each event: beyond
    #: it a 200 KB body could expand to the whole in-flight budget of records before anything
    #: refused it (a 30 KB context copied into 2,300 events is 70 MB).
    max_expanded_bytes: int = 8 * 1024 * 1024


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


def _rejection(
    reason: ReasonCode,
    where: str | None,
    message: str,
    index: int | None = None,
    message_id: str | None = None,
) -> Rejection:
    # Field and message may quote a client's text: bounded and encodable, whatever it was.
    return Rejection(
        reason,
        safe_text(where) if where else None,
        safe_text(message, _MESSAGE_CHARS),
        index,
        message_id,
    )


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
    authentication are never written to Kafka). ``reserved`` is the sum of the sizes the
    ``reserve`` hook granted (0 without one), which the caller releases whatever happens next;
    ``over_budget`` says the hook refused one and parsing stopped there, the request to be
    answered 503.
    """

    source: str | None
    events: list[tuple[bytes, bytes]] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    dlq: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    reserved: int = 0
    over_budget: bool = False

    @property
    def status(self) -> int:
        """200 when every event was accepted, else the most severe rejection's status
        (503 when the in-flight budget stopped parsing)."""
        if self.over_budget:
            return 503
        if not self.rejections:
            return 200
        statuses = [r.reason.http_status for r in self.rejections]
        for preferred in (401, 415, 413):
            if preferred in statuses:
                return preferred
        return 400


# ``iso`` and ``iso_ms`` live in :mod:`ray_app.timefmt`; imported here for existing callers.

_TIME_FLOOR = dt.datetime.min.replace(tzinfo=dt.UTC)
_TIME_CEILING = dt.datetime.max.replace(tzinfo=dt.UTC)


def correct_skew(
    received_at: dt.datetime, sent_at: dt.datetime | None, original: dt.datetime | None
) -> dt.datetime:
    """Event time on the server's clock.

    With both the client's send time and event time, the device clock's offset cancels out;
    with only the event time it is trusted as is; with neither, the event happened on receipt.
    Never overflows: the wire contract keeps client times within 1970..2200, and a result
    beyond what ``datetime`` holds (only reachable by calling this directly) is clamped to it.
    """
    if original is None:
        return received_at
    if sent_at is None:
        return original
    try:
        return received_at - (sent_at - original)
    except OverflowError:
        return _TIME_FLOOR if sent_at > original else _TIME_CEILING


def write_key_from_header(authorization: str | None) -> str | None:
    """The write key of ``Authorization: Basic base64(writeKey:)``, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text in the token
        return None
    return decoded.split(":", 1)[0] or None


def key_owner(key: str | None, keys: Mapping[str, str]) -> str | None:
    """The name whose secret is ``key`` (write or read keys), compared in constant time.

    A key that is not valid Unicode (a lone surrogate from a JSON escape) is nobody's.
    """
    if not key:
        return None
    try:
        given = key.encode("utf-8")
    except UnicodeEncodeError:
        return None
    found = None
    for name, secret in keys.items():  # compare all, in constant time
        if hmac.compare_digest(given, secret.encode("utf-8")):
            found = name
    return found


# -- decoding -------------------------------------------------------------------------------


def _decode_int(text: str) -> int | UnrepresentableNumber:
    # Called by the JSON decoder for every integer literal: a marker instead of an int64
    # overflow, and no int() of thousands of digits (which Python refuses past 4300).
    if len(text) < 19:
        return int(text)
    if len(text) <= 20:
        value = int(text)
        if INT_MIN <= value <= INT_MAX:
            return value
    return UnrepresentableNumber(text)


def _decode_float(text: str) -> float | UnrepresentableNumber:
    if len(text) <= MAX_NUMBER_CHARS:
        value = float(text)
        if math.isfinite(value):
            return value
    return UnrepresentableNumber(text)


# NaN, Infinity and -Infinity, which the standard library reads by default, become markers too.
_DECODER = json.JSONDecoder(
    parse_int=_decode_int, parse_float=_decode_float, parse_constant=UnrepresentableNumber
)
# Without the hook on integers (one Python call each, and events hold many): for bodies in which
# no integer can be out of range, which is nearly all of them.
_SHORT_INTS_DECODER = json.JSONDecoder(
    parse_float=_decode_float, parse_constant=UnrepresentableNumber
)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")


def _may_hold_long_ints(body: bytes) -> bool:
    """False when every integer literal in ``body`` is an int64, judged at C speed.

    One with at most 18 digits is; a longer one needs a run of 19 digits somewhere in the body.
    Digits inside strings only give false alarms, which cost the hook's time and nothing else.
    (Float literals always go through their hook: there are few of them.)
    """
    return b"0" * 19 in body.translate(_DIGITS_AS_ZERO)


def decode_body(body: bytes, content_encoding: str | None, limits: Limits) -> Any:
    """Bytes -> JSON value; raises :class:`RequestRejected` with the reason code.

    Numbers no event may carry are decoded as :class:`~validation.wire.UnrepresentableNumber`
    markers, so that only the event holding one is refused; the hook on integers runs only for a
    body that may hold a long one (:func:`_may_hold_long_ints`).
    """
    if len(body) > limits.max_request_bytes:
        raise RequestRejected(
            _rejection(
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
            _rejection(
                ReasonCode.UNSUPPORTED_ENCODING,
                "Content-Encoding",
                f"Content-Encoding {encoding!r} is not supported; use gzip or none",
            )
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejected(
            _rejection(
                ReasonCode.INVALID_UTF8,
                None,
                f"body is not UTF-8: {exc.reason} at byte {exc.start}",
            )
        ) from None
    try:
        return (_DECODER if _may_hold_long_ints(body) else _SHORT_INTS_DECODER).decode(text)
    except json.JSONDecodeError as exc:
        msg = f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        msg = "body is not JSON: nested too deeply"
    except Exception as exc:  # the decoder's hooks do not raise; nothing else may escape either
        msg = f"body is not JSON: {type(exc).__name__}"
    raise RequestRejected(_rejection(ReasonCode.INVALID_JSON, None, msg))


def _gunzip(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    too_large = RequestRejected(
        _rejection(
            ReasonCode.BODY_TOO_LARGE, None, f"request body is over {limit} bytes once decompressed"
        )
    )
    try:
        out = d.decompress(body, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise too_large
        out += d.flush()
    except zlib.error as exc:
        raise RequestRejected(
            _rejection(
                ReasonCode.INVALID_GZIP, "Content-Encoding", f"body is not valid gzip: {exc}"
            )
        ) from None
    if len(out) > limit:
        raise too_large
    if not d.eof:
        raise RequestRejected(
            _rejection(ReasonCode.INVALID_GZIP, "Content-Encoding", "gzip stream is truncated")
        )
    return out


# -- encoding and the contract's bounds -----------------------------------------------------


def _checked_json(value: Any, where: str = "", max_depth: int = MAX_NESTING_DEPTH) -> bytes:
    """Compact JSON of ``value``, or :class:`WireError` naming the part outside the bounds.

    orjson refuses (TypeError) number markers, lone surrogates and nesting past 254 levels; a
    depth scan runs only when the encoding holds more brackets than the depth allowed, since
    depth can never exceed the number of brackets.
    """
    try:
        blob = orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        check_json_value(value, where, max_depth)  # raises, naming the field
        raise WireError(
            ReasonCode.UNPROCESSABLE, where or None, f"cannot encode as JSON: {exc}"
        ) from None
    if blob.count(b"{") + blob.count(b"[") > max_depth and nesting_depth_exceeds(value, max_depth):
        check_json_value(value, where, max_depth)
    return blob


@dataclass(frozen=True)
class _EnvelopePart:
    """A batch-level ``sentAt`` or ``context`` an event without its own takes.

    Checked and encoded once per request: ``extra`` is the bytes it adds to an event that
    takes it, ``problem`` the rejection of every event that would.
    """

    value: Any
    extra: int
    problem: WireError | None = None

    @classmethod
    def of(cls, value: Any, name: str, key_bytes: int, max_depth: int) -> _EnvelopePart:
        try:
            return cls(value, key_bytes + len(_checked_json(value, name, max_depth)))
        except WireError as exc:
            return cls(value, 0, exc)

    def raise_problem(self) -> None:
        """Refuse the event that takes this part, if the part is outside the bounds."""
        if self.problem is not None:  # a fresh error each time: no traceback grows per event
            raise WireError(self.problem.reason, self.problem.field, self.problem.message)


def _sanitized(value: Any) -> Any:
    """A copy of ``value`` that any JSON encoder takes: lone surrogates escaped, number markers
    and other non-JSON values as text, nesting cut at the contract's depth. Iterative; only for
    DLQ records of values already refused."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 1)]
    while stack:
        node, parent, slot, depth = stack.pop()
        out: Any
        if isinstance(node, dict | list) and depth > MAX_NESTING_DEPTH:
            out = _TOO_DEEP
        elif isinstance(node, dict):
            out = {}
            for key, child in node.items():
                clean = safe_text(str(key), _DLQ_RAW_CAP)
                out[clean] = None
                stack.append((child, out, clean, depth + 1))
        elif isinstance(node, list):
            out = [None] * len(node)
            stack.extend((child, out, i, depth + 1) for i, child in enumerate(node))
        elif isinstance(node, str):
            out = safe_text(node, _DLQ_RAW_CAP)
        elif node is None or isinstance(node, bool | orjson.Fragment):
            out = node
        elif isinstance(node, int):
            out = node if INT_MIN <= node <= INT_MAX else f"<integer of {node.bit_length()} bits>"
        elif isinstance(node, float):
            out = node if math.isfinite(node) else str(node)
        elif isinstance(node, UnrepresentableNumber):
            out = node.text
        else:
            out = f"<{type(node).__name__}>"
        parent[slot] = out
    return root[0]


def _dlq_json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(_sanitized(value))


def _raw_event_payload(raw: Any, blob: bytes | None) -> dict[str, Any]:
    """The refused event as sent, as :class:`DlqRecord` arguments: its JSON (``raw``) up to
    32 KB, else the start of its text."""
    if blob is None:
        blob = _dlq_json(raw)
    if len(blob) <= _DLQ_RAW_CAP:
        return {"raw_json": blob, "raw_size": len(blob)}
    return {
        "raw_text": _fit_text(blob[:_DLQ_RAW_CAP].decode("utf-8", "ignore"), _DLQ_RAW_CAP),
        "raw_size": len(blob),
        "raw_truncated": True,
    }


def _raw_bytes_payload(body: bytes) -> dict[str, Any]:
    """A refused body as :class:`DlqRecord` arguments: its start as text, or as base64 when it
    is not UTF-8, taking at most 32 KB once encoded."""
    kept = body[:_DLQ_RAW_CAP]
    try:
        text = kept.decode("utf-8")
    except UnicodeDecodeError:
        kept = body[: _DLQ_RAW_CAP // 4 * 3]
        return {
            "raw_base64": base64.b64encode(kept).decode("ascii"),
            "raw_size": len(body),
            "raw_truncated": len(body) > len(kept),
        }
    fitted = _fit_text(text, _DLQ_RAW_CAP)
    return {
        "raw_text": fitted,
        "raw_size": len(body),
        "raw_truncated": len(body) > len(kept) or len(fitted) < len(text),
    }


def _fit_text(text: str, cap: int) -> str:
    """``text`` cut so that it takes at most ``cap`` bytes as a JSON string: escapes (quotes,
    control characters) can make the encoding several times longer than the text."""
    size = len(orjson.dumps(text))
    while size > cap:
        text = text[: max(0, len(text) * cap // size - 8)]
        size = len(orjson.dumps(text))
    return text


def _dlq_record(
    rejection: Rejection, origin: Mapping[str, Any], raw: dict[str, Any], key: bytes | None
) -> tuple[bytes | None, bytes]:
    """The (key, value) of a rejection's :class:`DlqRecord`; ``raw`` is what
    :func:`_raw_event_payload` or :func:`_raw_bytes_payload` kept of the refused value."""
    record = DlqRecord(
        reason=rejection.reason,
        field=rejection.field,
        message=rejection.message,
        message_id=rejection.message_id,
        origin={**origin, "index": rejection.index},
        **raw,
    )
    try:
        return key, record.encode()
    except TypeError:  # text no encoder takes (a lone surrogate in a header): sanitized
        return key, orjson.dumps(_sanitized(record.to_json()))


def _client_id(value: Any) -> str | None:
    """``value`` when it can serve as an id (a message id to report, a DLQ key), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if INT_MIN <= value <= INT_MAX else None
    if not isinstance(value, str) or not value or len(value) > _ID_CHARS:
        return None
    return value if safe_text(value, _ID_CHARS) == value else None


def _derived_message_id(source: str, raw: Mapping[str, Any]) -> str:
    # A retried identical payload gets the same id, so downstream dedupe still works.
    digest = hashlib.sha256(source.encode() + b"\0" + orjson.dumps(raw)).hexdigest()
    return f"onramp-{digest[:32]}"


# -- the request ----------------------------------------------------------------------------


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
    reserve: Reserve | None = None,
) -> ParsedRequest:
    """Parse one request to ``/v1/<route>``. Never raises for bad input: it reports it.

    ``reserve(n)`` (optional) is called with the size of every record before it is added; the
    first False stops parsing with ``over_budget`` set (see :class:`ParsedRequest`).
    """
    route_type = ROUTE_TYPES[route]
    received_iso = iso(received_at)
    base_origin: dict[str, Any] = {
        "route": f"/v1/{route}",
        "receivedAt": received_iso,
        **(origin or {}),
    }
    out = ParsedRequest(source=None)

    def admit(key: bytes | None, value: bytes) -> bool:
        if reserve is None:
            return True
        size = len(key or b"") + len(value) + RECORD_OVERHEAD_BYTES
        if not reserve(size):
            out.over_budget = True
            return False
        out.reserved += size
        return True

    def reject_request(rej: Rejection, source: str | None) -> ParsedRequest:
        out.source = source
        out.rejections.append(rej)
        if source is not None:
            record = _dlq_record(
                rej, {**base_origin, "source": source}, _raw_bytes_payload(body), None
            )
            if admit(*record):
                out.dlq.append(record)
        return out

    source: str | None = None
    try:
        header_key = write_key_from_header(authorization)
        source = key_owner(header_key, write_keys)
        if header_key is not None and source is None:
            out.rejections.append(
                _rejection(ReasonCode.AUTH_INVALID, "Authorization", "unknown write key")
            )
            return out
        try:
            payload = decode_body(body, content_encoding, limits)
        except RequestRejected as exc:
            return reject_request(exc.rejection, source)

        if source is None:
            body_key = payload.get("writeKey") if isinstance(payload, dict) else None
            if not isinstance(body_key, str) or not body_key:
                out.rejections.append(
                    _rejection(
                        ReasonCode.AUTH_MISSING,
                        "writeKey",
                        "no write key: send HTTP Basic auth (the key as user name) or writeKey",
                    )
                )
                return out
            source = key_owner(body_key, write_keys)
            if source is None:
                out.rejections.append(
                    _rejection(ReasonCode.AUTH_INVALID, "writeKey", "unknown write key")
                )
                return out

        if not isinstance(payload, dict):
            return reject_request(
                _rejection(
                    ReasonCode.NOT_AN_OBJECT,
                    None,
                    f"body must be a JSON object, got {type(payload).__name__}",
                ),
                source,
            )

        sent_at: _EnvelopePart | None = None
        context: _EnvelopePart | None = None
        if route_type is None:
            batch = payload.get("batch")
            if not isinstance(batch, list) or not batch:
                return reject_request(
                    _rejection(
                        ReasonCode.INVALID_BATCH,
                        "batch",
                        "batch must be a non-empty list of events",
                    ),
                    source,
                )
            if len(batch) > limits.max_batch_events:
                return reject_request(
                    _rejection(
                        ReasonCode.TOO_MANY_EVENTS,
                        "batch",
                        f"{len(batch)} events in one request; "
                        f"the limit is {limits.max_batch_events}",
                    ),
                    source,
                )
            raws: list[Any] = batch
            if payload.get("sentAt") is not None:
                # sentAt sits in the event object: as deep as the event's own fields.
                sent_at = _EnvelopePart.of(
                    payload["sentAt"], "sentAt", _SENT_AT_KEY_BYTES, MAX_NESTING_DEPTH - 1
                )
            env_context = payload.get("context")
            if isinstance(env_context, dict) and env_context:
                context = _EnvelopePart.of(
                    env_context, "context", _CONTEXT_KEY_BYTES, MAX_NESTING_DEPTH - 1
                )
                expanded = context.extra * len(raws)
                if expanded > limits.max_expanded_bytes:
                    return reject_request(
                        _rejection(
                            ReasonCode.BODY_TOO_LARGE,
                            "context",
                            f"the batch context ({context.extra} bytes) merged into "
                            f"{len(raws)} events adds {expanded} bytes; the limit is "
                            f"{limits.max_expanded_bytes}: send a smaller context or batch",
                        ),
                        source,
                    )
        else:
            raws = [{k: v for k, v in payload.items() if k != "writeKey"}]
    except Exception as exc:  # last resort: no request may become a 500
        return reject_request(
            _rejection(ReasonCode.UNPROCESSABLE, None, f"{type(exc).__name__}: {_text(exc)}"),
            source,
        )

    out.source = source
    event_origin = {**base_origin, "source": source}
    for index, raw in enumerate(raws):
        field_prefix = f"batch[{index}]" if route_type is None else ""
        event_index = index if route_type is None else None
        blob: bytes | None = None
        try:
            if isinstance(raw, dict):
                blob = _checked_json(raw)
            key, record, message_id = _normalize(
                raw, blob, route_type, source, received_at, received_iso, sent_at, context, limits
            )
        except Exception as exc:
            rej = _event_rejection(exc, raw, field_prefix, event_index)
        else:
            if not admit(key, record):
                return out
            out.events.append((key, record))
            out.event_ids.append(message_id)
            continue
        out.rejections.append(rej)
        dlq = _dlq_record(rej, event_origin, _raw_event_payload(raw, blob), _dlq_key(raw))
        if not admit(*dlq):
            return out
        out.dlq.append(dlq)
    return out


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return ""


def _event_rejection(exc: Exception, raw: Any, field_prefix: str, index: int | None) -> Rejection:
    """The rejection of one event: the contract's reason when it names one, else the generic
    last-resort code with the error's text (so that one event never fails its batch)."""
    raw_id = raw.get("messageId") if isinstance(raw, dict) else None
    message_id = raw_id if isinstance(raw_id, str) else None
    if isinstance(exc, WireError):
        reason, where, message = exc.reason, _join(field_prefix, exc.field), exc.message
    else:
        reason, where = ReasonCode.UNPROCESSABLE, field_prefix or None
        message = f"{type(exc).__name__}: {_text(exc)}"
    return _rejection(reason, where, message, index, _client_id(message_id))


def _dlq_key(raw: Any) -> bytes | None:
    # Keyed like the user's events when the event names a usable id.
    if not isinstance(raw, dict):
        return None
    user = _client_id(raw.get("userId")) or _client_id(raw.get("anonymousId"))
    return user.encode() if user else None


def _join(prefix: str, field: str | None) -> str | None:
    if not prefix:
        return field
    if not field:
        return prefix
    return f"{prefix}{field}" if field.startswith("[") else f"{prefix}.{field}"


def _normalize(
    raw: Any,
    blob: bytes | None,
    route_type: str | None,
    source: str,
    received_at: dt.datetime,
    received_iso: str,
    sent_at: _EnvelopePart | None,
    context: _EnvelopePart | None,
    limits: Limits,
) -> tuple[bytes, bytes, str]:
    if isinstance(raw, dict) and blob is not None:
        takes_sent_at = sent_at is not None and "sentAt" not in raw
        takes_context = context is not None and isinstance(raw.get("context", {}), dict)
        size = len(blob)
        if takes_sent_at and sent_at is not None:
            size += sent_at.extra
        if takes_context and context is not None:
            size += context.extra
        if size > limits.max_event_bytes:
            merged = " with the batch's sentAt and context" if size > len(blob) else ""
            raise WireError(
                ReasonCode.EVENT_TOO_LARGE,
                None,
                f"event is {size} bytes{merged}; the limit is {limits.max_event_bytes}",
            )
        if takes_sent_at and sent_at is not None:
            sent_at.raise_problem()
            raw = {**raw, "sentAt": sent_at.value}
        if takes_context and context is not None:
            context.raise_problem()
            raw = {**raw, "context": {**context.value, **raw.get("context", {})}}
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
    return call.user_key.encode(), orjson.dumps(record), message_id
