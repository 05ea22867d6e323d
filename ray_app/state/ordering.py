"""Ordering by per-session ``seq``: a bounded reorder buffer, gap detection, and when to give up.

Events of a session are released in ``seq`` order. A session's order starts at the first ``seq``
this partition sees of it (its earlier events may have gone to another partition under the
anonymous id before sign-up, or been dropped as malformed: waiting for them would hold the
profile back for nothing). After that, an event ahead of the next expected ``seq`` waits in the
session's buffer. A gap is **given up on** (the missing events are skipped and
counted in ``gaps``) when either

* the partition's event time has moved ``wait_ms`` past the earliest buffered event (the
  shard passes ``max event time - min(wait, allowed lateness)``): waiting longer would hold
  the user's profile back for a seq that may never come (dropped as malformed by the collector,
  or sent under another key before sign-up); or
* the session's buffer holds ``max_buffer`` events (bounded memory).

An event whose ``seq`` is behind the next expected one (it arrived after its gap was given up on)
is released at once and counted in ``behind``, as is a second event with a ``seq`` already
waiting in the buffer (two tabs, or two users sending one session id: both are kept). Events
without a session or ``seq`` pass straight through. A session's bookkeeping is dropped once the watermark is ``idle_ms`` past its last
event. Every decision depends on event time and arrival order only, never on a wall clock, so a
replay of the same records releases the same events.

>>> r = Reorderer(max_buffer=8, idle_ms=60_000)
>>> ev = lambda seq, ts: Event(f"m{seq}", "u", "track", "x", ts, ts, session_id="s", seq=seq)
>>> [e.seq for e in r.offer(ev(0, 900))], [e.seq for e in r.offer(ev(2, 2_000))]
([0], [])
>>> [e.seq for e in r.offer(ev(1, 1_000))]
[1, 2]
>>> [e.seq for e in r.offer(ev(4, 4_000))], [e.seq for e in r.advance(watermark=4_500)], r.gaps
([], [4], 1)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from ray_app.state.compact import Compact
from ray_app.state.event import Event

__all__ = ["Reorderer", "SessionCursor"]


@dataclass
class SessionCursor(Compact):
    next_seq: int = 0
    buffer: dict[int, Event] = field(default_factory=dict)
    last_ts: int = 0


@dataclass
class Reorderer:
    max_buffer: int = 64
    idle_ms: int = 30 * 60_000
    sessions: dict[str, SessionCursor] = field(default_factory=dict)
    # (earliest buffered event time, session): candidates for giving up; entries go stale
    # lazily and are checked against the session when popped.
    waiting: list[tuple[int, str]] = field(default_factory=list)
    # (last event time, session): candidates for dropping idle sessions; also lazy.
    idle: list[tuple[int, str]] = field(default_factory=list)
    gaps: int = 0
    behind: int = 0

    def offer(self, event: Event) -> list[Event]:
        """Take one on-time event; return the events it releases, in ``seq`` order."""
        sid, seq = event.session_id, event.seq
        if sid is None or seq is None:
            return [event]
        cur = self.sessions.get(sid)
        if cur is None:
            cur = self.sessions[sid] = SessionCursor(next_seq=seq)
        if event.ts > cur.last_ts:
            cur.last_ts = event.ts
            heapq.heappush(self.idle, (event.ts, sid))
        if seq < cur.next_seq or seq in cur.buffer:
            # behind the cursor, or a second event with a seq already waiting (two tabs, or two
            # users sending one session id): let it through now rather than lose either
            self.behind += 1
            return [event]
        cur.buffer[seq] = event
        out = self._drain(cur)
        if len(cur.buffer) > self.max_buffer:
            out += self._give_up(cur)
        if cur.buffer:
            heapq.heappush(self.waiting, (min(e.ts for e in cur.buffer.values()), sid))
        return out

    def advance(self, watermark: int, give_up_before: int | None = None) -> list[Event]:
        """Give up on gaps whose earliest buffered event is before ``give_up_before`` (default:
        the watermark); drop sessions idle past the watermark. Returns the released events."""
        out: list[Event] = []
        limit_gap = watermark if give_up_before is None else give_up_before
        while self.waiting and self.waiting[0][0] < limit_gap:
            _, sid = heapq.heappop(self.waiting)
            cur = self.sessions.get(sid)
            if cur is None or not cur.buffer:
                continue
            earliest = min(e.ts for e in cur.buffer.values())
            if earliest >= limit_gap:  # stale entry; the current one is further down the heap
                heapq.heappush(self.waiting, (earliest, sid))
                continue
            out += self._give_up(cur)
            if cur.buffer:
                heapq.heappush(self.waiting, (min(e.ts for e in cur.buffer.values()), sid))
        limit = watermark - self.idle_ms
        while self.idle and self.idle[0][0] < limit:
            ts, sid = heapq.heappop(self.idle)
            cur = self.sessions.get(sid)
            if cur is not None and cur.last_ts == ts and not cur.buffer:
                del self.sessions[sid]
        self._compact()
        return out

    def _compact(self) -> None:
        """Rebuild the lazy heaps once stale entries outnumber live ones (they grow by one entry
        per event otherwise). Only stale entries go, so decisions do not change."""
        if len(self.idle) > 2 * len(self.sessions) + 256:
            self.idle = [(c.last_ts, sid) for sid, c in self.sessions.items()]
            heapq.heapify(self.idle)
        if len(self.waiting) > 2 * len(self.sessions) + 256:
            self.waiting = [
                (min(e.ts for e in c.buffer.values()), sid)
                for sid, c in self.sessions.items()
                if c.buffer
            ]
            heapq.heapify(self.waiting)

    def _drain(self, cur: SessionCursor) -> list[Event]:
        out = []
        while cur.next_seq in cur.buffer:
            out.append(cur.buffer.pop(cur.next_seq))
            cur.next_seq += 1
        return out

    def _give_up(self, cur: SessionCursor) -> list[Event]:
        first = min(cur.buffer)
        self.gaps += 1
        cur.next_seq = first
        return self._drain(cur)

    @property
    def buffered(self) -> int:
        return sum(len(c.buffer) for c in self.sessions.values())

    def __getstate__(self) -> dict[str, Any]:
        """The fields less ``idle`` (one entry per session: rebuilt from the sessions on
        restore, as :meth:`_compact` rebuilds it), the sessions as one flat tuple: id, next
        seq, buffer (None: empty) and last event time as the difference from the previous
        session's (a small number, fewer bytes)."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("idle", "sessions")}
        flat: list[Any] = []
        last = 0
        for sid, c in self.sessions.items():
            flat += (sid, c.next_seq, c.buffer or None, c.last_ts - last)
            last = c.last_ts
        state["cursors"] = tuple(flat)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        flat = state.pop("cursors", None)
        self.__dict__.update(state)
        if flat is None:  # snapshot version 6: the sessions and the heap as they were
            return
        self.sessions = {}
        last = 0
        for i in range(0, len(flat), 4):
            sid, next_seq, buffer, gap = flat[i : i + 4]
            last += gap
            self.sessions[sid] = SessionCursor(next_seq, buffer or {}, last)
        self.idle = [(c.last_ts, sid) for sid, c in self.sessions.items()]
        heapq.heapify(self.idle)
