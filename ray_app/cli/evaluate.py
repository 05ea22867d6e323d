"""``onramp evaluate``: off-policy evaluation, which parses its own options."""

from __future__ import annotations

import argparse
from typing import Any

from ray_app.cli.common import Parts

__all__ = ["add_parser", "run_argv"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    # `onramp evaluate ...` is handed whole to the evaluation job (see main); this entry lists it
    sub.add_parser(
        "evaluate",
        help="off-policy evaluation: IPS/SNIPS/DM/DR with CIs on the Open Bandit Dataset or "
        "Onramp's decision logs (`onramp evaluate --help`)",
        add_help=False,
    )


def run_argv(argv: list[str], parts: Parts) -> int:
    """Run the evaluation (``parts.evaluate``) on the options after ``evaluate``."""
    return int(parts.need("evaluate")(argv))
