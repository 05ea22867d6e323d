"""The CRM table: a CSV or Parquet file joined to profiles by user id or account id.

The table is a CSV or Parquet file (``enrich.crm_path``) with a ``userId`` and/or an
``accountId`` column and any others (plan, industry, employees, region, ...). A profile is joined
by its user id first, then by the ``accountId`` trait its user sent with ``identify``. The file
is re-read when its modification time changes (checked at most every
``enrich.reload_interval_s``). A user with no row gets :data:`DEFAULTS` and is counted as a miss.

The join happens when a profile is read, not when events are applied: the stream state stays a
pure function of the events (so replays after a crash stay exact), and a CRM change shows on
the next read instead of waiting for the user's next event.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "crm.csv"
>>> _ = path.write_text("accountId,plan,employees\\nacct-1,enterprise,1200\\n")
>>> table = CrmTable(path)
>>> table.enrich({"userId": "u1", "traits": {"accountId": "acct-1"}})
{'found': True, 'by': 'accountId', 'accountId': 'acct-1', 'plan': 'enterprise', 'employees': 1200}
>>> table.enrich({"userId": "u2", "traits": {}})["found"], table.misses
(False, 1)
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("onramp.enrich")

__all__ = ["DEFAULTS", "CrmTable", "write_demo_crm"]

#: What an unknown user is enriched with.
DEFAULTS: dict[str, Any] = {
    "plan": "unknown",
    "industry": "unknown",
    "employees": None,
    "region": "unknown",
}


#: Columns the join's answer names itself: a CRM column of one of these names is left out.
RESERVED = ("found", "by")


def _clean(value: Any) -> Any:
    """A cell as JSON-ready Python: NaN and NaT -> None, numpy scalars and arrays -> Python
    numbers and lists, times -> ISO-8601 text, anything else unknown -> its text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dt.datetime | dt.date):
        return None if value != value else value.isoformat()  # NaT is not equal to itself
    if hasattr(value, "tolist"):  # numpy scalars and arrays (a Parquet list column)
        return _clean(value.tolist())
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    return str(value)


