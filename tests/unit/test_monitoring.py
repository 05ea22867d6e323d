"""The Grafana dashboard and the Prometheus alert rules query only metrics Onramp exports.

The exported names come from the code that writes /metrics: the collector's OpenTelemetry hooks
(every hook called once, rendered by the Prometheus exporter), the stream workers' and the
learner's Prometheus text (rendered from a real shard's and the learner's counters). Every metric
name in every PromQL expression must be one of them, and every `label="value"` matcher must
select something that exists."""

import datetime as dt
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ray_app.learn.learner import _COUNTERS
from ray_app.state.shard import SessionShard
from ray_app.stream.worker import FRESHNESS_BUCKETS_MS
from ray_app.telemetry import CollectorHooks, OtelHooks
from ray_app.telemetry.learn import learner_metrics_text
from ray_app.telemetry.stream import stream_metrics_text
from validation.batch import BatchValidator

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deployments" / "monitoring"

# PromQL words that are not metric names (functions are found by their parenthesis)
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan"}  # fmt: skip


def _collector_text() -> str:
    hooks = OtelHooks()
    calls = {
        "request_done": lambda: hooks.request_done("batch", 200, 0.003),
        "events_accepted": lambda: hooks.events_accepted("web", 5),
        "events_rejected": lambda: hooks.events_rejected("invalid_json", 1),
        "kafka_unavailable": lambda: hooks.kafka_unavailable("timeout"),
        "enrichment": lambda: hooks.enrichment(True),
        "decision": lambda: (
            hooks.decision("next_step", "treatment", True, 0.002),
            hooks.decision("next_step", "control", False, 0.002),
        ),
        "decisions_logged": lambda: hooks.decisions_logged(3, 1),
        "model_version": lambda: hooks.model_version("treatment", 4),
    }
    hook_names = {n for n, _ in inspect.getmembers(CollectorHooks) if not n.startswith("_")}
    assert set(calls) == hook_names, "call every hook, so every collector metric is exported"
    for call in calls.values():
        call()
    try:
        return hooks.prometheus_text().decode()
    finally:
        hooks.shutdown()


def _stream_text() -> str:
    shard = SessionShard(
        0, checks=BatchValidator()
    )  # a real shard takes a few real events: its stats and data quality
    received = dt.datetime.now(dt.UTC)
    for n in range(3):
        event = {
            "messageId": f"m{n}",
            "type": "track",
            "event": "Step Viewed",
            "userKey": "u1",
            "stepId": "role",
            "timestamp": received.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "receivedAt": received.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        shard.process([(b"u1", json.dumps(event).encode())])
    assert shard.stats.applied == 3, shard.stats
    part = {
        "nextOffset": 10,
        "buffered": shard.buffered,
        "lag": 3,
        **shard.stats.as_dict(),
        "quality": shard.quality.as_dict(),
        "rejectedByReason": {"invalid_json": 1},
    }
    status = [
        {
            "worker": "w0",
            "partitions": {"0": part},
            "freshnessBucketsMs": list(FRESHNESS_BUCKETS_MS),
            "freshnessCounts": [0] * (len(FRESHNESS_BUCKETS_MS) + 1),
            "freshnessSumMs": 0.0,
        }
    ]
    return stream_metrics_text(status)


def _learner_text() -> str:
    status = {
        "version": 3,
        "counters": dict.fromkeys(_COUNTERS, 1),
        "epsilon": 0.1,
        "arms": {a: {"rewards": 10, "positives": 4} for a in ("control", "treatment")},
        "drift": {"rewardStatistic": 1.0, "featureMaxPsi": 0.02, "alerts": []},
        "outcomeToWeightsMs": {"p50": 1200},
    }
    return learner_metrics_text(status)


def test_collector_counts_add_up_by_label_and_scrape_as_counters():
    # the counts are dict increments read at collection: what a scrape sees is every call summed
    hooks = OtelHooks()
    try:
        for _ in range(3):
            hooks.request_done("/v1/track", 200, 0.003)
            hooks.events_accepted("web", 2)
        hooks.request_done("/v1/track", 503, 0.003)
        hooks.events_rejected("invalid_json", 1)
        hooks.events_rejected("invalid_json", 4)
        hooks.kafka_unavailable("timeout")
        hooks.enrichment(False)
        families = {
            f.name: f for f in text_string_to_metric_families(hooks.prometheus_text().decode())
        }
    finally:
        hooks.shutdown()

    def values(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        family = families[name]
        assert family.type == "counter", name
        return {
            tuple(sorted(s.labels.items())): s.value
            for s in family.samples
            if s.name.endswith("_total")
        }

    assert values("onramp_http_requests") == {
        (("route", "/v1/track"), ("status", "200")): 3.0,
        (("route", "/v1/track"), ("status", "503")): 1.0,
    }
    assert values("onramp_events_accepted") == {(("source", "web"),): 6.0}
    assert values("onramp_events_rejected") == {(("reason", "invalid_json"),): 5.0}
    assert values("onramp_kafka_unavailable") == {(("cause", "timeout"),): 1.0}
    assert values("onramp_enrichment_lookups") == {(("result", "miss"),): 1.0}


@pytest.fixture(scope="module")
def exported() -> dict[str, list[dict[str, str]]]:
    """Sample name (as scraped, suffixes included) -> the label sets it is exported with."""
    out: dict[str, list[dict[str, str]]] = {}
    for text in (_collector_text(), _stream_text(), _learner_text()):
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


def _dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    out = []
    for panel in dash["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for t in inner.get("targets", []):
                out.append((f"panel {inner['title']!r}", t["expr"]))
    return out


def _alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression.

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{x="y"}[5m])) / clamp_min(b_total, 1e-9)'))
    ['a_bucket', 'b_total']
    """
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors ($__rate_interval included)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", " ", e)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end() :].lstrip()
        if rest.startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue  # a function or a keyword
        names.add(m.group(0))
    return names


def matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, op, value) of every equality or regex matcher."""
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr):
        for lm in re.finditer(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"', m.group(2)):
            out.append((m.group(1), lm.group(1), lm.group(2), lm.group(3)))
    return out


ALL = _dashboard_exprs() + _alert_exprs()


@pytest.mark.parametrize(("where", "expr"), ALL, ids=[w for w, _ in ALL])
def test_every_query_names_an_exported_metric(where, expr, exported):
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = sorted(n for n in names if n not in exported)
    assert not unknown, f"{where}: not exported by Onramp: {unknown}"
    for metric, label, op, value in matchers(expr):
        values = {labels.get(label) for labels in exported[metric]}
        assert label in {k for labels in exported[metric] for k in labels}, (where, metric, label)
        if op == "=":
            assert value in values, f"{where}: {metric}{{{label}={value!r}}} matches nothing"
        elif op == "=~":
            for alt in value.split("|"):
                assert alt in values, f"{where}: {metric}{{{label}=~{alt!r}}} matches nothing"


def test_a_misspelt_metric_is_caught(exported):
    names = metric_names("sum(rate(onramp_events_acepted_total[5m]))")
    assert names == {"onramp_events_acepted_total"} and not names <= set(exported)


def test_dashboard_covers_what_operators_watch():
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("ingest rate", "dlq rate by reason", "late rate", "consumer lag",
                  "freshness p50 / p99", "decide latency", "model version", "reward rate per arm",
                  "drift"):  # fmt: skip
        assert topic in titles, topic
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])  # Grafana needs unique ids
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in panels)


