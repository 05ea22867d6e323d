"""Onramp's HTTP ingress as a Ray Serve deployment (FastAPI): routes, and nothing else.

Routes: ``POST /v1/batch|track|identify|page|screen|group|alias`` and the analytics.js short forms
``/v1/b|t|i|p`` (write key); ``OPTIONS`` (CORS preflight) on all of them; ``POST|GET /v1/decide``
(decide or read key); ``GET /v1/profiles/{user_id}`` (read key); ``GET /healthz`` (up or down;
the details with a read key); ``GET /metrics``; the demo onboarding app at ``GET /demo/``
(:mod:`deployments.demo`), only where :func:`ray_app.config.local_only` holds; the console at
``GET /console/`` (:mod:`deployments.console`; its data with a read key).

Each route moves bytes and headers to the core and back: events to :class:`ray_app.collect.Collector`,
decisions to :class:`ray_app.decide.service.DecisionService` (whose batcher decides the requests
that arrive together with one model forward; ``POST /v1/decide`` and the tracking routes are
answered ahead of FastAPI's routing, :func:`deployments.api.fast_post`), profiles from :class:`ray_app.stream.reader.ProfileReader`;
:class:`ray_app.model.watcher.ModelWatcher` hot-swaps the models, and every error becomes an answer
in :meth:`CollectorIngress._error` (:func:`ray_app.errors.error_body`). The OpenAPI document is
:mod:`deployments.api`.

One deployment (named ``Collector``) serves both the collector and the decisions: on this kind of
machine an extra deployment hop would cost more than the decision itself. It autoscales on
ongoing requests (``decide.min_replicas``/``max_replicas``/``target_ongoing_requests``), and its
``user_config`` (``model_path``, ``model_b_path``, ``policy``, ``epsilon``, ``gamma``,
``temperature``) changes the model and the policy of running replicas through ``reconfigure``
without a restart.
"""

import asyncio
import logging
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from deployments.api import (
    COLLECT_PATHS,
    DECIDE_BODY,
    DECIDE_QUERY,
    DECIDE_STATUSES,
    HEALTH_STATUSES,
    METRICS_STATUSES,
    PREFLIGHT_STATUSES,
    PROFILE_STATUSES,
    Handler,
    Receive,
    Scope,
    Send,
    api,
    collect_route,
    describe_catalog,
    fast_post,
    read_body,
    send_json,
)
from deployments.console import ConsoleRoutes
from deployments.demo import demo_config, demo_enabled, demo_file
from ray_app.collect import Collector, Reply, kafka_producer_factory
from ray_app.collect.parse import iso_ms, key_owner, write_key_from_header
from ray_app.config import Settings
from ray_app.decide import (
    MAX_DECIDE_BYTES,
    Decider,
    decide_query,
    parse_decide,
)
from ray_app.decide.batcher import DecisionBatcher
from ray_app.decide.log import DecisionLog, lingering
from ray_app.decide.request import DecideRefused, DecideRequest, verify_identity
from ray_app.decide.service import Answer, DecisionService
from ray_app.decide.user_config import decide_user_config
from ray_app.enrich import CrmTable
from ray_app.errors import (
    ErrorCode,
    NotFound,
    OnrampError,
    ProfilesUnavailable,
    Unauthorized,
    error_body,
)
from ray_app.heap import settle_heap
from ray_app.model import serving_threads
from ray_app.model.watcher import ModelWatcher
from ray_app.stream.reader import ProfileReader, StreamUnavailable
from ray_app.telemetry import OtelHooks
from ray_app.telemetry.replicas import Publisher, replica_name
from ray_app.telemetry.stream import stream_metrics_text
from ray_app.telemetry.tracing import TRACEPARENT, make_tracing

__all__ = ["CollectorIngress", "api"]

log = logging.getLogger("onramp.collector")

