"""Collector throughput: events/s acknowledged by Kafka through HTTP, beside the raw producer,
and single events beside a trivial route on the same Serve HTTP path.

Starts the embedded broker, a local Ray and the collector on Serve (HAProxy mode where
available), deploys a trivial Serve route beside it, then drives them with wrk (one thread,
keep-alive connections, bench/wrk/post.lua cycling through many bodies):

* batches of 100 events to ``/v1/batch`` at 1, 4 and 16 connections (the collector hands each
  batch to the producer at once, so more connections only queue: the figure is the best);
  then, at the best of those connections, the same batches with the batch's ``sentAt`` as
  browser SDKs send it (each event takes it and its time is corrected for clock skew:
  ``sdk_batches`` in the JSON);
* single events to ``/v1/track`` and the trivial route, in turn, at 16, 64 and 256 connections:
  2xx answers/s, p50, p99 and p99.9; the single-event ratio is at 64 connections (goal of
  issue 18: at least 0.6);
* open loop: single events at a fixed offered rate of half the best ``/v1/track`` rate, and the
  trivial route at the same rate (wrk paced per connection against one schedule, rate x 1 s
  connections; ``late_sends``, requests that found no free connection on time, 0 means the
  offered rate held).

Only 2xx answers count: a 200 means Kafka acknowledged every record (acks=all). Any connect,
read, write or timeout error or non-2xx answer shows in ``errors`` of the JSON line. In the same
run it measures the baseline of the batches: the same Kafka client's idempotent ``acks=all``
producer writing the same records straight to the broker from one process. Last line: one JSON
object.

    .venv/bin/python bench/collect.py                         # confluent-kafka (the default client)
    .venv/bin/python bench/collect.py --client kafka-python   # the pure-Python client
"""

import argparse
import base64
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    SETTLE_OPEN_LOOP_S,
    SETTLE_S,
    at,
    deploy_trivial,
    describe,
    emit,
    git_rev,
    load_generator,
    machine,
    open_loop_connections,
    ratio,
    side_by_side,
    wrk,
)

WRITE_KEY = "bench-write-key"
HEADERS = {
    "Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
    "Content-Type": "application/json",
}


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


#: When the client sent the batch, as browser SDKs (Onramp's, analytics.js) write it on every
#: batch: each event then takes it, and its time is corrected for the client's clock skew.
SDK_SENT_AT = "2026-11-01T10:00:01.500Z"


def batch_bodies(count: int, per: int = 100, sent_at: str | None = None) -> list[bytes]:
    """``count`` bodies for /v1/batch of ``per`` events each (with the batch's ``sentAt``, as
    an SDK sends it, when given)."""
    envelope = {} if sent_at is None else {"sentAt": sent_at}
    return [
        json.dumps({"batch": [_event(i, b * 1000 + i) for i in range(per)], **envelope}).encode()
        for b in range(count)
    ]