def test_alerts_cover_freshness_lag_dlq_drift_and_rollbacks():
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    exprs = " ".join(r["expr"] for r in alerts.values())
    for metric in ("onramp_stream_freshness_seconds_bucket", "onramp_stream_consumer_lag_records",
                   "onramp_events_rejected_total", "onramp_drift_score",
                   'onramp_learner_events_total{kind="rollbacks"}'):  # fmt: skip
        assert metric in exprs, metric
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_freshness_of_workers_with_different_buckets_merges_at_the_common_bounds() -> None:
    """During a rolling upgrade workers may count freshness in different buckets: the scrape
    still answers (it raised), with the bounds both have and every event counted once."""

    def worker(name: str, bounds: list[int], counts: list[int]) -> dict:
        return {"worker": name, "partitions": {}, "freshnessBucketsMs": bounds,
                "freshnessCounts": counts, "freshnessSumMs": 1.0}  # fmt: skip

    text = stream_metrics_text(
        [worker("old", [10, 100, 1000], [4, 1, 0, 2]), worker("new", [10, 40, 100], [1, 2, 3, 4])]
    )
    buckets = [line for line in text.splitlines() if "freshness_seconds_bucket" in line]
    assert buckets == [  # one series per worker slot, at the bounds every worker has
        'onramp_stream_freshness_seconds_bucket{worker="new",le="0.01"} 1',
        'onramp_stream_freshness_seconds_bucket{worker="new",le="0.1"} 6',
        'onramp_stream_freshness_seconds_bucket{worker="new",le="+Inf"} 10',
        'onramp_stream_freshness_seconds_bucket{worker="old",le="0.01"} 4',
        'onramp_stream_freshness_seconds_bucket{worker="old",le="0.1"} 5',
        'onramp_stream_freshness_seconds_bucket{worker="old",le="+Inf"} 7',
    ]
    assert 'onramp_stream_freshness_seconds_count{worker="old"} 7' in text


