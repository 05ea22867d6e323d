"""Does Onramp learn? The full loop over simulated users with a known optimum.

Starts the embedded broker, Ray, the stream workers, the online learner and the Onramp app on
Serve, then lets simulator v2 (``ray_app/sim/live.py``) walk users through it over HTTP: each
user signs up, asks ``/v1/decide`` for ``next_step`` and completes or abandons the step shown,
as the hidden ground truth of their segment says. The stream joins decisions with outcomes into
rewards, the learner trains on them and publishes weights, the decision replicas swap them in.
Halfway (``--drift-at``) the users' preferences change.

Reported (last line, JSON):

* completion rate per decision (made with the user's live profile; the share of cold starts is
  reported beside) of the treatment arm (Onramp's model) over the last users before
  the drift, beside the exact expected rates of the static flow, uniform random and the oracle
  (computed from the ground truth), and the control arm's measured rate;
* the share of the oracle's gain over the static flow that the treatment arm captured there;
* users after the drift until the treatment arm's rolling rate is back to 90% of its pre-drift
  share of the (post-drift) oracle gain;
* the median time from an outcome event to the published weights that include it.

    .venv/bin/python bench/learning.py                    # ~5 minutes on 2 cores
    .venv/bin/python bench/learning.py --users 6000 --drift-at 4000 --window 1000   # quicker look
"""

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, git_rev, machine

WRITE_KEY = "bench-write-key"
READ_KEY = "bench-read-key"


def rolling(outcomes: list[Any], arm: str, window: int) -> list[tuple[int, float]]:
    """(user index, completion rate of the last ``window`` users of ``arm``) per user."""
    xs = sorted((o for o in outcomes if o.arm == arm and not o.cold_start), key=lambda o: o.index)
    out, acc = [], 0
    for i, o in enumerate(xs):
        acc += o.completed
        if i >= window:
            acc -= xs[i - window].completed
        if i + 1 >= window:
            out.append((o.index, acc / window))
    return out


def last_rate(outcomes: list[Any], arm: str, last: int) -> float | None:
    """Completion rate of the last ``last`` decisions of ``arm`` (by user index) made with the
    live profile (a cold start sees no completed step)."""
    sel = sorted((o for o in outcomes if o.arm == arm and not o.cold_start), key=lambda o: o.index)
    sel = sel[-last:]
    return sum(o.completed for o in sel) / len(sel) if sel else None


