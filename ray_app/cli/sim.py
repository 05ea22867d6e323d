"""``onramp sim``: simulated onboarding traffic against a running collector."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ray_app.cli.common import Stop, seed, with_overrides, write_key
from ray_app.cli.output import dumps
from ray_app.config import Settings
from ray_app.errors import ConfigError

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
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
    sim.add_argument("--seed", type=seed, help="simulation seed (default: sim.seed)")
    sim.add_argument("--truth", type=Path, help="ground-truth JSON lines file to write")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.sim import Simulator

    settings = with_overrides(
        settings, sim={"users": args.users, "rate": args.rate, "seed": args.seed}
    )
    if args.write_key is not None and not args.write_key.strip():
        raise ConfigError("--write-key: empty (leave it out for the first of collector.write_keys)")
    if not args.url.startswith(("http://", "https://")):
        raise ConfigError(
            f"--url: expected the collector's http:// or https:// URL, got {args.url!r}"
        )
    key = args.write_key or write_key(settings, "onramp sim")[1]
    stop = Stop()
    stop.install()
    sim = Simulator(args.url, key, settings.sim, truth_path=args.truth)
    stats = sim.run(stop.event.is_set)
    print(dumps(stats.as_dict()))
    if args.truth is not None:
        print(f"ground truth: {args.truth}", file=sys.stderr)
    return 0 if stats.failed_requests == 0 else 1
