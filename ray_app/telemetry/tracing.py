"""Traces that follow an event from the collector, through Kafka, to the stream worker that applied
it and into the decisions it influenced.

* The collector starts a server span per request and a producer span per batch of records it
  writes, and puts the producer span's W3C ``traceparent`` into every record's headers.
* A stream worker reads the header back and records a consumer span per traced record, a child
  of the producer span (so in the same trace), with the record's partition, offset and outcome.
* The profile keeps the ``traceparent`` of its latest event (by event time, so replays give the
  same state); a decision made from that profile gets a span *linked* to it, and the decision
  record carries that span's own trace id (``traceId``).

Only sampled requests (``telemetry.traces``, a ratio) get headers and spans; a decision whose
profile came from a sampled event is always sampled, so a traced event's decisions are found.
With tracing off (the default) every hook is :class:`NoopTracing`: nothing is allocated.

>>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
>>> spans = InMemorySpanExporter()
>>> tracing = OtelTracing(ratio=1.0, exporter=spans)
>>> request = tracing.request_span("track", "r-1", None)
>>> produce, headers = tracing.produce_span(request, "onramp.events", 1)
>>> tracing.end(produce); tracing.end(request, status=200)
>>> tp = traceparent_of(headers)
>>> tp == format_traceparent(produce.get_span_context())
True
>>> sorted(s.name for s in spans.get_finished_spans())
['onramp.events publish', 'onramp.track']
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ray_app.telemetry.resource import resource_attributes

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext

    from ray_app.config import TelemetrySettings

__all__ = [
    "TRACEPARENT",
    "NoopTracing",
    "OtelTracing",
    "Tracing",
    "format_traceparent",
    "make_tracing",
    "now_ns",
    "parse_traceparent",
    "traceparent_of",
]

#: The W3C trace-context header (HTTP requests and Kafka record headers alike).
TRACEPARENT = "traceparent"

_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(value: str | bytes | None) -> SpanContext | None:
    """The remote span context a ``traceparent`` names, or None if it is absent or malformed.

    >>> ctx = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    >>> f"{ctx.trace_id:032x}", ctx.trace_flags.sampled, ctx.is_remote
    ('0af7651916cd43dd8448eb211c80319c', True, True)
    >>> parse_traceparent("garbage") is None, parse_traceparent(None) is None
    (True, True)
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    m = _TRACEPARENT_RE.match(value.strip())
    if m is None:
        return None
    trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
    if trace_id == 0 or span_id == 0:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(m.group(3), 16))
    )


