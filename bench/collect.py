"""Collector throughput: events/s acknowledged by Kafka through HTTP, beside the raw producer.

Starts the embedded broker, a local Ray and the collector on Serve (HAProxy mode where
available), then drives it from a separate load-generator process (asyncio + aiohttp):

* batches of 100 events to ``/v1/batch`` at several concurrencies;
* single events to ``/v1/track`` at several concurrencies.

Only 200 answers count: a 200 means Kafka acknowledged every record (acks=all). In the same run
it measures the baseline: the same Kafka client's idempotent ``acks=all`` producer writing the
same records straight to the broker from one process. Last line: one JSON object.

    .venv/bin/python bench/collect.py                      # kafka-python (the default client)
    .venv/bin/python bench/collect.py --client confluent   # librdkafka
"""

import argparse
import asyncio
import base64
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import closed_loop, deploy_trivial, emit, git_rev, machine, run_loadgen

WRITE_KEY = "bench-write-key"


def _event(i: int, user: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Step Completed",
        "userId": f"user-{user}",
        "messageId": f"{uuid.uuid4()}",
        "timestamp": "2026-11-01T10:00:00.000Z",
        "properties": {"stepId": "goals", "durationMs": 1234 + i, "plan": "pro"},
        "context": {
            "onramp": {"sessionId": f"s-{user}", "seq": i},
            "library": {"name": "bench", "version": "1"},
        },
    }


# -- load generator (runs in its own process) ------------------------------------------------


