"""The collector as a Ray Serve ingress deployment (FastAPI): the Segment tracking API over HTTP.

Routes: ``POST /v1/batch|track|identify|page|screen|group|alias`` and the analytics.js short forms
``/v1/b|t|i|p`` (write key); ``OPTIONS`` (CORS preflight) on all of them; ``POST|GET /v1/decide``
(decide or read key); ``GET /v1/profiles/{user_id}`` (read key); ``GET /healthz`` (up or down;
the details with a read key); ``GET /metrics``; the demo onboarding app at ``GET /demo/``
(:mod:`deployments.demo`), only where :func:`ray_app.config.local_only` holds.
The work is done by :class:`ray_app.collect.Collector` and :class:`ray_app.decide.Decider`; this
module only moves bytes and headers, reads profiles from the stream workers, and batches the
decisions that arrive together into one model forward.

One deployment serves both the collector and the decisions: on this kind of machine an extra
deployment hop would cost more than the decision itself. It autoscales on ongoing requests
(``decide.min_replicas``/``max_replicas``/``target_ongoing_requests``), and its ``user_config``
(``model_path``, ``model_b_path``, ``policy``, ``epsilon``, ``gamma``, ``temperature``) changes the model
and the policy of running replicas through ``reconfigure`` without a restart.
"""

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve

from deployments.demo import demo_config, demo_enabled, demo_file
from ray_app import __version__
from ray_app.catalog import DecisionRequestError
from ray_app.collect import Collector, Reply, kafka_producer_factory
from ray_app.collect.parse import iso_ms, key_owner, write_key_from_header
from ray_app.config import Settings
from ray_app.decide import (
    MAX_DECIDE_BYTES,
    Decider,
    DecideRefused,
    DecideRequest,
    Decision,
    parse_decide,
)
from ray_app.decide.log import DecisionLog
from ray_app.enrich import CrmTable
from ray_app.kafka.client import make_producer
from ray_app.model import ModelBundle, ModelFileError, Policy
from ray_app.stream.supervisor import ProfileReader, StreamUnavailable
from ray_app.telemetry import OtelHooks
from ray_app.telemetry.stream import stream_metrics_text
from ray_app.telemetry.tracing import TRACEPARENT, make_tracing, now_ns
from validation.reasons import ReasonCode
from validation.wire import json_schema

__all__ = ["CollectorIngress", "api"]

log = logging.getLogger("onramp.collector")


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


_STATUSES: dict[int | str, dict[str, Any]] = {
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


#: What the replica serving this document knows (its catalog's slots), so that the document says
#: which slots exist rather than "any string".
_LIVE: dict[str, Any] = {}


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


def _route(path: str, ref: str, summary: str) -> Any:
    return api.post(path, responses=_STATUSES, openapi_extra=_body(ref), summary=summary)


_DECIDE_STATUSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "ranked actions with scores, the chosen action (null when none is "
        "eligible), its propensity, the decision id, the model version and the experiment arm."
    },
    400: {"description": "Malformed body: `field` names what is wrong."},
    401: {"description": "Decide or read key missing or unknown."},
    413: {"description": "Body over 64 KB."},
    422: {"description": "Unknown slot or action, or ineligible candidates (`field` says which)."},
    503: {"description": "The decision log is not keeping up; retry after Retry-After."},
}


_DECIDE_QUERY = [
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
    )
]  # fmt: skip


def _bad(error: str, field: str | None, message: str) -> dict[str, Any]:
    return {"error": error, "field": field, "message": message}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _decision_producer(settings: Settings, bootstrap: str) -> Any:
    from ray_app.kafka.topics import ensure_topics

    ensure_topics(bootstrap, settings.kafka, timeout_s=settings.kafka.ack_timeout_s)
    producer = make_producer(bootstrap, settings.kafka)
    warm = getattr(producer, "partitions_for", None)
    if warm is not None:
        warm(settings.topics.decisions)
    return producer


