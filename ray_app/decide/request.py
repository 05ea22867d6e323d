"""The request body of ``/v1/decide``: :class:`DecideRequest`, read by :func:`parse_decide`, which
answers every input with a request or a :class:`DecideRefused` (a 4xx with the field named)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "MAX_DECIDE_BYTES",
    "DecideRefused",
    "DecideRequest",
    "decide_query",
    "parse_decide",
    "user_hash",
    "verify_identity",
]

#: Largest ``POST /v1/decide`` body: a decision request is a few hundred bytes.
MAX_DECIDE_BYTES = 64 * 1024

#: A context value: what features read (flat fields, one level of nesting, short lists). The type
#: is the limit, so that the OpenAPI document says exactly what is accepted and a request nested
#: deeper is a 400 that names the field, not work for the replica.
_Scalar = str | int | float | bool | None
_ContextValue = _Scalar | list[_Scalar] | dict[str, _Scalar | list[_Scalar]]


#: Values a context holds in all (each scalar, list item and nested field counts one), and the
#: longest text among them: each value becomes hashed feature tokens (a number about 17), work the
#: replica's event loop does before any other request, and the decision log keeps the context.
MAX_CONTEXT_VALUES = 128
MAX_CONTEXT_TEXT = 1024

#: The longest name of a context field (nested too): features ignore longer keys anyway.
MAX_CONTEXT_KEY = 128


def _short_key(key: str, where: str) -> None:
    if len(key) > MAX_CONTEXT_KEY:
        raise ValueError(
            f"{where[:MAX_CONTEXT_KEY]}...: a field name of {len(key)} characters; at most "
            f"{MAX_CONTEXT_KEY}"
        )


#: The refusal of a request naming no user (the field it names: ``userId``).
_NO_IDENTITY = "send userId or anonymousId (user_id, anonymous_id)"


class DecideRequest(BaseModel):
    """``POST /v1/decide`` (or the query string of ``GET /v1/decide``)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        # the identity rule below, in the OpenAPI document too
        json_schema_extra={
            "anyOf": [
                {"required": ["userId"], "properties": {"userId": {"type": "string"}}},
                {"required": ["anonymousId"], "properties": {"anonymousId": {"type": "string"}}},
            ]
        },
    )

    user_id: str | None = Field(None, alias="userId", min_length=1, max_length=512)
    anonymous_id: str | None = Field(None, alias="anonymousId", min_length=1, max_length=512)
    slot: str = Field(min_length=1, max_length=128, description="Catalog slot to decide.")
    context: dict[str, _ContextValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Request context (device, referrer, locale, ...): at most 64 fields, each a "
        "scalar, a list of scalars or an object of those (one level); at most 128 values in all "
        "(an empty list or object counts one), texts of at most 1,024 characters and field "
        "names of at most 128.",
    )
    candidates: list[str] | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Restrict the answer to these actions (each must be eligible; when the "
        "user's profile cannot be read in time, each must be an action of the slot).",
    )
    user_hash: str | None = Field(
        None,
        alias="userHash",
        min_length=1,
        max_length=128,
        description="With collector.identity_secret: the hex HMAC-SHA256 of userId under it, "
        "from your server (required of decide keys when userId is sent).",
    )
    decision_id: str | None = Field(
        None,
        alias="decisionId",
        min_length=1,
        max_length=128,
        description="Idempotency key: the same id gives the same draw (default: a new UUID).",
    )

    @field_validator("context")
    @classmethod
    def _bounded_context(cls, context: dict[str, Any]) -> dict[str, Any]:
        # an empty list or object counts one too: 5,500 nested empty lists counted none and
        # made each decision record 60 KB
        count = 0
        for name, value in context.items():
            _short_key(name, name)
            items: Any = (value,)
            if isinstance(value, dict):
                for sub in value:
                    _short_key(sub, f"{name}.{sub}")
                count += not value
                items = value.values()
            for item in items:
                leaves = item if isinstance(item, list) else (item,)
                count += len(leaves) or 1
                for leaf in leaves:
                    if isinstance(leaf, str) and len(leaf) > MAX_CONTEXT_TEXT:
                        raise ValueError(
                            f"{name}: a text of {len(leaf)} characters; at most "
                            f"{MAX_CONTEXT_TEXT} in a context value"
                        )
        if count > MAX_CONTEXT_VALUES:
            raise ValueError(
                f"{count} values in all (fields, list items and nested fields); at most "
                f"{MAX_CONTEXT_VALUES}"
            )
        return context

    @model_validator(mode="after")
    def _identity(self) -> DecideRequest:
        if self.user_id is None and self.anonymous_id is None:
            raise ValueError(_NO_IDENTITY)
        return self

    #: Set by :func:`verify_identity`: an unverified request, decided from an anonymous
    #: visitor's profile only (see :attr:`anonymous_only`).
    _anonymous_only: bool = PrivateAttr(default=False)

    @property
    def user_key(self) -> str:
        """The key events of this user are partitioned by (as the collector keys them)."""
        return self.user_id or self.anonymous_id or ""

    @property
    def anonymous_only(self) -> bool:
        """Whether this request may read only an anonymous visitor's profile: a decide key's
        request naming only an ``anonymousId`` while identity verification is on. User ids and
        anonymous ids share one key space (the collector keys events by ``userId or
        anonymousId``), so a browser could otherwise send a signed-in user's id as its
        ``anonymousId`` and be answered from that user's profile."""
        return self._anonymous_only


