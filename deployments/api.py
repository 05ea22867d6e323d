"""Onramp's HTTP API as a document: the FastAPI app the ingress (:mod:`deployments.ingress`)
serves, the answers each route documents, and the OpenAPI schema, which names the slots and actions
of the replica's catalog (:func:`describe_catalog`) rather than "any string".

A hot route may also be answered ahead of FastAPI (:func:`fast_post`): ``POST /v1/decide`` costs
about as much in FastAPI's routing, dependency solving and response objects as in deciding, so the
replica answers it from the ASGI messages directly (:func:`read_body`, :func:`send_json`); the
route stays in the app, and so in the document.
"""

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from ray_app import __version__
from ray_app.catalog import Catalog
from ray_app.decide import DecideRequest
from validation.reasons import ReasonCode
from validation.wire import json_schema

__all__ = [
    "COLLECT_PATHS",
    "COLLECT_STATUSES",
    "DECIDE_BODY",
    "DECIDE_QUERY",
    "DECIDE_STATUSES",
    "HEALTH_STATUSES",
    "METRICS_STATUSES",
    "PREFLIGHT_STATUSES",
    "PROFILE_STATUSES",
    "api",
    "collect_route",
    "describe_catalog",
    "fast_post",
    "static_file",
    "read_body",
    "send_json",
]


class RejectionOut(BaseModel):
    reason: ReasonCode = Field(description="Reason code (see `onramp schema --reasons`).")
    field: str | None = Field(
        description="Dotted path of the offending field, e.g. batch[3].timestamp."
    )
    message: str
    index: int | None = Field(None, description="Position in `batch` (batch routes only).")
    messageId: str | None = None


class CollectAnswer(BaseModel):
    success: bool = Field(description="True when every event was accepted.")
    accepted: int = Field(description="Events acknowledged by Kafka in onramp.events.")
    rejected: list[RejectionOut] = Field(
        description="Refused events, each also written to onramp.events.dlq (except auth failures)."
    )


class UnavailableAnswer(BaseModel):
    success: bool = False
    error: str = "kafka_unavailable"
    message: str
    retryAfter: int = Field(description="Seconds; also in the Retry-After header.")


COLLECT_STATUSES: dict[int | str, dict[str, Any]] = {
    200: {"model": CollectAnswer, "description": "Every event acknowledged by Kafka (acks=all)."},
    400: {
        "model": CollectAnswer,
        "description": "Malformed body or some events invalid: the valid ones were accepted, "
        "the rest are in onramp.events.dlq with a reason code.",
    },
    401: {"model": CollectAnswer, "description": "Write key missing or unknown."},
    413: {"model": CollectAnswer, "description": "Over 500 KB per request or 32 KB per event."},
    415: {"model": CollectAnswer, "description": "Content-Encoding other than gzip."},
    503: {
        "model": UnavailableAnswer,
        "description": "Kafka did not acknowledge in time or is not keeping up; retry after "
        "Retry-After seconds. Nothing of the request is reported as accepted.",
    },
}


_DESCRIPTION = """\
Onramp's collector speaks the [Segment tracking API](https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/):
point an analytics client at it unchanged. Authenticate with the write key as the HTTP Basic
user name, or `writeKey` in the body. Bodies are JSON (any Content-Type, `text/plain` included),
optionally `Content-Encoding: gzip`. A 200 means Kafka acknowledged every record.
"""

api = FastAPI(title="Onramp", version=__version__, description=_DESCRIPTION)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The tracking API's paths (long and analytics.js short forms) -> their route.
COLLECT_PATHS = {
    **{f"/v1/{r}": r for r in ("batch", "track", "identify", "page", "screen", "group", "alias")},
    **{"/v1/b": "batch", "/v1/t": "track", "/v1/i": "identify", "/v1/p": "page"},
}


def static_file(files: Mapping[str, tuple[Path, str]], name: str) -> tuple[bytes, str] | None:
    """(content, media type) of ``name`` in ``files`` (name -> (path, media type); the empty
    name is ``index.html``), or None when it is not one of them or cannot be read: a page's files
    are served from a fixed list, never from a path the request names."""
    entry = files.get(name or "index.html")
    if entry is None:
        return None
    path, media = entry
    try:
        return path.read_bytes(), media
    except OSError:
        return None


#: ``POST`` routes answered ahead of FastAPI: path -> ASGI handler (:func:`fast_post`).
_FAST_POST: dict[str, Handler] = {}


def fast_post(path: str, handler: Handler | None) -> None:
    """Answer ``POST path`` with ``handler`` (an ASGI callable) before FastAPI routes it; None
    gives the route back to FastAPI. The replica that serves ``api`` registers its handlers (one
    replica per process)."""
    if handler is None:
        _FAST_POST.pop(path, None)
    else:
        _FAST_POST[path] = handler


