"""The collector's hooks and their implementations."""

from __future__ import annotations

import atexit
import math
import threading
from bisect import bisect_left
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from ray_app.telemetry.resource import resource_attributes

if TYPE_CHECKING:
    from ray_app.config import TelemetrySettings

__all__ = ["CollectorHooks", "LoopHistogram", "NoopHooks", "OtelHooks"]

# Request latency buckets (seconds): the collector answers in milliseconds unless Kafka is slow.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LoopHistogram:
    """A latency histogram by one label, written by one thread (a replica's event loop) and read
    by Prometheus, for a tenth of what OpenTelemetry's ``Histogram.record`` costs.

    ``record`` is a ``bisect`` and two list increments (0.5-0.75 us a call against 8.8 us
    measured for the OpenTelemetry call, paid by every decision and every collector request: a
    few per cent of the replica's event loop under load). Like OpenTelemetry's histogram it
    drops a negative or non-finite value (a latency cannot be one). The scrape (:meth:`collect`, a ``prometheus_client``
    custom collector) exposes the same series as the OpenTelemetry exporter did: ``NAME_bucket``
    with ``le`` per bound and ``+Inf``, ``NAME_count``, ``NAME_sum``. It copies each series in
    one C call, so a scrape never blocks the writer; it can see a value's bucket before its sum
    (one value's worth, made good by the next scrape).

    >>> h = LoopHistogram("x_seconds", "What", "route", (0.01, 0.1))
    >>> h.record(0.01, "a"); h.record(0.05, "a"); h.record(3.0, "a")
    >>> [(s.name, s.labels, s.value) for s in next(h.collect()).samples][:4]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('x_seconds_bucket', {'route': 'a', 'le': '0.01'}, 1.0),
     ('x_seconds_bucket', {'route': 'a', 'le': '0.1'}, 2.0),
     ('x_seconds_bucket', {'route': 'a', 'le': '+Inf'}, 3.0),
     ('x_seconds_count', {'route': 'a'}, 3.0)]
    """

    def __init__(self, name: str, description: str, label: str, bounds: tuple[float, ...]) -> None:
        self.name, self.description, self.label = name, description, label
        self._bounds = tuple(float(b) for b in bounds)
        self._series: dict[str, list[float]] = {}  # label value -> counts per bucket, then the sum
        self.pushed: Any = None
        """An OpenTelemetry histogram each value is also recorded into (OTLP), or ``None``."""
        self._attrs: dict[str, dict[str, str]] = {}  # its attributes, built once per label value

    def record(self, value: float, key: str) -> None:
        """One value under label value ``key`` (from the writer thread only)."""
        if not 0.0 <= value < math.inf:  # negative, inf or nan: dropped
            return
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0] * (len(self._bounds) + 2)
            self._attrs[key] = {self.label: key}
        series[bisect_left(self._bounds, value)] += 1  # le: a value on a bound counts in it
        series[-1] += value
        if self.pushed is not None:
            self.pushed.record(value, self._attrs[key])

    def collect(self) -> Iterator[Any]:
        """The histogram family for ``prometheus_client`` (a registry calls this on a scrape)."""
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        family = HistogramMetricFamily(self.name, self.description, labels=[self.label])
        les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        for key, series in self._series.copy().items():
            counts = series.copy()  # one C call: safe against the writer's increments
            running, buckets = 0.0, []
            for le, n in zip(les, counts[:-1], strict=True):
                running += n
                buckets.append((le, running))
            family.add_metric([key], buckets, sum_value=counts[-1])
        yield family


