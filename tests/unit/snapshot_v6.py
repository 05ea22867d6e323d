"""A partition's state checkpointed by the Onramp of snapshot version 6, and the one driver that
feeds a shard its records (shared by the fixture's writer and ``test_snapshot_compat``).

``tests/unit/data/state-v6.json.gz`` was written by this module run against the state core of
commit 9f4c8e1 (snapshot version 6, before issue 18's compact state)::

    git worktree add /tmp/v6 9f4c8e1
    PYTHONPATH=/tmp/v6 .venv/bin/python tests/unit/snapshot_v6.py tests/unit/data/state-v6.json.gz

It holds a base snapshot and two deltas taken half way through simulated traffic of 16 users
(duplicates, out-of-order events, identify calls that merge anonymous ids in the same partition)
with decisions of the ``next_step`` slot interleaved, the records still to come at that point
(the rest of the events and decisions, and the link, merge and forward records the shard had
written and not yet read back), and what version 6 made of them: the profiles, counters and
rewards at the checkpoint and at the end. Nothing here runs when the module is imported.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import sys
from collections import deque
from pathlib import Path
from typing import Any

#: A queue of records still to be read: (topic, key, value), topic "events" or "decisions".
Queue = deque[tuple[str, str, str]]

RECEIVED = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _ts(value: str) -> int:
    d = json.loads(value)
    return int(dt.datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")).timestamp() * 1e3)


def drive(shard: Any, events: Queue, decisions: Queue, rounds: int | None = None) -> list[Any]:
    """Read the queues like a worker polls (30 events, then the decisions made up to the
    latest event time read); what the shard forwards is read next, before the records still to
    come (one partition: every key is here). Stops after ``rounds`` polls, else when both queues
    are empty. Returns the reward records."""
    rewards: list[Any] = []
    done = 0
    while (events or decisions) and (rounds is None or done < rounds):
        batch = [events.popleft() for _ in range(min(30, len(events)))]
        horizon = max((_ts(v) for _, _, v in batch), default=2**62)
        out = shard.process([(k.encode(), v.encode()) for _, k, v in batch])
        rewards += out.rewards
        forwards = list(out.forward)
        taken = []
        while decisions and (_ts(decisions[0][2]) <= horizon or not events):
            taken.append(decisions.popleft())
        if taken:
            pairs = [(k.encode(), v.encode()) for _, k, v in taken]
            out = shard.process_decisions(pairs, shard.decision_offset + len(taken))
            rewards += out.rewards
            forwards += out.forward
        written = [(topic, key.decode(), value.decode()) for topic, key, value in forwards]
        # read before the records still to come (they were written first)
        events.extendleft(reversed([r for r in written if r[0] == "events"]))
        decisions.extendleft(reversed([r for r in written if r[0] == "decisions"]))
        done += 1
    return rewards


def outcome(shard: Any, rewards: list[Any]) -> dict[str, Any]:
    """What a run made: JSON-ready, compared across versions."""
    return {
        "profiles": shard.profiles_as_dicts(),
        # counters added since version 6 (ticks) start at 0 and are not in its fixture
        "stats": {k: v for k, v in shard.stats.as_dict().items() if k != "ticks" or v},
        "rewards": sorted([r.decision_id, r.reward, r.outcome] for r in rewards),
        "join": shard.rewards.stats(),
        "watermark": shard.watermark,
        "aliases": {k: list(v) for k, v in sorted(shard.aliases.items())},
        "identity": dict(sorted(shard.identity.items())),
        "gaps": [shard.order.gaps, shard.order.behind],
        "buffered": shard.buffered,
    }


def _records() -> tuple[Queue, Queue]:
    from ray_app.config import SimSettings
    from ray_app.sim import TrafficPlan

    plan = TrafficPlan.build(SimSettings(users=16, seed=7))
    events: Queue = deque()
    decisions: Queue = deque()
    for n, (key, value) in enumerate(plan.normalized(RECEIVED, batch=50)):
        events.append(("events", key.decode(), value.decode()))
        d = json.loads(value)
        if d.get("event") == "Step Viewed" and n % 3 == 0:  # a decision just before the view
            decisions.append(("decisions", key.decode(), _decision(f"d{n}", d)))
    ordered = sorted(decisions, key=lambda r: _ts(r[2]))
    return events, deque(ordered)


def _decision(did: str, event: dict[str, Any]) -> str:
    at = _ts(json.dumps(event)) - 1_000
    when = dt.datetime.fromtimestamp(at / 1e3, dt.UTC).isoformat(timespec="milliseconds")
    return json.dumps(
        {"schema": "onramp.decision/1", "decisionId": did, "userKey": event["userKey"],
         "slot": "next_step", "chosen": event["stepId"], "actionIndex": 1, "propensity": 0.5,
         "arm": "treatment", "modelVersion": 1, "features": [0.25, 0.5], "timestamp": when,
         "candidates": [event["stepId"], "goals"], "ranked": [{"action": event["stepId"]}]}
    )  # fmt: skip


def write(path: Path) -> None:
    """Run the version-6 state core on :func:`_records`, checkpoint it half way (a base, two
    deltas), run it to the end, and write the fixture."""
    from ray_app.state import SessionShard
    from ray_app.state.snapshot import SNAPSHOT_VERSION

    assert SNAPSHOT_VERSION == 6, "run against the state core of snapshot version 6"
    events, decisions = _records()
    shard = SessionShard(0)
    drive(shard, events, decisions, rounds=2)
    base = shard.snapshot()
    deltas = []
    for _ in range(2):
        drive(shard, events, decisions, rounds=2)
        deltas.append(shard.snapshot_delta())
    # reading a profile closes its windows: the run goes on from a restored copy, as the test's
    # does, and another copy is read
    shard, seen = SessionShard.restore(base, deltas), SessionShard.restore(base, deltas)
    fixture: dict[str, Any] = {
        "base": base64.b64encode(base).decode(),
        "deltas": [base64.b64encode(d).decode() for d in deltas],
        "events": list(events),
        "decisions": list(decisions),
        "atCheckpoint": outcome(seen, []),
        "dedupeIds": sorted(seen.dedupe.ids),
        "pending": len(seen.rewards.pending),
        "logged": sum(len(v) for v in seen.rewards.log.values()),
        "reorderSessions": len(seen.order.sessions),
    }
    rewards = drive(shard, events, decisions)
    fixture["atEnd"] = outcome(shard, rewards)
    fixture["dedupeIdsAtEnd"] = sorted(shard.dedupe.ids)
    path.write_bytes(gzip.compress(json.dumps(fixture, sort_keys=True).encode(), mtime=0))


def load(path: Path) -> dict[str, Any]:
    return json.loads(gzip.decompress(path.read_bytes()))


if __name__ == "__main__":
    write(Path(sys.argv[1]))
