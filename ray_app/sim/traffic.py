"""Simulated onboarding traffic: journeys interleaved in virtual time, with the anomalies real
clients produce (duplicates, out-of-order delivery, malformed events), sent through the HTTP API.

The virtual clock is the simulated devices' clock: each request's ``sentAt`` is the virtual time
of sending, so the collector's skew correction maps virtual times onto its own clock while
keeping the gaps between a user's events. Every event and every anomaly goes to a ground-truth
log (JSON lines) with the outcome the collector should give it.

>>> plan = TrafficPlan.build(SimSettings(users=20, seed=3))
>>> plan.count("malformed") == sum(1 for e in plan.truth if e["kind"] == "malformed")
True
"""

from __future__ import annotations

import copy
import datetime as dt
import heapq
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_app.config import SimSettings
from ray_app.sim.population import Population, SimCall, journey, virtual_iso

__all__ = ["MALFORMATIONS", "SimStats", "Simulator", "TrafficPlan"]

#: How an event is broken, and the reason code the collector must answer with.
MALFORMATIONS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "no_identity": (
        lambda c: {k: v for k, v in c.items() if k not in ("userId", "anonymousId")},
        "missing_identity",
    ),
    "bad_timestamp": (lambda c: {**c, "timestamp": "last tuesday"}, "invalid_timestamp"),
    "negative_seq": (
        lambda c: {
            **c,
            "context": {**c["context"], "onramp": {**c["context"]["onramp"], "seq": -1}},
        },
        "invalid_onramp_context",
    ),
    "unknown_type": (lambda c: {**c, "type": "click"}, "unknown_type"),
    "properties_not_object": (
        lambda c: {**c, "properties": ["oops"], "type": "track", "event": "Oops"},
        "invalid_field",
    ),
    "not_an_object": (lambda c: "not an event", "not_an_object"),
}


@dataclass
class TrafficPlan:
    """Every call to send, in sending order, and the ground truth for each."""

    sends: list[tuple[float, dict[str, Any] | Any]] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: SimSettings, arrival_gap_s: float = 3.0) -> TrafficPlan:
        rng = random.Random(settings.seed)
        population = Population(settings.seed, settings.users)
        heap: list[tuple[float, int, int, SimCall]] = []
        for i, user in enumerate(population.users):
            start = i * arrival_gap_s * rng.uniform(0.2, 1.8)
            for j, call in enumerate(journey(user, random.Random(rng.getrandbits(64)), start)):
                heapq.heappush(heap, (call.at, i, j, call))
        ordered = [heapq.heappop(heap)[3] for _ in range(len(heap))]
        plan = cls()
        pending_late: list[tuple[int, SimCall]] = []
        for n, call in enumerate(ordered):
            while pending_late and pending_late[0][0] <= n:
                _, late = pending_late.pop(0)
                plan._add(late.at, late.call, "out_of_order", "accepted")
            roll = rng.random()
            if roll < settings.malformed_share:
                name = rng.choice(sorted(MALFORMATIONS))
                mutate, reason = MALFORMATIONS[name]
                plan._add(call.at, mutate(copy.deepcopy(call.call)), "malformed", reason, name)
                continue
            roll -= settings.malformed_share
            if roll < settings.out_of_order_share:
                pending_late.append((n + rng.randint(2, 12), call))
                continue
            plan._add(call.at, call.call, "event", "accepted")
            if rng.random() < settings.duplicate_share:
                pending_late.append(
                    (n + rng.randint(1, 20), SimCall(call.at, call.user_id, call.call))
                )
                plan.truth[-1]["duplicated"] = True
        for _, late in pending_late:
            plan._add(late.at, late.call, "out_of_order", "accepted")
        # The duplicates were queued like late events: mark the second copy of an id.
        seen: set[str] = set()
        for entry in plan.truth:
            mid = entry.get("messageId")
            if mid is not None and mid in seen and entry["kind"] != "malformed":
                entry["kind"] = "duplicate"
            if mid is not None:
                seen.add(mid)
        return plan

    def _add(self, at: float, call: Any, kind: str, expect: str, how: str | None = None) -> None:
        self.sends.append((at, call))
        entry: dict[str, Any] = {
            "seq": len(self.truth),
            "kind": kind,
            "expect": expect,
            "at": round(at, 3),
            "messageId": call.get("messageId") if isinstance(call, dict) else None,
            "userId": call.get("userId") if isinstance(call, dict) else None,
            "type": call.get("type") if isinstance(call, dict) else None,
        }
        if how:
            entry["malformation"] = how
        self.truth.append(entry)

    def normalized(
        self,
        received_at: dt.datetime,
        sent_at: str | None = None,
        batch: int = 100,
        write_key: str = "sim-key",
    ) -> list[tuple[bytes, bytes]]:
        """The plan's events as the collector writes them to ``onramp.events``: (key, value) in
        sending order, malformed ones left out, without HTTP or Kafka in between.

        ``sent_at`` is each batch's ``sentAt`` on the devices' clock; by default the end of the
        simulated period, so that after skew correction every event lies before ``received_at``.
        """
        from ray_app.collect.parse import parse_request

        if sent_at is None:
            sent_at = virtual_iso(max((at for at, _ in self.sends), default=0.0) + 1)
        out: list[tuple[bytes, bytes]] = []
        for i in range(0, len(self.sends), batch):
            body = {
                "batch": [c for _, c in self.sends[i : i + batch]],
                "writeKey": write_key,
                "sentAt": sent_at,
            }
            parsed = parse_request(
                "batch",
                json.dumps(body).encode(),
                content_encoding=None,
                authorization=None,
                write_keys={"sim": write_key},
                received_at=received_at,
            )
            out += parsed.events
        return out

    def count(self, kind: str) -> int:
        return sum(1 for e in self.truth if e["kind"] == kind)

    def write_truth(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for entry in self.truth:
                f.write(json.dumps(entry) + "\n")


@dataclass
class SimStats:
    """What the collector answered, summed over the run."""

    sent: int = 0
    requests: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    failed_requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "requests": self.requests,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "retries": self.retries,
            "failedRequests": self.failed_requests,
            "statuses": {str(k): v for k, v in self.statuses.items()},
        }


