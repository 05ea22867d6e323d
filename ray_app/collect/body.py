"""The request body: its size limits, ``Content-Encoding`` (gzip), UTF-8 and JSON, and the
wire contract's bounds on the JSON of each event (nesting, numbers, lone surrogates).

The bounds cost little on the hot path (about 1.3 us per event): the decoder puts a marker in
place of a number out of range (no exception, no whole-body failure; it runs only for a body
holding a run of 19 digits or one orjson refuses, below), orjson's encoding of each event (needed for its
size anyway) refuses markers, surrogates and very deep values, and only an event whose encoding
holds more than 32 brackets gets an iterative depth scan. The field is looked for only once an
event is refused.

A body without a run of 19 digits, nearly every one, is decoded by orjson (about 1 us an event
less than the standard library's decoder, 14.7 -> 13.7 us an event parsed). It reads such a body
exactly as the hooked decoder does: every number literal in it is an int64 or shorter than
``MAX_NUMBER_CHARS``, and orjson refuses what the hooks and errors are for (non-finite numbers,
``NaN``, lone surrogates, a BOM, nesting past 1,024 levels), which then goes to the hooked
decoder. The one difference: a body nested deeper than the standard library's recursion allows
(but within 1,024 levels) was refused whole; orjson reads it, and each event holding such
nesting is refused by depth.

>>> decode_body(b'{"n": 1, "big": 99999999999999999999}', None, Limits())
{'n': 1, 'big': UnrepresentableNumber('99999999999999999999')}
>>> checked_json({"a": [1, 2]})
b'{"a":[1,2]}'
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from ray_app.collect.rejection import RequestRejected, rejection
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
)

__all__ = ["Limits", "checked_json", "decode_body"]


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


# -- decoding -------------------------------------------------------------------------------


_GZIP_MAGIC = b"\x1f\x8b"  # the first bytes of a gzip member (RFC 1952)
#: Members one body may hold (a client concatenates a few; thousands of tiny ones cost the
#: ingress a decompressor each).
_MAX_GZIP_MEMBERS = 64


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
#: The same for a body whose integers are all int64 (:func:`_may_hold_long_ints`): integers are
#: read by the decoder's own C code, not by a Python call each (a 500 KB body of integers with
#: one NaN took 60 ms of such calls).
_DECODER_SHORT_INTS = json.JSONDecoder(
    parse_float=_decode_float, parse_constant=UnrepresentableNumber
)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")


def _may_hold_long_ints(body: bytes) -> bool:
    """False when every integer literal in ``body`` is an int64, judged at C speed.

    One with at most 18 digits is; a longer one needs a run of 19 digits somewhere in the body.
    Digits inside strings only give false alarms, which cost the hooked decoder's time and
    nothing else. Without such a run no number literal is longer than 58 characters either
    (under ``MAX_NUMBER_CHARS``), so orjson reads every number as the hooks would.
    """
    return b"0" * 19 in body.translate(_DIGITS_AS_ZERO)


def decode_body(body: bytes, content_encoding: str | None, limits: Limits) -> Any:
    """Bytes -> JSON value; raises :class:`RequestRejected` with the reason code.

    Numbers no event may carry are decoded as :class:`~validation.wire.UnrepresentableNumber`
    markers, so that only the event holding one is refused; a body that cannot hold a long
    integer (:func:`_may_hold_long_ints`) is read by orjson, and by the hooked decoder only if
    orjson refuses it.
    """
    if len(body) > limits.max_request_bytes:
        raise RequestRejected(
            rejection(
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
            rejection(
                ReasonCode.UNSUPPORTED_ENCODING,
                "Content-Encoding",
                f"Content-Encoding {encoding!r} is not supported; use gzip or none",
            )
        )
    long_ints = _may_hold_long_ints(body)
    if not long_ints:
        try:  # what nearly every body is: no long integer, nothing orjson refuses
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the standard library's answer: markers, or the precise error
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejected(
            rejection(
                ReasonCode.INVALID_UTF8,
                None,
                f"body is not UTF-8: {exc.reason} at byte {exc.start}",
            )
        ) from None
    try:
        return (_DECODER if long_ints else _DECODER_SHORT_INTS).decode(text)
    except json.JSONDecodeError as exc:
        msg = f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        msg = "body is not JSON: nested too deeply"
    except Exception as exc:  # the decoder's hooks do not raise; nothing else may escape either
        msg = f"body is not JSON: {type(exc).__name__}"
    raise RequestRejected(rejection(ReasonCode.INVALID_JSON, None, msg))


def _gunzip(body: bytes, limit: int) -> bytes:
    """``body`` decompressed: every member of it, as ``gzip -d`` reads concatenated members
    (RFC 1952); bytes after the last member that do not start another are refused, as are more
    than ``limit`` bytes in all."""
    too_large = RequestRejected(
        rejection(
            ReasonCode.BODY_TOO_LARGE, None, f"request body is over {limit} bytes once decompressed"
        )
    )
    parts: list[bytes] = []
    size = 0
    rest = body
    for _ in range(_MAX_GZIP_MEMBERS):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = d.decompress(rest, limit + 1 - size)
            if size + len(part) > limit or d.unconsumed_tail:
                raise too_large
            part += d.flush()
        except zlib.error as exc:
            raise RequestRejected(
                rejection(
                    ReasonCode.INVALID_GZIP, "Content-Encoding", f"body is not valid gzip: {exc}"
                )
            ) from None
        parts.append(part)
        size += len(part)
        if size > limit:
            raise too_large
        if not d.eof:
            raise RequestRejected(
                rejection(ReasonCode.INVALID_GZIP, "Content-Encoding", "gzip stream is truncated")
            )
        rest = d.unused_data
        if not rest:
            return b"".join(parts)
        if not rest.startswith(_GZIP_MAGIC):
            raise RequestRejected(
                rejection(
                    ReasonCode.INVALID_GZIP,
                    "Content-Encoding",
                    f"{len(rest)} bytes after the end of the gzip stream that do not start "
                    "another gzip member",
                )
            )
    raise RequestRejected(
        rejection(
            ReasonCode.INVALID_GZIP,
            "Content-Encoding",
            f"more than {_MAX_GZIP_MEMBERS} gzip members in one body",
        )
    )


# -- encoding and the contract's bounds -----------------------------------------------------


def checked_json(
    value: Any,
    where: str = "",
    max_depth: int = MAX_NESTING_DEPTH,
    max_bytes: int | None = None,
) -> bytes:
    """Compact JSON of ``value``, or :class:`WireError` naming the part outside the bounds.

    orjson refuses (TypeError) number markers, lone surrogates and nesting past 254 levels; a
    depth scan runs only when the encoding holds more brackets than the depth allowed, since
    depth can never exceed the number of brackets. Naming the part walks the value in Python:
    with ``max_bytes`` (the event size limit) the walk stops at a value that must be larger.
    """
    try:
        blob = orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        check_json_value(value, where, max_depth, max_bytes)  # raises, naming the field
        raise WireError(
            ReasonCode.UNPROCESSABLE, where or None, f"cannot encode as JSON: {exc}"
        ) from None
    if blob.count(b"{") + blob.count(b"[") > max_depth and nesting_depth_exceeds(value, max_depth):
        check_json_value(value, where, max_depth, max_bytes)
    return blob
