"""Decision latency and throughput: ``POST /v1/decide`` driven by wrk, beside a trivial route on
the same Serve HTTP path measured in the same run.

Starts the embedded broker, a local Ray, the stream workers and the Onramp app on Serve (HAProxy
mode where available), loads simulated onboarding traffic so that most users have a live
profile, deploys a trivial Serve route beside the app, then drives both with wrk (one thread,
keep-alive connections, bench/wrk/post.lua cycling through one body per user):

* closed loop at 16, 64 and 256 connections, ``/v1/decide`` and the trivial route in turn at
  each (so that both see the same moment of this shared machine): 2xx answers/s, p50, p99 and
  p99.9. The figure is ``/v1/decide`` at 64 connections; the ratio is to the trivial route's
  answers/s at 64. This machine's speed drifts within a run (the trivial route alone moved
  between 1,651 and 2,762 answers/s from run to run on one sitting), so the pair at 64 is run
  ``--rounds`` times (3), straight after the first pair, the order of the two routes alternating;
  the figure is the round with the median ratio, and every round's ratio and ingress replicas
  are in ``ratio_rounds`` and ``replicas_rounds`` (a round where Serve had added a replica is
  reported but not used for the figure);
* open loop: a fixed offered rate of half the best ``/v1/decide`` rate above, on ``/v1/decide``
  and at the same rate on the trivial route: the latency at half load, without the queue a
  closed loop builds. The wrk script paces its connections against one schedule, with rate x 1 s
  connections, so that a request waits for a free connection only when answers take over a
  second; those late sends are counted (``late_sends``: 0 means the offered rate held).

Every answer is a full decision: profile read from the owning stream worker, CRM enrichment,
features, model forward (batched per loop tick), policy with its propensity, decision record
handed to Kafka (``onramp.decisions``). Context, after the stack is down: a plain FastAPI app
under uvicorn, no Ray, at 64 connections (what Python HTTP allows here). Any connect, read,
write or timeout error or non-2xx answer shows in ``errors`` of the JSON line. ``replicas``: the
ingress replicas by state right after each ``/v1/decide`` run (the shipped autoscaling settings;
tests/integration/test_autoscaling.py shows a load step scaling them up and back down).

    .venv/bin/python bench/decide.py                          # confluent-kafka (the default)
    .venv/bin/python bench/decide.py --client kafka-python    # the pure-Python decision log
"""

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    SETTLE_OPEN_LOOP_S,
    SETTLE_S,
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

READ_KEY = "bench-read-key"
SLOTS = ("next_step", "welcome_content", "checklist_order")
HEADERS = {"Authorization": f"Bearer {READ_KEY}", "Content-Type": "application/json"}

PLAIN_APP = """
from fastapi import FastAPI, Request
from fastapi.responses import Response
app = FastAPI()

@app.post("/v1/decide")
async def decide(request: Request) -> Response:
    await request.body()
    return Response(b'{"chosen":"welcome"}', media_type="application/json")
"""


def decide_bodies(users: list[str]) -> list[bytes]:
    """One request body per user, the slots in turn."""
    return [
        json.dumps(
            {"user_id": u, "slot": SLOTS[i % len(SLOTS)], "context": {"device": "web"}}
        ).encode()
        for i, u in enumerate(users)
    ]


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


