"""Each recent user's decisions and rewards, for the console's user lookup.

A bounded memory: the last ``per_user`` entries of the last ``users`` users seen (least recently
seen users go first), each entry kept as its compact JSON bytes (copied to their exact size:
orjson's own bytes keep a 4 KB buffer), so 20,000 users of a few decisions cost tens of MB, not a
dict per decision. A lookup answers the entries in time order.

>>> log = UserLog(users=2, per_user=3)
>>> log.decision({"decisionId": "d1", "userKey": "u1", "slot": "next_step", "chosen": "role",
...               "propensity": 0.5, "ranked": [{"action": "role", "score": 0.7,
...                                             "probability": 0.5}],
...               "arm": "treatment", "modelVersion": 3}, 2_000)
>>> log.reward({"decisionId": "d1", "userKey": "u1", "action": "role", "reward": 1.0,
...             "outcome": "completed", "decidedAtMs": 2_000, "outcomeAtMs": 3_000})
>>> [e["kind"] for e in log.entries("u1")], log.entries("u1")[0]["ranked"][0]["probability"]
(['decision', 'reward'], 0.5)
>>> log.entries("nobody")
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["UserLog"]

#: Ranked actions kept per decision (the top of the ranking).
RANKED = 10


class UserLog:
    """See the module docstring."""

    def __init__(self, users: int = 20_000, per_user: int = 32) -> None:
        self.users = users
        self.per_user = per_user
        self._log: OrderedDict[str, deque[tuple[int, bytes]]] = OrderedDict()

    def _put(self, user: str, ms: int, entry: dict[str, Any]) -> None:
        q = self._log.get(user)
        if q is None:
            q = self._log[user] = deque(maxlen=self.per_user)
            if len(self._log) > self.users:
                self._log.popitem(last=False)
        else:
            self._log.move_to_end(user)
        # orjson's bytes keep the 4 KB buffer they were written in: copy to the exact size
        q.append((ms, bytes(memoryview(orjson.dumps(entry)))))

    def fold(self, old: str, into: str) -> None:
        """``old``'s entries become ``into``'s (the stream merged the two ids), the latest
        ``per_user`` of both kept."""
        q = self._log.pop(old, None)
        if q is None:
            return
        both = sorted([*q, *self._log.get(into, ())], key=lambda e: e[0])
        self._log[into] = deque(both[-self.per_user :], maxlen=self.per_user)
        self._log.move_to_end(into)

    def decision(self, d: Mapping[str, Any], ms: int, user: str | None = None) -> None:
        """A decision record, under ``user`` (default: its ``userKey``)."""
        ranked = [
            {k: r.get(k) for k in ("action", "score", "probability") if k in r}
            for r in (d.get("ranked") or [])[:RANKED]
            if isinstance(r, Mapping)
        ]
        entry = {
            "kind": "decision",
            "at": ms,
            "decisionId": d.get("decisionId"),
            "slot": d.get("slot"),
            "chosen": d.get("chosen"),
            "propensity": d.get("propensity"),
            "ranked": ranked,
            "arm": d.get("arm"),
            "experiment": d.get("experiment"),
            "modelVersion": d.get("modelVersion"),
            "policy": d.get("policy"),
            "coldStart": d.get("coldStart"),
        }
        self._put(user or str(d.get("userKey")), ms, entry)

    def reward(self, r: Mapping[str, Any], user: str | None = None) -> None:
        """A reward record, under ``user`` (default: its ``userKey``)."""
        at = next(
            (v for v in (r.get("outcomeAtMs"), r.get("decidedAtMs")) if isinstance(v, int)), 0
        )
        entry = {
            "kind": "reward",
            "at": at,
            "decisionId": r.get("decisionId"),
            "action": r.get("action"),
            "reward": r.get("reward"),
            "outcome": r.get("outcome"),
            "arm": r.get("arm"),
            "modelVersion": r.get("modelVersion"),
        }
        self._put(user or str(r.get("userKey")), at, entry)

    def entries(self, user: str) -> list[dict[str, Any]] | None:
        """The user's entries in time order (None: none kept, or the user was forgotten)."""
        q = self._log.get(user)
        if q is None:
            return None
        return [orjson.loads(raw) for _, raw in sorted(q, key=lambda e: e[0])]

    def __len__(self) -> int:
        return len(self._log)
