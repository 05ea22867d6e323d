"""The console's cost with 100k users in its state: what a poll costs the replica, how fast the
page loads, and a console data route under wrk beside ``/healthz`` (the trivial route of the same
app, same Serve HTTP path, same run).

Two parts, one command:

1. **In process** (no Ray): a :class:`~ray_app.console.state.ConsoleState` fed 100k users'
   records (a decision, its reward and a step completion each): the feed's cost a record, the
   cost of rendering every panel (the experiments through ``onramp report``'s ``analyze`` over
   100k users, in four time ranges), and the replica's cost of one poll
   (:class:`~ray_app.console.api.ConsoleApi` answering from the panels it holds), per route.
2. **Running Onramp** (embedded broker, local Ray, Serve in its high-throughput HTTP mode; no
   stream workers: the console's data are the topics): the same 100k users' records produced
   to ``onramp.decisions``, ``onramp.rewards`` and ``onramp.events``, the console's aggregator
   caught up, then: each route's replica time as its ``Server-Timing`` header says (sequential
   polls); wrk (bench/wrk/post.lua with WRK_METHOD=GET, closed loop) on
   ``GET /console/api/health`` and on ``GET /healthz`` without a read key (its status only: the
   trivial route); and the page in Debian's chromium (Playwright): from navigation to every
   panel showing data, the first time and 20 times warm (in-page time and requests beside).

The figure is the console route's throughput under wrk, the baseline ``/healthz``'s, the same
run; beside them the median and p99 replica time of a console poll through Serve
(``Server-Timing``, all data routes) against its 5 ms budget.

    .venv/bin/python bench/console.py                  # 100k users, ~3 min
    .venv/bin/python bench/console.py --users 20000    # quicker
"""

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench._common as common
from bench._common import describe, emit, git_rev, load_generator, machine, ratio, wrk

READ_KEY = "bench-console-read-key"
HEADERS = {"Authorization": f"Bearer {READ_KEY}"}
ROUTES = ("experiments?range=all", "experiments?range=1h", "learning", "funnel", "health")
T0 = 1_767_225_600_000


def records(users: int, now_ms: int) -> list[tuple[str, str, bytes]]:
    """(topic kind, user, value) of ``users`` users: a decision, its reward, a step completion.
    The decision and reward records are written by the records' own code, as the decide path
    and the stream write them: features sparse at the feature schema's width (60 of them set,
    about what a profile with a few traits sets), the candidates, the ranked actions with their
    probabilities."""
    import orjson

    from ray_app.catalog import load_catalog
    from ray_app.features import FeatureSchema
    from ray_app.records import RewardRecord
    from ray_app.records.decision import DecisionRecord
    from ray_app.records.features import SparseFeatures

    catalog = load_catalog()
    schema = FeatureSchema.from_catalog(catalog)
    ids = list(catalog.slot("next_step").action_ids)
    out = []
    arms = ("control", "treatment")
    steps = ("role", "team_size", "goals")
    for u in range(users):
        user, arm, step = f"user-{u}", arms[u % 2], steps[u % 3]
        at = now_ms - (users - u) * 20  # spread over the last users x 20 ms
        did = f"d-{u}"
        set_at = tuple(sorted({(u * 37 + k * 101) % schema.dim for k in range(60)}))
        features = SparseFeatures(schema.dim, set_at, tuple(1.0 for _ in set_at))
        decision = DecisionRecord(
            decision_id=did, user_key=user, slot="next_step", chosen=step, propensity=0.5,
            action_index=ids.index(step), features=features, at_ms=at, arm=arm,
            model_version=3, candidates=ids, experiment="onboarding", policy="squarecb",
            ranked=[{"action": step, "score": 0.5, "probability": 0.5},
                    {"action": "welcome", "score": 0.1, "probability": 0.5}],
            feature_schema=schema.hash, profile_age_ms=40, context={"device": "desktop"},
        ).encode()  # fmt: skip
        iso = orjson.loads(decision)["timestamp"]
        good = (u * 7919) % 100 < (40 if arm == "control" else 46)
        reward = RewardRecord(
            decision_id=did, user_key=user, slot="next_step", action=step,
            action_index=ids.index(step), arm=arm, propensity=0.5, features=features.dense(),
            reward=float(good), outcome="completed" if good else "abandoned", decided_at_ms=at,
            outcome_at_ms=at + 500, model_version=3, candidates=ids,
        ).encode()  # fmt: skip
        event = {"type": "track", "event": "Step Completed", "userKey": user, "stepId": "welcome",
                 "messageId": f"m-{u}", "timestamp": iso, "receivedAt": iso}  # fmt: skip
        out += [
            ("decisions", user, decision),
            ("rewards", user, reward),
            ("events", user, orjson.dumps(event)),
        ]
    return out


def quantiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50": round(statistics.median(xs), 3),
        "p99": round(xs[math.ceil(0.99 * len(xs)) - 1], 3),  # nearest rank
    }


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def in_process(recs: list[tuple[str, str, bytes]], users: int) -> dict[str, Any]:
    """Part 1: the state's feed and render costs, and a poll's cost in the replica's code."""
    import asyncio

    import ray_app.experiments.report  # noqa: F401 - imported before the memory is measured
    from ray_app.catalog import load_catalog
    from ray_app.console.api import ConsoleApi
    from ray_app.console.feed import ConsoleFeed
    from ray_app.console.state import ConsoleState

    state = ConsoleState({"control": 0.5, "treatment": 0.5}, steps=load_catalog().known_steps)
    state.panels()
    rss0 = _rss_mib()
    started = time.perf_counter()
    for kind, _, value in recs:
        state.feed(kind, value)
    feed_s = time.perf_counter() - started
    renders = []
    for _ in range(3):
        started = time.perf_counter()
        panels = state.panels(experiments_every_s=0)
        state.cohorts.version += 1  # force the experiments again
        renders.append((time.perf_counter() - started) * 1000)
    rss_mib = _rss_mib() - rss0

    class Actor:
        class panels:  # an actor method's shape: panels.remote()
            @staticmethod
            async def remote() -> dict[str, bytes]:
                return panels

    api = ConsoleApi(ConsoleFeed(lambda: Actor()), {"bench": READ_KEY}, load_catalog())
    auth = HEADERS["Authorization"]

    async def polls(path: str, query: dict[str, str]) -> list[float]:
        await api.answer(path, query, auth)
        out = []
        for _ in range(2_000):
            t = time.perf_counter()
            await api.answer(path, query, auth)
            out.append((time.perf_counter() - t) * 1e6)
        return out

    per_route = {}
    for route in ROUTES:
        path, _, q = route.partition("?")
        query = dict([q.split("=")]) if q else {}
        per_route[route] = quantiles(asyncio.run(polls(path, query)))
    return {
        "users": users,
        "records": len(recs),
        "feed_us_per_record": round(feed_s / len(recs) * 1e6, 2),
        "render_all_panels_ms": round(min(renders), 1),
        "state_rss_mib": round(rss_mib, 1),
        "panel_bytes": {k: len(v) for k, v in sorted(panels.items())},
        "poll_us_in_replica_code": per_route,
    }


def produce(bootstrap: str, settings: Any, recs: list[tuple[str, str, bytes]]) -> float:
    from ray_app.kafka import make_producer
    from ray_app.kafka.client import OutRecord

    topics = {"decisions": settings.topics.decisions, "rewards": settings.topics.rewards,
              "events": settings.topics.events}  # fmt: skip
    producer = make_producer(bootstrap, settings.kafka)
    started = time.perf_counter()
    for i in range(0, len(recs), 5_000):
        chunk = [OutRecord(topics[k], v, u.encode()) for k, u, v in recs[i : i + 5_000]]
        producer.send_all(chunk).result(timeout=120)
    producer.close()
    return time.perf_counter() - started


def wait_caught_up(base: str, users: int, timeout_s: float = 180) -> float:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            r = httpx.get(f"{base}/console/api/experiments?range=all", headers=HEADERS, timeout=10)
            exp = (
                r.json().get("experiments", {}).get("onboarding", {})
                if r.status_code == 200
                else {}
            )
            if exp.get("users", 0) >= users:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the console did not show {users} users within {timeout_s} s")


def server_timing(base: str, polls: int) -> dict[str, Any]:
    """Each route's replica time (``Server-Timing: console;dur=``), sequential polls."""
    import httpx

    out: dict[str, Any] = {}
    every: list[float] = []
    with httpx.Client(base_url=base, headers=HEADERS, timeout=10) as http:
        # the page's own poll (every panel in one answer) and its first load (with the catalog)
        for route in (*ROUTES, "catalog", "panels?range=all", "panels?range=all&catalog=1"):
            durs = []
            for _ in range(polls):
                r = http.get(f"/console/api/{route}")
                assert r.status_code == 200, (route, r.status_code, r.text[:200])
                durs.append(float(r.headers["server-timing"].split("dur=")[1]))
            out[route] = quantiles(durs)
            every += durs
    out["all_routes"] = quantiles(every)
    return out


# In the page: when each panel first shows data, from navigation start (performance.now()).
_PANELS_OK = """
window.onrampOk = {};
new MutationObserver((changes) => {
  for (const { target } of changes) {
    if (target.dataset?.state === "ok" && !(target.id in window.onrampOk)) {
      window.onrampOk[target.id] = performance.now();
    }
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state"] });
"""
_PANEL_IDS = ("experiments", "learning", "funnel", "health", "catalog")