_CONTEXT_SHAPE = "a context value is a scalar, a list of scalars or an object of those (one level)"


def user_hash(secret: str, user_id: str) -> str:
    """What your server gives a signed-in user's browser for ``/v1/decide`` when
    ``collector.identity_secret`` is set: the hex HMAC-SHA256 of the user id under it.

    >>> user_hash("a-long-enough-secret", "u1")[:16]
    '25ef22b64fae59b7'
    """
    return hmac.new(secret.encode(), user_id.encode("utf-8", "surrogatepass"), "sha256").hexdigest()


def verify_identity(
    req: DecideRequest | DecideRefused, secret: str | None
) -> DecideRequest | DecideRefused:
    """``req``, or a 403 when ``secret`` is set and it names a ``userId`` without that id's
    :func:`user_hash` (a decide key's request: any browser holds the key, and the answer says
    something of the user's progress). A request naming only an ``anonymousId`` passes, marked
    :attr:`~DecideRequest.anonymous_only`: it is decided as an unknown user when its id is a
    signed-in user's or was merged into one.

    >>> r = DecideRequest(userId="u1", slot="next_step")
    >>> verify_identity(r, "a-long-enough-secret").status
    403
    >>> signed = DecideRequest(userId="u1", slot="next_step",
    ...                        userHash=user_hash("a-long-enough-secret", "u1"))
    >>> verify_identity(signed, "a-long-enough-secret") is signed
    True
    """
    if secret is None or not isinstance(req, DecideRequest):
        return req
    if req.user_id is None:
        req._anonymous_only = True
        return req
    given = (req.user_hash or "").strip().lower().encode("ascii", "replace")
    if hmac.compare_digest(given, user_hash(secret, req.user_id).encode("ascii")):
        return req
    why = "missing" if req.user_hash is None else "does not match userId"
    return DecideRefused(
        403,
        "identity_unverified",
        "userHash",
        f"userHash {why}: with a decide key, send the HMAC-SHA256 of userId under "
        "collector.identity_secret, computed by your server (or decide with anonymousId)",
    )


@dataclass(frozen=True)
class DecideRefused:
    """Why a ``/v1/decide`` request cannot be read: the HTTP status and the error body."""

    status: int
    error: str
    field: str | None
    message: str

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "field": self.field, "message": self.message}


def decide_query(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The fields of ``GET /v1/decide``'s query string (``user_id=&slot=&candidates=a,b&
    context.device=mobile&decision_id=``) as the body :func:`parse_decide` reads.

    >>> decide_query([("user_id", "u1"), ("candidates", "a,,b"), ("context.device", "mobile")])
    {'user_id': 'u1', 'candidates': ['a', 'b'], 'context': {'device': 'mobile'}}
    >>> decide_query([("candidates", "a"), ("candidates", "b,c")])  # repeated, as clients send lists
    {'candidates': ['a', 'b', 'c']}
    """
    data: dict[str, Any] = {}
    context: dict[str, Any] = {}
    for key, value in items:
        if key.startswith("context."):
            context[key.removeprefix("context.")] = value
        elif key == "candidates":  # repeated (URLSearchParams.append, requests) or a,b
            data.setdefault("candidates", []).extend(c for c in value.split(",") if c)
        else:
            data[key] = value
    if context:
        data["context"] = context
    return data


def parse_decide(body: bytes | Mapping[str, Any]) -> DecideRequest | DecideRefused:
    """A ``POST`` body (bytes) or a query string's fields (a mapping) -> the request, or why not.
    Never raises: any input is a request or a 4xx with the field named.

    >>> parse_decide(b'{"userId": "u1", "slot": "next_step"}').user_key
    'u1'
    >>> parse_decide(b'[1]')
    DecideRefused(status=400, error='not_an_object', field=None, message='send a JSON object')
    >>> parse_decide(b'{"userId": "u1", "slot": "s", "context": {"a": {"b": {"c": 1}}}}')
    ... # doctest: +NORMALIZE_WHITESPACE
    DecideRefused(status=400, error='invalid_request', field='context.a', message='a context value
    is a scalar, a list of scalars or an object of those (one level)')
    """
    data: Any = body
    if isinstance(body, bytes | bytearray | memoryview):
        if len(body) > MAX_DECIDE_BYTES:
            return DecideRefused(
                413, "body_too_large", None, f"the limit is {MAX_DECIDE_BYTES} bytes"
            )
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return DecideRefused(400, "invalid_json", None, str(exc))
    if not isinstance(data, Mapping):
        return DecideRefused(400, "not_an_object", None, "send a JSON object")
    try:
        return DecideRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        loc = err["loc"]
        if len(loc) >= 2 and loc[0] == "context" and err["type"] != "too_long":
            return DecideRefused(400, "invalid_request", f"context.{loc[1]}", _CONTEXT_SHAPE)
        where = ".".join(str(p) for p in loc) or None
        if where is None and _NO_IDENTITY in str(err["msg"]):
            where = "userId"
        message = str(err["msg"]).removeprefix("Value error, ")  # pydantic's, for our checks
        return DecideRefused(400, "invalid_request", where, message[:512])
    except Exception as exc:  # last resort: no body may become a 500
        return DecideRefused(400, "invalid_request", None, f"{type(exc).__name__}: {exc}"[:512])
