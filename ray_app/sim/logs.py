"""Simulated decision logs: reward records as the live system would log them, without running it.

Each simulated user (:class:`ray_app.sim.v2.GroundTruth`) signs up (identify with their traits,
the ``welcome`` step viewed and completed); their profile is built by the stream's own
:func:`ray_app.state.apply` and featurized by :meth:`FeatureSchema.featurize` at decision time,
exactly as ``/v1/decide`` does. A logging policy picks the ``next_step`` action (uniformly among
the eligible ones with probability ``epsilon``, else the static flow's choice: every action has a
known propensity > 0), the ground truth decides the outcome, and the result is a
:class:`~ray_app.records.RewardRecord` with the logged propensity.

:func:`write_reward_archive` writes records in ``onramp archive``'s layout, so
``onramp train --data DIR`` reads them like archived production logs.

>>> records = simulated_rewards(50, seed=4)
>>> len(records), {r.slot for r in records}, all(0 < r.propensity <= 1 for r in records)
(50, {'next_step'}, True)
>>> simulated_rewards(50, seed=4) == records
True
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from ray_app.catalog import Catalog, load_catalog
from ray_app.features import FeatureSchema
from ray_app.records import RewardRecord
from ray_app.sim.v2 import GroundTruth
from ray_app.state import Event, Profile, apply
from ray_app.storage import Storage

__all__ = ["simulated_rewards", "write_reward_archive"]

_T0 = 1_780_000_000_000  # a fixed epoch (2026-05) so the same arguments give the same records


def simulated_rewards(
    users: int,
    seed: int = 0,
    *,
    epsilon: float = 0.5,
    start: int = 0,
    catalog: Catalog | None = None,
    slot: str = "next_step",
) -> list[RewardRecord]:
    """One ``slot`` decision and its outcome for users ``start .. start + users - 1``."""
    if not 0.0 < epsilon <= 1.0:
        raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
    catalog = catalog or load_catalog()
    truth = GroundTruth(seed=seed, catalog=catalog)
    schema = FeatureSchema.from_catalog(catalog)
    sl = catalog.slot(slot)
    rng = random.Random(f"onramp-simlogs/{seed}")
    out: list[RewardRecord] = []
    for i in range(start, start + users):
        user = truth.user(i)
        t = _T0 + i * 1_000
        key = user.user_id
        events = [
            Event(f"{key}-0", key, "identify", None, t, t + 5, user_id=key, traits=user.traits),
            Event(f"{key}-1", key, "track", "Step Viewed", t + 1, t + 5, f"s-{key}", 0, "welcome", key),
            Event(f"{key}-2", key, "track", "Step Completed", t + 900, t + 905, f"s-{key}", 1, "welcome", key),
        ]  # fmt: skip
        profile = Profile(key)
        for e in events:
            apply(profile, e)
        p = profile.as_dict()
        decided = t + 2_000
        eligible = catalog.eligible(slot, p)
        static = catalog.control_choice(slot, eligible)
        explore = epsilon / len(eligible)
        action = rng.choice(eligible) if rng.random() < epsilon else static
        propensity = explore + (1.0 - epsilon if action == static else 0.0)
        completed, seconds = truth.simulate_response(user, slot, action, rng)
        x = schema.featurize(p, None, {"device": "desktop"}, now_ms=decided)
        out.append(
            RewardRecord(
                decision_id=f"sim-{seed}-{i}",
                user_key=key,
                slot=slot,
                action=sl.actions[action].id,
                action_index=action,
                arm="treatment",
                propensity=round(propensity, 6),
                features=[round(float(v), 6) for v in x],
                reward=1.0 if completed else 0.0,
                outcome="completed" if completed else "abandoned",
                decided_at_ms=decided,
                outcome_at_ms=decided + int(seconds * 1000),
                model_version=0,
                candidates=[sl.actions[a].id for a in eligible],
            )
        )
    return out


def write_reward_archive(
    records: Sequence[RewardRecord], out: str | Path, topic: str = "onramp.rewards"
) -> str:
    """Write ``records`` as ``<out>/<topic>/part-0000-....jsonl``; returns the file's path."""
    store = Storage(out, field="out")
    rel = f"{topic}/part-0000-{0:012d}-{max(len(records) - 1, 0):012d}.jsonl"
    store.write(rel, b"".join(orjson.dumps(r.to_json()) + b"\n" for r in records))
    return store.path(rel)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ray_app.sim.logs",
        description="Write simulated reward records (an archive `onramp train --data` reads).",
    )
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epsilon", type=float, default=0.5, help="share of uniform exploration")
    p.add_argument("--out", required=True, metavar="URI")
    args = p.parse_args(argv)
    records = simulated_rewards(args.users, args.seed, epsilon=args.epsilon)
    path = write_reward_archive(records, args.out)
    print(json.dumps({"records": len(records), "file": path}), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