class _FastPost:
    """ASGI middleware: a ``POST`` to a path of :func:`fast_post` goes to its handler."""

    def __init__(self, app: Handler) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _FAST_POST:
            handler = _FAST_POST.get(_route_path(scope))
            if handler is not None:
                return await handler(scope, receive, send)
        return await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path as the app's routes see it (without the ``root_path`` it is mounted at)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


api.add_middleware(_FastPost)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, reading at most one chunk past ``limit`` (enough to answer 413 without
    buffering a flood); None if the client went away."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # http.disconnect
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    """A JSON answer, with the headers a FastAPI ``Response(media_type="application/json")``
    would have."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    raw.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


#: What the replica serving this document knows (its catalog's slots), so that the document says
#: which slots exist rather than "any string".
_LIVE: dict[str, Any] = {}


def describe_catalog(catalog: Catalog) -> None:
    """Name ``catalog``'s slots and actions in the OpenAPI document (rebuilt on next request)."""
    _LIVE["slots"] = sorted(catalog.slots)
    _LIVE["actions"] = sorted({a.id for s in catalog.slots.values() for a in s.actions})
    api.openapi_schema = None


def _openapi() -> dict[str, Any]:
    if api.openapi_schema:
        return api.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(
        title=api.title, version=api.version, description=api.description, routes=api.routes
    )
    defs = json_schema("#/components/schemas/{model}")["$defs"]
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs)
    slots = _LIVE.get("slots")
    if slots:
        decide = schema["paths"]["/v1/decide"]
        body = decide["post"]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["slot"]["enum"] = slots
        actions = _LIVE.get("actions")
        candidates = body["properties"].get("candidates", {})
        for option in candidates.get("anyOf", []):
            if option.get("type") == "array" and actions:
                option["items"] = {"type": "string", "enum": actions}
        for param in decide["get"].get("parameters", []):
            if param["name"] == "slot":
                param["schema"]["enum"] = slots
    api.openapi_schema = schema
    return schema


api.openapi = _openapi  # type: ignore[method-assign]


def _body(ref: str) -> dict[str, Any]:
    content = {"schema": {"$ref": f"#/components/schemas/{ref}"}}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": content, "text/plain": content},
        }
    }


def collect_route(path: str, ref: str, summary: str) -> Any:
    """``POST path`` of the tracking API, its body documented as the wire schema ``ref``."""
    return api.post(path, responses=COLLECT_STATUSES, openapi_extra=_body(ref), summary=summary)


DECIDE_STATUSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "ranked actions with scores, the chosen action (null when none is "
        "eligible), its propensity, the decision id, the model version and the experiment arm."
    },
    400: {"description": "Malformed body: `field` names what is wrong."},
    401: {"description": "Decide or read key missing or unknown."},
    403: {
        "description": "collector.identity_secret is set and a decide key's request names a "
        "userId without its userHash (`error`: `identity_unverified`, `field`: `userHash`)."
    },
    409: {
        "description": "A decisionId sent again with other candidates or another context "
        "(`error`: `decision_id_reused`): a retry repeats its request and gets its answer again."
    },
    413: {"description": "Body over 64 KB."},
    422: {"description": "Unknown slot or action, or ineligible candidates (`field` says which)."},
    503: {"description": "The decision log is not keeping up; retry after Retry-After."},
}


DECIDE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": DecideRequest.model_json_schema()}},
    }
}


PROFILE_STATUSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The live profile and its freshness."},
    401: {"description": "Read key missing or unknown (Bearer, or Basic user name)."},
    404: {"description": "No event of this user has been applied yet."},
    503: {"description": "Stream workers not running or restarting; retry."},
}


PREFLIGHT_STATUSES: dict[int | str, dict[str, Any]] = {
    204: {"description": "Preflight allowed."},
    403: {"description": "Origin not allowed."},
    404: {"description": "No such route (a path no route matches, e.g. with a newline)."},
}


HEALTH_STATUSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": '`{"status": "ok"}`: the replica answers. With a read key '
        "also the Kafka client state, model version per arm, decision-log counters and "
        "the experiment (its salt decides arms, so it is not public)."
    },
}


METRICS_STATUSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition.",
        "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
    }
}


DECIDE_QUERY = [
    {"name": name, "in": "query", "required": required, "schema": schema, "description": text}
    for name, required, schema, text in (
        ("user_id", False, {"type": "string", "minLength": 1, "maxLength": 512},
         "The user (or anonymous_id)."),
        ("anonymous_id", False, {"type": "string", "minLength": 1, "maxLength": 512},
         "The visitor, before a user id."),
        ("slot", True, {"type": "string", "minLength": 1, "maxLength": 128},
         "Catalog slot to decide."),
        ("candidates", False, {"type": "string", "minLength": 1},
         "Comma-separated actions to choose among."),
        ("decision_id", False, {"type": "string", "minLength": 1, "maxLength": 128},
         "Idempotency key."),
        ("user_hash", False, {"type": "string", "minLength": 1, "maxLength": 128},
         "With collector.identity_secret: the HMAC-SHA256 of user_id, from your server."),
    )
]  # fmt: skip
