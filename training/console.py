"""What a Ray job prints on the driver: Onramp's own lines and progress bars on the terminal,
Ray's own log lines in a file (with ``verbose`` also on the terminal, as Ray prints them).

Ray writes to the driver's terminal from three places, and :class:`RayConsole` takes each one:

* its loggers in this process (``ray``, ``ray.data``, ...: "Started a local Ray instance", Ray
  Data's progress blocks): their console handlers give way to the log file;
* warnings raised in Ray's code or any library's: to the log file. A warning raised at a line of
  this project's code still shows: it is ours to fix, not noise to hide;
* what its workers and actors print, which ``ray.init(log_to_driver=True)`` forwards (Ray Train's
  controller, "Failed to query Ray Train Controller actor state", core-worker errors): to the log
  file, except what the worker loop marks for the terminal: lines written with :func:`say`, and
  the states of Ray's distributed tqdm (:mod:`ray.experimental.tqdm_ray`), drawn here as a
  :class:`~ray_app.cli.output.Progress` bar (in place on a terminal, a plain line every few
  seconds and one at the end elsewhere).

Ray Data's own progress bars are off unless ``verbose``.

    >>> import io, tempfile
    >>> from pathlib import Path
    >>> out = io.StringIO()
    >>> with tempfile.TemporaryDirectory() as d, RayConsole(Path(d) / "ray.log", stream=out) as c:
    ...     c.on_batch({"pid": "7", "actor_name": "TrainController", "is_err": True,
    ...                 "lines": ["Requesting resources", MARK + "epoch 1: loss=0.5"]})
    ...     logged = c.log.path.read_text().splitlines()[-1]
    >>> out.getvalue(), logged
    ('epoch 1: loss=0.5\\n', '(TrainController pid=7) Requesting resources')
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import logging
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from ray_app.cli.output import Progress

__all__ = ["MARK", "RayConsole", "RayLog", "say"]

#: Starts a line a worker writes for the driver's terminal (:func:`say`).
MARK = "__onramp_console__ "
#: Starts the states ``ray.experimental.tqdm_ray`` bars send (its ``RAY_TQDM_MAGIC``).
_TQDM = "__ray_tqdm_magic_token__"
#: The name Ray's driver gives its handler of forwarded lines (``ray.shutdown`` removes it).
_HANDLER = "ray_print_logs"
#: Ray Train's switch of its print patch (propagated from the driver to its workers).
_PRINT_PATCH = "RAY_TRAIN_ENABLE_PRINT_PATCH"
#: This project's source folder: warnings raised there are shown, not logged.
_OURS = str(Path(__file__).resolve().parents[1]) + os.sep


def say(line: str) -> None:
    """Worker side: show ``line`` on the driver's terminal. Written to the worker's stdout,
    which Ray forwards to the driver, as the worker's ``tqdm_ray`` bars are: one stream, so
    lines and bars arrive in the order they were written."""
    sys.stdout.write(f"{MARK}{' '.join(line.splitlines())}\n")
    sys.stdout.flush()


def _ours(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_OURS) and f"{os.sep}site-packages{os.sep}" not in path


class RayLog:
    """The file Ray's lines go to: appended to, one line per write, safe across threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(text.rstrip("\n") + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _ToLog(logging.Handler):
    """Log records of Ray's loggers, formatted as Ray's console handler does, into a RayLog."""

    def __init__(self, log: RayLog) -> None:
        super().__init__(logging.INFO)
        self.log = log
        self.setFormatter(
            logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s")
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.write(self.format(record))
        except Exception:
            self.handleError(record)


def _is_console(handler: logging.Handler) -> bool:
    # Ray's PlainRayHandler is a StreamHandler on stderr; its session files are not
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


class RayConsole:
    """Route what Ray prints while the ``with`` block runs (see the module docstring): Ray's
    lines to ``log_path`` (appended), with ``verbose`` also to the terminal; Onramp's lines and
    bars to ``stream`` (default stderr). Enter it before ``ray.init`` and call :meth:`attach`
    after it; leave it after ``ray.shutdown``."""

    def __init__(
        self,
        log_path: Path,
        verbose: bool = False,
        stream: TextIO | None = None,
        every_s: float = 10.0,
    ) -> None:
        self.log = RayLog(log_path)
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self.attached = False
        self._handler = _ToLog(self.log)
        self._lock = threading.RLock()
        self._bars: dict[str, Progress] = {}
        self._closed: set[str] = set()
        self._added: list[logging.Logger] = []
        self._removed: list[tuple[logging.Logger, list[logging.Handler]]] = []
        self._restore: list[Callable[[], None]] = []

    def __enter__(self) -> RayConsole:
        now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.log.write(f"--- {now} {' '.join(sys.argv) or 'python'}")
        self.take_loggers()
        if not self.verbose:
            self._take_warnings()
        printer = builtins.print  # Ray's tqdm patches it when it draws (--verbose): put back
        self._restore.append(lambda: setattr(builtins, "print", printer))
        return self

    def attach(self) -> bool:
        """After ``ray.init``: take over the lines Ray forwards from workers and actors, and the
        loggers Ray configured since :meth:`__enter__`. ``False`` where this Ray has no such hook
        (its own printing then stays)."""
        import ray.data  # noqa: F401  (configures its loggers: taken below)

        if not self.verbose:
            self._quiet_ray_data()
        self.take_loggers()
        # one stream per worker, in order: Ray Train's print patch would send each print to the
        # worker's stdout and, through its logger, to its stderr too (read here out of order)
        self._set_env(_PRINT_PATCH, "0")
        try:
            from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:
            return False
        dispatcher.remove_handler(_HANDLER)
        dispatcher.add_handler(_HANDLER, self.on_batch)
        self.attached = True
        return True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            self.log.write("".join(traceback.format_exception(exc)))
        for logger in self._added:
            logger.removeHandler(self._handler)
        for logger, handlers in self._removed:
            for h in handlers:
                logger.addHandler(h)
        for undo in reversed(self._restore):
            undo()
        self._added, self._removed, self._restore = [], [], []
        self.log.close()

    # -- Ray's loggers, warnings and Ray Data's bars ------------------------------------------

    def take_loggers(self) -> None:
        """Send the records of Ray's loggers (``ray`` and ``ray.*``) to the log; unless
        ``verbose``, no longer to the terminal. Idempotent: call it again after Ray configured
        more of them."""
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger) or name.split(".")[0] != "ray":
                continue
            console = [h for h in logger.handlers if _is_console(h)]
            if console and not self.verbose:
                for h in console:
                    logger.removeHandler(h)
                self._removed.append((logger, console))
            wanted = name == "ray" or (console and not logger.propagate)
            if wanted and self._handler not in logger.handlers:
                logger.addHandler(self._handler)
                self._added.append(logger)

    def _take_warnings(self) -> None:
        shown = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if _ours(filename):
                shown(message, category, filename, lineno, file, line)
            else:
                self.log.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        self._restore.append(lambda: setattr(warnings, "showwarning", shown))

    def _set_env(self, name: str, value: str) -> None:
        before = os.environ.get(name)
        os.environ[name] = value

        def undo() -> None:
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before

        self._restore.append(undo)

    def _quiet_ray_data(self) -> None:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        before = ctx.enable_progress_bars
        ctx.enable_progress_bars = False
        self._restore.append(lambda: setattr(ctx, "enable_progress_bars", before))

    # -- what workers and actors print --------------------------------------------------------

    def on_batch(self, data: dict[str, Any]) -> None:
        """One batch of lines Ray forwarded from a worker or actor (called on Ray's thread,
        which an exception would end: one is logged instead)."""
        try:
            self._route(data)
        except Exception:
            self.log.write(
                f"onramp: a batch of Ray's lines was not routed:\n{traceback.format_exc()}"
            )

    def _route(self, data: dict[str, Any]) -> None:
        rest: list[str] = []
        with self._lock:
            for line in data.get("lines", []):
                if MARK in line:
                    self.show(line.split(MARK, 1)[1])
                elif _TQDM in line:
                    self._bar_state(line)
                elif line.strip():
                    rest.append(line)
            if not rest:
                return
            if data.get("pid") == "autoscaler":
                rest = list(_autoscaler_events(rest))
            prefix = _prefix(data)
            for line in rest:
                self.log.write(prefix + line)
            if self.verbose and rest:
                self._clear_bar()
                _ray_print({**data, "lines": rest, "is_err": True})  # stdout holds the results

    def show(self, line: str) -> None:
        """``line`` on the terminal (above a bar being drawn there)."""
        with self._lock:
            self._clear_bar()
            self.stream.write(line + "\n")
            self.stream.flush()

    def _clear_bar(self) -> None:
        if self.tty and self._bars:
            self.stream.write("\r\x1b[K")

    def _bar_state(self, line: str) -> None:
        try:
            state = json.loads(line[line.index("{") :])
            uuid, x = str(state["uuid"]), int(state["x"])
        except (ValueError, KeyError, TypeError):
            return
        if uuid in self._closed:  # a state that arrived late or twice
            return
        bar = self._bars.get(uuid)
        if bar is None:
            bar = self._bars[uuid] = Progress(
                str(state.get("desc") or ""),
                total=state.get("total"),
                unit=str(state.get("unit") or "it"),
                stream=self.stream,
                every_s=self.every_s,
            )
            started = state.get("started")  # the worker's clock (training.loop's bars)
            if isinstance(started, int | float):
                bar.started = time.monotonic() - max(0.0, time.time() - started)
        if x > bar.done:
            bar.update(x - bar.done)
        if state.get("closed"):
            bar.close()
            del self._bars[uuid]
            self._closed.add(uuid)


def _prefix(data: dict[str, Any]) -> str:
    """``(TrainController pid=7) ``: who printed a line, as Ray's driver shows it."""
    pid = data.get("pid")
    if pid in ("autoscaler", "raylet"):
        return f"({pid}) "
    name = data.get("actor_name") or data.get("task_name") or ""
    ip = data.get("ip")
    where = f", ip={ip}" if ip and ip != data.get("localhost") else ""
    return f"({name + ' ' if name else ''}pid={pid}{where}) "


def _autoscaler_events(lines: list[str]) -> Iterable[str]:
    """The events in the autoscaler's status lines, as Ray's driver would print them."""
    try:
        from ray._private.worker import filter_autoscaler_events
    except ImportError:
        return []
    return list(filter_autoscaler_events(lines))


def _ray_print(data: dict[str, Any]) -> None:
    """Lines as Ray's driver prints them (``--verbose``)."""
    try:
        from ray._private.worker import print_to_stdstream
    except ImportError:
        for line in data["lines"]:
            print(_prefix(data) + line, file=sys.stderr)
        return
    print_to_stdstream(data, ignore_prefix=False)
