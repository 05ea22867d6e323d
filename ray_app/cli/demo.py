"""``onramp demo``: ``up`` plus simulated onboarding traffic, learning, and a live summary."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ray_app.cli.common import (
    Stop,
    count_or_none,
    decide_key,
    plot_path,
    port,
    seconds,
    seed,
    with_overrides,
    write_key,
)
from ray_app.cli.output import dumps
from ray_app.cli.up import print_urls
from ray_app.config import Settings

__all__ = ["DEMO_WORLDS", "add_parser", "run"]

#: The worlds ``demo --world`` takes (those of :data:`ray_app.sim.worlds.WORLDS`).
DEMO_WORLDS = ("teams", "clinics", "fleets", "campus", "v2")

#: Simulated users who ask /v1/decide, and the thread they run in.
_Learning = tuple[Any, threading.Thread]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="`up` plus simulated onboarding traffic, learning, and a live summary",
        description="Run `onramp up`, send simulated onboarding traffic (with duplicates, "
        "out-of-order and malformed events) through the HTTP API, and let simulated users (with "
        "hidden preferences per segment) ask /v1/decide what to do next and react to it, so the "
        "model learns while you watch. Prints a live summary: events accepted, rejected by "
        "reason, records per topic, state, and the completion rate per experiment arm; at the "
        "end, writes a PNG plot of the completion rate per arm over time.",
    )
    demo.add_argument("--port", type=port, help="HTTP port (default: collector.port)")
    demo.add_argument(
        "--fresh",
        action="store_true",
        help="start from the cold-start policy: remove the served model an earlier embedded run "
        "learned (checkpoints and learner state of earlier runs are always removed)",
    )
    demo.add_argument("--users", type=int, help="users to simulate (default: sim.users)")
    demo.add_argument("--rate", type=float, help="events per second (default: sim.rate)")
    demo.add_argument("--seed", type=seed, help="simulation seed (default: sim.seed)")
    demo.add_argument(
        "--duration", type=seconds, help="stop after this many seconds (default: run until Ctrl-C)"
    )
    demo.add_argument("--every", type=seconds, default=2.0, help="seconds between summary lines")
    demo.add_argument(
        "--learning-users",
        type=count_or_none,  # -5 was taken: a demo of no learning and an empty plot
        default=20_000,
        help="simulated users who ask /v1/decide and react (0: none); default 20000",
    )
    demo.add_argument(
        "--world",
        default="teams",
        choices=DEMO_WORLDS,
        help="the simulated world the learning users come from: teams (default), clinics, "
        "campus, fleets (trait names and values of their own, two-trait preferences), or v2",
    )
    demo.add_argument(
        "--plot",
        type=lambda text: Path(plot_path(text)),
        help="where to write the plot (default: <state_dir>/learning.png; .png, .pdf, .svg, "
        "... by the suffix)",
    )


def metric_totals(text: str) -> tuple[float, dict[str, float]]:
    """(accepted, rejected by reason) from the collector's Prometheus text.

    >>> metric_totals(
    ...     "onramp_events_accepted_total 5\\n"
    ...     'onramp_events_rejected_total{reason="late"} 2\\n'
    ... )
    (5.0, {'late': 2.0})
    """
    from prometheus_client.parser import text_string_to_metric_families

    accepted = 0.0
    rejected: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "onramp_events_accepted_total":
                accepted += sample.value
            elif sample.name == "onramp_events_rejected_total":
                reason = sample.labels.get("reason", "?")
                rejected[reason] = rejected.get(reason, 0.0) + sample.value
    return accepted, rejected


def _sample_decision(stack: Any, settings: Settings, sim: Any, tick: int) -> str | None:
    """Ask /v1/decide what one simulated user should see next (one user per tick)."""
    import httpx

    if not decide_key(settings) or not sim.plan.sends:
        return None
    read = decide_key(settings)
    sent = sim.plan.sends[: max(sim.stats.sent, 1)]
    users = sorted({c["userId"] for _, c in sent if isinstance(c, dict) and c.get("userId")})
    if not users:
        return None
    user = users[(tick * 7919) % len(users)]
    try:
        r = httpx.get(
            stack.urls()["decide"],
            params={"user_id": user, "slot": "next_step"},
            headers={"authorization": f"Bearer {read}"},
            timeout=5,
        )
        a = r.json()
    except (httpx.HTTPError, ValueError):
        return None
    if r.status_code != 200:
        return f"decide for {user}: {r.status_code} {a.get('error')}"
    p = a["propensity"]
    if a["chosen"] is None:  # the catalog leaves nothing to show (every step done)
        return f"decide next_step for {user}: nothing left to show (no step is eligible)"
    return (
        f"decide next_step for {user}: {a['chosen']}  (arm {a['arm']}, model v{a['modelVersion']}, "
        f"propensity {'-' if p is None else f'{p:.2f}'}, "
        f"{'cold start' if a['coldStart'] else 'live profile'})"
    )


def _start_learning(
    stack: Any, settings: Settings, args: argparse.Namespace, stop: Any
) -> _Learning | None:
    """Simulated users of ``--world`` in a thread of their own (see ray_app/sim/live.py)."""
    read = decide_key(settings)
    if not args.learning_users or read is None:
        return None
    import asyncio

    from ray_app.sim.live import LearningRun
    from ray_app.sim.worlds import world

    run = LearningRun(
        stack.base_url,
        write_key(settings, "onramp demo")[1],
        read,
        world(args.world, seed=settings.sim.seed, drift="none"),
        users=args.learning_users,
        concurrency=48,
        think_s=1.0,
        time_scale=0.05,
        seed=settings.sim.seed,
    )
    thread = threading.Thread(
        target=lambda: asyncio.run(run.run(stop.event.is_set)), name="learning-sim", daemon=True
    )
    thread.start()
    return run, thread


def _learning_line(stack: Any, learning: _Learning) -> str:
    from ray_app.sim.live import rates_by_arm

    run = learning[0]
    recent = rates_by_arm(run.outcomes, last=1_000)
    rates = "  ".join(f"{arm} {rate:.2f}" for arm, rate in recent.items()) or "-"
    version = "?"
    if stack.learner is not None:
        import ray

        try:
            version = str(ray.get(stack.learner.status.remote(), timeout=5)["version"])
        except Exception:
            pass
    return (
        f"learning: {len(run.outcomes)} users decided; completion rate, last 1000: {rates}  "
        f"| model v{version}"
    )


def _plot_learning(run: Any, path: Path) -> None:
    """Completion rate per arm (rolling, by user) with the ground truth's reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    window = 300
    for arm in sorted({o.arm for o in run.outcomes}):
        xs = sorted((o for o in run.outcomes if o.arm == arm), key=lambda o: o.index)
        acc, pts = 0, []
        for i, o in enumerate(xs):
            acc += o.completed - (xs[i - window].completed if i >= window else 0)
            if i + 1 >= min(30, len(xs)):  # the first points average what there is
                pts.append((o.index, acc / min(window, i + 1)))
        if pts:
            ax.plot(*zip(*pts, strict=True), label=f"{arm} (measured)")
    for policy, style in (("static", ":"), ("random", "-."), ("oracle", "--")):
        rate = run.truth.expected_rate(policy)
        ax.axhline(rate, linestyle=style, color="grey", linewidth=1)
        ax.text(
            0.01, rate, f"{policy} (expected)", va="bottom", color="grey",
            transform=ax.get_yaxis_transform(),
        )  # fmt: skip
    ax.set_xlabel("simulated user")
    ax.set_ylabel(f"next step completed (rolling {window} users)")
    ax.set_title("Onramp learning: completion rate per experiment arm")
    ax.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_crm(settings: Settings) -> None:
    """A CRM table for the simulated accounts, unless there is one."""
    if settings.crm_path.exists():
        return
    from ray_app.enrich import write_demo_crm
    from ray_app.sim.population import Population, crm_accounts

    population = Population(settings.sim.seed, settings.sim.users)
    write_demo_crm(settings.crm_path, crm_accounts(population))
    print(f"  CRM table       : {settings.crm_path} (simulated accounts)", flush=True)


