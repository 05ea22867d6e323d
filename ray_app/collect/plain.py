"""The collector's fast path: a plain event normalized without building a pydantic model.

Nearly every event a client sends is plain: a ``track``, ``identify``, ``page`` or ``screen``
call whose ids are strings (or int64s), whose times are ISO-8601 text, whose ``context`` and
``properties`` are objects. :func:`plain_call` reads such an event with a few dictionary
lookups and type checks, gives the same fields :func:`validation.wire.parse_call` gives, and
:func:`plain_record` writes the record with one ``orjson.dumps``: the same JSON object the
pydantic path writes (``record_json``), key order aside.

It decides nothing the wire contract decides: for anything else, a value of another type, an
empty id, a missing identity or event name, a ``group`` or ``alias`` call, it answers None and
the pydantic models read the event, accept it or refuse it with their field and reason. So the
contract has one definition (:mod:`validation.wire`), and this is a shortcut through it that a
property test holds to the same answers (``tests/unit/test_collect_plain.py``). Times are read by
pydantic's own datetime validator, so every format the models accept means the same instant
(a time as JavaScript's ``toISOString`` writes it, by the standard library's parser, which
reads it as the same instant: a property test holds it).

On the collector benchmark's events it takes the parse from 13.5 to 7.9 us an event (the
models' validation and serializer were most of the difference).

>>> call = plain_call({"type": "track", "event": "Signed Up", "userId": 42,
...                    "context": {"onramp": {"sessionId": "s1", "seq": 3, "stepId": None}}}, None)
>>> call.user_key, call.session_id, call.seq, call.step_id, call.message_id
('42', 's1', 3, None, None)
>>> plain_record(call, {"source": "web"})
b'{"type":"track","event":"Signed Up","userId":"42","context":{"onramp":{"sessionId":"s1","seq":3}},"properties":{},"source":"web"}'
>>> plain_call({"type": "track", "userId": "u"}, None) is None  # no event name: the models say why
True
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from validation.wire import INT_MAX, INT_MIN, TIME_MAX_YEAR, TIME_MIN_YEAR

__all__ = ["PlainCall", "plain_call", "plain_record"]

# The call types this path reads, each with its declared fields that must be objects (absent:
# ``{}``); page and screen also have short optional texts. Any other type goes to the models.
_OBJECTS: dict[str, tuple[str, ...]] = {
    "track": ("properties",),
    "identify": ("traits",),
    "page": ("properties",),
    "screen": ("properties",),
}
_SHORT_TEXT = ("name", "category")  # page and screen: at most 256 characters
# Fields the models refuse as null (``type`` included: its absence is the route's type).
_NOT_NONE = ("type", "context", "properties", "traits", "event")
_TEXT_CHARS = 256
_ID_CHARS = 256
# The models' ``str_max_length``: an event this large goes to them (the collector refuses
# events over 32 KB before, unless configured otherwise).
MAX_PLAIN_BYTES = 32_768

_DATETIME = TypeAdapter(dt.datetime)
# sentAt is written back as pydantic writes it; a batch's events share one, so it is kept.
_SENT_AT_JSON: dict[Any, tuple[dt.datetime, str]] = {}
_SENT_AT_KEPT = 256
_SENT_AT_CHARS = 64  # a time's text is shorter; a longer one is read, not kept


class PlainCall:
    """The fields of one plain event the collector needs, and the rest of it to write back."""

    __slots__ = (
        "client_time_text",
        "message_id",
        "original_timestamp",
        "sent_at",
        "seq",
        "session_id",
        "step_id",
        "theirs",
        "timestamp",
        "user_key",
    )

    def __init__(self) -> None:
        self.message_id: str | None = None
        self.user_key = ""
        self.timestamp: dt.datetime | None = None
        self.original_timestamp: dt.datetime | None = None
        #: The client's time as the collector writes it, when the client wrote it so already.
        self.client_time_text: str | None = None
        self.sent_at: dt.datetime | None = None
        self.session_id: str | None = None
        self.seq: int | None = None
        self.step_id: str | None = None
        #: The event as the models would write it (``exclude_none``), before Onramp's fields.
        self.theirs: dict[str, Any] = {}


def _id(value: Any) -> str | None:
    # The models' id: 1..256 characters, or an integer kept as its text (the collector has
    # already refused integers beyond 64 bits); None for anything they would refuse.
    kind = type(value)
    if kind is str:
        return value if 0 < len(value) <= _ID_CHARS else None
    if kind is int and INT_MIN <= value <= INT_MAX:
        return str(value)
    return None


def _time(value: Any) -> dt.datetime | None:
    # pydantic's own datetime reading, then the contract's year bounds and naive-is-UTC; a
    # canonical text (``2026-11-01T10:00:00.000Z``, what browsers write) names one instant
    # whichever reads it, and the standard library's C parser reads it in a third of the time.
    if _is_canonical(value):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None  # the models refuse it too (a month 13): they will say why
        return parsed if TIME_MIN_YEAR <= parsed.year <= TIME_MAX_YEAR else None
    try:
        parsed = _DATETIME.validate_python(value)
    except ValidationError:
        return None
    if not TIME_MIN_YEAR <= parsed.year <= TIME_MAX_YEAR:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _sent_at(value: Any) -> tuple[dt.datetime, str] | None:
    keep = type(value) is str and len(value) <= _SENT_AT_CHARS
    if keep:
        kept = _SENT_AT_JSON.get(value)
        if kept is not None:
            return kept
    parsed = _time(value)
    if parsed is None:
        return None
    out = (parsed, _DATETIME.dump_python(parsed, mode="json"))
    if keep:
        if len(_SENT_AT_JSON) >= _SENT_AT_KEPT:
            _SENT_AT_JSON.clear()
        _SENT_AT_JSON[value] = out
    return out


def _without_none(value: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``value`` without its None items (as the models write, ``exclude_none``): a
    plain copy when it holds none, nearly always (no JSON value but null equals None)."""
    if None in value.values():
        return {key: item for key, item in value.items() if item is not None}
    return value.copy()


