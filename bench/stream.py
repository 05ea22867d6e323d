"""Stream throughput: events/s from ``onramp.events`` to applied state, beside the raw consumer.

Starts the embedded broker and a local Ray, loads a backlog of simulated onboarding events
(normalized exactly as the collector writes them: ~5% duplicates, ~10% out of order), then:

1. baseline: the same Kafka client reads the whole backlog with no processing (records/s);
2. end to end: stream workers (Ray actors, every semantic on: decode, dedupe, ordering,
   windows, watermark, late routing, checkpoints) drain the backlog (events/s);
3. freshness: events produced at a fixed offered rate (default 10k/s) with ``receivedAt`` set
   at production; the workers' histogram of ``now - receivedAt`` at state update gives p50/p99;
4. bytes of state per user: the size of the partition snapshots over the users they hold.

    .venv/bin/python bench/stream.py                          # confluent-kafka (the default)
    .venv/bin/python bench/stream.py --client kafka-python    # the pure-Python client
"""

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, git_rev, machine


def _backlog(events: int, seed: int) -> list[tuple[bytes, bytes]]:
    """Simulated traffic as the collector writes it; the devices "send" at the end of the
    simulated period, so the backlog lies in the past and later (fresh) events are on time."""
    from ray_app.config import SimSettings
    from ray_app.sim import TrafficPlan

    settings = SimSettings(
        users=max(events // 21, 10),
        seed=seed,
        duplicate_share=0.05,
        out_of_order_share=0.10,
        malformed_share=0.0,
    )
    return TrafficPlan.build(settings).normalized(dt.datetime.now(dt.UTC), batch=200)[:events]


def _percentile(bounds: list[int], counts: list[int], q: float) -> float | None:
    total = sum(counts)
    if not total:
        return None
    seen = 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= q * total:
            return float(bounds[i]) if i < len(bounds) else float("inf")
    return None


def _freshness(sup: Any) -> list[int]:
    counts: list[int] = []
    for st in sup.status():
        c = st["freshnessCounts"]
        counts = [a + b for a, b in zip(counts, c, strict=True)] if counts else list(c)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--client", choices=["kafka-python", "confluent"], default="confluent")
    ap.add_argument("--events", type=int, default=200_000, help="backlog size")
    ap.add_argument("--workers", type=int, default=2, help="stream worker actors")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument(
        "--offered-rate", type=float, default=10_000, help="events/s for the freshness phase"
    )
    ap.add_argument("--offered-seconds", type=float, default=10.0)
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    import orjson
    import ray

    from ray_app.config import load_settings
    from ray_app.kafka import EmbeddedBroker, OutRecord, ensure_topics, make_consumer, make_producer
    from ray_app.stream import StreamSupervisor
    from ray_app.stream.worker import FRESHNESS_BUCKETS_MS

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    settings = load_settings(
        env={
            "ONRAMP_KAFKA__CLIENT": args.client,
            "ONRAMP_KAFKA__PARTITIONS": str(args.partitions),
            "ONRAMP_KAFKA__TOPIC_PREFIX": "bench",
        }
    )
    log(f"building {args.events:,} events ...")
    records = _backlog(args.events, seed=11)
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, settings.kafka)
        topic = settings.topics.events
        loader = make_producer(
            broker.bootstrap, settings.kafka.model_copy(update={"client": "confluent"})
        )
        loader.send_all([OutRecord(topic, v, key=k) for k, v in records]).result(timeout=600)
        log(f"backlog of {len(records):,} records in {topic}")

        # 1. baseline: raw consume, same client, same topic
        consumer = make_consumer(broker.bootstrap, settings.kafka)
        consumer.assign([(topic, p) for p in range(args.partitions)])
        n, started = 0, time.perf_counter()
        while n < len(records) and time.perf_counter() - started < 120:
            n += len(consumer.poll(0.2, 10_000))
        raw_rate = n / (time.perf_counter() - started)
        consumer.close()
        log(f"raw consume ({args.client}): {raw_rate:,.0f} records/s")

        # 2. end to end: drain the backlog with every semantic on
        ray.init(
            address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False
        )
        ckpt = tempfile.mkdtemp(prefix="onramp-bench-ckpt-")
        sup = StreamSupervisor(
            settings, broker.bootstrap, workers=args.workers, checkpoint_uri=ckpt
        )
        spawned = time.perf_counter()
        sup.start()
        # timed from the workers' start to the last record applied, as the raw consume is from
        # its first poll to its last record: the workers' process start-up and wait_for's
        # settling reads (a second of unchanged totals) are not stream throughput
        started, before_start = time.perf_counter(), sup.totals().get("records", 0)
        done = before_start
        while done < len(records) and time.perf_counter() - started < 600:
            time.sleep(0.02)
            try:
                done = sup.totals().get("records", 0)
            except Exception:  # a worker is being replaced: wait_for below judges
                continue
        e2e_s = time.perf_counter() - started
        totals = sup.wait_for(len(records), timeout_s=600)
        e2e_rate = (min(done, len(records)) - before_start) / e2e_s
        with_startup = totals.get("records", 0) / (time.perf_counter() - spawned)
        log(
            f"end to end ({args.workers} workers): {e2e_rate:,.0f} events/s "
            f"({with_startup:,.0f}/s counting the workers' start and settling)  {totals}"
        )

        # 3. freshness at a fixed offered load
        before = _freshness(sup)
        # the producer that loaded the backlog, warm as a collector's is once it serves: a
        # new idempotent producer holds its first sends until the broker gives it a producer
        # id (0.5-0.7 s here), which put the first 5,000 events of this phase at 250-750 ms
        # and made p99 a measure of the client's start, not of the stream
        producer = loader
        offered = int(args.offered_rate * args.offered_seconds)
        step = max(int(args.offered_rate / 100), 1)  # 100 sends a second
        start = time.perf_counter()
        sent = 0
        i = 0
        while sent < offered:
            now_iso = (
                dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
            chunk = []
            for _ in range(step):
                k, v = records[i % len(records)]
                d = orjson.loads(v)
                d["messageId"] = f"fresh-{sent}"
                if "sessionId" in d:  # new onboarding sessions, as live traffic would bring
                    d["sessionId"] = f"{d['sessionId']}-live{i // len(records)}"
                d["receivedAt"] = now_iso
                d["timestamp"] = now_iso
                chunk.append(OutRecord(topic, orjson.dumps(d), key=k))
                sent += 1
                i += 1
            producer.send_all(chunk)
            delay = start + sent / args.offered_rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        producer.flush(60)
        achieved = sent / (time.perf_counter() - start)
        waited = time.perf_counter()
        after_totals = sup.wait_for(len(records) + sent, timeout_s=120)
        log(
            f"offered phase done; drained {time.perf_counter() - waited:.1f}s later: {after_totals}"
        )
        after = _freshness(sup)
        window = [a - b for a, b in zip(after, before, strict=True)]
        bounds = list(FRESHNESS_BUCKETS_MS)
        p50, p99 = _percentile(bounds, window, 0.50), _percentile(bounds, window, 0.99)
        log(
            f"freshness at {achieved:,.0f} events/s offered: p50 <= {p50} ms, p99 <= {p99} ms ({sum(window):,} events)"
        )

        # 4. bytes of state per user
        sizes = [ray.get(w.state_size.remote()) for w in sup.workers]
        state_bytes = sum(s["bytes"] for s in sizes)
        users = sum(s["users"] for s in sizes)
        log(
            f"state: {state_bytes:,} bytes for {users:,} users ({state_bytes / max(users, 1):,.0f} bytes/user)"
        )
        sup.stop()
        producer.close()
        loader.close()
        ray.shutdown()

    emit(
        {
            "benchmark": "stream",
            "figure": "events/s from onramp.events to applied state (decode, dedupe, ordering, windows, late routing, checkpoints)",
            "value": round(e2e_rate, 1),
            "baseline": "raw consume of the same topic by the same client, no processing",
            "baseline_value": round(raw_rate, 1),
            "ratio": round(e2e_rate / raw_rate, 3),
            "events_per_s_with_worker_start": round(with_startup, 1),
            "records_before_timing": before_start,
            "workers": args.workers,
            "partitions": args.partitions,
            "events": len(records),
            "freshness_offered_per_s": round(achieved, 1),
            "freshness_p50_ms_at_most": p50,
            "freshness_p99_ms_at_most": p99,
            "freshness_histogram_ms": {
                str(b): n for b, n in zip([*bounds, "inf"], window, strict=True) if n
            },
            "freshness_note": "receivedAt set when the record is produced: Kafka + worker, not the collector",
            "state_bytes_per_user": round(state_bytes / max(users, 1), 1),
            "users": users,
            "totals": totals,
            "kafka_client": args.client,
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