def _key(value: Any) -> str | None:
    """A join key as text: ``1001`` for a float column's 1001.0 (a column with blanks reads
    as floats), None for a blank."""
    value = _clean(value)
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class CrmTable:
    """The CRM table in memory, reloaded when the file changes."""

    def __init__(
        self, path: str | Path | None, reload_interval_s: float = 5.0, background: bool = False
    ) -> None:
        """``background``: a daemon thread looks for a changed file every ``reload_interval_s``
        and reads it (a serving replica: a read of a large table took most of a second on the
        event loop every request shares); else :meth:`enrich` does when the interval is up."""
        self.path = Path(path) if path else None
        self.reload_interval_s = reload_interval_s
        self.background = background
        self.by_user: dict[str, dict[str, Any]] = {}
        self.by_account: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0
        self.loads = 0
        #: Rows of the last read that repeated an earlier row's id (the last one is used).
        self.repeated = 0
        #: Why the table could not be (re)read, until it is read again; None: it was.
        self.error: str | None = None
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._maybe_reload(force=True)
        self._stopped = threading.Event()
        if background and self.path is not None:
            threading.Thread(target=self._watch, name="crm-reload", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopped.wait(max(self.reload_interval_s, 0.05)):
            try:
                self._maybe_reload(force=True)
            except Exception:  # never let the thread die: the next look tries again
                log.exception("CRM table: reload failed")

    def close(self) -> None:
        """Stop the background reloads."""
        self._stopped.set()

    def _maybe_reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (not force and now - self._checked < self.reload_interval_s):
            return
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self.by_user, self.by_account, self._mtime = {}, {}, None
            self._fail(
                f"{self.path} does not exist (enrich.crm_path): every user gets the defaults"
            )
            return
        except OSError as exc:
            self._fail(f"cannot read {self.path}: {exc.strerror or exc}")
            return
        if mtime == self._mtime:
            return
        import pandas as pd

        try:
            df = (
                pd.read_parquet(self.path)
                if self.path.suffix == ".parquet"
                # ids as written: "007" stays "007", and a column with blanks is not floats
                else pd.read_csv(self.path, dtype={"userId": str, "accountId": str})
            )
        except Exception as exc:  # a half-written or broken file: keep the last good table
            self._fail(f"cannot read {self.path}: {exc}")
            return
        columns = [str(c) for c in df.columns]
        if "userId" not in columns and "accountId" not in columns:
            # not a CRM table this join can use: keep the last good one, and say why
            self._fail(
                f"{self.path} has neither a userId nor an accountId column to join by "
                f"(its columns: {', '.join(columns[:12]) or 'none'})"
            )
            return
        try:
            by_user, by_account, repeated = _index(df.to_dict(orient="records"))
        except Exception as exc:  # a cell no answer can carry: keep the last good table
            self._fail(f"cannot read the rows of {self.path}: {exc}")
            return
        reserved = [c for c in columns if c in RESERVED]
        if reserved:
            log.warning(
                "CRM table %s: columns %s are left out (the answer's own fields)",
                self.path,
                ", ".join(reserved),
            )
        with self._lock:  # swapped whole between two lookups
            self.by_user, self.by_account, self._mtime = by_user, by_account, mtime
        self.loads += 1
        self.repeated = repeated
        if repeated:
            log.warning(
                "CRM table %s: %d rows repeat a userId or accountId of an earlier row; the "
                "last row of each is used",
                self.path,
                repeated,
            )
        if self.error is not None:
            log.info("CRM table %s read again: %d users, %d accounts", self.path, len(by_user),
                     len(by_account))  # fmt: skip
        self.error = None

    def _fail(self, error: str) -> None:
        """Note why the table could not be (re)read: logged once per distinct problem, shown
        in ``/healthz``'s details (``crm``)."""
        if error != self.error:
            log.error("CRM table: %s", error)
        self.error = error

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` shows of the table (with a read key)."""
        return {
            "path": None if self.path is None else str(self.path),
            "users": len(self.by_user),
            "accounts": len(self.by_account),
            "loads": self.loads,
            "repeatedRows": self.repeated,
            "error": self.error,
        }

    def enrich(self, profile: dict[str, Any]) -> dict[str, Any]:
        """The CRM row for a profile (``found``, ``by`` and the row's columns), or the defaults."""
        if not self.background:
            self._maybe_reload()
        with self._lock:
            user_id = profile.get("userId") or profile.get("userKey")
            group = profile.get("groupId")
            account = (profile.get("traits") or {}).get("accountId")
            row, by = None, None
            if user_id is not None and str(user_id) in self.by_user:
                row, by = self.by_user[str(user_id)], "userId"
            elif group is not None and str(group) in self.by_account:
                row, by = self.by_account[str(group)], "groupId"  # Segment's group call
            elif account is not None and str(account) in self.by_account:
                row, by = self.by_account[str(account)], "accountId"
            if row is None:
                self.misses += 1
                return {"found": False, "by": None, **DEFAULTS}
            self.hits += 1
            return {"found": True, "by": by, **{k: v for k, v in row.items() if k != "userId"}}


def _index(
    records: list[dict[Any, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], int]:
    """Rows by user id and by account id (a row with a user id is joined by it only), and how
    many rows repeated an earlier row's id."""
    by_user: dict[str, dict[str, Any]] = {}
    by_account: dict[str, dict[str, Any]] = {}
    repeated = 0
    for rec in records:
        row = {str(k): _clean(v) for k, v in rec.items() if str(k) not in RESERVED}
        user, account = _key(row.get("userId")), _key(row.get("accountId"))
        if "userId" in row:
            row["userId"] = user
        if "accountId" in row:
            row["accountId"] = account
        if user is not None:
            repeated += user in by_user
            by_user[user] = row
        elif account is not None:
            repeated += account in by_account
            by_account[account] = row
    return by_user, by_account, repeated


def write_demo_crm(path: Path, accounts: dict[str, dict[str, Any]]) -> Path:
    """Write a CRM CSV for the simulator's accounts (account id -> columns)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["accountId", "plan", "industry", "employees", "region"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for acct, row in sorted(accounts.items()):
            w.writerow({"accountId": acct, **{c: row.get(c) for c in cols[1:]}})
    return path
