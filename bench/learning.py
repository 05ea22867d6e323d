"""Does Onramp learn? The full loop over simulated users with a known optimum, on shipped
settings, beside Vowpal Wabbit.

Starts the embedded broker, Ray, the stream workers, the online learner and the Onramp app on
Serve, then lets simulated users of a world (``ray_app/sim/worlds.py``; ``--world``) walk through
it over HTTP (``ray_app/sim/live.py``): each user signs up (``identify`` with the world's own
traits, top level or in ``context.traits``), asks ``/v1/decide`` for ``next_step`` and completes
or abandons the step shown, as the hidden ground truth of their cell says. The stream joins
decisions with outcomes into rewards, the learner trains on them and publishes weights, the
decision replicas swap them in. At ``--drift-at`` the users' preferences change (``--drift``).

Onramp runs on its **shipped settings**: the environment sets only ports, keys, the state
directory, the Kafka client and the experiment's split (``decide.arms``, ``--treatment-share``);
no timing or learner setting is overridden (a benchmark that needs timing overrides measures
something users never get).

Before the stack starts, **Vowpal Wabbit** (``bench/vw_baseline.py``; ``--cb_explore_adf
--squarecb`` with the trait interactions written by hand) learns online from the same users in
the same order with immediate rewards, twice: ``-q UA --cubic UUA`` (``vw_cubic``) and ``-q UA``
(``vw_quadratic``). It takes seconds.

Worlds (``--world``): ``teams`` (the default), ``clinics`` (a numeric trait), ``campus``, and
``v2`` (the project's own simulator, which the feature code was first written against). Drift
(``--drift``): ``abrupt`` (every user from ``--drift-at`` on), ``gradual`` (the drifted share
ramps over ``--drift-span`` users from ``--drift-at``) or ``none``.

Reported (last line, JSON):

* ``curve``: per block of 1,000 users (by user index), the share of the oracle's gain over the
  static flow captured by the treatment arm, the control arm and both VW runs, valued with the
  ground truth's expected completion probability of the action each user was shown (less noisy
  than the sampled outcome; cold starts left out); ``milestones`` picks users 2,000, 6,000,
  10,000 and 20,000 from it;
* ``longest_treatment_below_control_users``: after the first 2,000 users, the longest run of
  consecutive treatment users during which the treatment arm's rolling expected rate (over its
  last 1,000 users) is below the control arm's over the same users' index range (the
  guardrail's job: the goal is <= 1,000, ``guardrail_ok``);
* ``value``: the share of the oracle's gain over the static flow captured by the treatment arm
  over its last ``--window`` users before the drift, each user valued by their own cell's
  expected probabilities (as the curve); ``baseline_value``: Vowpal Wabbit's (cubic) on the
  same users, and ``ratio`` the two's; beside them the share from measured completions
  against the population's expected rates (``captured_measured_before_drift``: noisier), the
  exact expected rates of the static flow, uniform random and the oracle, and the control
  arm's measured rate;
* users after the drift until the treatment arm's rolling rate is back to 90% of its pre-drift
  share of the (post-drift) oracle gain;
* the time from an outcome event to the published weights that include it (p50, p90).

    .venv/bin/python bench/learning.py                       # teams, 12,000 users: ~5 min
    .venv/bin/python bench/learning.py --world clinics --drift gradual
    .venv/bin/python bench/learning.py --users 20000 --drift-at 14000   # the 20,000-user goal
    .venv/bin/python bench/learning.py --users 3000 --drift none        # a quick look
"""

import argparse
import asyncio
import bisect
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, git_rev, machine

WRITE_KEY = "bench-write-key"
READ_KEY = "bench-read-key"

#: Users per point of the curve.
BLOCK = 1_000
#: Users at which the curve is summarized (the issue's goals).
MILESTONES = (2_000, 6_000, 10_000, 20_000)


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


@dataclass(frozen=True)
class Row:
    """One decision, valued by the ground truth: the expected completion probability of the
    action shown (``p``), of the static flow's (``static``) and of the oracle's (``oracle``) for
    that user, in the user's world (drifted or not)."""

    index: int
    arm: str
    p: float
    static: float
    oracle: float