@serve.deployment(name="Collector", max_ongoing_requests=512, graceful_shutdown_timeout_s=10)
@serve.ingress(api)
class CollectorIngress:
    """One replica: a Collector with its own idempotent producer."""

    def __init__(self, settings: Settings, bootstrap: str, http_host: str = "0.0.0.0") -> None:
        logging.basicConfig(level=logging.INFO)
        self.settings = settings
        self.bootstrap = bootstrap
        self._http_host = http_host
        self.hooks = OtelHooks.from_settings(settings.telemetry)
        self.tracing = make_tracing(settings.telemetry, "collector")
        self.collector = Collector(
            settings, kafka_producer_factory(settings, bootstrap), self.hooks, tracing=self.tracing
        )
        self.collector.connect()
        self._max_body = settings.collector.max_request_bytes
        c = settings.collector
        self._read_keys = {n: k.get_secret_value() for n, k in c.read_keys.items()}
        # /v1/decide takes a decide key (browsers) or a read key (servers)
        self._decide_keys = {
            **{f"decide:{n}": k.get_secret_value() for n, k in c.decide_keys.items()},
            **{f"read:{n}": k.get_secret_value() for n, k in c.read_keys.items()},
        }
        self._demo = demo_enabled(settings, bootstrap, http_host)
        self.profiles = ProfileReader(settings.ray.namespace)
        self.crm = CrmTable(settings.crm_path, settings.enrich.reload_interval_s)
        # decisions
        self.decider = Decider.from_settings(settings)
        catalog = self.decider.catalog
        _LIVE["slots"] = sorted(catalog.slots)
        _LIVE["actions"] = sorted({a.id for s in catalog.slots.values() for a in s.actions})
        api.openapi_schema = None  # rebuilt with this catalog's slots
        self.model_paths: dict[str, Path | None] = {
            "treatment": settings.model_path,
            "treatment_b": settings.decide.model_b_path,
        }
        self._model_mtimes: dict[str, float] = {}
        self._load_models()
        self.decision_log = DecisionLog(
            lambda: _decision_producer(settings, bootstrap),
            settings.topics.decisions,
            settings.decide.log_max_pending,
            self.hooks.decisions_logged,
        )
        self.decision_log.connect()
        self._queue: list[tuple[DecideRequest, asyncio.Future[Any]]] = []
        self._batch_running = False
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch_models, daemon=True)
        self._watcher.start()

    # -- models: load, watch, hot swap -------------------------------------------------------

    def _load_models(self) -> None:
        for arm, path in self.model_paths.items():
            if path is None:
                self.hooks.model_version(arm, self.decider.bundles[arm].version)
                continue
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue  # not published yet: keep serving what we have
            if self._model_mtimes.get(arm) == mtime:
                continue
            self._model_mtimes[arm] = mtime
            try:
                bundle = ModelBundle.from_bytes(
                    path.read_bytes(), self.decider.schema, self.decider.catalog, False
                )
                if self.decider.swap(arm, bundle):
                    log.info("arm %s now serves model version %d", arm, bundle.version)
                else:
                    log.warning(
                        "%s: version %d is not newer than %d; kept the current model",
                        path,
                        bundle.version,
                        self.decider.bundles[arm].version,
                    )
            except (ModelFileError, OSError) as exc:
                log.error("%s: not loaded, kept the current model: %s", path, exc)
            self.hooks.model_version(arm, self.decider.bundles[arm].version)

    def _watch_models(self) -> None:
        while not self._stop.wait(self.settings.decide.model_poll_s):
            try:
                self._load_models()
            except Exception:  # a broken file must never stop the watcher
                log.exception("model watcher")

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's ``user_config``: model files and policy, changed without a restart."""
        unknown = set(config) - {
            "model_path", "model_b_path", "policy", "epsilon", "gamma", "temperature"
        }  # fmt: skip
        if unknown:
            raise ValueError(f"user_config: unknown keys {sorted(unknown)}")
        policy = self.decider.policy
        if {"policy", "epsilon", "gamma", "temperature"} & set(config):  # validate first
            policy = Policy(
                kind=config.get("policy", policy.kind),
                epsilon=config.get("epsilon", policy.epsilon),
                gamma=config.get("gamma", policy.gamma),
                temperature=config.get("temperature", policy.temperature),
                seed=policy.seed,
            )
        for key, arm in (("model_path", "treatment"), ("model_b_path", "treatment_b")):
            if key in config:
                self.model_paths[arm] = Path(config[key]) if config[key] else None
                self._model_mtimes.pop(arm, None)
        self.decider.policy = policy
        self._load_models()

    async def _collect(self, route: str, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = await self._read_body(request)
        reply = await self.collector.handle(
            route, body, headers, request.client.host if request.client else None
        )
        return self._respond(reply, headers.get("origin"))

    async def _read_body(self, request: Request, limit: int | None = None) -> bytes:
        # Read at most one chunk past the limit: enough to answer 413 without buffering a flood.
        limit = self._max_body if limit is None else limit
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
        return b"".join(chunks)

    def _respond(self, reply: Reply, origin: str | None) -> Response:
        headers = {**reply.headers, **self.collector.cors_headers(origin)}
        if reply.status == 204:
            return Response(status_code=204, headers=headers)
        return Response(
            content=reply.json_bytes(),
            status_code=reply.status,
            headers=headers,
            media_type="application/json",
        )

    @_route("/v1/batch", "Batch", "Send a batch of calls")
    @_route("/v1/b", "Batch", "Send a batch of calls (analytics.js short form)")
    async def batch(self, request: Request) -> Response:
        return await self._collect("batch", request)

    @_route("/v1/track", "TrackCall", "Record an action")
    @_route("/v1/t", "TrackCall", "Record an action (short form)")
    async def track(self, request: Request) -> Response:
        return await self._collect("track", request)

    @_route("/v1/identify", "IdentifyCall", "Tie a user to traits")
    @_route("/v1/i", "IdentifyCall", "Tie a user to traits (short form)")
    async def identify(self, request: Request) -> Response:
        return await self._collect("identify", request)

    @_route("/v1/page", "PageCall", "Record a page view")
    @_route("/v1/p", "PageCall", "Record a page view (short form)")
    async def page(self, request: Request) -> Response:
        return await self._collect("page", request)

    @_route("/v1/screen", "ScreenCall", "Record a screen view")
    async def screen(self, request: Request) -> Response:
        return await self._collect("screen", request)

    @_route("/v1/group", "GroupCall", "Tie a user to an account")
    async def group(self, request: Request) -> Response:
        return await self._collect("group", request)

    @_route("/v1/alias", "AliasCall", "Merge two user ids")
    async def alias(self, request: Request) -> Response:
        return await self._collect("alias", request)

    @api.options(
        "/v1/{path:path}",
        responses={
            204: {"description": "Preflight allowed."},
            403: {"description": "Origin not allowed."},
            404: {"description": "No such route (a path no route matches, e.g. with a newline)."},
        },
        summary="CORS preflight",
    )
    async def preflight(self, request: Request, path: str) -> Response:
        reply = self.collector.preflight(
            request.headers.get("origin"), request.headers.get("access-control-request-headers")
        )
        return self._respond(reply, None)

    @api.get(
        "/v1/profiles/{user_id}",
        responses={
            200: {"description": "The live profile and its freshness."},
            401: {"description": "Read key missing or unknown (Bearer, or Basic user name)."},
            404: {"description": "No event of this user has been applied yet."},
            503: {"description": "Stream workers not running or restarting; retry."},
        },
        summary="A user's live profile",
    )
    async def profile(self, user_id: str, request: Request) -> Response:
        origin = request.headers.get("origin")
        if not self._key_ok(request.headers.get("authorization"), self._read_keys):
            body = {
                "error": "unauthorized",
                "message": "send a read key (collector.read_keys): Authorization: Bearer <key>",
            }
            return self._json(401, body, origin)
        try:
            profile = await self.profiles.get(user_id)
        except StreamUnavailable as exc:
            retry = {"Retry-After": str(self.settings.collector.retry_after_s)}
            return self._json(
                503, {"error": "stream_unavailable", "message": str(exc)}, origin, retry
            )
        if profile is None:
            body = {"error": "not_found", "message": f"no events applied for {user_id!r}"}
            return self._json(404, body, origin)
        last = profile.get("lastReceived")
        freshness = {
            "lastEventReceivedAt": iso_ms(last) if last else None,
            "ageMs": int(time.time() * 1000) - last if last else None,
        }
        enrichment = self.crm.enrich(profile)
        self.hooks.enrichment(enrichment["found"])
        body = {
            "userKey": user_id,
            "profile": profile,
            "enrichment": enrichment,
            "freshness": freshness,
        }
        return self._json(200, body, origin)

    @staticmethod
    def _key_ok(authorization: str | None, keys: dict[str, str]) -> bool:
        """Whether ``Authorization`` (Bearer, or Basic with the key as user name) holds one of
        ``keys``."""
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else write_key_from_header(authorization)
        if not key:
            return False
        return key_owner(key, keys) is not None

    def _json(
        self,
        status: int,
        body: dict[str, Any],
        origin: str | None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return self._respond(Reply(status, body, dict(headers or {})), origin)

    # -- decisions --------------------------------------------------------------------------

    @api.post(
        "/v1/decide",
        responses=_DECIDE_STATUSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": DecideRequest.model_json_schema()}},
            }
        },
        summary="What this user should see next",
    )
    async def decide_post(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if not self._key_ok(request.headers.get("authorization"), self._decide_keys):
            return self._unauthorized(origin)
        raw = await self._read_body(request, MAX_DECIDE_BYTES)
        return await self._decide(parse_decide(raw), origin, request.headers.get(TRACEPARENT))

    @api.get(
        "/v1/decide",
        responses=_DECIDE_STATUSES,
        openapi_extra={"parameters": _DECIDE_QUERY},
        summary="Decide (query-string form; context fields as context.<name>=)",
    )
    async def decide_get(self, request: Request) -> Response:
        """``?user_id=&slot=&candidates=a,b&context.device=mobile&decision_id=``"""
        origin = request.headers.get("origin")
        if not self._key_ok(request.headers.get("authorization"), self._decide_keys):
            return self._unauthorized(origin)
        data: dict[str, Any] = {}
        context: dict[str, Any] = {}
        for key, value in request.query_params.multi_items():
            if key.startswith("context."):
                context[key.removeprefix("context.")] = value
            elif key == "candidates":
                data["candidates"] = [c for c in value.split(",") if c]
            else:
                data[key] = value
        if context:
            data["context"] = context
        return await self._decide(parse_decide(data), origin, request.headers.get(TRACEPARENT))

    async def _decide(
        self,
        req: DecideRequest | DecideRefused,
        origin: str | None,
        traceparent: str | None = None,
    ) -> Response:
        started = time.perf_counter()
        started_ns = now_ns() if self.tracing.enabled else None
        if isinstance(req, DecideRefused):
            return self._json(req.status, req.body(), origin)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((req, future))
        if not self._batch_running:
            self._batch_running = True
            asyncio.get_running_loop().create_task(self._run_batches())
        result = await future
        if isinstance(result, Exception) and not isinstance(result, DecisionRequestError):
            raise result
        if isinstance(result, DecisionRequestError):
            code = _snake(type(result).__name__)
            return self._json(422, _bad(code, result.field, str(result)), origin)
        decision: Decision = result
        span = None
        if self.tracing.enabled:
            span = self.tracing.decision_span(
                decision.slot, traceparent, decision.event_trace, started_ns
            )
            decision.trace_id = self.tracing.trace_id(span)
        if decision.chosen is not None and not self.decision_log.offer(
            [(decision.user_key.encode(), decision.record())]
        ):
            self.hooks.kafka_unavailable("decision_log")
            retry = {"Retry-After": str(self.settings.collector.retry_after_s)}
            body = _bad("decision_log_backlog", None, "the decision log is not keeping up")
            self.tracing.end(span, 503)
            return self._json(503, body, origin, retry)
        self.tracing.end(
            span,
            200,
            **{
                "onramp.decision_id": decision.decision_id,
                "onramp.arm": decision.arm,
                "onramp.chosen": decision.chosen,
                "onramp.cold_start": decision.cold_start,
            },
        )
        self.hooks.decision(
            decision.slot, decision.arm, decision.cold_start, time.perf_counter() - started
        )
        return self._json(200, decision.answer(), origin)

    async def _run_batches(self) -> None:
        """Decide what queued up, batch after batch, until the queue is empty: one profile
        lookup per owning stream worker and one model forward per (arm, slot) for the whole
        batch. Requests that arrive while a batch waits for its profiles form the next one."""
        try:
            while self._queue:
                queued, self._queue = self._queue, []
                try:
                    results = await self._decide_batch([q[0] for q in queued])
                except Exception as exc:  # never leave a request hanging
                    log.exception("decide batch failed")
                    results = [exc] * len(queued)
                for (_, future), result in zip(queued, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._batch_running = False

    async def _decide_batch(self, requests: list[DecideRequest]) -> list[Any]:
        profiles: dict[str, dict[str, Any] | None] = {}
        why_cold: str | None = None
        try:
            profiles = await asyncio.wait_for(
                self.profiles.get_many([r.user_key for r in requests]),
                self.settings.decide.profile_deadline_ms / 1000,
            )
        except TimeoutError:
            why_cold = "deadline"  # answer from cold-start features within the deadline
        except StreamUnavailable:
            why_cold = "stream_unavailable"
        items = []
        cold: list[str | None] = []
        for r in requests:
            profile = profiles.get(r.user_key)
            items.append(
                (r, profile, self.crm.enrich(profile or {"userId": r.user_id, "traits": {}}))
            )
            cold.append(why_cold or ("unknown_user" if profile is None else None))
        return self.decider.decide_many(items, now_ms=int(time.time() * 1000), cold_reasons=cold)

    def _unauthorized(self, origin: str | None) -> Response:
        body = {
            "error": "unauthorized",
            "message": "send a decide or read key (collector.decide_keys, collector.read_keys): "
            "Authorization: Bearer <key>",
        }
        return self._json(401, body, origin)

    @api.get(
        "/healthz",
        responses={
            200: {
                "description": '`{"status": "ok"}`: the replica answers. With a read key '
                "also the Kafka client state, model version per arm, decision-log counters and "
                "the experiment (its salt decides arms, so it is not public)."
            },
        },
        summary="Up or down (details with a read key)",
    )
    async def healthz(self, request: Request) -> JSONResponse:
        health = self.collector.health()
        if not self._key_ok(request.headers.get("authorization"), self._read_keys):
            return JSONResponse({"status": health["status"]})
        return JSONResponse(
            {
                **health,
                "models": self.decider.versions(),
                "decisionLog": self.decision_log.stats(),
                "experiment": self.decider.arms.current.describe(),
            }
        )

    @api.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition.",
                "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics(self) -> Response:
        text = self.hooks.prometheus_text()
        try:
            status = await asyncio.wait_for(self.profiles.stream_status(), timeout=3)
            text += stream_metrics_text(status).encode()
        except StreamUnavailable:
            pass  # no stream workers in this deployment: collector metrics only
        except Exception:  # a worker restarting mid-scrape must not fail the scrape
            log.warning("stream metrics unavailable for this scrape", exc_info=True)
        try:
            import ray

            from ray_app.learn.service import LEARNER_NAME
            from ray_app.telemetry.learn import learner_metrics_text

            learner = ray.get_actor(LEARNER_NAME, namespace=self.settings.ray.namespace)
            status = await asyncio.wait_for(learner.status.remote(), timeout=3)
            text += learner_metrics_text(status).encode()
        except ValueError:
            pass  # no learner running
        except Exception:
            log.warning("learner metrics unavailable for this scrape", exc_info=True)
        return Response(text, media_type="text/plain; version=0.0.4")

    # -- the demo onboarding app (deployments/demo.py) --------------------------------------

    def _no_demo(self) -> Response:
        body = {
            "error": "not_found",
            "message": "the demo is served only where Onramp is reachable from this machine "
            "alone (collector.host and Kafka on loopback)",
        }
        return JSONResponse(body, status_code=404)

    @api.get("/demo", include_in_schema=False)
    async def demo_root(self, request: Request) -> Response:
        if not self._demo:
            return self._no_demo()
        return Response(status_code=307, headers={"Location": f"{request.url.path}/"})

    @api.get("/demo/config.json", include_in_schema=False)
    async def demo_settings(self) -> Response:
        if not self._demo:
            return self._no_demo()
        config = demo_config(self.settings, self.bootstrap, self._http_host)
        if config is None:
            body = {
                "error": "demo_disabled",
                "message": "the demo needs a write key named 'demo' (collector.write_keys)",
            }
            return JSONResponse(body, status_code=404)
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    @api.get("/demo/{name:path}", include_in_schema=False)
    async def demo_static(self, name: str) -> Response:
        if not self._demo:
            return self._no_demo()
        found = demo_file(name)
        if found is None:
            return JSONResponse({"error": "not_found", "message": name}, status_code=404)
        content, media = found
        return Response(content, media_type=media, headers={"Cache-Control": "no-cache"})

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown: flush what is queued, so nothing acknowledged
        # to Kafka's buffer is abandoned.
        collector = getattr(self, "collector", None)
        if collector is not None:
            collector.close(timeout_s=5.0)
        for name in ("tracing", "hooks"):  # export what is pending
            exporter = getattr(self, name, None)
            if exporter is not None:
                try:
                    exporter.shutdown()
                except Exception:
                    pass
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        decision_log = getattr(self, "decision_log", None)
        if decision_log is not None:
            decision_log.close(timeout_s=10.0)
