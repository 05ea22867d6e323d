"""A flood of maximum-size batches keeps each collector replica's memory bounded.

Anybody holding the public write key can send 500 KB batches as fast as the network allows. The
replica must answer (200, 400, 413 or 503 with Retry-After, never 5xx otherwise) and its resident
memory must stay within the bound the README documents: the replica's idle RSS plus
``FLOOD_RSS_BOUND_BYTES``. What bounds it: bodies are read at most one chunk past the request
limit, records are built only while the in-flight budget (``collector.max_inflight_bytes``,
24 MiB) admits them, and the bytes are given back in every path.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import WRITE_KEY

pytestmark = pytest.mark.slow

#: The documented bound (README, Security): growth of a replica's RSS under this flood.
FLOOD_RSS_BOUND_BYTES = 512 * 1024 * 1024
#: What the flood sends: the in-flight budget (24 MiB) several times over.
FLOOD_BYTES = 120 * 2**20


def _replicas() -> list[Path]:
    """/proc entries of this session's collector replicas (Ray titles them)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if cmd.startswith(b"ray::ServeReplica:onramp:Collector"):
            found.append(proc)
    return found


def _rss(procs: list[Path]) -> int:
    """The largest resident set of ``procs``, in bytes."""
    top = 0
    for proc in procs:
        try:
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    top = max(top, int(line.split()[1]) * 1024)
        except OSError:
            pass
    return top


def _max_batch(n: int, pad: int) -> bytes:
    """A batch just under the 500 KB request limit: many events, a large envelope context that
    the collector merges into each (the costliest shape per byte sent)."""
    events = [
        {
            "type": "track",
            "userId": f"flood-{n}-{i}",
            "event": "Step Viewed",
            "messageId": f"{n}-{i}",
        }
        for i in range(2300)
    ]
    body = {"batch": events, "context": {"pad": "p" * pad}}
    return json.dumps(body).encode()


def test_a_flood_of_maximum_size_batches_keeps_replica_memory_bounded(collector):
    replicas = _replicas()
    assert replicas, "no collector replica process found"
    idle = _rss(replicas)
    limit = collector.settings.collector.max_request_bytes
    bodies = [_max_batch(n, pad) for n, pad in enumerate((16, 3_000, 40_000, 250_000))]
    bodies = [b for b in bodies if len(b) <= limit]
    assert len(bodies) >= 3 and max(len(b) for b in bodies) > limit * 0.6
    peak = idle
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss(_replicas()))
            time.sleep(0.05)

    statuses: dict[int, int] = {}
    sent_bytes = 0

    async def flood(target_bytes: int, cap_s: float) -> None:
        """Send until ``target_bytes`` are out (a flood is a volume, not a duration: a slower
        machine takes longer to send it), giving up after ``cap_s``."""
        nonlocal sent_bytes
        deadline = time.monotonic() + cap_s
        async with httpx.AsyncClient(
            base_url=collector.base_url,
            auth=(WRITE_KEY, ""),
            timeout=60,
            limits=httpx.Limits(max_connections=64),
        ) as c:

            async def one(k: int) -> None:
                nonlocal sent_bytes
                n = k
                while sent_bytes < target_bytes and time.monotonic() < deadline:
                    body = bodies[n % len(bodies)]
                    n += 1
                    r = await c.post("/v1/batch", content=body)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    sent_bytes += len(body)

            await asyncio.gather(*[one(k) for k in range(64)])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        asyncio.run(flood(FLOOD_BYTES, cap_s=180.0))
    finally:
        stop.set()
        sampler.join(5)
    growth = peak - idle
    print(
        f"flood: {sum(statuses.values())} requests, {sent_bytes / 2**20:.0f} MiB sent, "
        f"statuses {statuses}; replica RSS idle {idle / 2**20:.0f} MiB, "
        f"peak {peak / 2**20:.0f} MiB (+{growth / 2**20:.0f} MiB)"
    )
    assert set(statuses) <= {200, 400, 413, 503}, statuses
    assert sent_bytes >= FLOOD_BYTES  # a real flood: more than the in-flight budget, many times
    assert growth < FLOOD_RSS_BOUND_BYTES, f"RSS grew by {growth / 2**20:.0f} MiB"
    # the collector still answers normally once the flood is over
    ok = httpx.post(
        f"{collector.base_url}/v1/track",
        json={"userId": "after-flood", "event": "Signed Up"},
        auth=(WRITE_KEY, ""),
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