def _state_line(stack: Any) -> str:
    """The stream workers' totals, or nothing without a stream."""
    if stack.supervisor is None:
        return ""
    import ray

    try:
        t = ray.get(stack.supervisor.totals.remote(), timeout=5)
        return (
            f"  | state: applied {t.get('applied', 0)} dup {t.get('duplicates', 0)} "
            f"late {t.get('late', 0)} buffered {t.get('buffered', 0)}"
        )
    except Exception:  # a worker is restarting; next line will have it
        return "  | state: (restarting)"


def _summary_line(
    stack: Any, settings: Settings, sim: Any, counter: Any, started: float
) -> tuple[str, float]:
    """One line of the live summary (sent, accepted, rejected, records per topic, state), and
    the seconds since ``started`` it speaks of."""
    import httpx

    topics = settings.topics.all()
    short = {t: t.removeprefix(settings.kafka.topic_prefix + ".") for t in topics}
    try:  # one slow or failed scrape (a worker restarting, a busy learner) is one line's gap
        response = httpx.get(stack.urls()["metrics"], timeout=10)
        response.raise_for_status()
        accepted, rejected = metric_totals(response.text)
    except (httpx.HTTPError, ValueError) as exc:
        elapsed = time.monotonic() - started
        return f"[{elapsed:6.1f}s] sent {sim.stats.sent}  (/metrics: {type(exc).__name__})", elapsed
    counts = counter.counts()
    elapsed = time.monotonic() - started
    rej = ", ".join(f"{k} {int(v)}" for k, v in sorted(rejected.items())) or "none"
    per_topic = "  ".join(f"{short[t]}={counts.get(t, 0)}" for t in topics)
    line = (
        f"[{elapsed:6.1f}s] sent {sim.stats.sent}  accepted {int(accepted)}  "
        f"rejected {int(sum(rejected.values()))} ({rej})  | Kafka records: {per_topic}"
        f"{_state_line(stack)}"
    )
    return line, elapsed