def test_a_restarted_worker_takes_its_own_freshness_series_back_to_zero_not_the_sum() -> None:
    """The freshness histogram was one sum over the workers: when one restarted, the sum went
    down, which rate() reads as a reset, counting every other worker's events again (the
    freshness alert and dashboards read it). Each worker slot has its own series now."""

    def worker(name: str, n: int) -> dict:
        return {"worker": name, "partitions": {}, "freshnessBucketsMs": [10],
                "freshnessCounts": [n, 0], "freshnessSumMs": 1.0}  # fmt: skip

    def count(text: str, slot: str) -> str:
        key = f'onramp_stream_freshness_seconds_count{{worker="{slot}"}} '
        return next(line for line in text.splitlines() if line.startswith(key)).split()[-1]

    before = stream_metrics_text([worker("w0-1", 1_000_000), worker("w1-1", 500)])
    after = stream_metrics_text([worker("w0-1", 1_000_010), worker("w1-2", 3)])  # w1 restarted
    assert int(count(after, "w0")) > int(count(before, "w0"))  # untouched by w1's restart


def test_hooks_shut_down_once_and_exit_quietly():
    """The meter provider is shut down once: a second ``shutdown()`` (an ingress replica's
    ``__del__`` may run twice) or the exit hook after one does nothing (the provider's own
    second shutdown logged "shutdown can only be called once"), and hooks nobody stopped are
    flushed at exit."""
    import subprocess
    import sys

    script = (
        "from ray_app.telemetry import OtelHooks\n"
        "stopped, left = OtelHooks(), OtelHooks()\n"
        "stopped.request_done('batch', 200, 0.001)\n"
        "stopped.shutdown(); stopped.shutdown()\n"
        "left.request_done('batch', 200, 0.001)\n"
        "flush = left._provider.shutdown\n"
        "left._provider.shutdown = lambda *a, **k: (print('left flushed'), flush(*a, **k))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.strip() == "left flushed"  # the hooks nobody stopped, at exit


def test_the_freshness_sum_keeps_full_precision() -> None:
    """``rate(sum) / rate(count)`` needs the sum's every digit: it was written with 6
    significant digits (123456.789 s as 123457), ever coarser as it grew."""
    text = stream_metrics_text(
        [{"worker": "w", "partitions": {}, "freshnessBucketsMs": [10],
          "freshnessCounts": [1, 2], "freshnessSumMs": 123_456_789.0}]
    )  # fmt: skip
    assert 'onramp_stream_freshness_seconds_sum{worker="w"} 123456.789' in text


def _closing(text: str, start: int) -> int:
    """The index just past the parenthesis closing the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced: {text!r}")


def test_the_dlq_alert_reads_a_reason_never_counted_as_zero() -> None:
    """The rejected counters have no series before their first rejection, and in PromQL a sum
    over nothing is empty, as is anything added to it: each sum of the DLQ share must read an
    empty one as 0, or the alert cannot fire until both the collector and the stream have
    rejected something."""
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    [expr] = [
        r["expr"] for g in rules["groups"] for r in g["rules"] if r["alert"] == "OnrampDLQSpike"
    ]
    sums = [m.start() for m in re.finditer(r"\bsum\(", expr)]
    assert len(sums) == 4
    for at in sums:
        end = _closing(expr, at + len("sum"))
        assert expr[end:].lstrip().startswith("or vector(0)"), expr[at:end]
    idle = _stream_text_without_rejections()
    assert "onramp_stream_rejected_total{" not in idle  # why: no series until the first one


def _stream_text_without_rejections() -> str:
    return stream_metrics_text(
        [{"worker": "w0-g0-r0-m0", "partitions": {"0": {"applied": 5, "duplicates": 0, "late": 0,
          "rejected": 0, "buffered": 0, "lag": 0}}, "freshnessBucketsMs": [10],
          "freshnessCounts": [0, 0], "freshnessSumMs": 0.0}]
    )  # fmt: skip


def test_checkpoints_skipped_is_a_counter_per_worker_slot_that_resets_when_it_restarts() -> None:
    def worker(name: str, skipped: int) -> dict[str, Any]:
        return {"worker": name, "partitions": {}, "freshnessBucketsMs": [10],
                "freshnessCounts": [0, 0], "freshnessSumMs": 0.0,
                "checkpointsSkipped": skipped}  # fmt: skip

    def samples(status: list[dict[str, Any]]) -> list[str]:
        text = stream_metrics_text(status)
        return [s for s in text.splitlines() if s.startswith("onramp_stream_checkpoints_skipped")]

    before = samples([worker("w0-g0-r0-m0", 5), worker("w1-g0-r0-m0", 3)])
    # w1 restarted: its count starts again; w0's series must not go down with it (a sum did,
    # 8 -> 5, which increase() reads as a reset and counts 5 new skips)
    after = samples([worker("w0-g0-r0-m0", 5), worker("w1-g0-r1-m0", 0)])
    assert before == [
        'onramp_stream_checkpoints_skipped_total{worker="w0"} 5',
        'onramp_stream_checkpoints_skipped_total{worker="w1"} 3',
    ]
    assert after == [
        'onramp_stream_checkpoints_skipped_total{worker="w0"} 5',
        'onramp_stream_checkpoints_skipped_total{worker="w1"} 0',
    ]
    assert samples([]) == ["onramp_stream_checkpoints_skipped_total 0"]
