"""Vowpal Wabbit beside Onramp: the established contextual-bandit baseline, on the same world and
the same users in the same order, learning online with immediate rewards.

For each user: the ADF example over the eligible ``next_step`` actions (shared namespace ``U``:
the user's identify traits as ``key=value`` tokens; action namespace ``A``: the action id),
``predict`` (the exploration pmf of ``--cb_explore_adf --squarecb``), an action drawn from the pmf
with a seeded RNG, the user's response from the ground truth (``simulate_response``), and
``learn`` with the chosen action's cost (``-reward``) and probability. The trait interactions are
written by hand, as VW needs them: ``-q UA --cubic UUA`` (a trait x an action, and a pair of
traits x an action), and, to show what the pair is worth, ``-q UA`` alone.

A numeric trait (an ``int`` or ``float`` value) becomes a ``key=log2_<k>`` token: its bucket on
a base-2 log scale (a hand-written feature, as a VW user would write it).

    .venv/bin/python bench/vw_baseline.py --world teams --users 20000

It runs in seconds (about 2 s per 10,000 users per configuration on this machine); the learning
benchmarks (``bench/learning.py``, ``bench/learning_twin.py``) call :func:`run_vw` and report its
curves beside Onramp's.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: name -> VW arguments (besides the exploration and ``--quiet``): the baselines reported.
CONFIGS: dict[str, str] = {
    "vw_cubic": "-q UA --cubic UUA",
    "vw_quadratic": "-q UA",
}
EXPLORATION = "--cb_explore_adf --squarecb"
SLOT = "next_step"

_UNSAFE = re.compile(r"[\s|:]+")


def _token(text: str) -> str:
    return _UNSAFE.sub("_", text) or "_"


def trait_tokens(traits: dict[str, Any]) -> list[str]:
    """A user's traits as VW feature tokens: ``key=value`` (numbers: ``key=log2_<k>``).

    >>> trait_tokens({"crewSize": "solo", "beds": 37, "note": "a b|c"})
    ['crewSize=solo', 'beds=log2_5', 'note=a_b_c']
    """
    out = []
    for key, value in traits.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.append(f"{_token(str(key))}={_token(str(value))}")
        elif math.isfinite(value):
            out.append(f"{_token(str(key))}=log2_{int(math.log2(abs(value) + 1))}")
    return out


def adf_example(
    traits: dict[str, Any], actions: list[str], label: tuple[int, float, float] | None = None
) -> list[str]:
    """The multi-line ADF example: a shared line, one line per action; ``label``: (position
    among ``actions``, cost, probability) of the chosen action.

    >>> adf_example({"cohort": "junior"}, ["goals", "role"], label=(1, -1.0, 0.5))
    ['shared |U cohort=junior', '|A goals', '0:-1.0:0.5 |A role']
    """
    lines = ["shared |U " + " ".join(trait_tokens(traits))]
    for k, action in enumerate(actions):
        prefix = f"0:{label[1]}:{label[2]} " if label is not None and label[0] == k else ""
        lines.append(f"{prefix}|A {_token(action)}")
    return lines


def run_vw(truth: Any, users: int, seed: int, interactions: str) -> list[Any]:
    """One VW learner over users ``0 .. users - 1`` of ``truth`` (a world), in order. Returns one
    :class:`ray_app.sim.live.Outcome` per user (arm ``vw``), as the live benchmark records them.
    """
    from vowpalwabbit import Workspace

    from ray_app.sim.live import Outcome

    vw = Workspace(f"{EXPLORATION} {interactions} --quiet --random_seed {seed}")
    rng = random.Random(f"vw/{seed}")
    slot = truth.catalog.slot(SLOT)
    out: list[Outcome] = []
    try:
        for i in range(users):
            user = truth.user(i)
            eligible = sorted(truth.eligible(user, SLOT))
            ids = [slot.actions[a].id for a in eligible]
            pmf = vw.predict(adf_example(user.traits, ids))
            k = rng.choices(range(len(ids)), weights=pmf)[0]
            done, _ = truth.simulate_response(user, SLOT, eligible[k], rng)
            vw.learn(adf_example(user.traits, ids, (k, -float(done), float(pmf[k]))))
            drifted = truth.drifted(user)
            out.append(
                Outcome(i, user.segment, "vw", ids[k], done, False, 0, drifted, float(i),
                        eligible=tuple(ids), propensity=float(pmf[k]))
            )  # fmt: skip
    finally:
        vw.finish()
    return out


def run_all(truth: Any, users: int, seed: int) -> dict[str, list[Any]]:
    """Every configuration of :data:`CONFIGS` on the same users."""
    return {name: run_vw(truth, users, seed, flags) for name, flags in CONFIGS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from ray_app.sim.worlds import DEFAULT_WORLD, DRIFTS, WORLDS, world

    ap.add_argument("--world", choices=sorted(WORLDS), default=DEFAULT_WORLD)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--drift", choices=DRIFTS, default="none")
    ap.add_argument("--drift-at", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from bench._common import emit, git_rev, machine
    from bench.learning import gain_curve, gain_share, reference_rows

    truth = world(args.world, seed=args.seed, drift_at=args.drift_at, drift=args.drift)
    started = time.monotonic()
    rows = {
        name: reference_rows(truth, xs)
        for name, xs in run_all(truth, args.users, args.seed).items()
    }
    curves = {name: gain_curve(rs, "vw") for name, rs in rows.items()}
    last = {name: gain_share(rs[-2_000:]) for name, rs in rows.items()}
    cubic, quadratic = last.get("vw_cubic"), last.get("vw_quadratic")
    emit(
        {
            "benchmark": "vw_baseline",
            "figure": "Vowpal Wabbit cubic (-q UA --cubic UUA): share of the oracle's gain over "
            "the static flow over the last 2,000 users (curves: per 1,000 users)",
            "value": cubic,
            "baseline": "Vowpal Wabbit quadratic (-q UA: no two-trait interaction), same users",
            "baseline_value": quadratic,
            "ratio": None if cubic is None or not quadratic else round(cubic / quadratic, 3),
            "kafka_client": "none (in process, no Kafka)",
            "world": args.world,
            "users": args.users,
            "curves": curves,
            "seconds": round(time.monotonic() - started, 1),
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
