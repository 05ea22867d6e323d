"""``onramp train``: the offline training job, which parses its own options."""

from __future__ import annotations

import argparse
from typing import Any

from ray_app.cli.common import Parts

__all__ = ["add_parser", "run_argv"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    # `onramp train ...` is handed whole to the training job (see main); this entry lists it
    sub.add_parser(
        "train",
        add_help=False,
        help="train the model offline with Ray Train (see `onramp train --help`)",
    )


def run_argv(argv: list[str], parts: Parts) -> int:
    """Run the training job (``parts.train``) on the options after ``train``."""
    return int(parts.need("train")(argv, prog="onramp train"))
