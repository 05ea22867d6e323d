"""Deduplication by event id (``messageId``) with bounded memory and a documented horizon.

An id is remembered until the watermark is ``horizon_ms`` past its event time. By then any copy
of the event is behind the watermark and is routed to ``onramp.events.late`` before dedupe is
asked, so forgetting it cannot let a duplicate through: with ``horizon_ms >= 0`` deduplication
is exact for every on-time event. ``max_ids`` is a safety cap on memory; if it is ever reached the
oldest ids are forgotten early and ``evicted_early`` counts them (exactness is then lost for
those ids, and the counter says so).

>>> d = Deduplicator(horizon_ms=1_000)
>>> d.seen("m1", ts=5_000), d.seen("m1", ts=5_000), d.seen("m2", ts=5_100)
(False, True, False)
>>> d.advance(watermark=6_500)   # 5_000 + 1_000 < 6_500: m1 is forgotten, m2 too
>>> len(d)
0
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

__all__ = ["Deduplicator"]


@dataclass
class Deduplicator:
    horizon_ms: int = 0
    max_ids: int = 2_000_000
    ids: dict[str, int] = field(default_factory=dict)
    heap: list[tuple[int, str]] = field(default_factory=list)
    evicted_early: int = 0
    added: list[tuple[int, str]] = field(default_factory=list)
    """(event time, id) remembered since the last :meth:`take_added`: what a delta checkpoint
    must carry."""

    def seen(self, message_id: str, ts: int) -> bool:
        """True if the id was seen before (a duplicate); otherwise remember it."""
        if message_id in self.ids:
            return True
        self.ids[message_id] = ts
        heapq.heappush(self.heap, (ts, message_id))
        self.added.append((ts, message_id))
        if len(self.ids) > self.max_ids:
            _, old = heapq.heappop(self.heap)
            del self.ids[old]
            self.evicted_early += 1
        return False

    def advance(self, watermark: int) -> None:
        """Forget ids whose events can no longer arrive on time."""
        limit = watermark - self.horizon_ms
        while self.heap and self.heap[0][0] < limit:
            _, mid = heapq.heappop(self.heap)
            del self.ids[mid]

    def take_added(self) -> list[tuple[int, str]]:
        """The ids remembered since the previous call (and forget that list)."""
        added, self.added = self.added, []
        return added

    def replay(self, added: list[tuple[int, str]], watermark: int, evicted_early: int) -> None:
        """Bring a restored deduplicator up to date with a delta: remember its ids, then forget
        what its watermark let go. The same ids remain as in the live one (below ``max_ids``)."""
        for ts, mid in added:
            if mid not in self.ids:
                self.ids[mid] = ts
                heapq.heappush(self.heap, (ts, mid))
                if len(self.ids) > self.max_ids:
                    _, old = heapq.heappop(self.heap)
                    del self.ids[old]
        self.advance(watermark)
        self.added = []
        self.evicted_early = evicted_early

    def __len__(self) -> int:
        return len(self.ids)
