"""The learning loop without Kafka, Ray or HTTP: for tuning the learner over many seeds.

``bench/learning.py`` runs the real system and takes about 5 minutes for one seed, and one seed
says little: the share of the oracle's gain it reports moves by +-0.05 from run to run. This twin
runs the same pieces in one process with a simulated clock, about a minute per seed:

* the same users, segments and responses (:class:`ray_app.sim.v2.GroundTruth`);
* the same profiles: each user's sign-up events folded by the stream's own ``apply`` into a
  :class:`~ray_app.state.profile.Profile`, featurized by the serving
  :class:`~ray_app.features.FeatureSchema` at the decision time (recency, activity and the rest
  as live);
* the same policy (:class:`~ray_app.model.Policy`, epsilon-greedy, 90% treatment / 10% static
  control) and the same :class:`~ray_app.learn.learner.OnlineLearner`, fed every
  ``--learn-every`` seconds with the rewards that are due by then and publishing as often as
  ``bench/learning.py`` lets it;
* rewards arriving as the stream emits them: a completion ``--completion-delay`` after it
  happens, a drop-off at the end of the attribution window (``--timeout-delay`` after the
  decision: window + allowed lateness in ``bench/learning.py``);
* the drift at ``--drift-at``, signalled to the learner ``--drift-detect-s`` after it (about when
  the live Page-Hinkley detector fires).

Not modelled: cold starts (profile reads past their deadline), Kafka and HTTP latency, CPU
contention. So its figures are for comparing learner settings, not a substitute for
``bench/learning.py``, which is the end-to-end figure.

    .venv/bin/python bench/learning_twin.py                          # 4 seeds, ~4 minutes
    .venv/bin/python bench/learning_twin.py --weight-decay 0 --seeds 1 2   # one setting, 2 seeds
    .venv/bin/python bench/learning_twin.py --warmup-rewards 0             # without the warm-up

The last line is JSON: the mean share of the oracle's gain captured over the seeds (and each
seed's), users to recover after the drift, against the static flow's expected rate.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, git_rev, machine
from bench.learning import last_rate, users_to_recover


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    import torch

    from ray_app.catalog import load_catalog
    from ray_app.enrich import DEFAULTS
    from ray_app.features import FeatureSchema
    from ray_app.learn.learner import LearnerConfig, OnlineLearner
    from ray_app.learn.reward import RewardRecord
    from ray_app.model import Policy, cold_start_bundle, score_batch
    from ray_app.sim.live import Outcome
    from ray_app.sim.v2 import GroundTruth
    from ray_app.state.event import Event
    from ray_app.state.profile import Profile, apply

    torch.set_num_threads(1)
    catalog = load_catalog()
    schema = FeatureSchema.from_catalog(catalog)
    bundle = cold_start_bundle(schema, catalog)
    config = LearnerConfig(
        epsilon=args.epsilon,
        publish_interval_s=2.0,
        guardrail_tolerance=0.2,
        boost_seconds=30.0,
        weight_decay=args.weight_decay,
        lr=args.lr,
        replay_steps=args.replay_steps,
        warmup_rewards=args.warmup_rewards,
    )
    learner = OnlineLearner(bundle, config, clock=lambda: 0.0)
    served, epsilon = bundle, args.epsilon
    truth = GroundTruth(seed=seed, drift_at_user=args.drift_at)
    slot = catalog.slot("next_step")
    enrichment = {"found": False, **DEFAULTS}
    rng = random.Random(seed)
    due: list[tuple[float, int, RewardRecord]] = []
    outcomes: list[Outcome] = []
    last_learn = 0.0
    told = False
    t0 = 1_800_000_000_000  # event time of user 0's sign-up (ms)
    for i in range(args.users):
        t = i / args.rate
        if not told and i >= args.drift_at and t >= args.drift_at / args.rate + args.drift_detect_s:
            learner.drift(now=t)
            told = True
        if t - last_learn >= args.learn_every:
            ready = []
            while due and due[0][0] <= t:
                ready.append(heapq.heappop(due)[2])
            if ready:
                learner.learn(ready, now=t)
            fresh = learner.maybe_publish(now=t)
            if fresh is not None:
                served, epsilon = fresh, fresh.metadata.get("epsilon", epsilon)
            last_learn = t
        user = truth.user(i)
        signup = t0 + int(t * 1000)
        profile = Profile(user.user_id)
        for n, (kind, name) in enumerate(
            [("identify", None), ("track", "Step Viewed"), ("track", "Step Completed")]
        ):
            apply(
                profile,
                Event(
                    f"m{i}-{n}",
                    user.user_id,
                    kind,
                    name,
                    signup,
                    signup,
                    session_id=f"s-{i}",
                    seq=None if kind == "identify" else n - 1,
                    step_id=None if kind == "identify" else "welcome",
                    user_id=user.user_id,
                    traits=user.traits if kind == "identify" else {},
                ),
            )
        decided = signup + int(1000 * rng.uniform(0.7, 1.3))  # the welcome screen's think time
        x = schema.featurize(profile.as_dict(), enrichment, None, decided)
        eligible = catalog.eligible("next_step", profile.as_dict(), enrichment)
        arm = "treatment" if rng.random() < args.treatment_share else "control"
        did = f"d{seed}-{i}"
        if arm == "control":
            action, p = truth.static_choice("next_step", eligible), 1.0
        else:
            scores = score_batch(served, x, slot.index)[0]
            choice = Policy("epsilon_greedy", epsilon=epsilon).choose(scores, eligible, did)
            action, p = choice.chosen, choice.propensity
        done, seconds = truth.simulate_response(user, "next_step", action, rng)
        record = RewardRecord(
            did,
            user.user_id,
            "next_step",
            slot.actions[action].id,
            action,
            arm,
            float(p),
            x.tolist(),
            float(done),
            "completed" if done else "timeout",
            decided,
            decided,
            served.version,
        )
        react = min(seconds * args.time_scale, 10.0)
        delay = react + args.completion_delay if done else args.timeout_delay
        heapq.heappush(due, (t + 1.0 + delay, i, record))
        outcomes.append(
            Outcome(i, user.segment, arm, slot.actions[action].id, done, False,
                    served.version, truth.drifted(user), t)
        )  # fmt: skip

    static = truth.expected_rate("static")
    rate = last_rate([o for o in outcomes if not o.drifted], "treatment", args.window) or 0.0
    captured = (rate - static) / (truth.expected_rate("oracle") - static)
    recovery = users_to_recover(
        [o for o in outcomes if o.drifted],
        args.drift_at,
        captured,
        truth.expected_rate("static", drifted=True),
        truth.expected_rate("oracle", drifted=True),
        500,
    )
    return {
        "seed": seed,
        "captured": round(captured, 3),
        "treatment_rate_before_drift": round(rate, 4),
        "users_to_recover_after_drift": recovery,
        "rollbacks": learner.counters["rollbacks"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--users", type=int, default=12_000)
    ap.add_argument("--drift-at", type=int, default=7_000)
    ap.add_argument("--window", type=int, default=2_000, help="users per pre-drift rate")
    ap.add_argument("--rate", type=float, default=40.0, help="users per second")
    ap.add_argument("--treatment-share", type=float, default=0.9)
    ap.add_argument("--epsilon", type=float, default=0.03)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--weight-decay", type=float, default=None, help="default: the learner's")
    ap.add_argument("--replay-steps", type=int, default=4)
    ap.add_argument(
        "--warmup-rewards", type=int, default=None, help="default: the learner's (0: no warm-up)"
    )
    ap.add_argument("--learn-every", type=float, default=0.2, help="seconds between learn calls")
    ap.add_argument("--completion-delay", type=float, default=1.0)
    ap.add_argument("--timeout-delay", type=float, default=9.0)
    ap.add_argument("--time-scale", type=float, default=0.02, help="as bench/learning.py")
    ap.add_argument("--drift-detect-s", type=float, default=20.0)
    args = ap.parse_args()
    from ray_app.learn.learner import LearnerConfig

    if args.weight_decay is None:
        args.weight_decay = LearnerConfig().weight_decay
    if args.warmup_rewards is None:
        args.warmup_rewards = LearnerConfig().warmup_rewards
    started = time.monotonic()
    runs = []
    for seed in args.seeds:
        runs.append(one_seed(args, seed))
        print(runs[-1], file=sys.stderr, flush=True)
    from ray_app.sim.v2 import GroundTruth

    static = GroundTruth().expected_rate("static")
    recoveries = [r["users_to_recover_after_drift"] for r in runs]
    emit(
        {
            "benchmark": "learning_twin",
            "figure": "mean share of the oracle's gain over the static flow captured by the "
            f"treatment arm over its last {args.window} users before the drift "
            f"({len(runs)} seeds, in-process twin)",
            "value": round(statistics.mean(r["captured"] for r in runs), 3),
            "baseline": "static flow (expected rate from the ground truth)",
            "baseline_value": round(static, 4),
            "ratio": round(
                statistics.mean(r["treatment_rate_before_drift"] for r in runs) / static, 3
            ),
            "min_captured": min(r["captured"] for r in runs),
            "recovered_within_5000": sum(1 for u in recoveries if u is not None and u <= 5000),
            "settings": {k: v for k, v in vars(args).items() if k not in ("seeds",)},
            "runs": runs,
            "seconds": round(time.monotonic() - started, 1),
            "kafka_client": "none (in-process twin)",
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
