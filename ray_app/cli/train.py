"""``onramp train``: the offline training job, which parses its own options."""

from __future__ import annotations

import argparse
from typing import Any

from ray_app.cli.common import import_attr

__all__ = ["TRAIN_IMPORT_PATH", "add_parser", "run_argv"]

#: The training job's entry point, by import path (``ray_app`` never imports ``training``).
TRAIN_IMPORT_PATH = "training.train:main"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    # `onramp train ...` is handed whole to the training job (see main); this entry lists it
    sub.add_parser(
        "train",
        add_help=False,
        help="train the model offline with Ray Train (see `onramp train --help`)",
    )


def run_argv(argv: list[str]) -> int:
    """Run the training job on the options after ``train``."""
    return int(import_attr(TRAIN_IMPORT_PATH)(argv, prog="onramp train"))
