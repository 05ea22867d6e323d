"""``onramp config show|describe``: the effective settings, or what each one means."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from ray_app.config import Settings, described, masked

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", parents=[common], help="show or describe the settings")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    csub.add_parser("show", parents=[common], help="print the effective settings (secrets masked)")
    csub.add_parser("describe", parents=[common], help="print every setting with its description")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.config_command == "show":
        sys.stdout.write(yaml.safe_dump(masked(settings), sort_keys=False))
    else:
        width = max(len(k) for k, _ in described())
        for key, text in described():
            print(f"{key:<{width}}  {text}")
    return 0