def page_load(url: str, warm: int = 20) -> dict[str, Any]:
    """Navigation -> every panel showing data, in Debian's chromium (the key set beforehand in
    sessionStorage, as after a login): as Playwright sees it (from ``goto``), and as the page
    does (from navigation start), with the requests the page made by then."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return {"error": "Debian's chromium not found"}
    script = f"sessionStorage.setItem('onramp.console.readKey', {json.dumps(READ_KEY)})"
    times, loads, in_page, requests = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        for _ in range(warm + 1):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(script)
            page.add_init_script(_PANELS_OK)
            started = time.perf_counter()
            page.goto(url)
            for panel in _PANEL_IDS:
                page.wait_for_selector(f"#{panel}[data-state=ok]", timeout=30_000)
            times.append((time.perf_counter() - started) * 1000)
            seen = page.evaluate(
                "ids => ({load: performance.getEntriesByType('navigation')[0].loadEventEnd,"
                " ok: Math.max(...ids.map(id => window.onrampOk[id])),"
                " requests: 1 + performance.getEntriesByType('resource')"
                ".filter(r => r.startTime <= Math.max(...ids.map(id => window.onrampOk[id])))"
                ".length})",
                list(_PANEL_IDS),
            )
            loads.append(seen["load"])
            in_page.append(seen["ok"])
            requests.append(seen["requests"])
            page.close()
        browser.close()
    return {
        "first_ms": round(times[0], 1),
        "warm_ms": quantiles(times[1:]),
        "warm_max_ms": round(max(times[1:]), 1),
        "warm_loads": warm,
        "in_page_ms": quantiles(in_page[1:]),
        "load_event_ms": quantiles(loads[1:]),
        "requests": max(requests),
        "note": "navigation until all five panels show data (data-state=ok), from Playwright's "
        "goto (first_ms, warm_ms; a new page each time); in_page_ms: the same from the page's "
        "navigation start (performance.now()); load_event_ms: the page's load event; requests: "
        "HTTP requests the page made until then (the HTML included)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=100_000, help="users in the console's state")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each wrk run")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections")
    ap.add_argument("--polls", type=int, default=200, help="sequential polls per route")
    ap.add_argument("--page-loads", type=int, default=20, help="page loads after the first")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    recs = records(args.users, int(time.time() * 1000))
    print(f"in process: {args.users} users, {len(recs)} records ...", file=sys.stderr)
    local = in_process(recs, args.users)
    print(json.dumps(local), file=sys.stderr, flush=True)

    from deployments.app import build_app
    from ray_app.config import load_settings
    from ray_app.kafka.broker import free_port
    from ray_app.up import Stack

    workdir = Path("/tmp") / f"onramp-bench-console-{os.getpid()}"
    settings = load_settings(
        env={
            "ONRAMP_KAFKA__PARTITIONS": "8",
            "ONRAMP_COLLECTOR__PORT": str(free_port()),
            "ONRAMP_COLLECTOR__READ_KEYS": json.dumps({"bench": READ_KEY}),
            "ONRAMP_COLLECTOR__HIGH_THROUGHPUT_HTTP": "true",
            "ONRAMP_STATE_DIR": str(workdir / "state"),
        }
    )
    with Stack(settings, build_app, start_stream=False) as stack:
        base = stack.base_url
        produce_s = produce(stack.bootstrap, settings, recs)
        print(f"produced {len(recs)} records in {produce_s:.1f} s", file=sys.stderr, flush=True)
        caught_up_s = wait_caught_up(base, args.users)
        print(f"console caught up {caught_up_s:.1f} s later", file=sys.stderr, flush=True)
        timing = server_timing(base, args.polls)
        print(f"Server-Timing: {json.dumps(timing)}", file=sys.stderr, flush=True)
        console_url, health_url = f"{base}/console/api/health", f"{base}/healthz"
        wrk(console_url, [b"-"], HEADERS, args.connections, 2, method="GET")  # warm up both
        wrk(health_url, [b"-"], {}, args.connections, 2, method="GET")
        runs = {}
        # /healthz without a read key answers only its status: the trivial route (with one it
        # gathers every part's health, which is not trivial)
        for label, url, headers in (
            ("console_health", console_url, HEADERS),
            ("healthz", health_url, {}),
        ):
            time.sleep(common.SETTLE_S)
            runs[label] = wrk(url, [b"-"], headers, args.connections, args.seconds, method="GET")
            print(describe(label, runs[label]), file=sys.stderr, flush=True)
        page = page_load(f"{base}/console/", args.page_loads)
        print(f"page: {json.dumps(page)}", file=sys.stderr, flush=True)
        http_mode = stack.http_mode
    c, h = runs["console_health"], runs["healthz"]
    emit(
        {
            "benchmark": "console",
            "figure": f"GET /console/api/health req/s through Serve, {args.users} users in "
            f"the console's state, wrk closed loop at {args.connections} connections",
            "value": c["requests_per_s"],
            "baseline": "GET /healthz without a read key (it answers its status only) on the "
            "same app and HTTP path, same wrk load, same run",
            "baseline_value": h["requests_per_s"],
            "ratio": ratio(c["requests_per_s"], h["requests_per_s"]),
            "poll_replica_ms_p50": timing["all_routes"]["p50"],
            "poll_replica_ms_p99": timing["all_routes"]["p99"],
            "poll_budget_ms": 5.0,
            "wrk": {"console_health": c, "healthz": h},
            "server_timing_ms": timing,
            "page": page,
            "in_process": local,
            "produce_s": round(produce_s, 1),
            "aggregator_caught_up_s": round(caught_up_s, 1),
            "http_mode": http_mode,
            "errors": c["error_count"] + h["error_count"],
            "load_generator": f"{load_generator()} (WRK_METHOD=GET)",
            "kafka_client": settings.kafka.client,
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
