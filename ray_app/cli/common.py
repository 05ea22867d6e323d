"""What the ``onramp`` commands share: the common options, the exit statuses and the one place
that maps errors to them, Ctrl-C handling, setting overrides."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError

from ray_app.config import Settings
from ray_app.errors import ConfigError, OnrampError

__all__ = [
    "EXIT_DRIFT",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STATUS_HELP",
    "EXIT_USAGE",
    "Command",
    "Parts",
    "Stop",
    "common_options",
    "decide_key",
    "guarded",
    "log_level",
    "setup_logging",
    "with_overrides",
]

#: A parsed command: ``(args, settings) -> exit status``.
Command = Callable[[argparse.Namespace, Settings], int]

EXIT_OK = 0
EXIT_ERROR = 1  #: a runtime error (Kafka unreachable, unreadable input, a failed run)
EXIT_USAGE = 2  #: a usage or configuration error (argparse's own status for bad options)
EXIT_DRIFT = 3  #: ``onramp audit --fail-on-drift`` found drift
EXIT_INTERRUPTED = 130  #: Ctrl-C (128 + SIGINT, as shells report it)

EXIT_STATUS_HELP = """\
exit status (the same for every command):
  0    ok
  1    runtime error (Kafka unreachable, an input that cannot be read, a failed run)
  2    usage or configuration error (a bad option; a settings file missing or invalid)
  3    drift found (onramp audit --fail-on-drift)
  130  interrupted by Ctrl-C: one line on stderr, no traceback (archive first writes what it
       has read); up, demo, sim and broker treat Ctrl-C as their way to stop and exit 0"""

_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def common_options(top: bool = True) -> argparse.ArgumentParser:
    """The options every command takes (``--config``, ``--log-level``, ``--verbose``), as a
    parent parser. They may come before or after the command: the top-level parser (``top``)
    holds the defaults, and the copies in the subcommands (``top=False``) default to
    :data:`argparse.SUPPRESS`, so a subcommand never overwrites a value given before it.

    >>> p = argparse.ArgumentParser(parents=[common_options()])
    >>> sub = p.add_subparsers(dest="command")
    >>> _ = sub.add_parser("show", parents=[common_options(top=False)])
    >>> a = p.parse_args(["--config", "a.yaml", "show"])
    >>> a.config, a.log_level, a.verbose
    ('a.yaml', None, False)
    >>> p.parse_args(["show", "--config", "b.yaml", "--verbose"]).config
    'b.yaml'
    """

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = common.add_argument_group("common options (before or after the command)")
    group.add_argument(
        "--config",
        metavar="FILE",
        default=default(None),
        help="YAML settings file (default: $ONRAMP_CONFIG, else none); a missing file is an error",
    )
    group.add_argument(
        "--log-level",
        default=default(None),
        choices=_LEVELS,
        help="level of Onramp's log lines (default WARNING; INFO with --verbose)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="more detail: Onramp's INFO log lines (unless --log-level says otherwise)",
    )
    return common


def log_level(args: argparse.Namespace) -> str:
    """The effective ``--log-level``: as given, else INFO with ``--verbose``, else WARNING."""
    given = getattr(args, "log_level", None)
    return str(given or ("INFO" if getattr(args, "verbose", False) else "WARNING"))


def setup_logging(args: argparse.Namespace) -> None:
    """Log to stderr at :func:`log_level`."""
    logging.basicConfig(
        level=log_level(args), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger().setLevel(log_level(args))


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed: the status still tells
        pass


def positive(text: str) -> float:
    """An argparse type: a finite number > 0.

    >>> positive("0.25")
    0.25
    >>> positive("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a finite number > 0, got 'nan'
    """
    return _positive(text, "a finite number > 0")


def seconds_or_zero(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0 (0: off).

    >>> seconds_or_zero("0"), seconds_or_zero("600")
    (0.0, 600.0)
    >>> seconds_or_zero("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a finite number of seconds >= 0, got '-1'
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def refuse_outside(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    applies: dict[str, tuple[str, bool]],
) -> None:
    """A usage error (exit 2) for an option given where it does nothing: ``applies`` maps an
    option (``--epochs``) to the mode it applies to and whether that mode is on. An option left
    at its default passes.

    >>> p = argparse.ArgumentParser(prog="x", exit_on_error=False)
    >>> _ = p.add_argument("--obd", action="store_true"); _ = p.add_argument("--epochs", type=int)
    >>> refuse_outside(p, p.parse_args(["--obd", "--epochs", "3"]), {"--epochs": ("--obd", True)})
    >>> args = p.parse_args(["--epochs", "3"])
    >>> p.error = lambda message: print(message)  # argparse exits with status 2
    >>> refuse_outside(p, args, {"--epochs": ("--obd", args.obd)})
    --epochs applies to --obd only
    """
    for option, (mode, on) in applies.items():
        dest = option.lstrip("-").replace("-", "_")
        if not on and getattr(args, dest) != parser.get_default(dest):
            parser.error(f"{option} applies to {mode} only")


def _positive(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _integer(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def seed(text: str) -> int:
    """An argparse type: a seed, an integer >= 0 (numpy's generators refuse a negative one,
    which failed only once a run had started).

    >>> seed("7")
    7
    >>> seed("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an integer >= 0, got '-1'
    """
    return _integer(text, 0, "an integer >= 0")


def count_or_none(text: str) -> int:
    """An argparse type: a count where 0 means none, an integer >= 0.

    >>> count_or_none("0")
    0
    >>> count_or_none("-5")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an integer >= 0, got '-5'
    """
    return _integer(text, 0, "an integer >= 0")


def count(text: str) -> int:
    """An argparse type: a count of things to do, an integer >= 1.

    >>> count("3")
    3
    >>> count("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an integer >= 1, got '0'
    """
    return _integer(text, 1, "an integer >= 1")


#: What a plot may be written as (matplotlib's Agg backend; the format is the suffix's).
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".eps", ".ps", ".tif", ".tiff")


def plot_path(text: str) -> str:
    """An argparse type: where to write a plot, with a suffix matplotlib writes (checked before
    a run, not after it: it failed once everything was computed).

    >>> plot_path("ope.png")
    'ope.png'
    >>> plot_path("ope.txt")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a file ending in .png, .pdf, .svg, .jpg, .jpeg, .webp, .eps, .ps, .tif or .tiff, got 'ope.txt'
    """
    if not text.lower().endswith(PLOT_SUFFIXES):
        names = ", ".join(PLOT_SUFFIXES[:-1]) + f" or {PLOT_SUFFIXES[-1]}"
        raise argparse.ArgumentTypeError(f"expected a file ending in {names}, got {text!r}")
    return text


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535.

    >>> port("8080"), port("0")
    (8080, 0)
    >>> port("70000")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a port from 0 to 65535, got '70000'
    """
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (a negative poll timeout would wait
    for ever, NaN would end a read at once).

    >>> seconds("1.5")
    1.5
    >>> seconds("-5")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a finite number of seconds > 0, got '-5'
    """
    return _positive(text, "a finite number of seconds > 0")


def guarded(prog: str, fn: Callable[[], int]) -> int:
    """``fn()``'s exit status, with Onramp's errors and Ctrl-C mapped to the documented ones
    (:data:`EXIT_STATUS_HELP`) and said in one line on stderr, without a traceback.

    >>> def fails() -> int:
    ...     raise OnrampError("no broker")
    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     guarded("onramp x", fails)
    1
    >>> err.getvalue()
    'onramp x: error: no broker\\n'
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     guarded("onramp x", lambda: open("/nonexistent/t.parquet").close() or 0)
    1
    >>> err.getvalue()
    'onramp x: error: /nonexistent/t.parquet: No such file or directory\\n'
    """
    try:
        return fn()
    except ConfigError as exc:
        _say(f"{prog}: configuration error: {exc}")
        return EXIT_USAGE
    except OnrampError as exc:
        _say(f"{prog}: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say(f"\n{prog}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `onramp config describe | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a file a command was given: missing, a directory, not allowed
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"{prog}: error: {where}{exc.strerror or exc}")
        return EXIT_ERROR


class Stop:
    """Set by Ctrl-C or SIGTERM; commands poll it. :meth:`restore` puts the previous handlers
    back (a command that ends while the process goes on, as in tests)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, lambda *_: self.event.set())
            self._previous.setdefault(sig, previous)

    def interrupt_while_starting(self) -> None:
        """Until :meth:`install`: Ctrl-C or SIGTERM raise :class:`KeyboardInterrupt` where the
        command is, so a start that takes minutes (workers, the learner, Serve) can be left: the
        stack stops what it started and the command exits 130. (An event alone was read only
        once the start was over.)"""

        def interrupt(*_: Any) -> None:
            self.install()  # once: a second Ctrl-C must not cut the stop that follows short
            raise KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, interrupt)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)

    def is_set(self) -> bool:
        return self.event.is_set()


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """``settings`` with the options given on the command line (``None``: not given) in place.

    >>> s = with_overrides(Settings(), sim={"users": 7, "rate": None})
    >>> s.sim.users, s.sim.rate == Settings().sim.rate
    (7, True)
    >>> with_overrides(Settings(), sim={"users": 0})
    Traceback (most recent call last):
    ...
    ray_app.errors.ConfigError: --users: Input should be greater than or equal to 1
    """
    data = settings.model_dump()
    for section, values in sections.items():
        data[section].update({k: v for k, v in values.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:  # named as the option that set it (each is the key's name)
        given = {(section, k) for section, values in sections.items() for k, v in values.items()
                 if v is not None}  # fmt: skip
        reasons = []
        for err in exc.errors(include_url=False):
            loc = tuple(str(p) for p in err["loc"])
            name = f"--{loc[1].replace('_', '-')}" if loc[:2] in given else ".".join(loc)
            reasons.append(f"{name}: {err['msg']}")
        raise ConfigError("; ".join(reasons)) from None


def write_key(settings: Settings, needed_by: str) -> tuple[str, str]:
    """The first of ``collector.write_keys`` (source name, key), or a :class:`ConfigError`
    saying that ``needed_by`` sends events and there is none."""
    for name, key in settings.collector.write_keys.items():
        return name, key.get_secret_value()
    raise ConfigError(
        f"collector.write_keys is empty: {needed_by} sends events, which takes a write key "
        "(add one: collector.write_keys.<source>: <key>)"
    )


def decide_key(settings: Settings) -> str | None:
    """A key that may call /v1/decide: a decide key, else a read key (servers may use those).
    With ``collector.identity_secret`` a read key first: the CLI's clients (the demo's samples
    and simulated users) decide for user ids as a server does, with no userHash."""
    c = settings.collector
    order = (c.decide_keys, c.read_keys)
    if c.identity_secret is not None:
        order = (c.read_keys, c.decide_keys)
    for keys in order:
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