class CollectorHooks(Protocol):
    """What the collector reports."""

    def request_done(self, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered."""

    def events_accepted(self, source: str, n: int) -> None:
        """``n`` events acknowledged by Kafka in ``onramp.events``."""

    def events_rejected(self, reason: str, n: int) -> None:
        """``n`` events (or one request) refused for ``reason``."""

    def kafka_unavailable(self, cause: str) -> None:
        """A request answered 503 because Kafka did not acknowledge (``timeout``,
        ``backpressure``, ``error``, ``reconnecting``)."""

    def enrichment(self, found: bool) -> None:
        """One CRM lookup for a profile read: a row was found, or the defaults were used."""

    def decision(self, slot: str, arm: str, cold: bool, seconds: float) -> None:
        """One decision answered (``cold``: without the live profile)."""

    def decisions_logged(self, ok: int, failed: int) -> None:
        """Decision records acknowledged by Kafka, or failed."""

    def model_version(self, arm: str, version: int) -> None:
        """The model version an arm now serves."""


class NoopHooks:
    """Hooks that do nothing (the default)."""

    def request_done(self, route: str, status: int, seconds: float) -> None:
        pass

    def events_accepted(self, source: str, n: int) -> None:
        pass

    def events_rejected(self, reason: str, n: int) -> None:
        pass

    def kafka_unavailable(self, cause: str) -> None:
        pass

    def enrichment(self, found: bool) -> None:
        pass

    def decision(self, slot: str, arm: str, cold: bool, seconds: float) -> None:
        pass

    def decisions_logged(self, ok: int, failed: int) -> None:
        pass

    def model_version(self, arm: str, version: int) -> None:
        pass


class OtelHooks:
    """OpenTelemetry metrics, read by a Prometheus exporter into this object's own registry."""

    def __init__(
        self,
        otlp_endpoint: str = "",
        otlp_headers: dict[str, str] | None = None,
        export_interval_s: float = 5.0,
        service: str = "onramp",
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        self._shutdown_lock = threading.Lock()
        self._shutdown_pending = True
        self._provider = _meter_provider(
            self.registry, otlp_endpoint, otlp_headers or {}, export_interval_s, service
        )
        # the latency histograms' OTLP side: a provider of its own, pushed only (on /metrics
        # they are LoopHistograms, below)
        self._otlp_provider = (
            _meter_provider(None, otlp_endpoint, otlp_headers or {}, export_interval_s, service)
            if otlp_endpoint
            else None
        )
        atexit.register(self.shutdown)  # flushed at exit unless shut down before
        meter = self._provider.get_meter("onramp.collector")
        # Counts are plain dict increments, read by OpenTelemetry when it collects (an
        # observable counter exports the same cumulative counter): Counter.add costs a few
        # microseconds of attribute cleaning and hashing per call (3.7 us measured), paid for
        # every request and every decision. Each has one writer, the replica's event loop (the
        # decision log's counts, two: see decisions_logged), and is copied whole, in one C call,
        # by the collecting thread.
        self._accepted: dict[str, int] = {}
        self._rejected: dict[str, int] = {}
        self._requests: dict[tuple[str, str], int] = {}
        self._unavailable: dict[str, int] = {}
        self._enrichment: dict[str, int] = {}
        for name, counts, label, description in (
            ("onramp.events.accepted", self._accepted, "source",
             "Events acknowledged by Kafka in onramp.events"),
            ("onramp.events.rejected", self._rejected, "reason",
             "Events or requests refused, by reason code"),
            ("onramp.kafka.unavailable", self._unavailable, "cause",
             "503 answers because Kafka did not acknowledge"),
            ("onramp.enrichment.lookups", self._enrichment, "result",
             "CRM lookups on profile reads, hit or miss"),
        ):  # fmt: skip
            meter.create_observable_counter(
                name, callbacks=[partial(_observe, counts, (label,))], description=description
            )
        meter.create_observable_counter(
            "onramp.http.requests",
            callbacks=[partial(_observe, self._requests, ("route", "status"))],
            description="HTTP requests answered, by route and status",
        )
        # The latency histograms: LoopHistogram on /metrics (Prometheus), and with an OTLP
        # endpoint OpenTelemetry's own histograms as well (pushed; their record costs more)
        self._latency = LoopHistogram(
            "onramp_http_request_duration_seconds", "HTTP request latency", "route",
            _LATENCY_BUCKETS,
        )  # fmt: skip
        self._decide_latency = LoopHistogram(
            "onramp_decide_duration_seconds", "Time to decide (in the replica)", "slot",
            _LATENCY_BUCKETS,
        )  # fmt: skip
        self.registry.register(self._latency)
        self.registry.register(self._decide_latency)
        if self._otlp_provider is not None:
            pushed = self._otlp_provider.get_meter("onramp.collector")
            self._latency.pushed = pushed.create_histogram(
                "onramp.http.request.duration", unit="s", description="HTTP request latency"
            )
            self._decide_latency.pushed = pushed.create_histogram(
                "onramp.decide.duration", unit="s", description="Time to decide (in the replica)"
            )
        self._decision_counts: dict[tuple[str, str, str], int] = {}  # (slot, arm, cold_start)
        self._logged_counts: dict[str, int] = {}
        self._logged_lock = threading.Lock()
        meter.create_observable_counter(
            "onramp.decisions",
            callbacks=[partial(_observe, self._decision_counts, ("slot", "arm", "cold_start"))],
            description="Decisions answered, by slot, arm and cold start",
        )
        meter.create_observable_counter(
            "onramp.decisions.logged",
            callbacks=[partial(_observe, self._logged_counts, ("result",))],
            description="Decision records acknowledged by Kafka",
        )
        self._versions: dict[str, int] = {}

        def _observe_versions(_options: Any) -> list[Any]:
            from opentelemetry.metrics import Observation

            return [Observation(v, {"arm": a}) for a, v in self._versions.items()]

        meter.create_observable_gauge(
            "onramp.model.version",
            callbacks=[_observe_versions],
            description="Model version each arm serves",
        )

    @classmethod
    def from_settings(cls, settings: TelemetrySettings) -> OtelHooks:
        """Prometheus always; OTLP too when ``telemetry.otlp_endpoint`` is set."""
        return cls(
            settings.otlp_endpoint,
            {k: v.get_secret_value() for k, v in settings.otlp_headers.items()},
            settings.export_interval_s,
            settings.service_name,
        )

    def request_done(self, route: str, status: int, seconds: float) -> None:
        key = (route, str(status))
        self._requests[key] = self._requests.get(key, 0) + 1
        self._latency.record(seconds, route)

    def events_accepted(self, source: str, n: int) -> None:
        self._accepted[source] = self._accepted.get(source, 0) + n

    def events_rejected(self, reason: str, n: int) -> None:
        self._rejected[reason] = self._rejected.get(reason, 0) + n

    def kafka_unavailable(self, cause: str) -> None:
        self._unavailable[cause] = self._unavailable.get(cause, 0) + 1

    def enrichment(self, found: bool) -> None:
        result = "hit" if found else "miss"
        self._enrichment[result] = self._enrichment.get(result, 0) + 1

    def decision(self, slot: str, arm: str, cold: bool, seconds: float) -> None:
        # called on the replica's event loop only: one writer, so the increment is safe
        key = (slot, arm, "true" if cold else "false")
        self._decision_counts[key] = self._decision_counts.get(key, 0) + 1
        self._decide_latency.record(seconds, slot)

    def decisions_logged(self, ok: int, failed: int) -> None:
        # called from delivery reports, which confluent-kafka serves on its poller thread and on
        # the decision log's sender thread while a full queue makes it wait: two writers, a lock
        with self._logged_lock:
            counts = self._logged_counts
            if ok:
                counts["acked"] = counts.get("acked", 0) + ok
            if failed:
                counts["failed"] = counts.get("failed", 0) + failed

    def model_version(self, arm: str, version: int) -> None:
        self._versions[arm] = version

    def prometheus_text(self) -> bytes:
        """The Prometheus exposition of everything recorded so far."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def shutdown(self) -> None:
        """Flush and stop the meter providers, once: a second call (the exit hook after an
        explicit call, or a replica's ``__del__`` run twice) does nothing, where the
        provider's own second shutdown logs "shutdown can only be called once"."""
        with self._shutdown_lock:
            pending, self._shutdown_pending = self._shutdown_pending, False
        if pending:
            try:
                self._provider.shutdown()
            finally:
                if self._otlp_provider is not None:  # the pushed histograms' last points
                    self._otlp_provider.shutdown()


def _observe(counts: dict[Any, int], labels: tuple[str, ...], _options: Any) -> list[Any]:
    """An observable counter's callback: one observation per key of ``counts`` (a label value,
    or a tuple of them, named ``labels``)."""
    from opentelemetry.metrics import Observation

    copy = counts.copy()  # one C call: safe against the loop's increments
    if len(labels) == 1:
        return [Observation(n, {labels[0]: k}) for k, n in copy.items()]
    return [Observation(n, dict(zip(labels, k, strict=True))) for k, n in copy.items()]


def _meter_provider(
    registry: Any,
    otlp_endpoint: str,
    otlp_headers: dict[str, str],
    export_interval_s: float,
    service: str,
) -> Any:
    """A meter provider read into ``registry`` (Prometheus; ``None``: not read there) and, with
    an endpoint, pushed over OTLP/HTTP too; latency histograms get Onramp's buckets."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource

    readers: list[Any] = []
    if registry is not None:
        readers.append(
            PrometheusMetricReader(
                disable_target_info=True, scope_info_enabled=False, registry=registry
            )
        )
    if otlp_endpoint:  # the same instruments pushed over OTLP/HTTP as well
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(
                    endpoint=f"{otlp_endpoint.rstrip('/')}/v1/metrics",
                    headers=otlp_headers,
                ),
                export_interval_millis=export_interval_s * 1000,
            )
        )
    return MeterProvider(
        shutdown_on_exit=False,  # the hooks' exit hook shuts it down, once
        resource=Resource.create(resource_attributes(service, "collector")),
        metric_readers=readers,
        views=[
            View(
                instrument_name="onramp.http.request.duration",
                aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS),
            ),
            View(
                instrument_name="onramp.decide.duration",
                aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS),
            ),
        ],
    )
