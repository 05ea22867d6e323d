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
One module per command (``ray_app/cli/<command>.py``, each with ``add_parser`` and ``run``);
what they share is in :mod:`ray_app.cli.common`. Command modules import Ray, Serve, torch and
pandas inside ``run``, so that ``onramp --help`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ray_app import __version__
from ray_app.cli import (
    archive,
    audit,
    broker,
    config,
    demo,
    evaluate,
    models,
    report,
    schema,
    sim,
    train,
    up,
)
from ray_app.cli.common import Command, Parts, common_options
from ray_app.cli.demo import DEMO_WORLDS
from ray_app.config import load_settings
from ray_app.errors import ConfigError, OnrampError

__all__ = ["DEMO_WORLDS", "Parts", "main"]

#: The commands as they are listed in ``onramp --help``.
_LISTED = (up, demo, sim, broker, config, schema, train, archive, models, evaluate, report, audit)

#: The commands ``main`` parses, by name (``train`` and ``evaluate`` parse their own options).
_COMMANDS: dict[str, Command] = {
    "config": config.run,
    "schema": schema.run,
    "broker": broker.run,
    "up": up.run,
    "demo": demo.run,
    "sim": sim.run,
    "report": report.run,
    "audit": audit.run,
    "archive": archive.run,
    "models": models.run,
}


def _parser() -> argparse.ArgumentParser:
    common = common_options()
    p = argparse.ArgumentParser(
        prog="onramp",
        description="Onramp: real-time personalization of customer onboarding on Ray.",
        epilog="Settings come from --config and ONRAMP_* variables, e.g. "
        "ONRAMP_KAFKA__BOOTSTRAP_SERVERS=broker:9092. See `onramp config describe`.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"onramp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _LISTED:
        command.add_parser(sub, common)
    return p


def main(argv: Sequence[str] | None = None, parts: Parts | None = None) -> int:
    """Run one ``onramp`` command; returns its exit status (2: configuration error, 1: error).

    ``parts`` are the Serve application and the training jobs, which ``up``, ``demo``,
    ``train`` and ``evaluate`` run (the ``onramp`` entry point, :mod:`deployments.onramp`,
    passes them; without them those commands say so and exit 1).

    >>> main(["config", "describe"])  # doctest: +ELLIPSIS
    kafka.bootstrap_servers ...
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parts = parts or Parts()
    if argv[:1] in (["train"], ["evaluate"]):  # these jobs parse their own options
        run_argv = train.run_argv if argv[0] == "train" else evaluate.run_argv
        try:
            return run_argv(argv[1:], parts)
        except OnrampError as exc:
            print(f"onramp: error: {exc}", file=sys.stderr)
            return 1
    args = _parser().parse_args(argv)
    args.parts = parts
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