class Simulator:
    """Sends a :class:`TrafficPlan` to a collector at ``rate`` events/s in batches."""

    def __init__(
        self,
        url: str,
        write_key: str,
        settings: SimSettings,
        batch_size: int = 20,
        max_retries: int = 5,
        truth_path: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.write_key = write_key
        self.settings = settings
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.plan = TrafficPlan.build(settings)
        if truth_path is not None:
            self.plan.write_truth(truth_path)
        self.stats = SimStats()

    def batches(self) -> Iterator[tuple[float, list[Any]]]:
        sends = self.plan.sends
        for i in range(0, len(sends), self.batch_size):
            chunk = sends[i : i + self.batch_size]
            yield max(at for at, _ in chunk) + 0.05, [call for _, call in chunk]

    def run(self, stop: Callable[[], bool] = lambda: False) -> SimStats:
        """Send everything (or until ``stop()``); returns the totals."""
        import httpx

        interval = self.batch_size / self.settings.rate
        with httpx.Client(base_url=self.url, auth=(self.write_key, ""), timeout=30.0) as client:
            next_at = time.monotonic()
            for virtual_sent_at, batch in self.batches():
                if stop():
                    break
                self._send(client, virtual_sent_at, batch)
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        return self.stats

    def _send(self, client: Any, virtual_sent_at: float, batch: list[Any]) -> None:
        body = {"batch": batch, "sentAt": virtual_iso(virtual_sent_at)}
        self.stats.sent += len(batch)
        for attempt in range(self.max_retries + 1):
            self.stats.requests += 1
            try:
                resp = client.post("/v1/batch", json=body)
            except Exception:  # connection refused while the collector restarts, and the like
                resp = None
            status = resp.status_code if resp is not None else 0
            self.stats.statuses[status] += 1
            if resp is not None and status in (200, 400, 413):
                answer = resp.json()
                self.stats.accepted += answer.get("accepted", 0)
                for r in answer.get("rejected", []):
                    self.stats.rejected[r["reason"]] += 1
                return
            if attempt < self.max_retries:
                self.stats.retries += 1
                retry_after = float(resp.headers.get("retry-after", 1)) if resp is not None else 1.0
                time.sleep(min(retry_after, 2**attempt * 0.25))
        self.stats.failed_requests += 1
