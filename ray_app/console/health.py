"""The console's data-health panel, read from the Prometheus exposition ``/metrics`` serves.

:func:`figures` pulls the numbers the panel shows out of the exposition text (the families are
those of :mod:`ray_app.telemetry.hooks`, :mod:`ray_app.telemetry.stream` and
:mod:`ray_app.telemetry.learn`); :class:`HealthWindow` keeps the last minute of them, for rates
(events accepted per second) and the freshness quantiles of that minute beside the ones since
start. :class:`DlqSamples` keeps the latest DLQ records per reason, the examples the counts lack.

>>> text = '''# TYPE onramp_events_accepted_total counter
... onramp_events_accepted_total{replica="r1",source="web"} 10.0
... onramp_events_accepted_total{replica="r2",source="web"} 5.0
... # TYPE onramp_events_rejected_total counter
... onramp_events_rejected_total{reason="invalid_json",replica="r1"} 2.0
... # TYPE onramp_stream_records_total counter
... onramp_stream_records_total{partition="0",outcome="applied"} 90
... onramp_stream_records_total{partition="0",outcome="late"} 10
... # TYPE onramp_stream_freshness_seconds histogram
... onramp_stream_freshness_seconds_bucket{le="0.01"} 50
... onramp_stream_freshness_seconds_bucket{le="0.1"} 100
... onramp_stream_freshness_seconds_bucket{le="+Inf"} 100
... onramp_stream_freshness_seconds_count 100
... onramp_stream_freshness_seconds_sum 3
... '''
>>> f = figures(text)
>>> f["accepted"], f["rejected"], f["records"]["late"]
(15.0, {'collector/invalid_json': 2.0}, 10.0)
>>> round(quantile(f["freshness"], 0.5), 3), round(quantile(f["freshness"], 0.99), 3)
(0.01, 0.098)
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["DlqSamples", "HealthWindow", "figures", "quantile"]

#: Rejections by reason: the collector's, the stream's (events) and the stream's (decisions).
_REJECTIONS = (
    ("onramp_events_rejected", "collector"),
    ("onramp_stream_rejected", "stream"),
    ("onramp_stream_decisions_rejected", "decisions"),
)


def figures(text: str) -> dict[str, Any]:
    """The panel's numbers in a Prometheus text exposition (sums over replicas, partitions)."""
    from prometheus_client.parser import text_string_to_metric_families

    accepted = lag = 0.0
    rejected: dict[str, float] = {}
    records: dict[str, float] = {}
    buckets: dict[float, float] = {}
    learner: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name
        for s in fam.samples:
            if name == "onramp_events_accepted" and s.name.endswith("_total"):
                accepted += s.value
            elif name == "onramp_stream_records" and s.name.endswith("_total"):
                out = s.labels.get("outcome", "")
                records[out] = records.get(out, 0.0) + s.value
            elif name == "onramp_stream_consumer_lag_records":
                lag += s.value
            elif name == "onramp_stream_freshness_seconds" and s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif name in ("onramp_learner_model_version", "onramp_learner_epsilon"):
                learner[name.removeprefix("onramp_learner_")] = s.value
            else:
                for family, stage in _REJECTIONS:
                    if name == family and s.name.endswith("_total"):
                        key = f"{stage}/{s.labels.get('reason', '?')}"
                        rejected[key] = rejected.get(key, 0.0) + s.value
    return {
        "accepted": accepted,
        "rejected": rejected,
        "records": records,
        "lag": lag,
        "freshness": sorted(buckets.items()),
        "learner": learner,
    }


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram ``[(upper bound, count), ...]``, linear
    within a bucket as Prometheus' ``histogram_quantile`` (None without observations)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the open bucket: its lower bound, as Prometheus answers
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def _delta(now: list[tuple[float, float]], then: list[tuple[float, float]]) -> list[Any]:
    old = dict(then)
    return [(b, c - old.get(b, 0.0)) for b, c in now]


class HealthWindow:
    """The last ``window_s`` of :func:`figures`, and the panel built from them."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._seen: deque[tuple[float, dict[str, Any]]] = deque()

    def add(self, f: dict[str, Any], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._seen.append((now, f))
        while len(self._seen) > 2 and now - self._seen[1][0] >= self.window_s:
            self._seen.popleft()

    def panel(self) -> dict[str, Any]:
        """Accepted events per second over the window, rejections by reason, late share, lag and
        freshness p50/p99 (since start and over the window, in ms)."""
        if not self._seen:
            return {}
        t1, f = self._seen[-1]
        t0, f0 = self._seen[0]
        dt = t1 - t0
        rate = (f["accepted"] - f0["accepted"]) / dt if dt > 0 else None
        if rate is not None and rate < 0:  # a replica restarted: its counters started over
            rate = None
        recs = f["records"]
        taken = sum(recs.values())
        recent = _delta(f["freshness"], f0["freshness"]) if dt > 0 else []

        def ms(buckets: list[Any], q: float) -> float | None:
            v = quantile(buckets, q)
            return None if v is None else round(v * 1000, 1)

        return {
            "acceptedTotal": f["accepted"],
            "acceptedPerS": None if rate is None else round(rate, 2),
            "windowS": round(dt, 1),
            "rejected": dict(sorted(f["rejected"].items())),
            "records": recs,
            "lateShare": recs.get("late", 0.0) / taken if taken else None,
            "consumerLag": f["lag"],
            "freshnessMs": {"p50": ms(f["freshness"], 0.5), "p99": ms(f["freshness"], 0.99)},
            "freshnessRecentMs": {"p50": ms(recent, 0.5), "p99": ms(recent, 0.99)},
            "learner": f["learner"],
        }


class DlqSamples:
    """The latest ``per_reason`` DLQ records of each reason, shortened for a page.

    >>> s = DlqSamples(per_reason=1)
    >>> s.add(b'{"reason": "invalid_json", "message": "bad", "origin": {"stage": "collector"},'
    ...       b' "rawText": "{oops"}', 1000)
    >>> s.add(b'not json', 2000)
    >>> [(r, [e["raw"] for e in v]) for r, v in s.as_dict().items()]
    [('invalid_json', ['{oops']), ('unreadable', ['not json'])]
    """

    def __init__(self, per_reason: int = 3, raw_chars: int = 240) -> None:
        self.per_reason = per_reason
        self.raw_chars = raw_chars
        self._latest: dict[str, deque[dict[str, Any]]] = {}

    def add(self, value: bytes, ms: int) -> None:
        try:
            d = orjson.loads(value)
            if not isinstance(d, Mapping):
                raise ValueError("not an object")
        except ValueError:
            d = {
                "reason": "unreadable",
                "rawText": value[: self.raw_chars].decode(errors="replace"),
            }
        raw = d.get("raw")
        raw_text = orjson.dumps(raw).decode() if raw is not None else None
        raw_text = raw_text or d.get("rawText") or d.get("rawBase64") or ""
        origin = d.get("origin") if isinstance(d.get("origin"), Mapping) else {}
        sample = {
            "at": ms,
            "reason": str(d.get("reason")),
            "field": d.get("field"),
            "message": str(d.get("message") or "")[:300],
            "stage": origin.get("stage") or ("collector" if origin.get("route") else None),
            "route": origin.get("route"),
            "raw": str(raw_text)[: self.raw_chars],
        }
        q = self._latest.setdefault(sample["reason"], deque(maxlen=self.per_reason))
        q.append(sample)

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {r: list(reversed(q)) for r, q in sorted(self._latest.items())}
