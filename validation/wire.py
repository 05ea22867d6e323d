"""The wire contract: Segment tracking-API calls as Onramp accepts them.

Onramp speaks the Segment HTTP tracking API so that an existing analytics client (analytics.js,
``segment-analytics-python``, ...) can point at it unchanged. Each call is a JSON object whose
``type`` selects one of the models below. Unknown top-level fields are kept (Segment clients add
``_metadata``, ``channel``, ``version``...), so nothing a client sends is lost.

Onramp's own onboarding context rides in ``context.onramp``::

    {"type": "track", "event": "Step Completed", "userId": "u1",
     "context": {"onramp": {"sessionId": "s-42", "seq": 7, "stepId": "team_size"}}}

``stepId`` may also be given as ``properties.stepId`` (the context wins when both are present).

Besides each call's fields, the contract bounds what any JSON value in an event may be, so that a
record Onramp accepts can be read back by every consumer (the stream decodes with orjson; the
training export writes int64 and float64 columns) and no value makes a consumer recurse without
end:

* nesting: at most :data:`MAX_NESTING_DEPTH` (32) levels of objects and arrays, the event object
  itself being level 1 -> ``nesting_too_deep``;
* numbers: integers within signed 64 bits (:data:`INT_MIN` .. :data:`INT_MAX`), floats finite
  (no ``NaN``, ``Infinity``, ``1e999``), no literal longer than :data:`MAX_NUMBER_CHARS`
  characters -> ``number_out_of_range``;
* strings (keys included): valid Unicode; a lone UTF-16 surrogate sent as ``"\\ud800"`` is
  refused -> ``invalid_string``;
* times: ``timestamp``, ``originalTimestamp`` and ``sentAt`` between the years
  :data:`TIME_MIN_YEAR` and :data:`TIME_MAX_YEAR` -> ``invalid_timestamp``; within those, clock
  skew correction cannot overflow.

:func:`check_json_value` checks the first three without recursion;
:func:`nesting_depth_exceeds` is its cheap part alone.

>>> call = parse_call({"type": "track", "event": "Signed Up", "anonymousId": "a1"})
>>> call.event, call.user_key
('Signed Up', 'a1')
>>> parse_call({"type": "track", "anonymousId": "a1"})
Traceback (most recent call last):
...
validation.wire.WireError: missing_field at event: Field required
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from validation.errors import ErrorCode, OnrampError
from validation.reasons import ReasonCode

__all__ = [
    "CALL_TYPES",
    "INT_MAX",
    "INT_MIN",
    "MAX_NESTING_DEPTH",
    "MAX_NUMBER_CHARS",
    "TIME_MAX_YEAR",
    "TIME_MIN_YEAR",
    "AliasCall",
    "Call",
    "EventContext",
    "GroupCall",
    "IdentifyCall",
    "OnrampContext",
    "PageCall",
    "ScreenCall",
    "TrackCall",
    "UnrepresentableNumber",
    "WireError",
    "check_json_value",
    "json_schema",
    "nesting_depth_exceeds",
    "parse_call",
    "safe_text",
]

#: Levels of objects and arrays an event may nest (the event object is level 1).
MAX_NESTING_DEPTH = 32
#: The integers an event may carry: signed 64 bits, what every consumer's int64 column holds.
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
#: The longest number literal read as a number (an int64 has at most 20 characters).
MAX_NUMBER_CHARS = 64
#: Event and send times must lie in these years (inclusive, wall clock of the given offset), so
#: that converting to UTC and correcting clock skew stay far from ``datetime``'s limits.
TIME_MIN_YEAR = 1970
TIME_MAX_YEAR = 2200

_FIELD_CHARS = 256  # longest field path a rejection reports


class WireError(OnrampError, ValueError):
    """One event broke the wire contract: a reason code, the offending field and why.

    A ``ValueError`` as well, for code that validates with the standard library's idiom.

    >>> import pickle
    >>> err = pickle.loads(pickle.dumps(WireError(ReasonCode.MISSING_FIELD, "event", "required")))
    >>> str(err), err.context
    ('missing_field at event: required', {'reason': 'missing_field', 'field': 'event'})
    """

    http_status = 400
    error_code = ErrorCode.INVALID_EVENT

    def __init__(self, reason: ReasonCode, field: str | None, message: str) -> None:
        super().__init__(message, reason=reason.value, field=field)
        self.reason = reason
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.field, self.message))

    def __str__(self) -> str:
        where = f" at {self.field}" if self.field else ""
        return f"{self.reason.value}{where}: {self.message}"


class UnrepresentableNumber:
    """A JSON number that was read but cannot be carried (out of int64, not finite, too long).

    The collector's decoder puts one in place of such a number instead of failing the whole
    body, so that only the event holding it is refused, with the field named
    (:func:`check_json_value`). It is not JSON-serializable on purpose: nothing can forward it.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"

    def __repr__(self) -> str:
        return f"UnrepresentableNumber({self.text!r})"

    def __str__(self) -> str:
        return self.text