def reference_rows(truth: Any, outcomes: list[Any]) -> list[Row]:
    """Outcomes (of a live run, the twin or the VW baseline) -> :class:`Row` per decision made
    with the live profile (cold starts are left out, and counted apart), by user index.
    Expected probabilities, not the sampled outcomes: far less noise per user."""
    slot = "next_step"
    refs: dict[tuple[str, bool], tuple[float, float]] = {}
    out = []
    for o in sorted(outcomes, key=lambda o: o.index):
        if o.cold_start:
            continue
        key = (o.segment, bool(o.drifted))
        if key not in refs:
            el = truth.eligible(o.segment, slot)
            refs[key] = (
                truth.p_complete(o.segment, slot, truth.static_choice(slot, el), o.drifted),
                truth.p_complete(
                    o.segment, slot, truth.oracle_choice(o.segment, slot, el, o.drifted), o.drifted
                ),
            )
        static, oracle = refs[key]
        out.append(
            Row(o.index, o.arm, truth.p_complete(o.segment, slot, o.action, o.drifted), static,
                oracle)
        )  # fmt: skip
    return out


def gain_share(rows: list[Row]) -> float | None:
    """The share of the oracle's gain over the static flow that ``rows`` captured."""
    gain = sum(r.oracle - r.static for r in rows)
    return None if not rows or gain <= 0 else round(sum(r.p - r.static for r in rows) / gain, 4)


