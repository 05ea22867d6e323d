"""The ``onramp`` command: :func:`ray_app.cli.main` with the parts above the engine plugged in.

The engine's CLI (``ray_app/cli``) never imports ``deployments`` or ``training``; this entry
point, which ``pyproject.toml`` installs as ``onramp``, hands it the Serve application's builder
and the training and evaluation jobs. The jobs are imported when they run, so that
``onramp --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ray_app.cli import Parts
from ray_app.cli import main as cli_main

__all__ = ["PARTS", "main"]


def _build_app(args: dict[str, Any]) -> Any:
    from deployments.app import build_app

    return build_app(args)


def _train(argv: list[str], prog: str = "onramp train") -> int:
    from training.train import main as train_main

    return int(train_main(argv, prog=prog))


def _evaluate(argv: list[str]) -> int:
    from training.evaluate import main as evaluate_main

    return int(evaluate_main(argv))


#: The Serve application and the jobs, as the ``onramp`` command runs them.
PARTS = Parts(build_app=_build_app, train=_train, evaluate=_evaluate)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``onramp`` command (see :mod:`ray_app.cli`); returns its exit status."""
    return cli_main(sys.argv[1:] if argv is None else argv, PARTS)


if __name__ == "__main__":
    sys.exit(main())