def safe_text(text: str, limit: int = _FIELD_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with lone surrogates written as ``\\udXXX`` escapes,
    so that it can be put in an HTTP answer or a record whatever a client sent."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def nesting_depth_exceeds(value: Any, limit: int = MAX_NESTING_DEPTH) -> bool:
    """True when ``value`` nests objects/arrays more than ``limit`` levels (itself: level 1).

    Iterative, so any depth the JSON decoder produced is safe; only containers are visited.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        kind = type(node)
        if kind is dict:
            children: Any = node.values()
        elif kind is list:
            children = node
        else:
            continue
        if depth > limit:
            return True
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                push((child, depth + 1))
    return False


def _too_many(field: str, most: int, max_bytes: int | None) -> WireError:
    return WireError(
        ReasonCode.EVENT_TOO_LARGE,
        field or None,
        f"more than {most} values: over the limit of {max_bytes} bytes",
    )


def check_json_value(
    value: Any,
    field: str = "",
    max_depth: int = MAX_NESTING_DEPTH,
    max_bytes: int | None = None,
) -> None:
    """Raise :class:`WireError` for the first part of ``value`` outside the contract's bounds.

    Checks nesting depth, numbers (int64, finite, :class:`UnrepresentableNumber`) and strings
    (valid Unicode, keys too); ``field`` prefixes the reported path. Iterative, constant work per
    value (a path is spelled out only for the part refused): the collector calls it for an event
    that orjson refused to encode, to name the field. With ``max_bytes``, a value of more than
    ``max_bytes // 2`` parts is refused as ``event_too_large`` once they are counted (each part
    takes at least two bytes of JSON with its separator), so the walk is bounded by the event
    size limit, not by what a compressed body unpacks to.

    >>> check_json_value([1] * 100 + [float("nan")], max_bytes=64)
    Traceback (most recent call last):
    ...
    validation.wire.WireError: event_too_large: more than 32 values: over the limit of 64 bytes

    >>> check_json_value({"properties": {"n": float("nan")}})
    Traceback (most recent call last):
    ...
    validation.wire.WireError: number_out_of_range at properties.n: nan is not a finite number
    """
    # A path is a chain (parent chain, key or index), rooted at None.
    stack: list[tuple[Any, _Path, int]] = [(value, None, 1)]
    most = None if max_bytes is None else max_bytes // 2
    seen = 0
    while stack:
        node, path, depth = stack.pop()
        seen += 1
        if most is not None and seen > most:
            raise _too_many(field, most, max_bytes)
        if isinstance(node, dict):
            if depth > max_depth:
                raise _too_deep(field, path, max_depth)
            if most is not None and seen + len(node) > most:
                raise _too_many(field, most, max_bytes)
            children: list[tuple[Any, _Path, int]] = []
            for key, child in node.items():
                if not isinstance(key, str) or not _is_unicode(key):
                    raise WireError(
                        ReasonCode.INVALID_STRING,
                        _spelled(field, (path, str(key))),
                        "a key holds a lone UTF-16 surrogate (not valid Unicode)",
                    )
                children.append((child, (path, key), depth + 1))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            if depth > max_depth:
                raise _too_deep(field, path, max_depth)
            if most is not None and seen + len(node) > most:  # counted without walking them
                raise _too_many(field, most, max_bytes)
            stack.extend((node[i], (path, i), depth + 1) for i in range(len(node) - 1, -1, -1))
        elif isinstance(node, str):
            if not _is_unicode(node):
                raise WireError(
                    ReasonCode.INVALID_STRING,
                    _spelled(field, path),
                    "the string holds a lone UTF-16 surrogate (not valid Unicode)",
                )
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not INT_MIN <= node <= INT_MAX:
                raise WireError(
                    ReasonCode.NUMBER_OUT_OF_RANGE,
                    _spelled(field, path),
                    f"integers must lie within {INT_MIN}..{INT_MAX} (signed 64 bits)",
                )
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise WireError(
                    ReasonCode.NUMBER_OUT_OF_RANGE,
                    _spelled(field, path),
                    f"{node} is not a finite number",
                )
        elif isinstance(node, UnrepresentableNumber):
            raise WireError(
                ReasonCode.NUMBER_OUT_OF_RANGE,
                _spelled(field, path),
                f"{node.text} is not a finite number within signed 64 bits "
                f"or {MAX_NUMBER_CHARS} characters",
            )
        else:
            raise WireError(
                ReasonCode.INVALID_FIELD,
                _spelled(field, path),
                f"{type(node).__name__} is not a JSON value",
            )


_Path = tuple[Any, str | int] | None


def _spelled(field: str, path: _Path) -> str | None:
    """``field`` followed by the keys and indexes of ``path``: ``properties.items[2].name``."""
    parts: list[str | int] = []
    while path is not None:
        path, part = path
        parts.append(part)
    out = field
    for part in reversed(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = safe_text(part, 64)
            out = f"{out}.{key}" if out else key
        if len(out) > _FIELD_CHARS:
            break
    return safe_text(out) or None


def _too_deep(field: str, path: _Path, max_depth: int) -> WireError:
    return WireError(
        ReasonCode.NESTING_TOO_DEEP,
        _spelled(field, path),
        f"objects and arrays nest more than {max_depth} levels",
    )


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _IdText:
    """An id (``messageId``, ``userId``, ``context.onramp.sessionId``...): a string of 1 to 256
    characters or, as Segment allows, a signed 64-bit integer, kept as its decimal text (not a
    boolean). One error for any other value: the field and what it must be.

    Checked inside pydantic-core, with no Python call for a string (the usual case): three ids
    an event, this was 8% of the collector's parsing per event as a ``BeforeValidator``.
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.union_schema(
            [
                core_schema.str_schema(min_length=1, max_length=_ID_CHARS, strict=True),
                core_schema.no_info_after_validator_function(
                    str, core_schema.int_schema(strict=True, ge=INT_MIN, le=INT_MAX)
                ),
            ],
            custom_error_type="id_string",
            custom_error_message=f"must be a non-empty string of at most {_ID_CHARS} "
            "characters, or a 64-bit integer",
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: GetJsonSchemaHandler) -> Any:
        return {"type": "string", "minLength": 1, "maxLength": _ID_CHARS}


