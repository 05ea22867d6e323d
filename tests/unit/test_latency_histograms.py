"""The latency histograms on ``/metrics`` (:class:`~ray_app.telemetry.hooks.LoopHistogram`) expose
exactly what OpenTelemetry's histogram exposed before them, and with an OTLP endpoint the same
values are pushed as OpenTelemetry histograms without a second copy on ``/metrics``."""

from __future__ import annotations

import random
import time

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, generate_latest

from ray_app.telemetry.hooks import _LATENCY_BUCKETS, LoopHistogram, OtelHooks
from tests.otlp_receiver import OtlpReceiver


def _histogram_lines(text: bytes) -> list[str]:
    return sorted(line for line in text.decode().splitlines() if line.startswith("lat_seconds"))


def test_the_exposition_is_opentelemetrys_for_the_same_values():
    rng = random.Random(3)
    # values on every bound (a bound counts in its own bucket), between them, beyond the last
    values = [*_LATENCY_BUCKETS, 0.0, 0.0004, 11.0, 1e9]
    values += [rng.lognormvariate(-5, 2) for _ in range(2_000)]
    keys = ("/v1/batch", "/v1/track", "/v1/decide")

    ours = CollectorRegistry()
    loop = LoopHistogram("lat_seconds", "Latency", "route", _LATENCY_BUCKETS)
    ours.register(loop)
    theirs = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[
            PrometheusMetricReader(
                disable_target_info=True, scope_info_enabled=False, registry=theirs
            )
        ],
        views=[
            View(
                instrument_name="lat",
                aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS),
            )
        ],
    )
    otel = provider.get_meter("t").create_histogram("lat", unit="s", description="Latency")
    try:
        for i, v in enumerate(values):
            loop.record(v, keys[i % 3])
            otel.record(v, {"route": keys[i % 3]})
        mine, expected = (
            _histogram_lines(generate_latest(ours)),
            _histogram_lines(generate_latest(theirs)),
        )
    finally:
        provider.shutdown()
    assert len(mine) == 3 * (len(_LATENCY_BUCKETS) + 3)  # buckets, +Inf, count, sum per route
    # the sums as floats (their last digit depends on the order of the additions)
    split = [line.rsplit(" ", 1) for line in mine], [line.rsplit(" ", 1) for line in expected]
    assert [name for name, _ in split[0]] == [name for name, _ in split[1]]
    for (name, a), (_, b) in zip(*split, strict=True):
        assert abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b))), (name, a, b)


def test_with_an_otlp_endpoint_each_histogram_is_pushed_and_on_metrics_once():
    receiver = OtlpReceiver()
    hooks = OtelHooks(otlp_endpoint=receiver.url, export_interval_s=0.2)
    try:
        hooks.request_done("/v1/track", 200, 0.003)
        hooks.decision("next_step", "treatment", False, 0.002)
        text = hooks.prometheus_text().decode()
        for name in ("onramp_http_request_duration_seconds", "onramp_decide_duration_seconds"):
            assert text.count(f"# TYPE {name} histogram") == 1, text
            assert f"{name}_count{{" in text
        assert 'onramp_decide_duration_seconds_bucket{le="0.0025",slot="next_step"} 1.0' in text
        pushed = {"onramp.http.request.duration", "onramp.decide.duration", "onramp.decisions"}
        deadline = time.monotonic() + 20
        while not pushed <= receiver.metrics and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pushed <= receiver.metrics, receiver.metrics
    finally:
        hooks.shutdown()
        receiver.close()


def test_without_an_otlp_endpoint_nothing_records_opentelemetry_histograms():
    hooks = OtelHooks()
    try:
        assert hooks._otlp_provider is None and hooks._latency.pushed is None
        hooks.decision("next_step", "control", True, 0.5)
        hooks.decision("next_step", "control", True, float("nan"))  # dropped, as OTel does
        hooks.decision("next_step", "control", True, -1.0)
        text = hooks.prometheus_text().decode()
        assert text.count("# TYPE onramp_decide_duration_seconds histogram") == 1, text
        assert 'onramp_decide_duration_seconds_sum{slot="next_step"} 0.5' in text
        assert 'onramp_decide_duration_seconds_count{slot="next_step"} 1.0' in text
    finally:
        hooks.shutdown()
