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

Every command takes the common options ``--config FILE`` (YAML settings; ``ONRAMP_*`` variables
override it), ``--log-level`` and ``--verbose``, before or after the command name, and exits with
the same statuses (:data:`~ray_app.cli.common.EXIT_STATUS_HELP`).
One module per command (``ray_app/cli/<command>.py``, each with ``add_parser`` and ``run``);
what they share is in :mod:`ray_app.cli.common`. Command modules import Ray, Serve, torch and
pandas inside ``run``, so that ``onramp --help`` starts fast.
"""

from __future__ import annotations

import argparse
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
from ray_app.cli.common import (
    EXIT_STATUS_HELP,
    Command,
    Parts,
    common_options,
    guarded,
    setup_logging,
)
from ray_app.cli.demo import DEMO_WORLDS
from ray_app.config import load_settings

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
    p = argparse.ArgumentParser(
        prog="onramp",
        description="Onramp: real-time personalization of customer onboarding on Ray.",
        epilog="Settings come from --config and ONRAMP_* variables, e.g.\n"
        "ONRAMP_KAFKA__BOOTSTRAP_SERVERS=broker:9092. See `onramp config describe`.\n\n"
        + EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options()],
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"onramp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inner = common_options(top=False)  # after the command: never overwrites a value given before
    for command in _LISTED:
        command.add_parser(sub, inner)
    return p


#: The common options that take a value (``--config FILE``), and those that do not.
_VALUED = ("--config", "--log-level")
_FLAGS = ("-v", "--verbose")


def _command_at(argv: list[str]) -> int | None:
    """Where the command is in ``argv``: the first word after the common options, if any.

    >>> _command_at(["--config", "a.yaml", "-v", "train", "--data", "x"])
    3
    >>> _command_at(["--log-level=INFO", "evaluate"]), _command_at(["--help"])
    (1, None)
    """
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _VALUED:
            i += 2
        elif word in _FLAGS or word.startswith(tuple(f"{o}=" for o in _VALUED)):
            i += 1
        else:
            return None if word.startswith("-") else i
    return None


def _run_job(argv: list[str], at: int, parts: Parts) -> int:
    """``onramp [common options] train|evaluate ...``: the job parses its own options, the common
    ones included (those given before the command go first, so those after it win)."""
    common = argparse.ArgumentParser(
        prog="onramp", parents=[common_options()], add_help=False, allow_abbrev=False
    )
    args, _ = common.parse_known_args(argv[:at] + argv[at + 1 :])
    setup_logging(args)
    run_argv = train.run_argv if argv[at] == "train" else evaluate.run_argv
    return run_argv(argv[:at] + argv[at + 1 :], parts)


def main(argv: Sequence[str] | None = None, parts: Parts | None = None) -> int:
    """Run one ``onramp`` command; returns its exit status (see :data:`EXIT_STATUS_HELP`:
    0 ok, 1 runtime error, 2 usage or configuration, 3 drift found, 130 Ctrl-C).

    ``parts`` are the Serve application and the training jobs, which ``up``, ``demo``,
    ``train`` and ``evaluate`` run (the ``onramp`` entry point, :mod:`deployments.onramp`,
    passes them; without them those commands say so and exit 1).

    >>> main(["config", "describe"])  # doctest: +ELLIPSIS
    kafka.bootstrap_servers ...
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parts = parts or Parts()
    at = _command_at(argv)
    if at is not None and argv[at] in ("train", "evaluate"):  # these jobs parse their own options
        return guarded(f"onramp {argv[at]}", lambda: _run_job(argv, at, parts))
    args = _parser().parse_args(argv)
    args.parts = parts
    setup_logging(args)

    def run() -> int:
        settings = load_settings(args.config)
        return _COMMANDS[args.command](args, settings)

    return guarded("onramp", run)