_READ_KEY = "send a read key (collector.read_keys): Authorization: Bearer <key>"
_DECIDE_KEY = (
    "send a decide or read key (collector.decide_keys, collector.read_keys): "
    "Authorization: Bearer <key>"
)
_NO_DEMO = (
    "the demo is served only where Onramp is reachable from this machine "
    "alone (collector.host and Kafka on loopback)"
)

#: The longest ``GET /v1/profiles/{id}`` waits for the stream workers (then 503, Retry-After).
_PROFILE_READ_S = 10.0
#: How long a /metrics answer is reused (`CollectorIngress.metrics`).
_METRICS_REUSE_S = 0.25


def _key_name(authorization: str | None, keys: dict[str, str]) -> str | None:
    """The name of the key of ``keys`` that ``Authorization`` (Bearer, or Basic with the key as
    user name) holds, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    key = token.strip() if scheme.lower() == "bearer" else write_key_from_header(authorization)
    if not key:
        return None
    return key_owner(key, keys)


def _in_replica() -> bool:
    """Whether this runs in a Serve replica's process."""
    try:
        serve.get_replica_context()
    except Exception:  # RayServeException outside a replica
        return False
    return True


def _key_ok(authorization: str | None, keys: dict[str, str]) -> bool:
    """Whether ``Authorization`` holds one of ``keys``."""
    return _key_name(authorization, keys) is not None


