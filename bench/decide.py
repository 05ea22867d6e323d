"""Decision latency and throughput: ``POST /v1/decide`` under closed-loop load, beside the HTTP
ceilings of this machine measured in the same run.

Starts the embedded broker, a local Ray, the stream workers and the Onramp app on Serve (HAProxy
mode where available), loads simulated onboarding traffic so that most users have a live
profile, then drives ``/v1/decide`` from a separate load-generator process (asyncio + aiohttp) at
16 and 64 connections. Every answer is a full decision: profile read from the owning stream
worker, CRM enrichment, features, model forward (batched per loop tick), policy with its
propensity, decision record handed to Kafka (``onramp.decisions``).

Baselines, same load generator, same run:

* a trivial Serve deployment on the same HTTP path (what Serve alone allows here);
* a plain FastAPI app under uvicorn, no Ray (what Python HTTP allows here).

    .venv/bin/python bench/decide.py                       # kafka-python
    .venv/bin/python bench/decide.py --client confluent    # librdkafka for the decision log
"""

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import closed_loop, deploy_trivial, emit, git_rev, machine, run_loadgen

READ_KEY = "bench-read-key"
SLOTS = ("next_step", "welcome_content", "checklist_order")

PLAIN_APP = """
from fastapi import FastAPI, Request
from fastapi.responses import Response
app = FastAPI()

@app.post("/v1/decide")
async def decide(request: Request) -> Response:
    await request.body()
    return Response(b'{"chosen":"welcome"}', media_type="application/json")
"""


def loadgen_main(spec: dict[str, Any]) -> None:
    bodies = [
        json.dumps(
            {"user_id": u, "slot": SLOTS[i % len(SLOTS)], "context": {"device": "web"}}
        ).encode()
        for i, u in enumerate(spec["users"])
    ]
    headers = {"Authorization": f"Bearer {READ_KEY}", "Content-Type": "application/json"}
    result = asyncio.run(
        closed_loop(
            spec["url"], "/v1/decide", bodies, headers, spec["concurrency"], spec["seconds"]
        )
    )
    print(json.dumps(result))


def run_scenario(url: str, users: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    spec = {"url": url, "users": users, "concurrency": concurrency, "seconds": seconds}
    return run_loadgen(__file__, spec)


def plain_fastapi(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    (workdir / "plain_decide_app.py").write_text(PLAIN_APP)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "plain_decide_app:app", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=workdir,
    )  # fmt: skip
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/v1/decide", content=b"{}", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("uvicorn did not start")


def load_profiles(stack: Any, settings: Any, users: int) -> list[str]:
    """Simulated onboarding traffic straight into onramp.events; waits until it is applied."""
    from ray_app.config import SimSettings
    from ray_app.kafka import OutRecord, make_producer
    from ray_app.sim import TrafficPlan

    plan = TrafficPlan.build(SimSettings(users=users, seed=11, malformed_share=0.0))
    records = plan.normalized(dt.datetime.now(dt.UTC))
    producer = make_producer(stack.bootstrap, settings.kafka)
    producer.send_all([OutRecord(settings.topics.events, v, key=k) for k, v in records]).result(
        timeout=120
    )
    producer.close()
    import ray

    from ray_app.stream.supervisor import SUPERVISOR_NAME

    sup = ray.get_actor(SUPERVISOR_NAME, namespace=settings.ray.namespace)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = ray.get(sup.status.remote())
        taken = sum(p["records"] for w in status for p in w["partitions"].values())
        if taken >= len(records):
            break
        time.sleep(0.5)
    return sorted({json.loads(v)["userKey"] for _, v in records})


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--client", choices=["kafka-python", "confluent"], default="kafka-python",
                    help="Kafka client of the decision log")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each scenario")
    ap.add_argument("--concurrency", default="16,64", help="connections, comma-separated")
    ap.add_argument("--users", type=int, default=2000, help="simulated users with profiles")
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

    workdir = Path("/tmp") / f"onramp-bench-decide-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(
        env={
            "ONRAMP_KAFKA__CLIENT": args.client,
            "ONRAMP_KAFKA__PARTITIONS": "8",
            "ONRAMP_COLLECTOR__PORT": str(free_port()),
            "ONRAMP_COLLECTOR__READ_KEYS": json.dumps({"bench": READ_KEY}),
            "ONRAMP_COLLECTOR__HIGH_THROUGHPUT_HTTP": "true",
            "ONRAMP_STATE_DIR": str(workdir / "state"),
        }
    )
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    print(f"starting broker + Ray + stream + Serve (client {args.client}) ...", file=sys.stderr)
    results: dict[str, list[dict[str, Any]]] = {"decide": [], "trivial_serve": [], "fastapi": []}
    with Stack(settings, build_app) as stack:
        users = load_profiles(stack, settings, args.users)
        known = users + [f"unknown-{i}" for i in range(len(users) // 10)]  # ~10% cold start
        print(f"{len(users)} users with live profiles", file=sys.stderr, flush=True)
        url = stack.base_url
        run_scenario(url, known, 16, 2.0)  # warm up
        for c in concurrencies:
            r = run_scenario(url, known, c, args.seconds)
            results["decide"].append(r)
            print(f"/v1/decide        c={c:<3} {r['requests_per_s']:>8,.0f} req/s  "
                  f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  {r['statuses']}",
                  file=sys.stderr, flush=True)  # fmt: skip
        health = json.loads(
            subprocess.run(  # the decision-log counters are health details: a read key's
                ["curl", "-s", "-H", f"Authorization: Bearer {READ_KEY}", f"{url}/healthz"],
                capture_output=True,
                text=True,
            ).stdout
            or "{}"
        )
        deploy_trivial("/trivial", "/v1/decide", b'{"chosen":"welcome"}')
        for c in concurrencies:
            r = run_scenario(url + "/trivial", known, c, args.seconds)
            results["trivial_serve"].append(r)
            print(f"trivial Serve     c={c:<3} {r['requests_per_s']:>8,.0f} req/s  "
                  f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms", file=sys.stderr, flush=True)  # fmt: skip
        from ray import serve

        serve.delete("trivial")
        http_mode = stack.http_mode
    port = free_port()
    proc = plain_fastapi(port, workdir)
    try:
        for c in concurrencies:
            r = run_scenario(f"http://127.0.0.1:{port}", known, c, args.seconds)
            results["fastapi"].append(r)
            print(f"plain FastAPI     c={c:<3} {r['requests_per_s']:>8,.0f} req/s  "
                  f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    top = results["decide"][-1]
    trivial = results["trivial_serve"][-1]
    emit(
        {
            "benchmark": "decide",
            "figure": f"/v1/decide requests/s at {top['concurrency']} connections "
            "(profile read, features, model, policy, decision log)",
            "value": top["requests_per_s"],
            "p50_ms": top["p50_ms"],
            "p99_ms": top["p99_ms"],
            "baseline": "trivial Serve deployment on the same HTTP path, same load",
            "baseline_value": trivial["requests_per_s"],
            "ratio": round(top["requests_per_s"] / trivial["requests_per_s"], 3)
            if trivial["requests_per_s"]
            else None,
            "plain_fastapi_req_per_s": results["fastapi"][-1]["requests_per_s"],
            "scenarios": results,
            "decision_log": health.get("decisionLog"),
            "kafka_client": args.client,
            "http_mode": http_mode,
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