def _watch(
    args: argparse.Namespace,
    stack: Any,
    settings: Settings,
    sim: Any,
    sim_thread: threading.Thread,
    learning: _Learning | None,
    counter: Any,
    stop: Stop,
    started: float,
) -> None:
    """Print the live summary every ``--every`` seconds until Ctrl-C or ``--duration``."""
    announced = False
    ticks = 0
    while True:
        done = stop.wait(args.every)
        line, elapsed = _summary_line(stack, settings, sim, counter, started)
        print(line, flush=True)
        sample = _sample_decision(stack, settings, sim, ticks)
        if sample:
            print(f"           {sample}", flush=True)
        if learning is not None:
            print(f"           {_learning_line(stack, learning)}", flush=True)
        ticks += 1
        if done or (args.duration is not None and elapsed >= args.duration):
            break
        if not sim_thread.is_alive() and args.duration is None and not announced:
            print("simulation finished; Onramp keeps running until Ctrl-C", flush=True)
            announced = True


def _finish_learning(args: argparse.Namespace, settings: Settings, learning: _Learning) -> None:
    """Wait for the learning users, then plot their completion rate per arm."""
    learning[1].join(timeout=30)
    plot = args.plot or Path(settings.state_dir) / "learning.png"
    try:
        _plot_learning(learning[0], plot)
        print(f"completion rate per arm over time: {plot}", flush=True)
    except Exception as exc:  # a plot must never fail the demo's shutdown
        print(f"no plot: {exc}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.kafka.topics import TopicCounter
    from ray_app.sim import Simulator
    from ray_app.up import Stack

    settings = with_overrides(
        settings,
        collector={"port": args.port},
        sim={"users": args.users, "rate": args.rate, "seed": args.seed},
    )
    _, key = write_key(settings, "onramp demo")  # before minutes of starting, not after
    stop = Stop()
    stop.interrupt_while_starting()
    started = time.monotonic()
    print("starting Onramp (broker, Ray, Serve) ...", flush=True)
    with Stack(settings, args.parts.need("build_app"), fresh=args.fresh) as stack:
        stop.install()  # started: Ctrl-C now stops it (ray.init put its own SIGTERM handler)
        print_urls(stack, settings)
        truth = Path(settings.state_dir) / "sim" / "ground_truth.jsonl"
        _write_crm(settings)
        sim = Simulator(stack.base_url, key, settings.sim, truth_path=truth)
        print(
            f"simulating {settings.sim.users} users ({len(sim.plan.sends)} events at "
            f"{settings.sim.rate:g}/s; ground truth: {truth}); Ctrl-C to stop",
            flush=True,
        )
        sim_thread = threading.Thread(target=sim.run, args=(stop.event.is_set,), daemon=True)
        sim_thread.start()
        learning = _start_learning(stack, settings, args, stop)
        assert stack.bootstrap is not None
        counter = TopicCounter(stack.bootstrap, settings.kafka, settings.topics.all())
        try:
            _watch(args, stack, settings, sim, sim_thread, learning, counter, stop, started)
        finally:
            stop.event.set()
            counter.close()
            sim_thread.join(timeout=10)
            print(f"simulator totals: {dumps(sim.stats.as_dict())}", flush=True)
            if learning is not None:
                _finish_learning(args, settings, learning)
            print("stopping: Serve, Ray, broker ...", flush=True)
    print("stopped", flush=True)
    return 0
