"""A normalized event as stream workers see it, decoded from an ``onramp.events`` record.

>>> e = decode_event(b'{"messageId":"m1","type":"track","event":"Step Viewed","userKey":"u1",'
...                  b'"timestamp":"2026-01-01T00:00:01.000Z","receivedAt":"2026-01-01T00:00:02.000Z",'
...                  b'"sessionId":"s1","seq":0,"stepId":"role"}')
>>> (e.message_id, e.kind, e.name, e.ts, e.seq, e.step_id)
('m1', 'track', 'Step Viewed', 1767225601000, 0, 'role')
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import orjson

from ray_app.state.compact import shared
from ray_app.timefmt import ms_from_iso
from validation.reasons import ReasonCode
from validation.wire import WireError

_intern = sys.intern

__all__ = [
    "TOMBSTONE_REASON",
    "Event",
    "EventDecodeError",
    "RecordRejected",
    "decode_event",
    "decode_record",
    "event_from_record",
    "parse_ms",
]


class RecordRejected(WireError):
    """A record the stream rejects to the DLQ, with a reason code, the field and why: not a
    normalized event, an event that fails batch validation (pandera), a decision record or an
    identity record of the wrong shape, or one that could not be processed."""


#: The name :class:`RecordRejected` had before it also carried validation, decision-record and
#: identity-record failures (kept for code written against it).
EventDecodeError = RecordRejected


@dataclass(frozen=True, slots=True)
class Event:
    """What the state core needs of one event; times are milliseconds since the epoch."""

    message_id: str
    user_key: str
    kind: str
    name: str | None
    ts: int
    received: int
    session_id: str | None = None
    seq: int | None = None
    step_id: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    """The user's traits this event carries: an ``identify``'s ``traits`` over any call's
    ``context.traits`` (a ``group`` call's own traits describe the account and are left out)."""
    properties: dict[str, Any] = field(default_factory=dict)
    trace: str | None = None
    """W3C ``traceparent`` of the record (from its Kafka headers), when it was traced."""
    previous_id: str | None = None
    """An ``alias`` call's ``previousId`` (the id it merges into ``user_id``). Events pickled
    before this field existed have no slot for it: read it with ``getattr(e, "previous_id",
    None)``."""
    group_id: str | None = None
    """A ``group`` call's ``groupId`` (the account the user belongs to; the CRM join's key).
    Read it with ``getattr(e, "group_id", None)``, like ``previous_id``."""

    @property
    def order_key(self) -> tuple[int, int, str]:
        """A total order on events of one user that does not depend on arrival."""
        return (self.ts, -1 if self.seq is None else self.seq, self.message_id)


#: The reason a tombstone (a record whose value is null) is rejected with: no value is no JSON
#: document.
TOMBSTONE_REASON = ReasonCode.INVALID_JSON


def parse_ms(value: Any, field_name: str) -> int:
    """ISO-8601 text -> milliseconds since the epoch (UTC), by :func:`~ray_app.timefmt.ms_from_iso`;
    :class:`RecordRejected` (``invalid_timestamp`` at ``field_name``) if it is not one.

    >>> parse_ms("2026-01-01T00:00:01.000Z", "timestamp")
    1767225601000
    >>> parse_ms("soon", "receivedAt")
    Traceback (most recent call last):
    ...
    ray_app.state.event.RecordRejected: invalid_timestamp at receivedAt: not ISO-8601: 'soon'
    """
    try:
        return ms_from_iso(value)
    except TypeError:
        raise RecordRejected(
            ReasonCode.INVALID_TIMESTAMP, field_name, "expected an ISO-8601 string"
        ) from None
    except ValueError:
        raise RecordRejected(
            ReasonCode.INVALID_TIMESTAMP, field_name, f"not ISO-8601: {value!r}"
        ) from None
    except OverflowError:
        raise RecordRejected(
            ReasonCode.INVALID_TIMESTAMP, field_name, f"out of range: {value!r}"
        ) from None


def _str(d: dict[str, Any], key: str, required: bool = False) -> str | None:
    v = d.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise RecordRejected(
            ReasonCode.MISSING_FIELD if v is None else ReasonCode.INVALID_FIELD,
            key,
            "required" if v is None else "expected a non-empty string",
        )
    return v


#: The calls whose ``properties`` are a declared field (an object) of the wire contract.
_WITH_PROPERTIES = frozenset({"track", "page", "screen"})


def decode_record(value: bytes | None, what: str = "record") -> dict[str, Any]:
    """A record's value as a JSON object; raises :class:`RecordRejected` for a tombstone (a
    record without a value), bytes that are not UTF-8, text that is not JSON, and JSON that is
    not an object. Shared by the events and the decisions topic, so both reject alike.

    >>> try:
    ...     decode_record(None)
    ... except RecordRejected as exc:
    ...     print(exc)
    invalid_json: tombstone: the record has no value
    """
    if value is None:
        raise RecordRejected(TOMBSTONE_REASON, None, "tombstone: the record has no value")
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            bytes(value).decode("utf-8")
        except UnicodeDecodeError as bad:
            raise RecordRejected(
                ReasonCode.INVALID_UTF8,
                None,
                f"{what} is not UTF-8: {bad.reason} at byte {bad.start}",
            ) from None
        raise RecordRejected(ReasonCode.INVALID_JSON, None, str(exc)) from None
    if not isinstance(d, dict):
        raise RecordRejected(
            ReasonCode.NOT_AN_OBJECT, None, f"{what} is a JSON {type(d).__name__}, not an object"
        )
    return d


def decode_event(value: bytes | None, trace: str | None = None) -> Event:
    """Decode a normalized record (``trace``: its ``traceparent`` header, if any); raises
    :class:`RecordRejected` with a reason code."""
    return event_from_record(decode_record(value), trace)


def event_from_record(d: dict[str, Any], trace: str | None = None) -> Event:
    """:func:`decode_event` of a record already decoded to a JSON object."""
    kind = _str(d, "type", required=True)
    seq = d.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
        raise RecordRejected(ReasonCode.INVALID_ONRAMP_CONTEXT, "seq", "expected an integer >= 0")
    # traits are read from an identify, properties from the calls that declare them; on any
    # other call either is an extra the collector keeps as sent (any JSON value), not read here
    traits = (d.get("traits") or {}) if kind == "identify" else {}
    props = (d.get("properties") or {}) if kind in _WITH_PROPERTIES else {}
    if not isinstance(traits, dict) or not isinstance(props, dict):
        raise RecordRejected(ReasonCode.INVALID_FIELD, "traits/properties", "expected objects")
    context = d.get("context")
    ctx_traits = context.get("traits") if isinstance(context, dict) else None
    if isinstance(ctx_traits, dict) and ctx_traits:
        # the user's traits as of this call (RudderStack sends identify traits only here,
        # Segment libraries on every call): they count as traits; top-level ones win
        traits = {**ctx_traits, **traits}
    name = d.get("event") if kind == "track" else d.get("name")
    # the ids and names a profile keeps are interned: one object each, however many profiles
    # and structures hold it, so a snapshot writes it once (see ray_app.state.compact)
    session_id, step_id = _str(d, "sessionId"), _str(d, "stepId")
    user_id, anonymous_id = _str(d, "userId"), _str(d, "anonymousId")
    return Event(
        message_id=_str(d, "messageId", required=True) or "",
        user_key=_intern(_str(d, "userKey", required=True) or ""),
        kind=_intern(kind or ""),
        name=name if isinstance(name, str) else None,
        ts=parse_ms(d.get("timestamp"), "timestamp"),
        received=parse_ms(d.get("receivedAt"), "receivedAt"),
        session_id=session_id and _intern(session_id),
        seq=seq,
        step_id=step_id and _intern(step_id),
        user_id=user_id and _intern(user_id),
        anonymous_id=anonymous_id and _intern(anonymous_id),
        traits=traits,
        properties=props,
        trace=trace,
        previous_id=shared(_str(d, "previousId")) if kind == "alias" else None,
        group_id=shared(_str(d, "groupId")) if kind == "group" else None,
    )