_ID_CHARS = 256
IdString = Annotated[str, _IdText]
JsonObject = dict[str, Any]


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if not TIME_MIN_YEAR <= value.year <= TIME_MAX_YEAR:
        # Year 1 with an offset, or 9999 minus a skew, would overflow datetime in UTC conversion
        # or skew correction; no real clock sends these.
        raise ValueError(f"year {value.year} is outside {TIME_MIN_YEAR}..{TIME_MAX_YEAR}")
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)  # Segment reads naive times as UTC
    return value


class OnrampContext(BaseModel):
    """Onramp's onboarding context, sent as ``context.onramp``."""

    model_config = ConfigDict(extra="allow")

    sessionId: IdString | None = Field(None, description="Onboarding session id, set by the SDK.")
    seq: int | None = Field(
        None, ge=0, description="Per-session sequence number, 0-based, +1 for every event."
    )
    stepId: IdString | None = Field(None, description="Onboarding step the event belongs to.")

    @field_validator("seq", mode="before")
    @classmethod
    def _no_bool_seq(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("seq must be an integer, not a boolean")
        return value


class EventContext(BaseModel):
    """Segment's ``context`` object; any field is allowed, ``onramp`` is checked."""

    model_config = ConfigDict(extra="allow")

    onramp: OnrampContext | None = None


class _CallBase(BaseModel):
    model_config = ConfigDict(extra="allow", str_max_length=32_768)

    type: str
    messageId: IdString | None = Field(
        None, description="The event id; used for deduplication. Generated when absent."
    )
    userId: IdString | None = Field(None, description="Your id of a known user.")
    anonymousId: IdString | None = Field(None, description="Device/browser id before sign-up.")
    timestamp: dt.datetime | None = Field(
        None, description="When the event happened (client clock)."
    )
    originalTimestamp: dt.datetime | None = Field(
        None, description="Alias of the client timestamp some clients send instead of timestamp."
    )
    sentAt: dt.datetime | None = Field(None, description="When the client sent the request.")
    context: EventContext = Field(default_factory=EventContext)
    integrations: JsonObject | None = None

    requires_user_id: ClassVar[bool] = False

    @field_validator("timestamp", "originalTimestamp", "sentAt")
    @classmethod
    def _normalize_times(cls, value: dt.datetime | None) -> dt.datetime | None:
        return _utc(value)

    @model_validator(mode="after")
    def _identity(self) -> _CallBase:
        if self.userId is None and self.anonymousId is None:
            raise ValueError("missing_identity: one of userId or anonymousId is required")
        if self.requires_user_id and self.userId is None:
            raise ValueError("missing_identity: userId is required for this call")
        return self

    @property
    def user_key(self) -> str:
        """The Kafka record key: the user id, else the anonymous id."""
        return self.userId or self.anonymousId or ""


class TrackCall(_CallBase):
    """``analytics.track(event, properties)``: something the user did."""

    type: Literal["track"] = "track"
    event: str = Field(min_length=1, max_length=256, description="The action's name.")
    properties: JsonObject = Field(default_factory=dict)


class IdentifyCall(_CallBase):
    """``analytics.identify(userId, traits)``: who the user is."""

    type: Literal["identify"] = "identify"
    traits: JsonObject = Field(default_factory=dict)


class PageCall(_CallBase):
    """``analytics.page(category, name, properties)``: a web page view."""

    type: Literal["page"] = "page"
    name: str | None = Field(None, max_length=256)
    category: str | None = Field(None, max_length=256)
    properties: JsonObject = Field(default_factory=dict)


class ScreenCall(_CallBase):
    """``analytics.screen(name, properties)``: a mobile screen view."""

    type: Literal["screen"] = "screen"
    name: str | None = Field(None, max_length=256)
    category: str | None = Field(None, max_length=256)
    properties: JsonObject = Field(default_factory=dict)


class GroupCall(_CallBase):
    """``analytics.group(groupId, traits)``: the account or team the user belongs to."""

    type: Literal["group"] = "group"
    groupId: IdString
    traits: JsonObject = Field(default_factory=dict)


class AliasCall(_CallBase):
    """``analytics.alias(userId, previousId)``: two ids are the same user."""

    type: Literal["alias"] = "alias"
    previousId: IdString
    requires_user_id: ClassVar[bool] = True


Call = TrackCall | IdentifyCall | PageCall | ScreenCall | GroupCall | AliasCall

CALL_TYPES: dict[str, type[_CallBase]] = {
    "track": TrackCall,
    "identify": IdentifyCall,
    "page": PageCall,
    "screen": ScreenCall,
    "group": GroupCall,
    "alias": AliasCall,
}

_TIME_FIELDS = frozenset({"timestamp", "originalTimestamp", "sentAt"})


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _wire_error(exc: ValidationError) -> WireError:
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    field = safe_text(_dotted(loc)) or None
    message = safe_text(str(err["msg"]), 512)
    if "missing_identity" in message:
        return WireError(ReasonCode.MISSING_IDENTITY, "userId", message.split(": ", 2)[-1])
    if loc and loc[0] in _TIME_FIELDS:
        return WireError(ReasonCode.INVALID_TIMESTAMP, field, message)
    if loc[:2] == ("context", "onramp"):
        return WireError(ReasonCode.INVALID_ONRAMP_CONTEXT, field, message)
    if err["type"] == "missing":
        return WireError(ReasonCode.MISSING_FIELD, field, message)
    return WireError(ReasonCode.INVALID_FIELD, field, message)


def parse_call(raw: Any, route_type: str | None = None) -> Call:
    """Validate one call; ``route_type`` is the type the route implies (``/v1/track`` -> track).

    Raises :class:`WireError` with the reason code and field on any contract violation.
    """
    if not isinstance(raw, dict):
        raise WireError(
            ReasonCode.NOT_AN_OBJECT, None, f"expected an object, got {type(raw).__name__}"
        )
    kind = raw.get("type", route_type)
    if kind is None:
        raise WireError(ReasonCode.MISSING_TYPE, "type", "Field required")
    if route_type is not None and kind != route_type:
        raise WireError(
            ReasonCode.TYPE_MISMATCH,
            "type",
            f"type {_brief(kind)} posted to the {route_type} route",
        )
    model = CALL_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise WireError(
            ReasonCode.UNKNOWN_TYPE, "type", f"{_brief(kind)} is not one of {', '.join(CALL_TYPES)}"
        )
    try:
        call = model.model_validate(raw if "type" in raw else {**raw, "type": kind})
    except ValidationError as exc:
        raise _wire_error(exc) from None
    return call  # type: ignore[return-value]


def _brief(value: Any) -> str:
    # A short, printable stand-in for a client's value in a message (never a deep repr).
    if isinstance(value, str):
        return safe_text(repr(value[:64]), 80)
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        return f"an integer of {value.bit_length()} bits"  # repr would be slow, or refused
    if value is None or isinstance(value, bool | int | float):
        return safe_text(repr(value), 80)
    return f"a {type(value).__name__}"


def json_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """JSON Schema of one call (any type) and of a ``/v1/batch`` body, for SDK authors.

    ``ref_template`` places the definitions elsewhere (OpenAPI: ``#/components/schemas/{model}``);
    the definitions are under ``$defs`` of the result either way.
    """
    from pydantic import TypeAdapter

    single = TypeAdapter(Annotated[Call, Field(discriminator="type")]).json_schema(
        ref_template=ref_template
    )
    ref = ref_template.replace("{model}", "Call")
    defs = single.pop("$defs", {})
    defs["Call"] = single
    defs["Batch"] = {
        "type": "object",
        "title": "Batch",
        "description": "Body of POST /v1/batch (and /v1/b).",
        "properties": {
            "batch": {"type": "array", "items": {"$ref": ref}, "minItems": 1},
            "writeKey": {"type": "string"},
            "sentAt": {"type": "string", "format": "date-time"},
            "context": {"type": "object"},
        },
        "required": ["batch"],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://onramp.dev/schemas/event-1.json",
        "title": "Onramp wire contract (Segment tracking API)",
        "oneOf": [{"$ref": ref}, {"$ref": ref_template.replace("{model}", "Batch")}],
        "$defs": defs,
    }
