"""Shared by the benchmarks: machine description and the last-line JSON contract."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from typing import Any


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "os": platform.platform(terse=True),
    }


def git_rev() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def emit(result: dict[str, Any]) -> None:
    """The benchmark's last line: one JSON object."""
    print(json.dumps(result, separators=(",", ":")), flush=True)


async def closed_loop(
    url: str,
    path: str,
    bodies: list[bytes],
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
) -> dict[str, Any]:
    """Closed-loop HTTP load: ``concurrency`` connections, each sending the next body as soon as
    the previous answer arrived, for ``seconds``. Returns answers/s (200s only), latency
    quantiles and the count of every status (0: connection error)."""
    import asyncio
    import time

    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop_at:
                body = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    async with session.post(url + path, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientError:
                    status = 0
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def q(p: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "path": path,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(statuses.get(200, 0) / elapsed, 1),
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def run_loadgen(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``script --loadgen SPEC`` in its own process (so the load generator does not share
    this process's GIL) and return the JSON object it prints last."""
    import sys

    out = subprocess.run(
        [sys.executable, script, "--loadgen", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def deploy_trivial(prefix: str, path: str, answer: bytes) -> None:
    """A do-nothing FastAPI ingress on Serve's HTTP path at ``prefix``: POST ``path`` reads the
    body and answers ``answer``. What HTTP through Serve alone allows here."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from ray import serve

    api = FastAPI()

    async def handler(request: Request) -> Response:
        await request.body()
        return Response(answer, media_type="application/json")

    # real classes, not the strings `from __future__ import annotations` leaves: FastAPI
    # resolves them in this module's globals, where these local imports are not
    handler.__annotations__ = {"request": Request, "return": Response}
    api.add_api_route(path, handler, methods=["POST"])

    @serve.deployment(name="Trivial", max_ongoing_requests=512)
    @serve.ingress(api)
    class Trivial:
        pass

    serve.run(Trivial.bind(), name="trivial", route_prefix=prefix)