def _onramp(value: dict[str, Any], call: PlainCall) -> dict[str, Any] | None:
    out = _without_none(value)
    session_id = out.get("sessionId")
    if session_id is not None:
        session_id = out["sessionId"] = call.session_id = _id(session_id)
        if session_id is None:
            return None
    step_id = out.get("stepId")
    if step_id is not None:
        step_id = out["stepId"] = call.step_id = _id(step_id)
        if step_id is None:
            return None
    seq = out.get("seq")
    if seq is not None:
        if type(seq) is not int or seq < 0:
            return None
        call.seq = seq
    return out


def _context(value: Any, call: PlainCall) -> dict[str, Any] | None:
    if type(value) is not dict:
        return None
    out = _without_none(value)
    onramp = out.get("onramp")
    if onramp is not None:
        if type(onramp) is not dict:
            return None
        onramp = out["onramp"] = _onramp(onramp, call)
        if onramp is None:
            return None
    return out


def _is_canonical(text: Any) -> bool:
    # ``2026-11-01T10:00:00.000Z`` (JavaScript's ``toISOString``): once pydantic has read it,
    # it is already the collector's own writing of that time (``ray_app.timefmt.iso``).
    return (
        type(text) is str
        and len(text) == 24
        and text[23] == "Z"
        and text[19] == "."
        and text[10] == "T"
        and text[:4].isdigit()
    )


def plain_call(raw: dict[str, Any], route_type: str | None) -> PlainCall | None:
    """``raw`` read as the models would read it, or None when it is not plain (then they
    must read it: they accept it or say why not). ``route_type`` as in ``parse_call``."""
    kind = raw.get("type", route_type)
    if route_type is not None and kind != route_type:
        return None
    objects = _OBJECTS.get(kind) if type(kind) is str else None
    if objects is None:
        return None
    # exclude_none, as the models write: a None is an absent optional field or a dropped
    # extra, and where the models refuse None (context, the objects, event) the event is theirs
    theirs = _without_none(raw)
    if len(theirs) != len(raw) and any(raw.get(key, kind) is None for key in _NOT_NONE):
        return None
    theirs["type"] = kind
    call = PlainCall()
    user_id = theirs.get("userId")
    if user_id is not None:
        user_id = theirs["userId"] = _id(user_id)
        if user_id is None:
            return None
    anonymous_id = theirs.get("anonymousId")
    if anonymous_id is not None:
        anonymous_id = theirs["anonymousId"] = _id(anonymous_id)
        if anonymous_id is None:
            return None
    if user_id is None and anonymous_id is None:
        return None
    call.user_key = user_id or anonymous_id or ""
    message_id = theirs.get("messageId")
    if message_id is not None:
        message_id = theirs["messageId"] = call.message_id = _id(message_id)
        if message_id is None:
            return None
    # the client's times are written by the collector in Onramp's fields
    timestamp = theirs.pop("timestamp", None)
    if timestamp is not None:
        call.timestamp = _time(timestamp)
        if call.timestamp is None:
            return None
    original = theirs.pop("originalTimestamp", None)
    if original is not None:
        call.original_timestamp = _time(original)
        if call.original_timestamp is None:
            return None
    client_time = timestamp if timestamp is not None else original
    if _is_canonical(client_time):
        call.client_time_text = client_time
    sent_at = theirs.get("sentAt")
    if sent_at is not None:
        sent = _sent_at(sent_at)
        if sent is None:
            return None
        call.sent_at, theirs["sentAt"] = sent
    context = theirs.get("context")
    if context is None:
        theirs["context"] = {}
    else:
        context = theirs["context"] = _context(context, call)
        if context is None:
            return None
    for key in objects:
        value = theirs.get(key)
        if value is None:
            theirs[key] = {}
        elif type(value) is not dict:
            return None
    integrations = theirs.get("integrations")
    if integrations is not None and type(integrations) is not dict:
        return None
    if kind == "track":
        event = theirs.get("event")
        if type(event) is not str or not 0 < len(event) <= _TEXT_CHARS:
            return None
    elif kind != "identify":  # page, screen
        for key in _SHORT_TEXT:
            text = theirs.get(key)
            if text is not None and (type(text) is not str or len(text) > _TEXT_CHARS):
                return None
    call.theirs = theirs
    return call


def plain_record(call: PlainCall, ours: dict[str, Any]) -> bytes:
    """The record of ``call``: its fields with ``ours`` set over them (as ``record_json``).
    ``call.theirs`` (its own copy) takes them in place: the same keys in the same order as
    ``{**call.theirs, **ours}`` without building a third dict."""
    theirs = call.theirs
    theirs.update(ours)
    return orjson.dumps(theirs)
