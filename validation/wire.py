"""The wire contract: Segment tracking-API calls as Onramp accepts them.

Onramp speaks the Segment HTTP tracking API so that an existing analytics client (analytics.js,
``segment-analytics-python``, ...) can point at it unchanged. Each call is a JSON object whose
``type`` selects one of the models below. Unknown top-level fields are kept (Segment clients add
``_metadata``, ``channel``, ``version``...), so nothing a client sends is lost.

Onramp's own onboarding context rides in ``context.onramp``::

    {"type": "track", "event": "Step Completed", "userId": "u1",
     "context": {"onramp": {"sessionId": "s-42", "seq": 7, "stepId": "team_size"}}}

``stepId`` may also be given as ``properties.stepId`` (the context wins when both are present).

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
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from validation.reasons import ReasonCode

__all__ = [
    "CALL_TYPES",
    "AliasCall",
    "Call",
    "EventContext",
    "GroupCall",
    "IdentifyCall",
    "OnrampContext",
    "PageCall",
    "ScreenCall",
    "TrackCall",
    "WireError",
    "json_schema",
    "parse_call",
]


class WireError(ValueError):
    """One event broke the wire contract: a reason code, the offending field and why."""

    def __init__(self, reason: ReasonCode, field: str | None, message: str) -> None:
        super().__init__(reason, field, message)
        self.reason = reason
        self.field = field
        self.message = message

    def __str__(self) -> str:
        where = f" at {self.field}" if self.field else ""
        return f"{self.reason.value}{where}: {self.message}"


def _id_string(value: Any) -> Any:
    # Segment accepts numeric ids and treats them as strings; so do we (bools are not ids).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


IdString = Annotated[str, BeforeValidator(_id_string), Field(min_length=1, max_length=256)]
JsonObject = dict[str, Any]


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
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

    _normalize_times = field_validator("timestamp", "originalTimestamp", "sentAt")(
        classmethod(lambda cls, v: _utc(v))
    )

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
    field = _dotted(loc) or None
    message = str(err["msg"])
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
            ReasonCode.TYPE_MISMATCH, "type", f"type {kind!r} posted to the {route_type} route"
        )
    model = CALL_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise WireError(
            ReasonCode.UNKNOWN_TYPE, "type", f"{kind!r} is not one of {', '.join(CALL_TYPES)}"
        )
    try:
        call = model.model_validate(raw if "type" in raw else {**raw, "type": kind})
    except ValidationError as exc:
        raise _wire_error(exc) from None
    return call  # type: ignore[return-value]


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
