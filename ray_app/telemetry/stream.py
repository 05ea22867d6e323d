"""Prometheus text for the stream workers' state: outcomes, buffered events, consumer lag and the
freshness histogram (``receivedAt`` at the collector -> state updated), per partition; the bounds
on profiles (live profiles, evictions past the idle TTL, keys dropped by each per-profile cap),
rejected decision records, and the checkpoints the workers refused to load or skipped writing.
Every family has a sample whatever the status holds (0 where a key is absent), so dashboards and
alert rules always find it."""

from __future__ import annotations

from typing import Any

from ray_app.state.profile import CAPS

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
    decisions_rejected: list[str] = []
    profiles: list[str] = []
    evicted: list[str] = []
    caps: list[str] = []
    merges: list[str] = []
    forwarded: list[str] = []
    refused = skipped = 0
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
            for reason, n in sorted(st.get("decisionsRejectedByReason", {}).items()):
                decisions_rejected.append(
                    f'onramp_stream_decisions_rejected_total{{partition="{p}",reason="{reason}"}} {n}'
                )
            profiles.append(f'onramp_stream_profiles{{partition="{p}"}} {st.get("profiles", 0)}')
            evicted.append(
                f'onramp_stream_profiles_evicted_total{{partition="{p}"}} '
                f"{st.get('profilesEvicted', 0)}"
            )
            hits = st.get("profileCaps", {})
            for cap in CAPS:
                caps.append(
                    f'onramp_stream_profile_caps_total{{partition="{p}",cap="{cap}"}} '
                    f"{hits.get(cap, 0)}"
                )
            forwarded.append(
                f'onramp_identity_forwarded_total{{partition="{p}"}} {st.get("forwarded", 0)}'
            )
            for outcome, n in sorted(st.get("identity", {}).items()):
                merges.append(
                    f'onramp_identity_merges_total{{partition="{p}",outcome="{outcome}"}} {n}'
                )
            for column, rate in sorted(st.get("quality", {}).get("nullRate", {}).items()):
                nulls.append(f'onramp_stream_null_rate{{partition="{p}",column="{column}"}} {rate}')
            buffered.append(f'onramp_stream_buffered_events{{partition="{p}"}} {st["buffered"]}')
            if st.get("lag") is not None:
                lag.append(f'onramp_stream_consumer_lag_records{{partition="{p}"}} {st["lag"]}')
        refused += len(worker.get("refused", {}))
        skipped += worker.get("checkpointsSkipped", 0)
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
        "# HELP onramp_stream_decisions_rejected_total Decision records sent to the DLQ by stream "
        "workers, by reason.",
        "# TYPE onramp_stream_decisions_rejected_total counter",
        *decisions_rejected,
        "# HELP onramp_stream_profiles Profiles held, per partition.",
        "# TYPE onramp_stream_profiles gauge",
        *profiles,
        "# HELP onramp_stream_profiles_evicted_total Profiles evicted: the watermark passed their "
        "last event + stream.profile_idle_ttl_s.",
        "# TYPE onramp_stream_profiles_evicted_total counter",
        *evicted,
        "# HELP onramp_stream_profile_caps_total Keys dropped by a per-profile cap "
        "(event_names, traits, sessions).",
        "# TYPE onramp_stream_profile_caps_total counter",
        *caps,
        "# HELP onramp_identity_merges_total Identity stitching: links and merges by outcome "
        "(merged, duplicate, conflict, refused_known, cap), per partition.",
        "# TYPE onramp_identity_merges_total counter",
        *merges,
        "# HELP onramp_identity_forwarded_total Events of merged ids sent on to the id they were "
        "merged into, per partition of the merged id.",
        "# TYPE onramp_identity_forwarded_total counter",
        *forwarded,
        "# HELP onramp_stream_checkpoint_refused_partitions Partitions not running because their "
        "checkpoint was refused (bad signature, unsigned, or not the state's classes).",
        "# TYPE onramp_stream_checkpoint_refused_partitions gauge",
        f"onramp_stream_checkpoint_refused_partitions {refused}",
        "# HELP onramp_stream_checkpoints_skipped_total Checkpoints not written because side "
        "outputs (late, DLQ, rewards) were not acknowledged by Kafka.",
        "# TYPE onramp_stream_checkpoints_skipped_total counter",
        f"onramp_stream_checkpoints_skipped_total {skipped}",
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