def gain_curve(rows: list[Row], arm: str, block: int = BLOCK) -> list[float | None]:
    """:func:`gain_share` of ``arm`` per block of ``block`` users (by user index: users
    0-999, 1,000-1,999, ...)."""
    by_block: dict[int, list[Row]] = {}
    for r in rows:
        if r.arm == arm:
            by_block.setdefault(r.index // block, []).append(r)
    last = max((r.index // block for r in rows), default=-1)
    return [gain_share(by_block.get(b, [])) for b in range(last + 1)]


def longest_treatment_below_control(
    rows: list[Row], after: int = 2_000, window: int = 1_000
) -> int:
    """The guardrail's figure: after user ``after``, the longest run of consecutive treatment
    users during which the treatment arm's rolling expected rate (over its last ``window``
    users) is below the control arm's expected rate over the same users' index range."""
    treat = [r for r in rows if r.arm == "treatment"]
    control = [r for r in rows if r.arm == "control"]
    c_index = [r.index for r in control]
    c_sum = [0.0]
    for r in control:
        c_sum.append(c_sum[-1] + r.p)
    run = longest = 0
    acc = 0.0
    for k, r in enumerate(treat):
        acc += r.p
        if k >= window:
            acc -= treat[k - window].p
        if k + 1 < window or r.index < after:
            continue
        lo = bisect.bisect_left(c_index, treat[k + 1 - window].index)
        hi = bisect.bisect_right(c_index, r.index)
        if hi <= lo:
            continue
        below = acc / window < (c_sum[hi] - c_sum[lo]) / (hi - lo)
        run = run + 1 if below else 0
        longest = max(longest, run)
    return longest


def curve_table(rows: dict[str, tuple[list[Row], str]], users: int) -> list[dict[str, Any]]:
    """Curves side by side: ``rows`` maps a column name to (rows, the arm to read)."""
    curves = {name: gain_curve(rs, arm) for name, (rs, arm) in rows.items()}
    blocks = -(-users // BLOCK)
    return [
        {"users": min((b + 1) * BLOCK, users),
         **{name: (c[b] if b < len(c) else None) for name, c in curves.items()}}
        for b in range(blocks)
    ]  # fmt: skip


def milestones(curve: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The curve's points at :data:`MILESTONES` users (those the run reached)."""
    at = {point["users"]: point for point in curve}
    return {str(m): {k: v for k, v in at[m].items() if k != "users"} for m in MILESTONES if m in at}


def users_to_recover_expected(
    rows: list[Row], drift_at: int, captured: float, window: int = 500
) -> int | None:
    """Users after ``drift_at`` until the treatment arm's rolling share of the oracle's gain
    (expected probabilities, over its last ``window`` users, all after the drift) is back to 90%
    of ``captured``; ``None`` if it never is."""
    post = [r for r in rows if r.arm == "treatment" and r.index >= drift_at]
    acc = gain = 0.0
    for k, r in enumerate(post):
        acc += r.p - r.static
        gain += r.oracle - r.static
        if k >= window:
            old = post[k - window]
            acc -= old.p - old.static
            gain -= old.oracle - old.static
        if k + 1 >= window and gain > 0 and acc / gain >= 0.9 * captured:
            return r.index - drift_at
    return None


def settings_env(client: str, port: int, state_dir: Path, treatment_share: float) -> dict[str, str]:
    """The benchmark's settings: ports, keys, state directory, Kafka client and the experiment's
    split. Nothing else: Onramp runs on its shipped defaults.

    >>> sorted(settings_env("kafka-python", 8123, Path("/tmp/x"), 0.9))  # doctest: +NORMALIZE_WHITESPACE
    ['ONRAMP_COLLECTOR__PORT', 'ONRAMP_COLLECTOR__READ_KEYS', 'ONRAMP_COLLECTOR__WRITE_KEYS',
     'ONRAMP_DECIDE__ARMS', 'ONRAMP_KAFKA__CLIENT', 'ONRAMP_STATE_DIR']
    """
    return {
        "ONRAMP_KAFKA__CLIENT": client,
        "ONRAMP_COLLECTOR__PORT": str(port),
        "ONRAMP_COLLECTOR__WRITE_KEYS": json.dumps({"bench": WRITE_KEY}),
        "ONRAMP_COLLECTOR__READ_KEYS": json.dumps({"bench": READ_KEY}),
        "ONRAMP_STATE_DIR": str(state_dir),
        "ONRAMP_DECIDE__ARMS": json.dumps(
            {"control": round(1 - treatment_share, 6), "treatment": treatment_share}
        ),
    }


def world_args(ap: argparse.ArgumentParser, users: int, drift_at: int) -> None:
    """The world options that ``bench/learning.py`` and ``bench/learning_twin.py`` share."""
    from ray_app.sim.worlds import DEFAULT_WORLD, DRIFTS, WORLDS

    ap.add_argument(
        "--world",
        choices=list(WORLDS),
        default=DEFAULT_WORLD,
        help=f"the simulated customer (ray_app/sim/worlds.py; default: {DEFAULT_WORLD})",
    )
    ap.add_argument("--users", type=int, default=users, help="simulated users in all")
    ap.add_argument("--drift", choices=DRIFTS, default="abrupt", help="how the preferences change")
    ap.add_argument("--drift-at", type=int, default=drift_at, help="first user after the drift")
    ap.add_argument(
        "--drift-span",
        type=int,
        default=3_000,
        help="--drift gradual: users over which the drifted share ramps from 0 to 1",
    )


def make_world(args: argparse.Namespace, seed: int) -> Any:
    """The ground truth of ``--world`` with the run's drift."""
    from ray_app.sim.worlds import world

    options = {} if args.world == "v2" else {"drift_span": args.drift_span}
    drift_at = None if args.drift == "none" else args.drift_at
    return world(args.world, seed=seed, drift_at=drift_at, drift=args.drift, **options)


def learning_summary(
    truth: Any,
    outcomes: list[Any],
    vw: dict[str, list[Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """What both learning benchmarks report from a run's outcomes and the VW baselines: the
    curve per 1,000 users, its milestones, the guardrail figure, and the expected-probability
    share before the drift and recovery after it."""
    rows = reference_rows(truth, outcomes)
    columns: dict[str, tuple[list[Row], str]] = {
        "treatment": (rows, "treatment"),
        "control": (rows, "control"),
    }
    vw_rows = {name: reference_rows(truth, xs) for name, xs in vw.items()}
    for name, vrows in vw_rows.items():
        columns[name] = (vrows, "vw")
    curve = curve_table(columns, args.users)
    drift_at = args.users if args.drift == "none" else args.drift_at
    pre = [r for r in rows if r.index < drift_at and r.arm == "treatment"][-args.window :]
    captured = gain_share(pre)
    same_users = {r.index for r in pre}
    vw_same = {
        name: gain_share([r for r in vrows if r.index in same_users])
        for name, vrows in vw_rows.items()
    }
    longest = longest_treatment_below_control(rows)
    return {
        "curve": curve,
        "milestones": milestones(curve),
        "captured_expected_before_drift": captured,
        "vw_captured_expected_same_users": vw_same,
        "users_to_recover_after_drift_expected": None
        if captured is None or args.drift == "none"
        else users_to_recover_expected(rows, drift_at, captured),
        "longest_treatment_below_control_users": longest,
        "guardrail_ok": longest <= 1_000,
    }


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The JSON's figure, baseline and ratio: the treatment arm's share of the oracle's gain
    over the static flow over its last users before the drift, and Vowpal Wabbit's (cubic) on
    the very same users, both valued by each user's own cell (expected probabilities)."""
    value = summary["captured_expected_before_drift"]
    vw = summary["vw_captured_expected_same_users"].get("vw_cubic")
    return {
        "value": value,
        "baseline": "Vowpal Wabbit (--cb_explore_adf --squarecb -q UA --cubic UUA) learning "
        "online from the same users with immediate rewards: its share of the oracle's gain on "
        "the same users",
        "baseline_value": vw,
        "ratio": None if value is None or not vw or vw <= 0 else round(value / vw, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    world_args(ap, users=12_000, drift_at=7_000)
    ap.add_argument("--concurrency", type=int, default=100, help="users in flight")
    ap.add_argument("--window", type=int, default=2_000, help="users per rolling rate")
    ap.add_argument(
        "--treatment-share",
        type=float,
        default=0.9,
        help="the experiment's split (decide.arms): the rest is the control arm",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--client", choices=["kafka-python", "confluent"], default="confluent")
    ap.add_argument(
        "--outcomes", type=Path, help="also write every user's outcome here (JSON lines)"
    )
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from bench.vw_baseline import run_all
    from deployments.app import build_app
    from ray_app.config import load_settings
    from ray_app.kafka.broker import free_port
    from ray_app.sim.live import LearningRun
    from ray_app.up import Stack

    truth = make_world(args, args.seed)
    print(f"Vowpal Wabbit on {args.world} ...", file=sys.stderr, flush=True)
    vw_started = time.monotonic()
    vw = run_all(truth, args.users, args.seed)
    vw_seconds = time.monotonic() - vw_started

    workdir = Path("/tmp") / f"onramp-bench-learning-{os.getpid()}"
    settings = load_settings(
        env=settings_env(args.client, free_port(), workdir, args.treatment_share)
    )
    print("starting broker + Ray + stream + learner + Serve ...", file=sys.stderr, flush=True)
    with Stack(settings, build_app) as stack:
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
    drift_at = args.users if args.drift == "none" else args.drift_at
    pre = [o for o in outcomes if o.index < drift_at]
    post = [o for o in outcomes if o.index >= drift_at]

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
    # the measured completions against the population's expected rates: a second look, noisier
    # and not on the same users as the headline (which values each user's own cell)
    captured = None if treat_pre is None else (treat_pre - ref["before"]["static"]) / gain
    recovery_users = (
        None
        if captured is None or not post
        else users_to_recover(
            post, drift_at, captured, ref["drifted"]["static"], ref["drifted"]["oracle"],
            min(w, 500),
        )
    )  # fmt: skip
    summary = learning_summary(truth, outcomes, vw, args)
    emit(
        {
            "benchmark": "learning",
            "world": args.world,
            "drift": args.drift,
            "figure": "share of the oracle's gain over the static flow captured by the treatment "
            f"arm over its last {w} users before the drift",
            **headline(summary),
            **summary,
            "captured_measured_before_drift": None if captured is None else round(captured, 3),
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
            "learner": {k: learner[k] for k in ("counters", "drift", "guardrail") if k in learner},
            "users": args.users,
            "drift_at": None if args.drift == "none" else args.drift_at,
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
            "vw_seconds": round(vw_seconds, 1),
            "curve_rolling_rate": [
                {"user": i, "treatment": round(r, 4)}
                for i, r in rolling(outcomes, "treatment", w)[::500]
            ],
            "settings_overrides": sorted(settings_env(args.client, 0, workdir, 0.9)),
            "kafka_client": args.client,
            "machine": machine(),
            "git": git_rev(),
        }
    )


if __name__ == "__main__":
    main()
