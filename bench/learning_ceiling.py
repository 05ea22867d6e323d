"""What the features allow from a given number of users, without the online learner in the way.

The online learner's share of the oracle's gain by user 6,000 (``bench/learning_twin.py``,
``bench/learning.py``) mixes three things: what the feature vector can express, how many users
it takes to estimate it, and how well exploring online gathers them. This benchmark takes the
third away. For each seed:

* ``--users`` users of ``--world`` sign up as in the learning twin (their ``identify`` and
  ``welcome`` events applied to a profile, featurized by the serving feature schema with the
  run's own hash seed, as ``bench/learning_twin.py`` does) and are each shown one eligible
  ``next_step`` action drawn uniformly at random (uniform logging: every action of every cell
  is seen about as often);
* the shipped wide scorer is fitted offline to those outcomes until it stops moving
  (``--epochs`` passes of AdamW at ``learn.lr``, with the shipped ``learn.weight_decay``);
* its greedy choice is valued on ``--eval-users`` fresh users with the ground truth's expected
  completion rates: the share of the oracle's gain over the static flow it captures, the
  static flow's and the oracle's choices valued on the same users.

The baseline, from the same logged users: a table of each hidden cell's (two-trait segment's)
completion rate per action, which knows the cells the features must discover, greedy on the
mean with a uniform prior. Its ratio to it says what the representation costs against knowing
the cells, from the same data.

On ``fleets`` (bands of a number crossed with a categorical trait) this showed that from 6,000
uniformly logged users even a fit to convergence captured 0.70 of the gain with 512 hash buckets
(0.73 with the 2,048 of today), against 0.674 (0.700) for the online learner over users
4,000-6,000 on the learning twin, where the table of the cells captures 1.00: the goal of 0.70 by
user 6,000 is at the limit of what these features can learn from that many users, not a matter
of exploring better.

``--penalty KIND:STRENGTH`` fits a plain linear scorer by L-BFGS to the log loss plus an explicit
penalty instead (l2, l1, or group: per feature the L2 norm of its weights across the actions),
to tell the regularizer apart from the data. On ``fleets`` (4 seeds, 2026-12-07) a group penalty
(1e-3) reached 0.745 from 6,000 users against AdamW's 0.734, and 0.866 (5e-4) from 12,000 users
against AdamW's 0.816 there: a sharper regularizer buys a little, twice the users much more; the
features can express the bands, they need more users to find them than a table of the cells.

    .venv/bin/python bench/learning_ceiling.py                        # fleets, 6,000 users, 4 seeds
    .venv/bin/python bench/learning_ceiling.py --world teams --users 2000
    .venv/bin/python bench/learning_ceiling.py --penalty group:1e-3   # the regularizer aside
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, git_rev, machine

T0_MS = 1_800_000_000_000  # event time of user 0's sign-up, as in the learning twin
EVAL_OFFSET = 1_000_000  # fresh users for the evaluation: indices far past the logged ones


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--world", default="fleets", choices=("teams", "clinics", "fleets", "campus"),
        help="the simulated world (default fleets)",
    )  # fmt: skip
    p.add_argument("--users", type=int, default=6_000, help="logged users (default 6,000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4], help="default 1 2 3 4")
    p.add_argument("--epochs", type=int, default=300, help="passes over the logged users (300)")
    p.add_argument(
        "--eval-users", type=int, default=3_000, help="fresh users the policies are valued on"
    )
    p.add_argument(
        "--weight-decay", type=float, default=None, help="default: learn.weight_decay (shipped)"
    )
    p.add_argument("--workers", type=int, default=2, help="seeds fitted at once (one process each)")
    p.add_argument(
        "--penalty",
        default=None,
        metavar="KIND:STRENGTH",
        help="instead of the shipped scorer and AdamW: a plain linear scorer (a weight per "
        "action and feature, and a bias) fitted by L-BFGS to the mean log loss plus STRENGTH "
        "times a penalty, KIND one of l2 (sum of squares), l1 (sum of absolute values) or "
        "group (per feature, the L2 norm of its weights across the actions: a feature is used "
        "for every action or for none); e.g. group:1e-3",
    )
    return p


def _penalty(spec: str | None) -> tuple[str, float] | None:
    """``KIND:STRENGTH`` of ``--penalty`` read, or None; raises ValueError saying why not."""
    if spec is None:
        return None
    kind, _, strength = spec.partition(":")
    if kind not in ("l2", "l1", "group"):
        raise ValueError(f"--penalty kind must be l2, l1 or group, got {kind!r}")
    try:
        value = float(strength)
    except ValueError:
        raise ValueError(f"--penalty strength must be a number, got {strength!r}") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"--penalty strength must be a finite number >= 0, got {strength!r}")
    return kind, value


def _fit_penalized(x: Any, a: Any, y: Any, n_actions: int, kind: str, strength: float) -> Any:
    """A linear scorer ``x @ w.T + b`` fitted by L-BFGS (``--penalty``): returns ``(w, b)``.
    The absolute values are smoothed (``sqrt(v**2 + 1e-8)``) so that L-BFGS applies."""
    import torch
    from torch.nn import functional as F

    w = torch.zeros(n_actions, x.shape[1], requires_grad=True)
    b = torch.zeros(n_actions, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=300, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Any:
        optimizer.zero_grad()
        z = (x * w[a]).sum(1) + b[a]
        loss = F.binary_cross_entropy_with_logits(z, y)
        if kind == "l2":
            loss = loss + strength * (w**2).sum()
        elif kind == "l1":
            loss = loss + strength * torch.sqrt(w**2 + 1e-8).sum()
        else:
            loss = loss + strength * torch.sqrt((w**2).sum(0) + 1e-8).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The fitted scorer's and the cell table's shares of the oracle's gain for one seed."""
    import numpy as np
    import torch
    from torch.nn import functional as F

    from bench.learning_twin import signup_events, twin_catalog
    from ray_app.config import load_settings
    from ray_app.enrich import DEFAULTS
    from ray_app.features import FeatureSchema
    from ray_app.model import cold_start_bundle
    from ray_app.sim.worlds import world
    from ray_app.state.profile import Profile, apply

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    learn = load_settings(env={}).learn
    weight_decay = learn.weight_decay if args.weight_decay is None else args.weight_decay
    catalog = twin_catalog(seed)  # each run its own hash seed, as the learning twin
    schema = FeatureSchema.from_catalog(catalog)
    truth = world(args.world, seed=seed)
    slot = catalog.slot("next_step")
    enrichment = {"found": False, **DEFAULTS}
    rng = random.Random(seed)

    def user(i: int) -> tuple[Any, np.ndarray, list[int]]:
        u = truth.user(i)
        profile = Profile(u.user_id)
        for event in signup_events(u, i, T0_MS + i * 1000):
            apply(profile, event)
        p = profile.as_dict()
        x = schema.featurize(p, enrichment, None, T0_MS + i * 1000 + 1000)
        return u, x, catalog.eligible("next_step", p, enrichment)

    rows, actions, rewards = [], [], []
    table: dict[tuple[str, int], list[float]] = {}  # (cell, action) -> [completions, shown]
    for i in range(args.users):
        u, x, eligible = user(i)
        a = rng.choice(eligible)
        done, _ = truth.simulate_response(u, "next_step", a, rng)
        rows.append(x)
        actions.append(a)
        rewards.append(float(done))
        seen = table.setdefault((u.segment, a), [0.0, 0.0])
        seen[0] += float(done)
        seen[1] += 1
    x_all = torch.tensor(np.array(rows))
    a_all = torch.tensor(actions)
    y_all = torch.tensor(rewards)
    scorer = cold_start_bundle(schema, catalog).scorer
    penalty = _penalty(args.penalty)
    linear = None
    if penalty is not None:
        linear = _fit_penalized(x_all.float(), a_all, y_all.float(), slot.size, *penalty)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=learn.lr, weight_decay=weight_decay)
    for _ in range(0 if penalty is not None else args.epochs):
        order = torch.randperm(args.users)
        for start in range(0, args.users, 256):
            idx = order[start : start + 256]
            z = scorer(x_all[idx], slot.index).gather(1, a_all[idx].unsqueeze(1)).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(z, y_all[idx])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()

    def cell_mean(cell: str, a: int) -> float:
        done, shown = table.get((cell, a), (0.0, 0.0))
        return (done + 1.0) / (shown + 2.0)  # a uniform prior: an unseen action rates 0.5

    fitted = tabled = static = oracle = 0.0
    with torch.no_grad():
        for i in range(EVAL_OFFSET, EVAL_OFFSET + args.eval_users):
            u, x, eligible = user(i)

            def rate(a: int, cell: str = u.segment) -> float:
                return float(truth.p_complete(cell, "next_step", a, False))

            if linear is None:
                z = scorer(torch.from_numpy(x), slot.index).numpy()
            else:
                z = (torch.from_numpy(x).float() @ linear[0].T + linear[1]).numpy()
            fitted += rate(max(eligible, key=lambda a: z[a]))
            tabled += rate(max(eligible, key=lambda a: cell_mean(u.segment, a)))
            static += rate(truth.static_choice("next_step", eligible))
            oracle += rate(truth.oracle_choice(u.segment, "next_step", eligible))

    def share(total: float) -> float:  # the three valued on the same users
        return round((total - static) / (oracle - static), 3)

    return {"seed": seed, "features": share(fitted), "cells": share(tabled)}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.users < 1 or args.epochs < 1 or args.eval_users < 1 or args.workers < 1:
        raise SystemExit("--users, --epochs, --eval-users and --workers must be >= 1")
    if args.users >= EVAL_OFFSET:
        raise SystemExit(f"--users must be under {EVAL_OFFSET:,} (the first evaluation user)")
    if args.weight_decay is not None and not 0 <= args.weight_decay < float("inf"):
        raise SystemExit(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    try:
        _penalty(args.penalty)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    bad = [s for s in args.seeds if not 0 <= s < 1 << 32]
    if bad:
        raise SystemExit(f"--seeds must be in [0, 2**32) (each run's hash seed), got {bad}")
    started = time.monotonic()
    print(
        f"{args.world}: {args.users} uniformly logged users, seeds {args.seeds}, "
        f"{args.epochs} epochs ...",
        file=sys.stderr,
        flush=True,
    )
    with ProcessPoolExecutor(max_workers=min(args.workers, len(args.seeds))) as pool:
        runs = list(pool.map(one_seed, [args] * len(args.seeds), args.seeds))
    for r in runs:
        print(
            f"  seed {r['seed']}: features {r['features']:.3f}, cells {r['cells']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    value = statistics.mean(r["features"] for r in runs)
    baseline = statistics.mean(r["cells"] for r in runs)
    emit(
        {
            "benchmark": "learning_ceiling",
            "figure": "share of the oracle's gain of the "
            + (
                "shipped wide scorer (AdamW)"
                if args.penalty is None
                else f"linear scorer (L-BFGS, penalty {args.penalty})"
            )
            + f" fitted offline to {args.users} uniformly logged users of {args.world} "
            f"(mean of {len(runs)} seeds)",
            "value": round(value, 3),
            "value_se": round(statistics.stdev(r["features"] for r in runs) / len(runs) ** 0.5, 3)
            if len(runs) > 1
            else None,
            "baseline": "a table of each hidden cell's completion rate per action, from the "
            "same logged users",
            "baseline_value": round(baseline, 3),
            "ratio": round(value / baseline, 3) if baseline > 0 else None,
            "runs": runs,
            "world": args.world,
            "users": args.users,
            "epochs": args.epochs if args.penalty is None else None,
            "penalty": args.penalty,
            "eval_users": args.eval_users,
            "seconds": round(time.monotonic() - started, 1),
            "kafka_client": "none (in-process)",
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
