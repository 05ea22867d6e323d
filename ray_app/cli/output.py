"""How the ``onramp`` commands print: strict JSON, progress, and where their outputs went.

* :func:`dumps`: JSON that every parser reads. ``NaN`` and ``Infinity`` (which Python's
  :mod:`json` writes by default and strict parsers refuse) become ``null``; numpy scalars become
  numbers; anything else unknown becomes its ``str``.
* :class:`Progress`: a bar rewritten in place on a terminal (``\\r``), and on anything else (a
  file, a pipe, a CI log) a plain line every ``every_s`` seconds and one at the end.
* :func:`working`: the same for a step without a count: what it does and how long it took.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["Progress", "dumps", "finite", "working"]


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float as ``None`` and numpy scalars and arrays as plain
    Python (recursively through dicts, lists and tuples).

    >>> finite({"a": float("nan"), "b": [1.5, float("inf")], "c": (2,)})
    {'a': None, 'b': [1.5, None], 'c': [2]}
    """
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):
        return finite(obj.tolist())
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON of ``obj`` (see the module docstring).

    >>> dumps({"auc": float("nan"), "n": 3})
    '{"auc": null, "n": 3}'
    """
    return json.dumps(finite(obj), indent=indent, allow_nan=False, default=str)


def _duration(seconds: float) -> str:
    """``'42s'``, ``'3m05s'``, ``'1h02m'``.

    >>> _duration(42.4), _duration(185), _duration(3725)
    ('42s', '3m05s', '1h02m')
    """
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of ``desc`` on ``stream`` (default stderr): with a ``total``, a bar with the
    share done, the rate and the time left; without, the count and the rate. On a terminal the
    line is rewritten at most every ``tty_every_s``; elsewhere a plain line is printed every
    ``every_s`` and by :meth:`close`.

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress("archived", unit="records", stream=out, every_s=3600)
    >>> p.update(5); p.update(7); p.close()
    >>> "\\r" in out.getvalue(), out.getvalue().splitlines()[-1].startswith("archived: 12 records")
    (False, True)
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "steps",
        stream: TextIO | None = None,
        every_s: float = 10.0,
        tty_every_s: float = 0.2,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = tty_every_s if self.tty else every_s
        self.done = 0
        self.started = self.shown = time.monotonic()
        self._drawn = False

    def line(self) -> str:
        """The current progress as one line (no ``\\r``, no newline)."""
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if not self.total:
            return f"{self.desc}: {self.done:,} {self.unit}, {rate:,.1f}/s, {_duration(elapsed)}"
        share = min(self.done / self.total, 1.0)
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = ("#" * int(24 * share)).ljust(24, "." if not self.tty else " ")
        return (
            f"{self.desc}: [{bar}] {100 * share:3.0f}% {self.done:,}/{self.total:,} {self.unit}, "
            f"{rate:,.1f}/s, {_duration(left)} left"
        )

    def _show(self) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.shown >= self.every_s:
            self.shown = now
            self._show()

    def close(self) -> None:
        """The final line (and, on a terminal, the newline that ends the bar)."""
        self._show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@contextmanager
def working(desc: str, stream: TextIO | None = None, every_s: float = 15.0) -> Iterator[None]:
    """Say that ``desc`` started, then (off a terminal every ``every_s``; on one, in place every
    second) how long it has run, then how long it took.

    >>> import io
    >>> out = io.StringIO()
    >>> with working("fitting the model", stream=out):
    ...     pass
    >>> out.getvalue().splitlines()
    ['fitting the model ...', 'fitting the model: done in 0s']
    """
    stream = stream or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    started = time.monotonic()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(1.0 if tty else every_s):
            elapsed = _duration(time.monotonic() - started)
            stream.write(f"\r{desc} ... {elapsed}\x1b[K" if tty else f"{desc}: {elapsed} so far\n")
            stream.flush()

    stream.write(f"{desc} ...{'' if tty else chr(10)}")
    stream.flush()
    ticker = threading.Thread(target=tick, name="onramp-working", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join(timeout=2)
    elapsed = _duration(time.monotonic() - started)
    stream.write(f"\r{desc}: done in {elapsed}\x1b[K\n" if tty else f"{desc}: done in {elapsed}\n")
    stream.flush()
