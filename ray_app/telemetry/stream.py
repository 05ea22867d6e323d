"""Prometheus text for the stream workers' state: outcomes, buffered events, consumer lag and the
freshness histogram (``receivedAt`` at the collector -> state updated), per partition; the bounds
on profiles (live profiles, evictions past the idle TTL, keys dropped by each per-profile cap),
rejected decision records, and the checkpoints the workers refused to load or skipped writing.
Every family has a sample whatever the status holds (0 where a key is absent), so dashboards and
alert rules always find it; but for the families by ``reason``, which have a sample for each
reason counted so far (alert rules read them with ``or vector(0)``)."""

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
    onramp_stream_freshness_seconds_bucket{worker="w0",le="0.01"} 4
    onramp_stream_freshness_seconds_bucket{worker="w0",le="0.1"} 5
    onramp_stream_freshness_seconds_bucket{worker="w0",le="+Inf"} 5
    onramp_stream_freshness_seconds_sum{worker="w0"} 0.07
    onramp_stream_freshness_seconds_count{worker="w0"} 5
    """
    fam: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
    refused = 0
    skipped: dict[str, int] = {}  # worker slot -> checkpoints it skipped
    tick_failures: dict[str, int] = {}  # worker slot -> ticks whose send failed
    waiting = 0.0
    # slot -> its histograms and its sum: one series per worker slot, as checkpointsSkipped (a
    # sum over workers went down when one restarted, which rate() reads as a reset, counting
    # every other worker's events again)
    histograms: dict[str, list[tuple[list[int], list[int]]]] = {}
    total_ms: dict[str, float] = {}
    for worker in status:
        for p, st in sorted(worker["partitions"].items(), key=lambda kv: int(kv[0])):
            _partition_samples(fam, p, st)
        refused += len(worker.get("refused", {}))
        # one series per worker slot (w0, w1, ...: a replacement keeps its predecessor's), so
        # a restarted worker's count starting again from 0 reads as that counter's reset and
        # not as a sum going down, which increase() counts as new skips
        slot = str(worker.get("worker", "")).split("-", 1)[0]
        skipped[slot] = skipped.get(slot, 0) + worker.get("checkpointsSkipped", 0)
        tick_failures[slot] = tick_failures.get(slot, 0) + worker.get("ticksFailed", 0)
        waiting = max(waiting, worker.get("waitingOnKafkaS", 0.0))
        histograms.setdefault(slot, []).append(
            (worker["freshnessBucketsMs"], worker["freshnessCounts"])
        )
        total_ms[slot] = total_ms.get(slot, 0.0) + worker.get("freshnessSumMs", 0.0)
    fam["onramp_stream_checkpoint_refused_partitions"].append(
        f"onramp_stream_checkpoint_refused_partitions {refused}"
    )
    mismatch = int(any(worker.get("topicProblem") for worker in status))
    fam["onramp_stream_topic_partitions_mismatch"].append(
        f"onramp_stream_topic_partitions_mismatch {mismatch}"
    )
    for slot, n in sorted(skipped.items()) or [("", 0)]:
        labels = f'{{worker="{slot}"}}' if slot else ""
        fam["onramp_stream_checkpoints_skipped_total"].append(
            f"onramp_stream_checkpoints_skipped_total{labels} {n}"
        )
    for slot, n in sorted(tick_failures.items()) or [("", 0)]:
        labels = f'{{worker="{slot}"}}' if slot else ""
        fam["onramp_stream_ticks_failed_total"].append(
            f"onramp_stream_ticks_failed_total{labels} {n}"
        )
    fam["onramp_stream_waiting_on_kafka_seconds"].append(
        f"onramp_stream_waiting_on_kafka_seconds {waiting:g}"
    )
    lines: list[str] = []
    for name, kind, text in _FAMILIES:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *fam[name]]
    lines += [
        "# HELP onramp_stream_freshness_seconds From the collector's receivedAt to the state update.",
        "# TYPE onramp_stream_freshness_seconds histogram",
    ]
    # the bounds every worker has (a rolling upgrade may change them), for every slot alike
    everyone = [h for hs in histograms.values() for h in hs]
    common = merge_histograms(everyone)[0]
    for slot, hs in sorted(histograms.items()) or [("", [])]:
        slot_label = f'worker="{slot}",' if slot else ""
        bounds, cumulative = merge_histograms(hs, common)
        for bound, n in zip([*bounds, None], cumulative, strict=True):
            le = "+Inf" if bound is None else f"{bound / 1000:g}"
            lines.append(f'onramp_stream_freshness_seconds_bucket{{{slot_label}le="{le}"}} {n}')
        labels = f"{{{slot_label.rstrip(',')}}}" if slot else ""
        lines.append(
            f"onramp_stream_freshness_seconds_sum{labels} {total_ms.get(slot, 0.0) / 1000!r}"
        )
        lines.append(f"onramp_stream_freshness_seconds_count{labels} {cumulative[-1]}")
    return "\n".join(lines) + "\n"


def merge_histograms(
    histograms: list[tuple[list[int], list[int]]], bounds: list[int] | None = None
) -> tuple[list[int], list[int]]:
    """Workers' histograms (bucket bounds, counts per bucket with the overflow last) as one:
    the bounds every worker has (or ``bounds``, a subset of those), with cumulative counts
    (``le``) over all workers, ``+Inf`` last.

    Workers of different versions may have different bounds (during a rolling upgrade); a
    cumulative count is exact only at a bound a worker has, so only the common bounds are kept.

    >>> merge_histograms([([10, 100], [4, 1, 0]), ([10, 40, 100], [1, 2, 3, 4])])
    ([10, 100], [5, 11, 15])
    >>> merge_histograms([])
    ([], [0])
    """
    if not histograms:
        return list(bounds or []), [0] * (len(bounds or []) + 1)
    common = (
        sorted(set.intersection(*(set(b) for b, _ in histograms))) if bounds is None else bounds
    )
    cumulative = [0] * (len(common) + 1)
    for bounds, counts in histograms:
        running, at = 0, dict[int, int]()
        for bound, n in zip(bounds, counts, strict=False):
            running += n
            at[bound] = running
        for i, bound in enumerate(common):
            cumulative[i] += at[bound]
        cumulative[-1] += sum(counts)
    return common, cumulative


#: (name, type, help) of each family, in the order they are written.
_FAMILIES = (
    ("onramp_stream_records_total", "counter", "Records taken by stream workers, by outcome."),
    ("onramp_stream_rejected_total", "counter",
     "Records sent to the DLQ by stream workers, by reason."),
    ("onramp_stream_null_rate", "gauge",
     "Share of validated events without the column (data quality)."),
    ("onramp_stream_decisions_rejected_total", "counter",
     "Decision records sent to the DLQ by stream workers, by reason."),
    ("onramp_stream_profiles", "gauge", "Profiles held, per partition."),
    ("onramp_stream_profiles_evicted_total", "counter",
     "Profiles evicted: the watermark passed their last event + stream.profile_idle_ttl_s."),
    ("onramp_stream_profile_caps_total", "counter",
     "Keys dropped by a per-profile cap (event_names, traits, sessions)."),
    ("onramp_identity_merges_total", "counter",
     "Identity stitching: links and merges by outcome (merged, duplicate, conflict, "
     "refused_known, cap, too_large), per partition."),
    ("onramp_identity_forwarded_total", "counter",
     "Events of merged ids sent on to the id they were merged into, per partition of the "
     "merged id."),
    ("onramp_stream_checkpoint_refused_partitions", "gauge",
     "Partitions not running because their checkpoint was refused (bad signature, unsigned, or "
     "not the state's classes)."),
    ("onramp_stream_topic_partitions_mismatch", "gauge",
     "1 when the supervisor's last check (every minute) found a topic whose partition count is "
     "not kafka.partitions: some users' events go to partitions no worker reads."),
    ("onramp_stream_checkpoints_skipped_total", "counter",
     "Checkpoints not written because side outputs (late, DLQ, rewards) were not acknowledged "
     "by Kafka."),
    ("onramp_stream_ticks_failed_total", "counter",
     "Ticks (the time written into a quiet partition) whose send failed; a later tick takes "
     "their place."),
    ("onramp_stream_buffered_events", "gauge", "Events held in reorder buffers."),
    ("onramp_stream_consumer_lag_records", "gauge", "Records not yet taken, per partition."),
    ("onramp_stream_waiting_on_kafka_seconds", "gauge",
     "Longest a stream worker has been waiting, right now, for Kafka to acknowledge the late, "
     "DLQ, reward and identity records of a poll (it takes nothing meanwhile; 60 s at most, "
     "then it fails and is restarted)."),
    ("onramp_stream_redelivered_records_total", "counter",
     "Records the Kafka client handed over again before a partition's next offset, events and "
     "decisions together (not applied twice), since the worker started."),
    ("onramp_stream_offset_gaps_total", "counter",
     "Offsets a partition's records skipped, events and decisions together, that fetching "
     "again did not bring back (transaction markers or compaction; else records lost), since "
     "the worker started."),
    ("onramp_stream_fetched_again_total", "counter",
     "Times a partition was read again from an offset a fetch skipped, events and decisions "
     "together, since the worker started (what came back is applied; what never does is "
     "counted in onramp_stream_offset_gaps_total)."),
    ("onramp_stream_ticks_total", "counter",
     "Ticks a partition of onramp.events took: the time, written by its worker while the "
     "partition was quiet and a decision's window or a held-back event waited on its watermark "
     "(stream.watermark_tick_s)."),
)  # fmt: skip

_OUTCOMES = (
    ("applied", "applied"),
    ("duplicate", "duplicates"),
    ("late", "late"),
    ("rejected", "rejected"),
)


def _partition_samples(fam: dict[str, list[str]], p: str, st: dict[str, Any]) -> None:
    """Append one partition's samples to their families."""

    def add(name: str, value: Any, **labels: Any) -> None:
        extra = "".join(f',{k}="{v}"' for k, v in labels.items())
        fam[name].append(f'{name}{{partition="{p}"{extra}}} {value}')

    for outcome, key in _OUTCOMES:
        add("onramp_stream_records_total", st[key], outcome=outcome)
    for reason, n in sorted(st.get("rejectedByReason", {}).items()):
        add("onramp_stream_rejected_total", n, reason=reason)
    for reason, n in sorted(st.get("decisionsRejectedByReason", {}).items()):
        add("onramp_stream_decisions_rejected_total", n, reason=reason)
    add("onramp_stream_profiles", st.get("profiles", 0))
    add("onramp_stream_profiles_evicted_total", st.get("profilesEvicted", 0))
    hits = st.get("profileCaps", {})
    for cap in CAPS:
        add("onramp_stream_profile_caps_total", hits.get(cap, 0), cap=cap)
    add("onramp_identity_forwarded_total", st.get("forwarded", 0))
    for outcome, n in sorted(st.get("identity", {}).items()):
        add("onramp_identity_merges_total", n, outcome=outcome)
    for column, rate in sorted(st.get("quality", {}).get("nullRate", {}).items()):
        add("onramp_stream_null_rate", rate, column=column)
    add("onramp_stream_buffered_events", st["buffered"])
    if st.get("lag") is not None:
        add("onramp_stream_consumer_lag_records", st["lag"])
    add("onramp_stream_redelivered_records_total", st.get("redelivered", 0))
    add("onramp_stream_offset_gaps_total", st.get("offsetGaps", 0))
    add("onramp_stream_fetched_again_total", st.get("fetchedAgain", 0))
    add("onramp_stream_ticks_total", st.get("ticks", 0))