async def _load(
    url: str, path: str, bodies: list[bytes], per_request: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    r = await closed_loop(url, path, bodies, headers, concurrency, seconds)
    return {
        **r,
        "events_per_request": per_request,
        "events_per_s": round(r["requests_per_s"] * per_request, 1),
    }


def loadgen_main(spec: dict[str, Any]) -> None:
    per = spec["events_per_request"]
    bodies = []
    for b in range(200):
        events = [_event(i, b * 1000 + i) for i in range(per)]
        if per == 1:
            body = {k: v for k, v in events[0].items() if k != "type"}
        else:
            body = {"batch": events}
        bodies.append(json.dumps(body).encode())
    result = asyncio.run(
        _load(spec["url"], spec["path"], bodies, per, spec["concurrency"], spec["seconds"])
    )
    print(json.dumps(result))


def run_scenario(url: str, path: str, per: int, concurrency: int, seconds: float) -> dict[str, Any]:
    spec = {
        "url": url,
        "path": path,
        "events_per_request": per,
        "concurrency": concurrency,
        "seconds": seconds,
    }
    return run_loadgen(__file__, spec)


# -- context: the HTTP ceiling of this machine ------------------------------------------------


# -- baseline: the raw producer --------------------------------------------------------------


def raw_producer_rate(bootstrap: str, kafka_settings: Any, topic: str, n: int) -> dict[str, Any]:
    """Normalized records (what the collector writes), produced straight to Kafka, acks=all."""
    import datetime as dt

    from ray_app.collect.parse import parse_request
    from ray_app.kafka import OutRecord, make_producer

    records: list[OutRecord] = []
    while len(records) < n:
        payload = {
            "batch": [_event(i, len(records) + i) for i in range(100)],
            "writeKey": WRITE_KEY,
        }
        parsed = parse_request(
            "batch",
            json.dumps(payload).encode(),
            content_encoding=None,
            authorization=None,
            write_keys={"bench": WRITE_KEY},
            received_at=dt.datetime.now(dt.UTC),
        )
        records += [OutRecord(topic, v, key=k) for k, v in parsed.events]
    records = records[:n]
    producer = make_producer(bootstrap, kafka_settings)
    producer.send_all(records[:1000]).result(timeout=60)  # warm up: connection, metadata, pid
    started = time.perf_counter()
    producer.send_all(records).result(timeout=300)
    elapsed = time.perf_counter() - started
    producer.close()
    return {"events": n, "seconds": round(elapsed, 2), "events_per_s": round(n / elapsed, 1)}


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--client",
        choices=["kafka-python", "confluent"],
        default="kafka-python",
        help="Kafka client of the collector and the baseline",
    )
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each scenario")
    ap.add_argument(
        "--batch-concurrency", default="1,4,16", help="concurrencies for batches of 100"
    )
    ap.add_argument(
        "--single-concurrency", default="1,16,64", help="concurrencies for single events"
    )
    ap.add_argument(
        "--raw-events", type=int, default=50_000, help="records for the raw-producer baseline"
    )
    ap.add_argument(
        "--default-http", action="store_true", help="use Serve's default proxy instead of HAProxy"
    )
    ap.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen:
        loadgen_main(json.loads(args.loadgen))
        return

    import logging

    logging.basicConfig(level=logging.WARNING)
    from deployments.app import build_app
    from ray_app.config import load_settings
    from ray_app.kafka.broker import free_port
    from ray_app.up import Stack

    port = free_port()
    settings = load_settings(
        env={
            "ONRAMP_KAFKA__CLIENT": args.client,
            "ONRAMP_KAFKA__PARTITIONS": "8",
            "ONRAMP_COLLECTOR__PORT": str(port),
            "ONRAMP_COLLECTOR__WRITE_KEYS": json.dumps({"bench": WRITE_KEY}),
            "ONRAMP_COLLECTOR__HIGH_THROUGHPUT_HTTP": "false" if args.default_http else "true",
            "ONRAMP_STATE_DIR": os.path.join("/tmp", f"onramp-bench-{os.getpid()}"),
        }
    )
    print(f"starting broker + Ray + Serve (client {args.client}) ...", file=sys.stderr, flush=True)
    scenarios: list[dict[str, Any]] = []
    with Stack(settings, build_app, start_stream=False) as stack:  # the collector alone
        assert stack.bootstrap is not None
        url = stack.base_url
        run_scenario(url, "/v1/batch", 100, 4, 2.0)  # warm up
        plan = [("/v1/batch", 100, int(c)) for c in args.batch_concurrency.split(",")]
        plan += [("/v1/track", 1, int(c)) for c in args.single_concurrency.split(",")]
        for path, per, conc in plan:
            r = run_scenario(url, path, per, conc, args.seconds)
            scenarios.append(r)
            print(
                f"{path:<10} {per:>4} ev/req  c={conc:<3} {r['events_per_s']:>10,.0f} events/s  "
                f"{r['requests_per_s']:>8,.0f} req/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  {r['statuses']}",
                file=sys.stderr,
                flush=True,
            )
        deploy_trivial("/trivial", "/v1/track", b'{"success":true}')
        ceiling = []
        for c in args.single_concurrency.split(","):
            r = run_scenario(url + "/trivial", "/v1/track", 1, int(c), args.seconds)
            ceiling.append(r)
            print(
                f"trivial ingress (HTTP ceiling) c={c:<3} {r['requests_per_s']:>8,.0f} req/s  "
                f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms",
                file=sys.stderr,
                flush=True,
            )
        from ray import serve

        serve.delete("trivial")
        raw = raw_producer_rate(
            stack.bootstrap, settings.kafka, "onramp.bench.raw", args.raw_events
        )
        print(
            f"raw producer ({args.client}, acks=all): {raw['events_per_s']:,.0f} events/s",
            file=sys.stderr,
            flush=True,
        )
        http_mode = stack.http_mode
    best = max(
        (s for s in scenarios if s["events_per_request"] == 100), key=lambda s: s["events_per_s"]
    )
    best_single = max(
        (s for s in scenarios if s["events_per_request"] == 1), key=lambda s: s["events_per_s"]
    )
    emit(
        {
            "benchmark": "collect",
            "figure": "events/s accepted (Kafka-acknowledged) through HTTP, batches of 100, best concurrency",
            "value": best["events_per_s"],
            "baseline": "raw idempotent acks=all producer of the same client, same records, one process",
            "baseline_value": raw["events_per_s"],
            "ratio": round(best["events_per_s"] / raw["events_per_s"], 3),
            "single_event_best": {
                k: best_single[k] for k in ("events_per_s", "concurrency", "p50_ms", "p99_ms")
            },
            "http_ceiling_req_per_s": max(r["requests_per_s"] for r in ceiling),
            "single_event_share_of_http_ceiling": round(
                best_single["events_per_s"] / max(r["requests_per_s"] for r in ceiling), 3
            ),
            "http_ceiling_scenarios": ceiling,
            "kafka_client": args.client,
            "http_mode": http_mode,
            "scenarios": scenarios,
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