def track_bodies(count: int) -> list[bytes]:
    """``count`` bodies for /v1/track, one event each (no ``type``: the route says it)."""
    bodies = []
    for b in range(count):
        event = _event(b % 100, b)
        del event["type"]
        bodies.append(json.dumps(event).encode())
    return bodies


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
    # send_many: the call the collector makes (and what the stream's outputs use)
    producer.send_many(records[:1000]).result(timeout=60)  # warm up: connection, metadata, pid
    started = time.perf_counter()
    producer.send_many(records).result(timeout=300)
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
        default="confluent",
        help="Kafka client of the collector and the baseline",
    )
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each closed-loop run")
    ap.add_argument("--batch-connections", default="1,4,16", help="for batches of 100")
    ap.add_argument("--single-connections", default="16,64,256", help="for single events")
    ap.add_argument(
        "--ratio-at",
        type=int,
        default=64,
        help="connections of the single-event ratio (one of --single-connections)",
    )
    ap.add_argument(
        "--open-seconds", type=float, default=15.0, help="duration of each open-loop run (0: none)"
    )
    ap.add_argument(
        "--open-rate",
        type=float,
        default=0.0,
        help="offered rate of the open-loop runs, requests/s (default: half the best /v1/track rate)",
    )
    ap.add_argument(
        "--raw-events", type=int, default=50_000, help="records for the raw-producer baseline"
    )
    ap.add_argument(
        "--default-http", action="store_true", help="use Serve's default proxy instead of HAProxy"
    )
    args = ap.parse_args()
    batch_connections = [int(c) for c in args.batch_connections.split(",")]
    single_connections = [int(c) for c in args.single_connections.split(",")]
    if args.ratio_at not in single_connections:
        ap.error(f"--ratio-at {args.ratio_at} is not in --single-connections")

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
    started = time.monotonic()
    print(f"starting broker + Ray + Serve (client {args.client}) ...", file=sys.stderr, flush=True)
    batches, singles = batch_bodies(200), track_bodies(2000)
    sdk_batches = batch_bodies(200, sent_at=SDK_SENT_AT)
    results: dict[str, list[dict[str, Any]]] = {
        "batch": [],
        "sdk_batch": [],
        "track": [],
        "trivial_serve": [],
        "open_loop": [],
    }

    def run(
        label: str, url: str, bodies: list[bytes], per: int, c: int, **kw: Any
    ) -> dict[str, Any]:
        time.sleep(kw.pop("settle", SETTLE_S))
        r = wrk(url, bodies, HEADERS, c, kw.pop("seconds", args.seconds), **kw)
        r |= {"events_per_request": per, "events_per_s": round(r["requests_per_s"] * per, 1)}
        print(
            describe(label, r) + f"  {r['events_per_s']:,.0f} events/s", file=sys.stderr, flush=True
        )
        return r

    with Stack(settings, build_app, start_stream=False) as stack:  # the collector alone
        assert stack.bootstrap is not None
        batch_url = stack.base_url + "/v1/batch"
        track_url = stack.base_url + "/v1/track"
        trivial_url = stack.base_url + "/trivial/v1/track"  # same proxy, same Serve path
        deploy_trivial("/trivial", "/v1/track", b'{"success":true}')
        wrk(batch_url, batches, HEADERS, 4, 2)  # warm up every route
        wrk(track_url, singles, HEADERS, 16, 2)
        wrk(trivial_url, singles, HEADERS, 16, 2)
        for c in batch_connections:
            results["batch"].append(run("/v1/batch (100 events)", batch_url, batches, 100, c))
        best_c = max(results["batch"], key=lambda r: r["events_per_s"])["connections"]
        sdk = run("/v1/batch, with sentAt", batch_url, sdk_batches, 100, best_c)
        results["sdk_batch"].append(sdk)
        for c in single_connections:  # in turn at each concurrency: the same moment
            results["track"].append(run("/v1/track", track_url, singles, 1, c))
            results["trivial_serve"].append(run("trivial Serve", trivial_url, singles, 1, c))
        single_peak = max(r["requests_per_s"] for r in results["track"])
        if args.open_seconds > 0 and single_peak > 0:
            rate = args.open_rate or single_peak / 2
            c = open_loop_connections(rate)
            for route, url in (("track", track_url), ("trivial_serve", trivial_url)):
                r = run(f"{route} open loop", url, singles, 1, c, seconds=args.open_seconds,
                        rate=rate, settle=SETTLE_OPEN_LOOP_S)  # fmt: skip
                results["open_loop"].append({"route": route, **r})
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

    best = max(results["batch"], key=lambda s: s["events_per_s"])
    single = at(results["track"], args.ratio_at)
    trivial = at(results["trivial_serve"], args.ratio_at)
    open_loop = {r["route"]: r for r in results["open_loop"]}
    runs = [r for rows in results.values() for r in rows]
    emit(
        {
            "benchmark": "collect",
            "figure": "events/s accepted (Kafka-acknowledged) through HTTP, batches of 100, "
            "best of the connections, wrk closed loop",
            "value": best["events_per_s"],
            "connections": best["connections"],
            "p50_ms": best["p50_ms"],
            "p99_ms": best["p99_ms"],
            "p999_ms": best["p999_ms"],
            "baseline": "raw idempotent acks=all producer of the same client, same records, "
            "one process, send_many (the collector's call)",
            "baseline_value": raw["events_per_s"],
            "ratio": ratio(best["events_per_s"], raw["events_per_s"]),
            "sdk_batches": {
                "figure": "events/s through HTTP, batches of 100 with the batch's sentAt (as "
                "browser SDKs send them: each event's time corrected for clock skew), at the "
                "best connections of the batches above",
                "value": sdk["events_per_s"],
                "connections": sdk["connections"],
                "p50_ms": sdk["p50_ms"],
                "p99_ms": sdk["p99_ms"],
                "ratio_to_raw_producer": ratio(sdk["events_per_s"], raw["events_per_s"]),
            },
            "single_event": {
                "figure": f"/v1/track events/s (2xx) at {args.ratio_at} connections, wrk closed "
                "loop",
                "value": single["requests_per_s"],
                "p50_ms": single["p50_ms"],
                "p99_ms": single["p99_ms"],
                "p999_ms": single["p999_ms"],
                "baseline": "trivial Serve deployment on the same HTTP path, same wrk load, "
                "same run",
                "baseline_value": trivial["requests_per_s"],
                "ratio": ratio(single["requests_per_s"], trivial["requests_per_s"]),
                "goal_ratio": 0.6,
                "by_connections": side_by_side(
                    "track", results["track"], results["trivial_serve"], single_connections
                ),
                "peak_req_per_s": single_peak,
                "open_loop": {
                    "note": "fixed offered rate, half the best /v1/track rate, on both routes; "
                    "wrk paced per connection against one schedule; late_sends 0: the rate held",
                    "track": open_loop.get("track"),
                    "trivial_serve": open_loop.get("trivial_serve"),
                },
            },
            "raw_producer": raw,
            "errors": sum(r["error_count"] for r in runs),
            "scenarios": results,
            "kafka_client": args.client,
            "http_mode": http_mode,
            "load_generator": load_generator(),
            "seconds": round(time.monotonic() - started, 1),
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
