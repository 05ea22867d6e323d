"""Event-time windows per user: tumbling and sliding counts, and session windows.

All three are driven by event time and a watermark only, never by a wall clock, so replaying the
same records gives the same windows. Adding an event is commutative: the windows after a set of
events do not depend on the order they came in, as long as no event is behind the watermark
(those are routed to ``onramp.events.late`` before they get here).

>>> w = TumblingCounts(size_ms=60_000, retention_ms=600_000)
>>> for t in (1_000, 59_000, 61_000):
...     w.add(t)
>>> w.buckets
{0: 2, 60000: 1}
>>> w.count_between(0, 120_000)
3
>>> s = SessionWindows(gap_ms=30_000)
>>> for t in (0, 10_000, 100_000, 20_000):
...     s.add(t)
>>> s.open
[(0, 20000), (100000, 100000)]
>>> s.advance(watermark=60_000)  # the first session can no longer grow: closed
>>> (s.closed, s.closed_active_ms, s.open)
(1, 20000, [(100000, 100000)])
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ray_app.state.compact import Compact

__all__ = ["SessionWindows", "TumblingCounts"]


@dataclass
class TumblingCounts(Compact):
    """Event counts in fixed, aligned windows of ``size_ms``; sliding counts are sums of them.

    Buckets that end more than ``retention_ms`` behind the watermark are dropped.
    """

    size_ms: int
    retention_ms: int
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, ts: int) -> None:
        start = ts - ts % self.size_ms
        self.buckets[start] = self.buckets.get(start, 0) + 1

    def merge(self, other: TumblingCounts) -> None:
        """Fold another user's buckets into these (identity stitching)."""
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n

    def count_between(self, start: int, end: int) -> int:
        """Events in the buckets that overlap ``[start, end)``: a sliding window at bucket grain."""
        return sum(n for b, n in self.buckets.items() if b < end and b + self.size_ms > start)

    def advance(self, watermark: int) -> None:
        horizon = watermark - self.retention_ms
        for b in [b for b in self.buckets if b + self.size_ms < horizon]:
            del self.buckets[b]


@dataclass
class SessionWindows(Compact):
    """Activity sessions: events closer than ``gap_ms`` belong to one session.

    Open sessions are kept as ``(first, last)`` event times, merged as events arrive in any order;
    a session closes once the watermark is ``gap_ms`` past its last event (no on-time event can
    join it any more) and is then only counted.
    """

    gap_ms: int
    open: list[tuple[int, int]] = field(default_factory=list)
    closed: int = 0
    closed_active_ms: int = 0

    def add(self, ts: int) -> None:
        self.add_span(ts, ts)

    def add_span(self, first: int, last: int) -> None:
        """Add an open session ``[first, last]`` (one event: ``first == last``), joining every
        open window it comes within ``gap_ms`` of: adding the events of two users one by one,
        or each user's windows into the other's, gives the same windows."""
        # Open windows are sorted and more than gap_ms apart: the span joins a contiguous run.
        a = bisect.bisect_left(self.open, (first - self.gap_ms, -(2**62)))
        if a > 0 and self.open[a - 1][1] >= first - self.gap_ms:
            a -= 1
        b = a
        lo, hi = first, last
        while b < len(self.open) and self.open[b][0] <= last + self.gap_ms:
            if self.open[b][1] < first - self.gap_ms:
                b += 1
                a = b
                continue
            lo, hi = min(lo, self.open[b][0]), max(hi, self.open[b][1])
            b += 1
        self.open[a:b] = [(lo, hi)]

    def merge(self, other: SessionWindows) -> None:
        """Fold another user's windows into these (identity stitching)."""
        self.closed += other.closed
        self.closed_active_ms += other.closed_active_ms
        for first, last in other.open:
            self.add_span(first, last)

    def advance(self, watermark: int) -> None:
        # strictly past: an event at the watermark is on time, and joins a session that ended
        # gap_ms before it
        keep = []
        for s, e in self.open:
            if e + self.gap_ms < watermark:
                self.closed += 1
                self.closed_active_ms += e - s
            else:
                keep.append((s, e))
        self.open = keep

    @property
    def count(self) -> int:
        return self.closed + len(self.open)
