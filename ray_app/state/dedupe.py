"""Deduplication by event id (``messageId``) with bounded memory and a documented horizon.

An id is remembered until the watermark is ``horizon_ms`` past its event time. By then any copy
of the event is behind the watermark and is routed to ``onramp.events.late`` before dedupe is
asked, so forgetting it cannot let a duplicate through: with ``horizon_ms >= 0`` deduplication
is exact for every on-time event. ``max_ids`` is a safety cap on memory; if it is ever reached the
oldest ids are forgotten early and ``evicted_early`` counts them (exactness is then lost for
those ids, and the counter says so).

**What is remembered is a 64-bit hash of the id** (:func:`id_hash`, BLAKE2b: the same in every
process, unlike ``hash()``), not the id: 8 bytes in a snapshot whatever the id's length (a UUID
is 36). A copy of an event has the same id, so the same hash: every duplicate is still dropped.
The one thing a hash adds is a *collision*: a new id whose hash equals a remembered one's would
be dropped as a duplicate. With ``n`` ids remembered (those within the window: the partition's
events of the last ``allowed lateness + horizon`` of event time), a new id collides with
probability ``n / 2**64``: about 1 in 9 * 10**12 new events at the ``max_ids`` cap of 2,000,000,
1 in 2 * 10**14 at 100,000 remembered. Finding a collision on purpose takes about ``2**64``
BLAKE2b evaluations per target id (a second preimage), and colliding two of one's own ids only
drops one's own event.

>>> d = Deduplicator(horizon_ms=1_000)
>>> d.seen("m1", ts=5_000), d.seen("m1", ts=5_000), d.seen("m2", ts=5_100)
(False, True, False)
>>> d.advance(watermark=6_500)   # 5_000 + 1_000 < 6_500: m1 is forgotten, m2 too
>>> len(d)
0
"""

from __future__ import annotations

import hashlib
import heapq
import sys
from array import array
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import Any

__all__ = ["Deduplicator", "id_hash"]


def id_hash(message_id: str) -> int:
    """The unsigned 64-bit BLAKE2b hash of an id's UTF-8 bytes: what dedupe remembers.

    >>> id_hash("m1") == id_hash("m1") != id_hash("m2"), 0 <= id_hash("m1") < 2**64
    (True, True)
    """
    data = message_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclass
class Deduplicator:
    horizon_ms: int = 0
    max_ids: int = 2_000_000
    ids: dict[int, int] = field(default_factory=dict)
    """:func:`id_hash` of each remembered id -> its event time."""
    heap: list[tuple[int, int]] = field(default_factory=list)
    """(event time, hash) of every remembered id: the order they are forgotten in."""
    evicted_early: int = 0
    added: list[tuple[int, int]] = field(default_factory=list)
    """(event time, hash) remembered since the last :meth:`take_added`: what a delta checkpoint
    must carry."""

    def seen(self, message_id: str, ts: int) -> bool:
        """True if the id was seen before (a duplicate); otherwise remember it."""
        h = id_hash(message_id)
        if h in self.ids:
            return True
        self.ids[h] = ts
        heapq.heappush(self.heap, (ts, h))
        self.added.append((ts, h))
        if len(self.ids) > self.max_ids:
            _, old = heapq.heappop(self.heap)
            del self.ids[old]
            self.evicted_early += 1
        return False

    def advance(self, watermark: int) -> None:
        """Forget ids whose events can no longer arrive on time."""
        limit = watermark - self.horizon_ms
        while self.heap and self.heap[0][0] < limit:
            _, h = heapq.heappop(self.heap)
            del self.ids[h]

    def take_added(self) -> list[tuple[int, int]]:
        """The ids remembered since the previous call (and forget that list)."""
        added, self.added = self.added, []
        return added

    def replay(
        self, added: list[tuple[int, int | str]], watermark: int, evicted_early: int
    ) -> None:
        """Bring a restored deduplicator up to date with a delta: remember its ids, then forget
        what its watermark let go. The same ids remain as in the live one (below ``max_ids``).
        A delta of snapshot version 6 carries the ids themselves: they are hashed here."""
        for ts, mid in added:
            h = mid if isinstance(mid, int) else id_hash(mid)
            if h not in self.ids:
                self.ids[h] = ts
                heapq.heappush(self.heap, (ts, h))
                if len(self.ids) > self.max_ids:
                    _, old = heapq.heappop(self.heap)
                    del self.ids[old]
        self.advance(watermark)
        self.added = []
        self.evicted_early = evicted_early

    def __len__(self) -> int:
        return len(self.ids)

    # -- pickling: the ids packed, 10 to 16 bytes each ----------------------------------------

    def __getstate__(self) -> tuple[Any, ...]:
        """(horizon, cap, evicted early, ids since the last delta, packed ids): the ids sorted
        by (event time, hash) as 8-byte hashes and the gaps between their times, each gap in 2,
        4 or 8 bytes (the fewest that hold the largest); the heap is rebuilt from them."""
        entries = sorted((ts, h) for h, ts in self.ids.items())
        times = [ts for ts, _ in entries]
        gaps = [b - a for a, b in pairwise(times)]
        top = max(gaps, default=0)
        width = next(w for w in (2, 4, 8) if top < 2 ** (8 * w))
        packed = (
            times[0] if times else 0,
            width,
            _to_bytes(array(_CODES[width], gaps)),
            _to_bytes(array(_CODES[8], [h for _, h in entries])),
        )
        return (self.horizon_ms, self.max_ids, self.evicted_early, self.added, packed)

    def __setstate__(self, state: tuple[Any, ...] | dict[str, Any]) -> None:
        if isinstance(state, dict):  # snapshot version 6: the ids themselves
            self.__dict__.update(state)
            self.ids = {id_hash(mid): ts for mid, ts in state["ids"].items()}
            self.heap = sorted((ts, h) for h, ts in self.ids.items())
            self.added = [(ts, id_hash(mid)) for ts, mid in state.get("added", [])]
            return
        self.horizon_ms, self.max_ids, self.evicted_early, self.added, packed = state
        first, width, gap_bytes, hash_bytes = packed
        hashes = _from_bytes(_CODES[8], hash_bytes)
        times = list(accumulate(_from_bytes(_CODES[width], gap_bytes), initial=first))
        self.heap = list(zip(times, hashes, strict=False))  # sorted: already a heap
        self.ids = {h: ts for ts, h in self.heap}


#: Width in bytes -> this machine's unsigned array type code of that width (a snapshot names
#: the width, so it reads the same on any machine).
_CODES = {w: next(c for c in "HILQ" if array(c).itemsize == w) for w in (2, 4, 8)}


def _to_bytes(a: array[int]) -> bytes:
    if sys.byteorder == "big":  # snapshots are little-endian on every machine
        a.byteswap()
    return a.tobytes()


def _from_bytes(kind: str, data: bytes) -> list[int]:
    a = array(kind)
    a.frombytes(data)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()
