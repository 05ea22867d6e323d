"""Shared by the benchmarks: machine description, the last-line JSON contract, the wrk runner
of the HTTP benchmarks and the trivial Serve route they are measured beside."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


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
    """The benchmark's last line: one JSON object. Every benchmark gives ``benchmark``,
    ``figure``, ``value``, ``baseline``, ``baseline_value`` (measured in the same run),
    ``ratio``, ``kafka_client``, ``machine`` and ``git``. The HTTP benchmarks add the latency
    quantiles (``p50_ms``, ``p99_ms``, ``p999_ms``), ``open_loop`` (collect: in
    ``single_event``), ``load_generator`` and ``errors``: the failed requests of all their runs,
    0 in a clean run, and said on stderr too when not."""
    errors = result.get("errors")
    if isinstance(errors, int) and errors:  # (learning.py's errors are a dict of its own)
        print(f"warning: {errors} failed requests, see errors in the scenarios",
              file=sys.stderr, flush=True)  # fmt: skip
    print(json.dumps(result, separators=(",", ":")), flush=True)


# -- HTTP load: wrk ---------------------------------------------------------------------------

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "post.lua"
# One wrk thread. This machine has two cores, shared by the server under test (HAProxy, Serve's
# proxy and replicas, the broker); one wrk thread on epoll used about a sixth of one core at
# 5,000 requests/s against plain uvicorn here, more than any Serve route answers, and a second
# thread would only take CPU from the server. Override with ONRAMP_WRK_THREADS on a bigger
# machine (the script paces each thread at rate / threads in the open loop).
WRK_THREADS = int(os.environ.get("ONRAMP_WRK_THREADS", "1"))


# Pauses before each measured run, so that one run's tail (answers still queued when wrk
# stopped, decision records and Kafka acks still being flushed) does not land in the next: a
# short one before each closed-loop run, a longer one before the open loop, which otherwise
# measures the recovery from the 256-connection runs before it rather than half load.
SETTLE_S = 3.0
SETTLE_OPEN_LOOP_S = 10.0


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).split("Copyright")[0].strip()


def load_generator() -> str:
    """What drove the HTTP load, for the result's JSON."""
    return f"{wrk_version()}, -t{WRK_THREADS}, {WRK_SCRIPT.relative_to(WRK_SCRIPT.parents[2])}"


