"""Prometheus text for the stream workers' state: outcomes, buffered events, consumer lag and the
freshness histogram (``receivedAt`` at the collector -> state updated), per partition."""

from __future__ import annotations

from typing import Any

__all__ = ["stream_metrics_text"]


def stream_metrics_text(status: list[dict[str, Any]]) -> str:
    """Render the supervisor's ``status()`` (one entry per worker) as Prometheus text.

    >>> s = [{"worker": "w0", "partitions": {"0": {"applied": 5, "duplicates": 1, "late": 0,
    ...       "rejected": 0, "buffered": 2, "lag": 3}}, "freshnessBucketsMs": [10, 100],
    ...       "freshnessCounts": [4, 1, 0], "freshnessSumMs": 70.0}]
    >>> print(stream_metrics_text(s), end="")  # doctest: +ELLIPSIS
    # HELP onramp_stream_records_total Records taken by stream workers, by outcome.
    # TYPE onramp_stream_records_total counter
    onramp_stream_records_total{partition="0",outcome="applied"} 5
    ...
    onramp_stream_freshness_seconds_bucket{le="0.01"} 4
    onramp_stream_freshness_seconds_bucket{le="0.1"} 5
    onramp_stream_freshness_seconds_bucket{le="+Inf"} 5
    onramp_stream_freshness_seconds_sum 0.07
    onramp_stream_freshness_seconds_count 5
    """
    lines = [
        "# HELP onramp_stream_records_total Records taken by stream workers, by outcome.",
        "# TYPE onramp_stream_records_total counter",
    ]
    buffered: list[str] = []
    lag: list[str] = []
    rejected: list[str] = []
    nulls: list[str] = []
    bounds: list[int] = []
    counts: list[int] = []
    total_ms = 0.0
    for worker in status:
        for p, st in sorted(worker["partitions"].items(), key=lambda kv: int(kv[0])):
            for outcome, key in (
                ("applied", "applied"),
                ("duplicate", "duplicates"),
                ("late", "late"),
                ("rejected", "rejected"),
            ):
                lines.append(
                    f'onramp_stream_records_total{{partition="{p}",outcome="{outcome}"}} {st[key]}'
                )
            for reason, n in sorted(st.get("rejectedByReason", {}).items()):
                rejected.append(
                    f'onramp_stream_rejected_total{{partition="{p}",reason="{reason}"}} {n}'
                )
            for column, rate in sorted(st.get("quality", {}).get("nullRate", {}).items()):
                nulls.append(f'onramp_stream_null_rate{{partition="{p}",column="{column}"}} {rate}')
            buffered.append(f'onramp_stream_buffered_events{{partition="{p}"}} {st["buffered"]}')
            if st.get("lag") is not None:
                lag.append(f'onramp_stream_consumer_lag_records{{partition="{p}"}} {st["lag"]}')
        bounds = worker["freshnessBucketsMs"]
        c = worker["freshnessCounts"]
        counts = [a + b for a, b in zip(counts, c, strict=True)] if counts else list(c)
        total_ms += worker.get("freshnessSumMs", 0.0)
    lines += [
        "# HELP onramp_stream_rejected_total Records sent to the DLQ by stream workers, by reason.",
        "# TYPE onramp_stream_rejected_total counter",
        *rejected,
        "# HELP onramp_stream_null_rate Share of validated events without the column (data quality).",
        "# TYPE onramp_stream_null_rate gauge",
        *nulls,
    ]
    lines += [
        "# HELP onramp_stream_buffered_events Events held in reorder buffers.",
        "# TYPE onramp_stream_buffered_events gauge",
        *buffered,
    ]
    lines += [
        "# HELP onramp_stream_consumer_lag_records Records not yet taken, per partition.",
        "# TYPE onramp_stream_consumer_lag_records gauge",
        *lag,
    ]
    lines += [
        "# HELP onramp_stream_freshness_seconds From the collector's receivedAt to the state update.",
        "# TYPE onramp_stream_freshness_seconds histogram",
    ]
    cumulative = 0
    for bound, n in zip([*bounds, None], counts, strict=False):
        cumulative += n
        le = "+Inf" if bound is None else f"{bound / 1000:g}"
        lines.append(f'onramp_stream_freshness_seconds_bucket{{le="{le}"}} {cumulative}')
    lines.append(f"onramp_stream_freshness_seconds_sum {total_ms / 1000:g}")
    lines.append(f"onramp_stream_freshness_seconds_count {cumulative}")
    return "\n".join(lines) + "\n"
