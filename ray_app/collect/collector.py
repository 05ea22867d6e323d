"""The collector: one request in, records acknowledged by Kafka, one answer out.

Framework-free so it is tested without Serve; ``deployments.collector`` puts it behind HTTP.

Guarantees:

* **200 means written.** The answer waits until Kafka acknowledged every record of the request
  (``acks=all``, idempotent producer): accepted events in ``onramp.events``, rejected ones in
  ``onramp.events.dlq``.
* **Bounded memory and work.** Bytes awaiting acknowledgement are capped per replica
  (``collector.max_inflight_bytes``). The budget is taken record by record while the request is
  parsed, so a request that would pass it stops being built at that record and gets 503 at once;
  the bytes are given back when Kafka settles the records, or at once in every other path (a
  refused request, no producer, a send error, a cancelled request).
* **Kafka slow or down: 503 with Retry-After.** If the acknowledgement does not come within
  ``kafka.ack_timeout_s`` the client is told to retry. Records of that request may still be
  written later; a retry then writes them again with the same ``messageId``, which is the event
  id that stream workers deduplicate on. Nothing is reported as accepted that was not.
* **A broken producer is replaced.** A delivery error other than a timeout (say the broker lost
  its state) makes the next request rebuild the producer and re-create missing topics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import datetime as dt
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray_app.collect.handover import Handover, NotConnected, NotHandedOver
from ray_app.collect.parse import Limits, ParsedRequest, parse_request
from ray_app.config import Settings
from ray_app.kafka.client import OutRecord, Producer
from ray_app.telemetry.hooks import CollectorHooks, NoopHooks
from ray_app.telemetry.tracing import TRACEPARENT, NoopTracing, Tracing

__all__ = ["Collector", "Reply", "kafka_producer_factory"]

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """An HTTP answer: status, JSON body, headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def json_bytes(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


class _ProducerSlot:
    """Holds the producer; rebuilds it after a fatal delivery error, one rebuild at a time."""

    def __init__(self, factory: Callable[[], Producer], rebuild_every_s: float = 1.0) -> None:
        self._factory = factory
        self._producer: Producer | None = None
        self._broken = True
        self._lock = threading.Lock()
        self._last_attempt = 0.0
        self._rebuild_every_s = rebuild_every_s
        self.last_error: str | None = None

    def get(self) -> Producer | None:
        """The producer, rebuilt first if needed; None while it cannot be had."""
        if not self._broken and self._producer is not None:
            return self._producer
        if not self._lock.acquire(blocking=False):
            return None
        try:
            now = time.monotonic()
            if now - self._last_attempt < self._rebuild_every_s and self._producer is None:
                return None
            self._last_attempt = now
            old, self._producer = self._producer, None
            if old is not None:
                try:
                    old.close(timeout_s=0.0)
                except Exception:  # a broken producer may fail to close; it is gone either way
                    log.debug("closing the broken producer failed", exc_info=True)
            try:
                self._producer = self._factory()
                self._broken = False
                self.last_error = None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("cannot (re)connect to Kafka: %s", self.last_error)
            return self._producer
        finally:
            self._lock.release()

    def mark_broken(self, error: BaseException) -> None:
        self._broken = True
        self.last_error = f"{type(error).__name__}: {error}"

    @property
    def client_name(self) -> str:
        return self._producer.client_name if self._producer else "none"

    def close(self, timeout_s: float) -> None:
        if self._producer is not None:
            self._producer.close(timeout_s=timeout_s)
            self._producer = None


class Collector:
    """Handles Segment tracking-API requests; see the module docstring for the guarantees."""

    def __init__(
        self,
        settings: Settings,
        producer_factory: Callable[[], Producer],
        hooks: CollectorHooks | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        tracing: Tracing | None = None,
    ) -> None:
        c = settings.collector
        self.tracing: Tracing = tracing or NoopTracing()
        self.settings = settings
        self.topics = settings.topics
        self.hooks: CollectorHooks = hooks or NoopHooks()
        self.limits = Limits(c.max_event_bytes, c.max_request_bytes, c.max_batch_events)
        self.write_keys = {name: key.get_secret_value() for name, key in c.write_keys.items()}
        self.clock = clock
        self._slot = _ProducerSlot(producer_factory)
        self._sender = cf.ThreadPoolExecutor(1, thread_name_prefix="onramp-send")
        self._handover = Handover(self._sender, self._send, self._release)
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._cors = set(c.cors_origins)
        self.last_ack: float | None = None
        # Request ids: a random prefix per collector and a counter (uuid4 per request cost more
        # than parsing the request here: os.urandom is slow on some VMs).
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count()

    # -- the request path ------------------------------------------------------------------

    async def handle(
        self,
        route: str,
        body: bytes,
        headers: Mapping[str, str],
        client: str | None = None,
    ) -> Reply:
        """Answer one request to ``/v1/<route>``; ``headers`` keys are lower-case."""
        started = time.perf_counter()
        request_id = f"{self._id_prefix}-{next(self._ids):x}"
        span = (
            self.tracing.request_span(route, request_id, headers.get(TRACEPARENT))
            if self.tracing.enabled
            else None
        )
        parsed = parse_request(
            route,
            body,
            content_encoding=headers.get("content-encoding"),
            authorization=headers.get("authorization"),
            write_keys=self.write_keys,
            received_at=self.clock(),
            limits=self.limits,
            reserve=self._reserve,
            origin={
                "requestId": request_id,
                "ip": client,
                # every DLQ record of the request carries it: a 12 KB header on a batch of 1,800
                # refused events made 22 MB of records from a 4 KB body
                "userAgent": _header_text(headers.get("user-agent")),
            },
        )
        if parsed.over_budget:
            self._release(parsed.reserved)
            self.hooks.kafka_unavailable("backpressure")
            reply = self._unavailable("Kafka is not keeping up; retry later", request_id)
            if span is not None:
                self.tracing.end(span, reply.status)
        elif span is None:
            reply = await self._write(parsed, request_id)
        else:
            reply = await self._write_traced(parsed, request_id, span)
            self.tracing.end(
                span,
                reply.status,
                **{"onramp.accepted": len(parsed.events), "onramp.rejected": len(parsed.dlq)},
            )
        reply.headers["X-Onramp-Request-Id"] = request_id
        self.hooks.request_done(f"/v1/{route}", reply.status, time.perf_counter() - started)
        return reply

    async def _write_traced(self, parsed: ParsedRequest, request_id: str, span: Any) -> Reply:
        """:meth:`_write` inside a producer span whose ``traceparent`` every record carries."""
        if not parsed.events and not parsed.dlq:
            return await self._write(parsed, request_id)
        try:
            produce, headers = self.tracing.produce_span(
                span, self.topics.events, len(parsed.events) + len(parsed.dlq)
            )
        except BaseException:  # the budget is still this request's: give it back
            self._release(parsed.reserved)
            raise
        status: int | None = 500
        try:
            reply = await self._write(parsed, request_id, headers)
            status = reply.status
            return reply
        finally:
            self.tracing.end(produce, status)

    async def _write(
        self, parsed: ParsedRequest, request_id: str, headers: tuple[tuple[str, bytes], ...] = ()
    ) -> Reply:
        """Hand the records to the producer and wait for Kafka's acknowledgement. The bytes
        ``parse_request`` reserved belong to this call until :class:`Handover` takes them (with
        the records, to :meth:`_send`); whatever happens before that gives them back."""
        size = parsed.reserved
        handed_over = False
        try:
            records = [OutRecord(self.topics.events, v, k, headers) for k, v in parsed.events]
            records += [OutRecord(self.topics.dlq, v, k, headers) for k, v in parsed.dlq]
            rejected = [r.public() for r in parsed.rejections]
            if not records:  # nothing Kafka must hold: an auth failure
                for r in parsed.rejections:
                    self.hooks.events_rejected(r.reason.value, 1)
                return Reply(parsed.status, {"success": False, "accepted": 0, "rejected": rejected})
            acked = self._handover.submit(records, size)
            handed_over = True  # the send thread releases the bytes from here on
        finally:
            if not handed_over:
                self._release(size)
        failed = await self._acknowledgement(acked, request_id)
        if failed is not None:
            return failed
        self.last_ack = time.time()
        if parsed.events:
            self.hooks.events_accepted(parsed.source or "unknown", len(parsed.events))
        for r in parsed.rejections:
            self.hooks.events_rejected(r.reason.value, 1)
        status = parsed.status
        return Reply(
            status,
            {"success": status == 200, "accepted": len(parsed.events), "rejected": rejected},
        )

    async def _acknowledgement(self, acked: asyncio.Future[Any], request_id: str) -> Reply | None:
        """Wait (at most ``kafka.ack_timeout_s``) for Kafka to acknowledge a request's records:
        None once it did, else the 503 to answer. The wait ends, the send does not: records
        still owed by Kafka keep their bytes until they settle."""
        timeout_s = self.settings.kafka.ack_timeout_s
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, acked)
        try:
            await acked
        except TimeoutError:
            self.hooks.kafka_unavailable("timeout")
            return self._unavailable(f"Kafka did not acknowledge within {timeout_s}s", request_id)
        except NotConnected:
            self.hooks.kafka_unavailable("reconnecting")
            return self._unavailable(
                f"not connected to Kafka ({self._slot.last_error or 'connecting'})", request_id
            )
        except NotHandedOver as exc:
            self.hooks.kafka_unavailable("error")
            return self._unavailable(f"cannot write to Kafka: {exc}", request_id)
        except Exception as exc:
            self.hooks.kafka_unavailable("error")
            return self._unavailable(f"Kafka refused the records: {type(exc).__name__}", request_id)
        finally:
            timer.cancel()
        return None

    def _send(self, records: list[OutRecord], size: int) -> cf.Future[Any] | None:
        """On the send thread: give the records to the producer, and ``size`` reserved bytes
        with them (released when Kafka settles them, or here if they never reach it). Runs even
        when the request that queued it was cancelled meanwhile."""
        try:
            producer = self._slot.get()
            future = None if producer is None else producer.send_many(records)
        except BaseException:
            self._release(size)
            raise
        if future is None:
            self._release(size)
            return None
        future.add_done_callback(lambda f: self._settled(f, size))
        return future

    def _reserve(self, size: int) -> bool:
        """Take ``size`` bytes of the in-flight budget, or refuse (nothing taken)."""
        with self._inflight_lock:
            if self._inflight + size > self.settings.collector.max_inflight_bytes:
                return False
            self._inflight += size
            return True

    def _settled(self, future: cf.Future[Any], size: int) -> None:
        self._release(size)
        exc = future.exception()
        if exc is not None and not isinstance(exc, TimeoutError):
            log.warning("Kafka delivery failed, the producer will be rebuilt: %r", exc)
            self._slot.mark_broken(exc)

    def _release(self, size: int) -> None:
        with self._inflight_lock:
            self._inflight -= size

    def _unavailable(self, message: str, request_id: str) -> Reply:
        retry_after = self.settings.collector.retry_after_s
        return Reply(
            503,
            {
                "success": False,
                "error": "kafka_unavailable",
                "message": message,
                "retryAfter": retry_after,
            },
            {"Retry-After": str(retry_after)},
        )

    # -- CORS ------------------------------------------------------------------------------

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        """Headers that let a browser page at ``origin`` read the answer, if it is allowed."""
        if not origin:
            return {}
        if "*" in self._cors:
            allowed = "*"
        elif origin in self._cors:
            allowed = origin
        else:
            return {}
        out = {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Expose-Headers": "Retry-After, X-Onramp-Request-Id",
        }
        if allowed != "*":
            out["Vary"] = "Origin"
        return out

    def preflight(self, origin: str | None, requested_headers: str | None) -> Reply:
        """Answer a CORS preflight (``OPTIONS``)."""
        headers = self.cors_headers(origin)
        if not headers:
            return Reply(403, {"success": False, "error": "origin_not_allowed", "origin": origin})
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": requested_headers
                or "Authorization, Content-Type, Content-Encoding",
                "Access-Control-Max-Age": "86400",
            }
        )
        return Reply(204, {}, headers)

    # -- state -----------------------------------------------------------------------------

    @property
    def inflight_bytes(self) -> int:
        return self._inflight

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "kafkaClient": self._slot.client_name,
            "kafkaError": self._slot.last_error,
            "inflightBytes": self._inflight,
            "lastAckAgeS": None if self.last_ack is None else round(time.time() - self.last_ack, 3),
        }

    def connect(self) -> None:
        """Build the producer now (instead of on the first request)."""
        self._slot.get()

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued and close the producer."""
        self._sender.shutdown(wait=True)
        self._slot.close(timeout_s)


#: The longest header text a DLQ record's origin keeps (browsers send a few hundred characters).
MAX_ORIGIN_HEADER = 512


def _header_text(value: str | None) -> str | None:
    """A header as a DLQ record's origin keeps it: at most :data:`MAX_ORIGIN_HEADER`
    characters, with how many more there were."""
    if value is None or len(value) <= MAX_ORIGIN_HEADER:
        return value
    return f"{value[:MAX_ORIGIN_HEADER]}... ({len(value) - MAX_ORIGIN_HEADER} more characters)"


def _expire(acked: asyncio.Future[Any]) -> None:
    """The acknowledgement did not come in time: the request stops waiting for it."""
    if not acked.done():
        acked.set_exception(TimeoutError())


def kafka_producer_factory(
    settings: Settings, bootstrap: str, topics: Sequence[str] | None = None
) -> Callable[[], Producer]:
    """A factory that makes sure the topics exist, connects, and caches the metadata of the
    ``topics`` it will write (default: the events topic and its DLQ; the decision log passes
    ``[settings.topics.decisions]``), so that later sends never block on a metadata fetch."""
    from ray_app.kafka.client import make_producer
    from ray_app.kafka.topics import ensure_topics

    warmed = tuple(topics) if topics is not None else (settings.topics.events, settings.topics.dlq)

    def build() -> Producer:
        ensure_topics(bootstrap, settings.kafka, timeout_s=settings.kafka.ack_timeout_s)
        producer = make_producer(bootstrap, settings.kafka)
        warm = getattr(producer, "partitions_for", None)
        if warm is not None:
            for topic in warmed:
                warm(topic)
        return producer

    return build
