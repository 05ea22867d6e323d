"""``onramp evaluate``: off-policy evaluation, which parses its own options."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run_argv"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    # `onramp evaluate ...` is handed whole to training.evaluate (see main); this entry lists it
    sub.add_parser(
        "evaluate",
        help="off-policy evaluation: IPS/SNIPS/DM/DR with CIs on the Open Bandit Dataset or "
        "Onramp's decision logs (`onramp evaluate --help`)",
        add_help=False,
    )


def run_argv(argv: list[str]) -> int:
    """Run the evaluation on the options after ``evaluate``."""
    # imported at call time: ray_app never imports training at import time
    from training.evaluate import main as evaluate_main

    return evaluate_main(argv)
