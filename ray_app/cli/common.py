"""What the ``onramp`` commands share: the common options, Ctrl-C handling, setting overrides."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from ray_app.config import Settings
from ray_app.errors import ConfigError, OnrampError

__all__ = [
    "Command",
    "Parts",
    "Stop",
    "common_options",
    "decide_key",
    "with_overrides",
]

#: A parsed command: ``(args, settings) -> exit status``.
Command = Callable[[argparse.Namespace, Settings], int]


def common_options() -> argparse.ArgumentParser:
    """The options every command takes (``--config``, ``--log-level``), as a parent parser."""
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
    return common


class Stop:
    """Set by Ctrl-C or SIGTERM; commands poll it."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.event.set())

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """``settings`` with the options given on the command line (``None``: not given) in place.

    >>> s = with_overrides(Settings(), sim={"users": 7, "rate": None})
    >>> s.sim.users, s.sim.rate == Settings().sim.rate
    (7, True)
    """
    data = settings.model_dump()
    for section, values in sections.items():
        data[section].update({k: v for k, v in values.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except Exception as exc:
        raise ConfigError(f"invalid argument: {exc}") from None


def decide_key(settings: Settings) -> str | None:
    """A key that may call /v1/decide: a decide key, else a read key (servers may use those)."""
    c = settings.collector
    for keys in (c.decide_keys, c.read_keys):
        if keys:
            return next(iter(keys.values())).get_secret_value()
    return None


@dataclass(frozen=True)
class Parts:
    """What the CLI runs from the layers above the engine: the Serve application's builder
    (``onramp up``, ``demo``) and the training and evaluation jobs. The ``onramp`` entry point
    (:mod:`deployments.onramp`) passes them in, so that ``ray_app`` imports neither
    ``deployments`` nor ``training``."""

    build_app: Callable[[dict[str, Any]], Any] | None = None
    train: Callable[..., int] | None = None
    """``train(argv, prog=...)``: the offline training job on its own options."""
    evaluate: Callable[[list[str]], int] | None = None
    """``evaluate(argv)``: off-policy evaluation on its own options."""

    def need(self, name: str) -> Callable[..., Any]:
        """The part called ``name``, or an :class:`OnrampError` that says how to get it."""
        part = getattr(self, name)
        if part is None:
            raise OnrampError(
                f"this command needs the {name.replace('_', ' ')} part: run the `onramp` "
                "command (deployments.onramp:main), which plugs it in",
                part=name,
            )
        return cast(Callable[..., Any], part)