def format_traceparent(ctx: SpanContext) -> str:
    """The ``traceparent`` of a span context (version 00)."""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def traceparent_of(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """The ``traceparent`` among Kafka record headers, if any.

    >>> traceparent_of((("other", b"x"), ("traceparent", b"00-ab-cd-01")))
    '00-ab-cd-01'
    >>> traceparent_of(()) is None
    True
    """
    for k, v in headers or ():
        if k == TRACEPARENT and v is not None:
            return v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
    return None


class Tracing(Protocol):
    """The tracing hooks Onramp calls (spans are opaque to the callers)."""

    enabled: bool

    def request_span(self, route: str, request_id: str, traceparent: str | None) -> Any:
        """A server span for one collector request (child of a valid incoming ``traceparent``)."""

    def produce_span(
        self, parent: Any, topic: str, records: int
    ) -> tuple[Any, tuple[tuple[str, bytes], ...]]:
        """A producer span for one batch of records and the headers to put on each record
        (empty when the span is not sampled)."""

    def consumed(
        self, records: Sequence[Any], outcomes: dict[int, str], start_ns: int, end_ns: int
    ) -> int:
        """Consumer spans for the traced ones among ``records`` (index -> outcome where not
        applied); returns how many spans."""

    def decision_span(
        self,
        slot: str,
        traceparent: str | None,
        profile_traceparent: str | None,
        start_ns: int | None = None,
    ) -> Any:
        """A span for one decision (child of a valid incoming ``traceparent``), linked to the
        trace of the profile's latest event."""

    def trace_id(self, span: Any) -> str | None:
        """The span's trace id (hex) if it is sampled, else None."""

    def end(self, span: Any, status: int | None = None, **attributes: Any) -> None:
        """End a span (``status`` >= 500 marks it as an error)."""

    def shutdown(self) -> None:
        """Export what is pending."""


class NoopTracing:
    """Tracing off: every hook returns at once."""

    enabled = False

    def request_span(self, route: str, request_id: str, traceparent: str | None) -> Any:
        return None

    def produce_span(
        self, parent: Any, topic: str, records: int
    ) -> tuple[Any, tuple[tuple[str, bytes], ...]]:
        return None, ()

    def consumed(
        self, records: Sequence[Any], outcomes: dict[int, str], start_ns: int, end_ns: int
    ) -> int:
        return 0

    def decision_span(
        self,
        slot: str,
        traceparent: str | None,
        profile_traceparent: str | None,
        start_ns: int | None = None,
    ) -> Any:
        return None

    def trace_id(self, span: Any) -> str | None:
        return None

    def end(self, span: Any, status: int | None = None, **attributes: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _sampler(ratio: float) -> Any:
    """Parent-based ratio sampling, plus: a span linked to a sampled span is sampled (so a
    traced event's decisions are traced whatever the ratio)."""
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )

    class FollowLinks(Sampler):
        def __init__(self) -> None:
            self._base = ParentBased(TraceIdRatioBased(ratio))

        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if links and any(link.context.trace_flags.sampled for link in links):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            return self._base.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"OnrampFollowLinks{{{self._base.get_description()}}}"

    return FollowLinks()


class OtelTracing:
    """Tracing hooks on the OpenTelemetry SDK, with its own tracer provider (never the global
    one, so several Onramp components in one process do not fight over it)."""

    enabled = True

    def __init__(
        self,
        ratio: float = 1.0,
        service: str = "onramp",
        component: str = "collector",
        otlp_endpoint: str = "",
        otlp_headers: dict[str, str] | None = None,
        export_interval_s: float = 5.0,
        exporter: Any = None,
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        resource = Resource.create(resource_attributes(service, component))
        self._provider = TracerProvider(resource=resource, sampler=_sampler(ratio))
        if exporter is not None:  # tests: an in-memory exporter, exported synchronously
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            otlp = OTLPSpanExporter(
                endpoint=f"{otlp_endpoint.rstrip('/')}/v1/traces", headers=otlp_headers or {}
            )
            self._provider.add_span_processor(
                BatchSpanProcessor(otlp, schedule_delay_millis=int(export_interval_s * 1000))
            )
        self._tracer = self._provider.get_tracer("onramp")

    @classmethod
    def from_settings(cls, settings: TelemetrySettings, component: str) -> OtelTracing:
        return cls(
            ratio=settings.traces,
            service=settings.service_name,
            component=component,
            otlp_endpoint=settings.otlp_endpoint,
            otlp_headers={k: v.get_secret_value() for k, v in settings.otlp_headers.items()},
            export_interval_s=settings.export_interval_s,
        )

    def _context(self, parent: SpanContext | None) -> Any:
        if parent is None:
            return None
        from opentelemetry.trace import NonRecordingSpan, set_span_in_context

        return set_span_in_context(NonRecordingSpan(parent))

    def request_span(self, route: str, request_id: str, traceparent: str | None) -> Span:
        from opentelemetry.trace import SpanKind

        return self._tracer.start_span(
            f"onramp.{route}",
            context=self._context(parse_traceparent(traceparent)),
            kind=SpanKind.SERVER,
            attributes={"http.route": f"/v1/{route}", "onramp.request_id": request_id},
        )

    def produce_span(
        self, parent: Any, topic: str, records: int
    ) -> tuple[Span, tuple[tuple[str, bytes], ...]]:
        from opentelemetry.trace import SpanKind, set_span_in_context

        span = self._tracer.start_span(
            f"{topic} publish",
            context=None if parent is None else set_span_in_context(parent),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.operation.type": "publish",
                "messaging.batch.message_count": records,
            },
        )
        ctx = span.get_span_context()
        if not ctx.trace_flags.sampled:
            return span, ()
        return span, ((TRACEPARENT, format_traceparent(ctx).encode()),)

    def consumed(
        self, records: Sequence[Any], outcomes: dict[int, str], start_ns: int, end_ns: int
    ) -> int:
        from opentelemetry.trace import Link, SpanKind

        n = 0
        for index, r in enumerate(records):
            parent = parse_traceparent(traceparent_of(r.headers))
            if parent is None or not parent.trace_flags.sampled:
                continue
            span = self._tracer.start_span(
                f"{r.topic} process",
                context=self._context(parent),
                kind=SpanKind.CONSUMER,
                links=[Link(parent)],
                start_time=start_ns,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.destination.name": r.topic,
                    "messaging.operation.type": "process",
                    "messaging.destination.partition.id": str(r.partition),
                    "messaging.kafka.offset": r.offset,
                    "onramp.outcome": outcomes.get(index, "applied"),
                },
            )
            span.end(end_time=end_ns)
            n += 1
        return n

    def decision_span(
        self,
        slot: str,
        traceparent: str | None,
        profile_traceparent: str | None,
        start_ns: int | None = None,
    ) -> Span:
        from opentelemetry.trace import Link, SpanKind

        event = parse_traceparent(profile_traceparent)
        return self._tracer.start_span(
            "onramp.decide",
            context=self._context(parse_traceparent(traceparent)),
            kind=SpanKind.INTERNAL,
            links=[Link(event, {"onramp.link": "latest_event"})] if event is not None else [],
            start_time=start_ns,
            attributes={"onramp.slot": slot, "onramp.profile_traced": event is not None},
        )

    def trace_id(self, span: Any) -> str | None:
        if span is None:
            return None
        ctx = span.get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.trace_flags.sampled else None

    def end(self, span: Any, status: int | None = None, **attributes: Any) -> None:
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR))
        for k, v in attributes.items():
            if v is not None:
                span.set_attribute(k, v)
        span.end()

    def shutdown(self) -> None:
        self._provider.shutdown()


def make_tracing(settings: TelemetrySettings, component: str) -> Tracing:
    """:class:`OtelTracing` when ``telemetry.traces`` > 0, else :class:`NoopTracing`.

    >>> from ray_app.config import TelemetrySettings
    >>> type(make_tracing(TelemetrySettings(), "collector")).__name__
    'NoopTracing'
    """
    if settings.traces <= 0:
        return NoopTracing()
    return OtelTracing.from_settings(settings, component)


def now_ns() -> int:
    """Wall-clock nanoseconds (span timestamps)."""
    return time.time_ns()