def users_to_recover(
    post: list[Any], drift_at: int, captured: float, static: float, oracle: float, window: int
) -> int | None:
    """Users after the drift until the treatment arm's rolling rate (over ``window`` users)
    captures 90% of what it ``captured`` before, of the drifted world's gain of the ``oracle``
    over the ``static`` flow; ``None`` if it never does."""
    target = static + 0.9 * captured * (oracle - static)
    return next(
        (index - drift_at for index, rate in rolling(post, "treatment", window) if rate >= target),
        None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=12_000, help="simulated users in all")
    ap.add_argument("--drift-at", type=int, default=7_000, help="first user after the drift")
    ap.add_argument("--concurrency", type=int, default=100, help="users in flight")
    ap.add_argument("--window", type=int, default=2_000, help="users per rolling rate")
    ap.add_argument("--treatment-share", type=float, default=0.9)
    ap.add_argument("--epsilon", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--client", choices=["kafka-python", "confluent"], default="kafka-python")
    ap.add_argument(
        "--outcomes", type=Path, help="also write every user's outcome here (JSON lines)"
    )
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from ray_app.config import load_settings
    from ray_app.kafka.broker import free_port
    from ray_app.sim.live import LearningRun
    from ray_app.sim.v2 import GroundTruth
    from ray_app.up import Stack

    workdir = Path("/tmp") / f"onramp-bench-learning-{os.getpid()}"
    share = args.treatment_share
    settings = load_settings(
        env={
            "ONRAMP_KAFKA__CLIENT": args.client,
            "ONRAMP_COLLECTOR__PORT": str(free_port()),
            "ONRAMP_COLLECTOR__WRITE_KEYS": json.dumps({"bench": WRITE_KEY}),
            "ONRAMP_COLLECTOR__READ_KEYS": json.dumps({"bench": READ_KEY}),
            "ONRAMP_STATE_DIR": str(workdir),
            "ONRAMP_DECIDE__ARMS": json.dumps({"control": 1 - share, "treatment": share}),
            "ONRAMP_DECIDE__EPSILON": str(args.epsilon),
            "ONRAMP_DECIDE__MODEL_POLL_S": "0.25",
            "ONRAMP_STREAM__ALLOWED_LATENESS_MS": "3000",
            "ONRAMP_STREAM__REORDER_WAIT_MS": "1000",
            "ONRAMP_STREAM__ATTRIBUTION_WINDOW_S": "5",
            "ONRAMP_STREAM__POLL_MAX_RECORDS": "1000",
            "ONRAMP_LEARN__PUBLISH_INTERVAL_S": "2",
            "ONRAMP_LEARN__GUARDRAIL_TOLERANCE": "0.2",
            "ONRAMP_LEARN__BOOST_SECONDS": "30",
        }
    )
    truth = GroundTruth(seed=args.seed, drift_at_user=args.drift_at)
    print("starting broker + Ray + stream + learner + Serve ...", file=sys.stderr, flush=True)
    with Stack(settings) as stack:
        run = LearningRun(
            stack.base_url,
            WRITE_KEY,
            READ_KEY,
            truth,
            users=args.users,
            concurrency=args.concurrency,
            think_s=1.0,
            time_scale=0.02,
            seed=args.seed,
        )
        started = time.monotonic()

        async def report() -> None:
            while True:
                await asyncio.sleep(10)
                st = await stack.learner.status.remote()
                last = run.outcomes[-args.window :]
                rate = {
                    arm: round(sum(o.completed for o in last if o.arm == arm)
                               / max(1, sum(1 for o in last if o.arm == arm)), 3)
                    for arm in ("control", "treatment")
                }  # fmt: skip
                print(
                    f"[{time.monotonic() - started:5.0f}s] users {run.started:>6}  "
                    f"done {len(run.outcomes):>6}  recent completion {rate}  "
                    f"model v{st['version']}  rewards {st['counters'].get('trained', 0)}",
                    file=sys.stderr,
                    flush=True,
                )

        async def both() -> None:
            task = asyncio.create_task(report())
            try:
                await run.run()
            finally:
                task.cancel()

        asyncio.run(both())
        elapsed = time.monotonic() - started
        import ray

        learner = ray.get(stack.learner.status.remote())
    outcomes = run.outcomes
    pre = [o for o in outcomes if o.index < args.drift_at]
    post = [o for o in outcomes if o.index >= args.drift_at]

    def expected(policy: str, drifted: bool) -> float:
        return float(truth.expected_rate(policy, drifted=drifted))

    ref = {
        world: {p: round(expected(p, world == "drifted"), 4) for p in ("static", "random", "oracle")}
        for world in ("before", "drifted")
    }  # fmt: skip

    slot = truth.catalog.slot("next_step")
    index_of = {a.id: i for i, a in enumerate(slot.actions)}
    expected_eligible = {
        seg: tuple(sorted(truth.eligible(seg, "next_step")))
        for seg in {o.segment for o in outcomes}
    }

    def agreement(xs: list[Any], last: int) -> dict[str, float | None]:
        """Over the last warm treatment decisions: how often the model's top action was the
        oracle's, and how often the profile read showed a different eligible set than the
        user's (a stale profile: the welcome completion not applied yet)."""
        sel = sorted(
            (o for o in xs if o.arm == "treatment" and not o.cold_start and o.greedy),
            key=lambda o: o.index,
        )[-last:]
        if not sel:
            return {"oracle_agreement": None, "stale_eligible_share": None}
        agree = stale = 0
        for o in sel:
            el = tuple(sorted(index_of[a] for a in o.eligible))
            stale += el != expected_eligible[o.segment]
            agree += index_of[o.greedy] == truth.oracle_choice(
                o.segment, "next_step", el, o.drifted
            )
        return {
            "oracle_agreement": round(agree / len(sel), 4),
            "stale_eligible_share": round(stale / len(sel), 4),
        }

    if args.outcomes is not None:
        args.outcomes.parent.mkdir(parents=True, exist_ok=True)
        with args.outcomes.open("w") as f:
            for o in sorted(outcomes, key=lambda o: o.index):
                f.write(json.dumps(dataclasses.asdict(o)) + "\n")

    w = args.window
    treat_pre = last_rate(pre, "treatment", w)
    gain = ref["before"]["oracle"] - ref["before"]["static"]
    captured = None if treat_pre is None else (treat_pre - ref["before"]["static"]) / gain
    recovery_users = (
        None
        if captured is None
        else users_to_recover(
            post, args.drift_at, captured, ref["drifted"]["static"], ref["drifted"]["oracle"],
            min(w, 500),
        )
    )  # fmt: skip
    curve = [
        {"user": i, "treatment": round(r, 4)} for i, r in rolling(outcomes, "treatment", w)[::500]
    ]
    emit(
        {
            "benchmark": "learning",
            "figure": "share of the oracle's gain over the static flow captured by the treatment "
            f"arm over its last {w} users before the drift",
            "value": None if captured is None else round(captured, 3),
            "baseline": "static flow (expected rate from the ground truth)",
            "baseline_value": ref["before"]["static"],
            "ratio": None if treat_pre is None else round(treat_pre / ref["before"]["static"], 3),
            "treatment_rate_before_drift": treat_pre,
            "control_rate_measured": last_rate(pre, "control", w),
            "expected_rates": ref,
            "treatment_rate_after_drift_last": last_rate(post, "treatment", w),
            "greedy_before_drift": agreement(pre, w),
            "greedy_after_drift_last": agreement(post, w),
            "users_to_recover_after_drift": recovery_users,
            "outcome_to_weights_ms_p50": learner["outcomeToWeightsMs"]["p50"],
            "outcome_to_weights_ms_p90": learner["outcomeToWeightsMs"]["p90"],
            "model_version": learner["version"],
            "learner": {k: learner[k] for k in ("counters", "drift", "guardrail")},
            "users": args.users,
            "drift_at": args.drift_at,
            "completed_users": len(outcomes),
            "cold_start_share": round(
                sum(o.cold_start for o in outcomes) / max(1, len(outcomes)), 4
            ),
            "cold_reasons": {
                r: sum(1 for o in outcomes if o.cold_reason == r)
                for r in sorted({o.cold_reason for o in outcomes if o.cold_reason})
            },
            "errors": run.errors,
            "seconds": round(elapsed, 1),
            "curve": curve,
            "kafka_client": args.client,
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