def ingress_replicas(app_name: str | None = None) -> dict[str, int]:
    """The ingress replicas of ``app_name`` (default: Onramp's app) by state, e.g.
    ``{"RUNNING": 2, "STARTING": 1}``: after a run, whether Serve's autoscaling added any under
    that load (a replica added stays for decide.downscale_delay_s)."""
    from ray import serve

    from ray_app.up import APP_NAME

    app = serve.status().applications.get(app_name or APP_NAME)
    deployment = app.deployments.get("Collector") if app else None
    if deployment is None:
        return {}
    return {str(getattr(k, "value", k)): n for k, n in deployment.replica_states.items() if n}


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
    ap.add_argument("--client", choices=["kafka-python", "confluent"], default="confluent",
                    help="Kafka client of the decision log")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each closed-loop run")
    ap.add_argument("--connections", default="16,64,256", help="closed loop, comma-separated")
    ap.add_argument("--ratio-at", type=int, default=64,
                    help="connections of the figure and its ratio (one of --connections)")  # fmt: skip
    ap.add_argument("--open-seconds", type=float, default=15.0,
                    help="duration of each open-loop run (0: none)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3,
                    help="pairs of runs (decide, trivial) at --ratio-at; the figure is the "
                    "median round's")  # fmt: skip
    ap.add_argument("--users", type=int, default=2000, help="simulated users with profiles")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain FastAPI context")
    args = ap.parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    if args.ratio_at not in connections:
        ap.error(f"--ratio-at {args.ratio_at} is not in --connections {args.connections}")
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")

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
    started = time.monotonic()
    print(f"starting broker + Ray + stream + Serve (client {args.client}) ...", file=sys.stderr)
    results: dict[str, list[dict[str, Any]]] = {
        "decide": [],
        "trivial_serve": [],
        "open_loop": [],
        "fastapi": [],
        "rounds": [],  # every (decide, trivial) pair at --ratio-at, the sweep's first
    }

    def run(label: str, url: str, bodies: list[bytes], c: int, **kw: Any) -> dict[str, Any]:
        time.sleep(kw.pop("settle", SETTLE_S))
        r = wrk(url, bodies, HEADERS, c, kw.pop("seconds", args.seconds), **kw)
        print(describe(label, r), file=sys.stderr, flush=True)
        return r

    with Stack(settings, build_app) as stack:
        users = load_profiles(stack, settings, args.users)
        known = users + [f"unknown-{i}" for i in range(len(users) // 10)]  # ~10% cold start
        bodies = decide_bodies(known)
        print(f"{len(users)} users with live profiles", file=sys.stderr, flush=True)
        decide_url = stack.base_url + "/v1/decide"
        trivial_url = stack.base_url + "/trivial/v1/decide"  # same proxy, same Serve path
        deploy_trivial("/trivial", "/v1/decide", b'{"chosen":"welcome"}')
        wrk(decide_url, bodies, HEADERS, 16, 2)  # warm up both
        wrk(trivial_url, bodies, HEADERS, 16, 2)
        for c in connections:  # in turn at each concurrency: the same moment of this machine
            results["decide"].append(
                {**run("/v1/decide", decide_url, bodies, c), "replicas": ingress_replicas()}
            )
            results["trivial_serve"].append(run("trivial Serve", trivial_url, bodies, c))
            if c != args.ratio_at:
                continue
            results["rounds"].append(
                {"decide": results["decide"][-1], "trivial_serve": results["trivial_serve"][-1]}
            )
            # more pairs at the figure's concurrency, straight after the first (before a heavier
            # load makes Serve add a replica), the routes' order alternating
            for n in range(1, args.rounds):
                done: dict[str, dict[str, Any]] = {}
                pair = [("/v1/decide", decide_url), ("trivial Serve", trivial_url)]
                for label, url in pair[::-1] if n % 2 else pair:
                    done[label] = run(f"{label} (round {n + 1})", url, bodies, c)
                    if label == "/v1/decide":
                        done[label]["replicas"] = ingress_replicas()
                results["rounds"].append(
                    {"decide": done["/v1/decide"], "trivial_serve": done["trivial Serve"]}
                )
        peak = max(pair["decide"]["requests_per_s"] for pair in results["rounds"])
        peak = max(peak, *(r["requests_per_s"] for r in results["decide"]))
        if args.open_seconds > 0 and peak > 0:
            rate = peak / 2
            c = open_loop_connections(rate)
            for route, url in (("decide", decide_url), ("trivial_serve", trivial_url)):
                r = run(f"{route} open loop", url, bodies, c, seconds=args.open_seconds,
                        rate=rate, settle=SETTLE_OPEN_LOOP_S)  # fmt: skip
                results["open_loop"].append({"route": route, **r})
        health = json.loads(
            subprocess.run(  # the decision-log counters are health details: a read key's
                [
                    "curl",
                    "-s",
                    "-H",
                    f"Authorization: Bearer {READ_KEY}",
                    f"{stack.base_url}/healthz",
                ],
                capture_output=True,
                text=True,
            ).stdout
            or "{}"
        )
        from ray import serve

        serve.delete("trivial")
        http_mode = stack.http_mode
    if not args.no_plain:
        port = free_port()
        proc = plain_fastapi(port, workdir)
        try:
            url = f"http://127.0.0.1:{port}/v1/decide"
            wrk(url, bodies, HEADERS, 16, 1)  # warm up
            results["fastapi"].append(run("plain FastAPI", url, bodies, args.ratio_at))
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    rounds = results["rounds"]
    ratios = [ratio(r["decide"]["requests_per_s"], r["trivial_serve"]["requests_per_s"]) or 0.0
              for r in rounds]  # fmt: skip
    # a round where Serve had added (or was adding) an ingress replica does not compare with the
    # trivial route's one replica: it is reported, not used for the figure
    first = rounds[0]["decide"].get("replicas")
    alike = [i for i, r in enumerate(rounds) if r["decide"].get("replicas") == first]
    median = sorted(alike, key=lambda i: ratios[i])[(len(alike) - 1) // 2]  # the lower middle
    top, trivial = rounds[median]["decide"], rounds[median]["trivial_serve"]
    open_loop = {r["route"]: r for r in results["open_loop"]}
    runs = [r for name, rows in results.items() if name != "rounds" for r in rows]
    runs += [pair[route] for pair in rounds[1:] for route in ("decide", "trivial_serve")]
    emit(
        {
            "benchmark": "decide",
            "figure": f"/v1/decide requests/s (2xx) at {args.ratio_at} connections, wrk closed "
            "loop (profile read, features, model, policy, decision log)",
            "value": top["requests_per_s"],
            "p50_ms": top["p50_ms"],
            "p99_ms": top["p99_ms"],
            "p999_ms": top["p999_ms"],
            "baseline": "trivial Serve deployment on the same HTTP path, same wrk load, same run",
            "baseline_value": trivial["requests_per_s"],
            "ratio": ratio(top["requests_per_s"], trivial["requests_per_s"]),
            # every round's ratio at --ratio-at, in order, and its ingress replicas; the figure
            # is the median of the rounds with the first round's replicas
            "ratio_rounds": ratios,
            "replicas_rounds": [r["decide"].get("replicas") for r in rounds],
            "median_round": median + 1,
            # every concurrency: decide beside trivial, with the latency quantiles
            "by_connections": side_by_side(  # at --ratio-at, the median round
                "decide",
                [top if r["connections"] == args.ratio_at else r for r in results["decide"]],
                [
                    trivial if r["connections"] == args.ratio_at else r
                    for r in results["trivial_serve"]
                ],
                connections,
            ),
            "peak_req_per_s": peak,
            # cores by process during the figure's two runs: what a decision costs beyond the
            # trivial route, and where (replica, stream worker, broker, HAProxy, wrk)
            "cores": {"decide": top.get("cores"), "trivial_serve": trivial.get("cores")},
            # the ingress replicas by state after the figure's run (shipped autoscaling settings)
            "replicas": top.get("replicas"),
            "open_loop": {
                "note": "fixed offered rate, half the best /v1/decide rate, on both routes; wrk "
                "paced per connection against one schedule; late_sends 0: the rate held",
                "decide": open_loop.get("decide"),
                "trivial_serve": open_loop.get("trivial_serve"),
            },
            "plain_fastapi_req_per_s": results["fastapi"][0]["requests_per_s"]
            if results["fastapi"]
            else None,
            "errors": sum(r["error_count"] for r in runs),
            "scenarios": results,
            "decision_log": health.get("decisionLog"),
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