@serve.deployment(name="Collector", max_ongoing_requests=512, graceful_shutdown_timeout_s=10)
@serve.ingress(api)
class CollectorIngress:
    """One replica of the ingress: a Collector with its own idempotent producer, a decision
    batcher and log, and a model watcher."""

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
        secret = c.identity_secret
        self._identity_secret = None if secret is None else secret.get_secret_value()
        self._demo = demo_enabled(settings, bootstrap, http_host)
        self.profiles = ProfileReader(settings.ray.namespace)
        self.crm = CrmTable(settings.crm_path, settings.enrich.reload_interval_s, background=True)
        # decisions
        self.decider = Decider.from_settings(settings)
        describe_catalog(self.decider.catalog)
        self.watcher = ModelWatcher(
            self.decider,
            {"treatment": settings.model_path, "treatment_b": settings.decide.model_b_path},
            settings.decide.model_poll_s,
            self.hooks.model_version,
        )
        self._stop = self.watcher.stopped
        serving_threads(1)  # one small forward per batch: a thread pool would only contend
        self.watcher.load()
        self.decision_log = DecisionLog(
            kafka_producer_factory(lingering(settings), bootstrap, [settings.topics.decisions]),
            settings.topics.decisions,
            settings.decide.log_max_pending,
            self.hooks.decisions_logged,
        )
        self.decision_log.connect()
        self.batcher = DecisionBatcher(
            self.decider,
            self.profiles,
            self.crm.enrich,
            deadline_s=settings.decide.profile_deadline_ms / 1000,
        )
        self.decisions = DecisionService(
            self.batcher, self.decision_log, self.hooks, self.tracing, c.retry_after_s
        )
        self.watcher.start()
        # /metrics answers with every replica's series, whichever replica Serve routes it to
        self.replica_metrics = Publisher(
            settings.ray.namespace, replica_name(), self.hooks.prometheus_text
        )
        self.replica_metrics.start()
        fast_post("/v1/decide", self._decide_asgi)  # decide_post, ahead of FastAPI's routing
        for path, route in COLLECT_PATHS.items():  # the tracking API too (_collect_asgi)
            fast_post(path, self._collect_asgi(route))
        self._metrics_kept: tuple[float, bytes] | None = None  # (when, the /metrics body)
        self._metrics_building: asyncio.Future[bytes] | None = None
        for_console = (self._read_keys, self.decider.catalog, self.profiles, self.crm.enrich)
        self.console_routes = ConsoleRoutes(settings, bootstrap, *for_console)
        # the start-up state out of the cyclic collector's reach: a full collection walked it
        # for ~125 ms every few thousand requests (ray_app/heap.py). In a replica's own process
        # only: a test that builds the class in its process keeps its collector as it was
        if _in_replica():
            settle_heap()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's ``user_config``: model files and policy, changed without a restart; the
        settings with it over them, checked whole first (:mod:`ray_app.decide.user_config`)."""
        wanted = decide_user_config(self.settings, config)
        for arm, path in wanted.paths.items():
            if self.watcher.paths.get(arm) != path:  # named by the operator: served whatever
                self.watcher.set_path(arm, path, named=True)  # its version

        self.decider.policy = wanted.policy
        self.watcher.load()

    # -- answers ----------------------------------------------------------------------------

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

    def _json(
        self,
        status: int,
        body: dict[str, Any],
        origin: str | None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return self._respond(Reply(status, body, dict(headers or {})), origin)

    def _error(
        self, exc: OnrampError, origin: str | None, code: ErrorCode | None = None
    ) -> Response:
        """The one answer to an error: its ``http_status``, its public code (``code``, else the
        error's own) and message, and Retry-After when it is worth retrying (503)."""
        headers = {}
        if exc.http_status == 503:
            headers["Retry-After"] = str(self.settings.collector.retry_after_s)
        return self._json(exc.http_status, error_body(exc, code), origin, headers)

    # -- decisions (the first routes: Serve matches every request's route in this order) ------

    @api.post(
        "/v1/decide",
        responses=DECIDE_STATUSES,
        openapi_extra=DECIDE_BODY,
        summary="What this user should see next",
    )
    async def decide_post(self, request: Request) -> Response:
        # Answered by _decide_asgi ahead of FastAPI's routing (fast_post): this route documents
        # it (no docstring: it would be the operation's description), and gives the same answer
        # should a request reach it.
        h = request.headers
        key = _key_name(h.get("authorization"), self._decide_keys)
        if key is None:
            answer = self.decisions.refuse(Unauthorized(_DECIDE_KEY))
        else:
            raw = await self._read_body(request, MAX_DECIDE_BYTES)
            req = self._verified(key, parse_decide(raw))
            answer = await self.decisions.answer(req, h.get(TRACEPARENT))
        return self._decide_response(answer, h.get("origin"))

    def _verified(self, key: str, req: DecideRequest | DecideRefused) -> Any:
        """``req`` as :func:`~ray_app.decide.request.verify_identity` lets it through: a decide
        key's request (a browser's) is checked when ``collector.identity_secret`` is set; a
        read key's (a server's) is not."""
        if key.startswith("read:"):
            return req
        return verify_identity(req, self._identity_secret)

    async def _decide_asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/decide`` from the ASGI messages: :meth:`decide_post` without FastAPI's
        routing, dependency solving and response objects."""
        authorization = origin = traceparent = None
        for name, value in scope["headers"]:  # the first of each, as Starlette's Headers.get
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"origin" and origin is None:
                origin = value.decode("latin-1")
            elif name == b"traceparent" and traceparent is None:
                traceparent = value.decode("latin-1")
        key = _key_name(authorization, self._decide_keys)
        if key is None:
            status, body, headers = self.decisions.refuse(Unauthorized(_DECIDE_KEY))
        else:
            raw = await read_body(receive, MAX_DECIDE_BYTES)
            if raw is None:
                return  # the client went away
            req = self._verified(key, parse_decide(raw))
            status, body, headers = await self.decisions.answer(req, traceparent)
        await send_json(send, status, body, {**headers, **self.collector.cors_headers(origin)})

    @api.get(
        "/v1/decide",
        responses=DECIDE_STATUSES,
        openapi_extra={"parameters": DECIDE_QUERY},
        summary="Decide (query-string form; context fields as context.<name>=)",
    )
    async def decide_get(self, request: Request) -> Response:
        """``?user_id=&slot=&candidates=a,b&context.device=mobile&decision_id=``"""
        h = request.headers
        key = _key_name(h.get("authorization"), self._decide_keys)
        if key is None:
            answer = self.decisions.refuse(Unauthorized(_DECIDE_KEY))
        else:
            req = parse_decide(decide_query(request.query_params.multi_items()))
            answer = await self.decisions.answer(self._verified(key, req), h.get(TRACEPARENT))
        return self._decide_response(answer, h.get("origin"))

    def _decide_response(self, answer: Answer, origin: str | None) -> Response:
        status, body, headers = answer
        headers = {**headers, **self.collector.cors_headers(origin)}
        return Response(body, status, headers, media_type="application/json")

    # -- the tracking API -------------------------------------------------------------------

    async def _collect(self, route: str, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = await self._read_body(request)
        reply = await self.collector.handle(
            route, body, headers, request.client.host if request.client else None
        )
        return self._respond(reply, headers.get("origin"))

    def _collect_asgi(self, route: str) -> Handler:
        """``POST /v1/<route>`` from the ASGI messages: :meth:`_collect` without FastAPI's
        routing (a match against every route), dependency solving and response objects."""

        async def collect(scope: Scope, receive: Receive, send: Send) -> None:
            # as request.headers.items() into a dict: names are lower-case, the last one wins
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            body = await read_body(receive, self._max_body)
            if body is None:
                return  # the client went away
            client = scope.get("client")
            reply = await self.collector.handle(route, body, headers, client[0] if client else None)
            cors = self.collector.cors_headers(headers.get("origin"))
            await send_json(send, reply.status, reply.json_bytes(), {**reply.headers, **cors})

        return collect

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

    @collect_route("/v1/batch", "Batch", "Send a batch of calls")
    @collect_route("/v1/b", "Batch", "Send a batch of calls (analytics.js short form)")
    async def batch(self, request: Request) -> Response:
        return await self._collect("batch", request)

    @collect_route("/v1/track", "TrackCall", "Record an action")
    @collect_route("/v1/t", "TrackCall", "Record an action (short form)")
    async def track(self, request: Request) -> Response:
        return await self._collect("track", request)

    @collect_route("/v1/identify", "IdentifyCall", "Tie a user to traits")
    @collect_route("/v1/i", "IdentifyCall", "Tie a user to traits (short form)")
    async def identify(self, request: Request) -> Response:
        return await self._collect("identify", request)

    @collect_route("/v1/page", "PageCall", "Record a page view")
    @collect_route("/v1/p", "PageCall", "Record a page view (short form)")
    async def page(self, request: Request) -> Response:
        return await self._collect("page", request)

    @collect_route("/v1/screen", "ScreenCall", "Record a screen view")
    async def screen(self, request: Request) -> Response:
        return await self._collect("screen", request)

    @collect_route("/v1/group", "GroupCall", "Tie a user to an account")
    async def group(self, request: Request) -> Response:
        return await self._collect("group", request)

    @collect_route("/v1/alias", "AliasCall", "Merge two user ids")
    async def alias(self, request: Request) -> Response:
        return await self._collect("alias", request)

    @api.options("/v1/{path:path}", responses=PREFLIGHT_STATUSES, summary="CORS preflight")
    async def preflight(self, request: Request, path: str) -> Response:
        reply = self.collector.preflight(
            request.headers.get("origin"), request.headers.get("access-control-request-headers")
        )
        return self._respond(reply, None)

    # -- profiles ---------------------------------------------------------------------------

    @api.get(  # :path: a user id may hold "/" (sent as %2F), which {user_id} did not match
        "/v1/profiles/{user_id:path}", responses=PROFILE_STATUSES, summary="A user's live profile"
    )
    async def profile(self, user_id: str, request: Request) -> Response:
        origin = request.headers.get("origin")
        if not _key_ok(request.headers.get("authorization"), self._read_keys):
            return self._error(Unauthorized(_READ_KEY), origin)
        try:
            profile = await asyncio.wait_for(self.profiles.get(user_id), _PROFILE_READ_S)
        except StreamUnavailable as exc:
            return self._error(ProfilesUnavailable(str(exc)), origin)
        except TimeoutError:  # a worker that does not answer: not a request that hangs
            return self._error(
                ProfilesUnavailable(f"the profile read took over {_PROFILE_READ_S:g} s; retry"),
                origin,
            )
        if profile is None:
            return self._error(NotFound(f"no events applied for {user_id!r}"), origin)
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

    # -- operations -------------------------------------------------------------------------

    @api.get("/healthz", responses=HEALTH_STATUSES, summary="Up or down (details with a read key)")
    async def healthz(self, request: Request) -> JSONResponse:
        health = self.collector.health()
        if not _key_ok(request.headers.get("authorization"), self._read_keys):
            return JSONResponse({"status": health["status"]})
        return JSONResponse(
            {
                **health,
                "models": self.decider.versions(),
                "decisionLog": self.decision_log.stats(),
                "experiment": self.decider.arms.current.describe(),
                "crm": self.crm.health(),
            }
        )

    @api.get("/metrics", response_class=Response, responses=METRICS_STATUSES)
    async def metrics(self) -> Response:
        """Every replica's series with the stream's and the learner's. Anyone may ask (no key),
        and one answer costs tens of milliseconds of this event loop (every replica's
        exposition parsed and merged, the workers' and the learner's status), so one is built
        at a time and reused for :data:`_METRICS_REUSE_S`: a scraper sees figures that old at
        most, and a flood of requests cannot take the loop from /v1/decide."""
        now = time.monotonic()
        kept = self._metrics_kept
        if kept is not None and now - kept[0] < _METRICS_REUSE_S:
            return Response(kept[1], media_type="text/plain; version=0.0.4")
        if self._metrics_building is None:
            self._metrics_building = asyncio.ensure_future(self._build_metrics())
        building = self._metrics_building
        try:
            text = await asyncio.shield(building)
        finally:
            if building.done() and self._metrics_building is building:
                self._metrics_building = None
        return Response(text, media_type="text/plain; version=0.0.4")

    async def _build_metrics(self) -> bytes:
        text = await self.replica_metrics.scrape()
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
        self._metrics_kept = (time.monotonic(), text)
        return text

    @api.get("/console{name:path}", include_in_schema=False)
    async def console(self, name: str, request: Request) -> Response:
        """The Onramp console (deployments/console.py): the page, and its data with a read key."""
        return await self.console_routes.answer(name, request)

    # -- the demo onboarding app (deployments/demo.py) --------------------------------------

    @api.get("/demo", include_in_schema=False)
    async def demo_root(self, request: Request) -> Response:
        if not self._demo:
            return self._error(NotFound(_NO_DEMO), None)
        return Response(status_code=307, headers={"Location": f"{request.url.path}/"})

    @api.get("/demo/config.json", include_in_schema=False)
    async def demo_settings(self) -> Response:
        if not self._demo:
            return self._error(NotFound(_NO_DEMO), None)
        config = demo_config(self.settings, self.bootstrap, self._http_host)
        if config is None:
            message = "the demo needs a write key named 'demo' (collector.write_keys)"
            return self._error(NotFound(message), None, ErrorCode.DEMO_DISABLED)
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    @api.get("/demo/{name:path}", include_in_schema=False)
    async def demo_static(self, name: str) -> Response:
        if not self._demo:
            return self._error(NotFound(_NO_DEMO), None)
        found = demo_file(name)
        if found is None:
            return self._error(NotFound(name), None)
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
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            watcher.stop()
        publisher = getattr(self, "replica_metrics", None)
        if publisher is not None:
            publisher.stop()
        decision_log = getattr(self, "decision_log", None)
        if decision_log is not None:
            decision_log.close(timeout_s=10.0)