def wrk(
    url: str,
    bodies: list[bytes],
    headers: dict[str, str],
    connections: int,
    seconds: float,
    *,
    rate: float | None = None,
    timeout_s: float = 10.0,
    method: str = "POST",
) -> dict[str, Any]:
    """HTTP load from wrk: POST to ``url`` over ``connections`` keep-alive connections for
    ``seconds`` (whole seconds), cycling through ``bodies`` with ``headers`` (``method="GET"``:
    a GET for each body instead, the body not sent).

    Closed loop (``rate`` None): each connection sends its next request as soon as the answer
    to the last one arrived; the server's throughput at that concurrency.

    Open loop (``rate`` requests/s): a fixed offered rate, paced by bench/wrk/post.lua's
    ``delay()`` (Debian's wrk has no ``-R``; that is wrk2). Request k is due at start + k/rate,
    and whichever connection is free sends it then; the answers' latency is measured from the
    moment each request is written. This is per-connection pacing against a shared schedule:
    coordinated omission (requests held back while every connection waits for a slow answer)
    stays out only while connections >> rate x latency, so pick connections accordingly; the
    requests written more than 1 ms late are counted in ``late_sends`` (and ``max_lag_ms``),
    and a run with late sends did not hold the rate. ``achieved_per_s`` counts the answers that
    came back within the run, so it falls short of ``offered_per_s`` by those still in flight
    at its end.

    Returns 2xx answers/s (``requests_per_s``: only those count), latency quantiles of every
    answer (wrk's histogram: 2xx and not), the count of every status and the errors: connect,
    read, write and timeout (an answer slower than ``timeout_s``, left out of the latency) from
    wrk, ``non_2xx`` from the statuses. ``error_count`` adds them up; it is 0 in a clean run.
    """
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: `make system-deps` or `apt-get install wrk`")
    offered = rate / WRK_THREADS if rate else 0.0  # the script paces each thread on its own
    with tempfile.NamedTemporaryFile("wb", prefix="onramp-wrk-", suffix=".jsonl") as f:
        for body in bodies:
            if b"\n" in body:
                raise ValueError("request bodies go one a line: no newlines inside")
            f.write(body + b"\n")
        f.flush()
        cmd = [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{max(connections, WRK_THREADS)}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "--latency",
            f"-s{WRK_SCRIPT}",
            url,
            "--",
            f.name,
            repr(offered),
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        env = {**os.environ, "WRK_METHOD": method}
        before, t0, mine = cpu_ticks(), time.monotonic(), os.times()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds, after = time.monotonic() - t0, cpu_ticks()
        # wrk has exited by now: its CPU is this process's waited-for children's
        spent = os.times()
        wrk_s = spent.children_user + spent.children_system - mine.children_user
        after["wrk"] = ("wrk", round((wrk_s - mine.children_system) / _TICK_S))
        cores = cores_by_process(before, after, seconds)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("ONRAMP_WRK ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout}")
    raw = json.loads(lines[-1].removeprefix("ONRAMP_WRK "))
    elapsed = raw["duration_s"]
    statuses = {k: raw["statuses"][k] for k in sorted(raw["statuses"])}
    ok = sum(n for s, n in statuses.items() if 200 <= int(s) < 300)
    errors = {k: raw["errors"][k] for k in ("connect", "read", "write", "timeout")}
    errors["non_2xx"] = raw["requests"] - ok
    lat = raw["latency_ms"]
    result: dict[str, Any] = {
        "path": urlsplit(url).path,
        "connections": connections,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(ok / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(lat["p50"], 2),
        "p90_ms": round(lat["p90"], 2),
        "p99_ms": round(lat["p99"], 2),
        "p999_ms": round(lat["p99.9"], 2),
        "max_ms": round(lat["max"], 2),
        "statuses": statuses,
        "errors": errors,
        "error_count": sum(errors.values()),
        # where the machine's cores went during the run (wrk itself included)
        "cores": cores,
    }
    if rate:
        result |= {
            "offered_per_s": round(rate, 1),
            "achieved_per_s": round(raw["requests"] / elapsed, 1) if elapsed else 0.0,
            "late_sends": raw["late_sends"],
            "max_lag_ms": round(raw["max_lag_ms"], 1),
        }
    return result


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _process_label(pid: str) -> str:
    """A process's name for the CPU accounting: a Ray worker's title (``ray::ServeReplica:...``,
    ``ray::StreamWorker...``, up to its first space or parenthesis), else its executable's name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return "?"
    if argv0.startswith("ray::"):
        return argv0.split(" ", 1)[0].split("(", 1)[0]
    return os.path.basename(argv0.split(" ", 1)[0]) or "?"


def cpu_ticks() -> dict[str, tuple[str, int]]:
    """User + system CPU ticks of every process now: pid -> (label, ticks) (Linux ``/proc``;
    empty elsewhere). Two snapshots give what each process spent between them, threads
    included. Processes are matched by pid, not label: a Ray actor's title names the method it
    runs (``ray::ServeController.listen_for_change``), so it changes between snapshots."""
    out: dict[str, tuple[str, int]] = {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[pid] = (_process_label(pid), int(fields[11]) + int(fields[12]))  # utime + stime
    return out


def cores_by_process(
    before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]], seconds: float
) -> dict[str, float]:
    """Cores each kind of process used between two :func:`cpu_ticks` snapshots ``seconds``
    apart (CPU seconds / wall seconds), by label (the first snapshot's, up to a ``.method``
    suffix), the busiest first; those under 0.02 cores are added up as ``other``, and ``total``
    is the sum (at most the machine's cores). A process born between the snapshots counts
    whole.

    >>> ticks = 1 / _TICK_S  # a second of CPU
    >>> before = {"7": ("ray::A.f", 0), "9": ("tansu-v0.6", 0)}
    >>> after = {"7": ("ray::A.g", ticks // 2), "8": ("x", ticks // 10), "9": ("tansu-v0.6", 0)}
    >>> cores_by_process(before, after, 1.0)
    {'ray::A': 0.5, 'x': 0.1, 'other': 0, 'total': 0.6}
    """
    if seconds <= 0:
        return {}
    used: dict[str, float] = {}
    for pid, (label, ticks) in after.items():
        first = before.get(pid)
        name = first[0] if first else label
        if name.startswith("ray::"):
            name = name.split(".", 1)[0]  # the actor, not the method it ran
        spent = (ticks - (first[1] if first else 0)) * _TICK_S / seconds
        if spent > 0:
            used[name] = used.get(name, 0.0) + spent
    top = {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.02}
    top["other"] = round(sum(v for v in used.values() if v < 0.02), 2)
    top["total"] = round(sum(used.values()), 2)
    return top


def open_loop_connections(rate: float, max_latency_s: float = 1.0) -> int:
    """Connections for an open-loop run at ``rate``: enough that every request still finds a
    free connection when answers take up to ``max_latency_s`` (rate x latency in flight), so
    the pacing, not the server's answers, sets when requests go out."""
    return max(64, math.ceil(rate * max_latency_s))


def describe(label: str, r: dict[str, Any]) -> str:
    """One stderr line for a wrk result."""
    line = (
        f"{label:<24} c={r['connections']:<4} {r['requests_per_s']:>9,.0f} req/s  "
        f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  p99.9 {r['p999_ms']} ms"
    )
    if "offered_per_s" in r:
        line += (
            f"  (offered {r['offered_per_s']:,.0f}/s, achieved {r['achieved_per_s']:,.0f}/s, "
            f"late sends {r['late_sends']})"
        )
    if r["error_count"]:
        line += f"  ERRORS {r['errors']} statuses {r['statuses']}"
    return line


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


#: What the JSON line shows of each wrk run in ``by_connections`` (``scenarios`` has every field).
LATENCY_KEYS = ("requests_per_s", "p50_ms", "p99_ms", "p999_ms", "error_count")


def at(rows: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    """The run of ``rows`` made at ``connections``."""
    return next(r for r in rows if r["connections"] == connections)


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def side_by_side(
    route: str, rows: list[dict[str, Any]], trivial: list[dict[str, Any]], connections: list[int]
) -> list[dict[str, Any]]:
    """Per concurrency: the route's figures beside the trivial route's, and their ratio."""
    return [
        {
            "connections": c,
            route: {k: at(rows, c)[k] for k in LATENCY_KEYS},
            "trivial_serve": {k: at(trivial, c)[k] for k in LATENCY_KEYS},
            "ratio": ratio(at(rows, c)["requests_per_s"], at(trivial, c)["requests_per_s"]),
        }
        for c in connections
    ]
