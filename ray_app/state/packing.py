"""How a profile is pickled in a snapshot: one flat tuple, its times as small differences.

A profile holds about fifty event times (first and last seen, three per step, its sessions,
activity buckets, the times in its last-write-wins stamps). Each is a millisecond count near
``1.8e12``, which pickle writes in 8 bytes. :func:`pack_profile` writes every time as its
difference from the profile's ``first_seen`` (a step's own times from the step's ``first_seen``):
numbers below ``2**31`` (24 days) take 5 bytes, below 65,536 (a minute) 3. The steps, the
windows and the trait stamps are flattened into the tuple (no object headers, no field names),
and the window sizes are left out when they are the profile's configured ones. Nothing is
rounded or dropped: :func:`unpack_profile` gives back an equal profile, stamps that were one
object (every trait an event set) still one object. Pickle memoizes strings by object, and the
ids and names a profile holds are interned where events are decoded
(:func:`~ray_app.state.compact.shared`), so each is written once per snapshot.

>>> from ray_app.state.profile import Profile, StepStats
>>> p = Profile("u1", first_seen=1_767_225_600_000, last_seen=1_767_225_660_000)
>>> p.steps["role"] = StepStats(views=1, first_seen=1_767_225_600_000,
...                             first_viewed=1_767_225_600_000)
>>> packed = pack_profile(p)
>>> packed[15]   # the step: name, four counts, then times from the step's first_seen
('role', 1, 0, 0, 0, 0, 0, None, None, None)
>>> q = Profile.__new__(Profile); unpack_profile(q, packed, StepStats); q == p
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ray_app.state.windows import SessionWindows, TumblingCounts

if TYPE_CHECKING:
    from ray_app.state.profile import Profile, Stamp, StepStats

__all__ = ["PROFILE_FORMAT", "pack_profile", "unpack_profile"]

#: The first item of a packed profile (a profile of snapshot version 6 is a dict instead). 2:
#: ``assignment`` includes the profile's own id (format 1's is converted as it is unpacked).
PROFILE_FORMAT = 2


def _rel(t: int | None, base: int) -> int | None:
    return None if t is None else t - base


class _Stamps:
    """Stamps as (time - base, seq, message id), one packed tuple per stamp object."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.seen: dict[int, Any] = {}
        """id() of a stamp (packing) or of a packed one (unpacking) -> what it became."""

    def pack(self, s: Stamp | None) -> tuple[Any, ...] | None:
        if s is None:
            return None
        out = self.seen.get(id(s))
        if out is None:
            out = self.seen[id(s)] = (s[0] - self.base, s[1], s[2])
        return out

    def unpack(self, s: tuple[Any, ...] | None) -> Stamp | None:
        return None if s is None else self.unpack_one(s)

    def unpack_one(self, s: tuple[Any, ...]) -> Stamp:
        out = self.seen.get(id(s))
        if out is None:
            out = self.seen[id(s)] = (s[0] + self.base, s[1], s[2])
        return out


def pack_profile(p: Profile) -> tuple[Any, ...]:
    """``p`` as one tuple of plain values (see the module docstring)."""
    assert p.activity is not None and p.sessions is not None
    base = p.first_seen if p.first_seen is not None else 0
    stamps = _Stamps(base)
    steps: list[Any] = []
    for name, st in p.steps.items():
        own = st.first_seen if st.first_seen is not None else base
        steps += (
            name, st.views, st.completions, st.abandons, st.form_errors,
            _rel(st.first_seen, base), _rel(st.first_viewed, own), _rel(st.last_completed, own),
            st.reported_ms, stamps.pack(st.reported_stamp),
        )  # fmt: skip
    traits: Any
    if list(p.traits) == list(p.trait_stamps):  # every trait with its stamp, in one run
        ts = p.trait_stamps
        traits = tuple(x for k, v in p.traits.items() for x in (k, v, stamps.pack(ts[k])))
    else:
        traits = [p.traits, {k: stamps.pack(s) for k, s in p.trait_stamps.items()}]
    a, w, c = p.activity, p.sessions, p.config
    return (
        PROFILE_FORMAT, p.user_key, c, base, _rel(p.first_seen, base),
        p.user_id, stamps.pack(p.user_id_stamp), p.group_id, stamps.pack(p.group_id_stamp),
        p.anonymous_ids, traits, p.counts, p.names,
        _rel(p.last_seen, base), _rel(p.last_received, base), tuple(steps),
        p.current_step, stamps.pack(p.current_stamp), _rel(p.completed_at, base),
        tuple(x for sid, t in p.session_ids.items() for x in (sid, t - base)),
        None if (a.size_ms, a.retention_ms) == (c.tumbling_ms, c.tumbling_retention_ms)
        else (a.size_ms, a.retention_ms),
        tuple(x for b, n in a.buckets.items() for x in (b - base, n)),
        None if w.gap_ms == c.session_gap_ms else w.gap_ms,
        w.closed, w.closed_active_ms, tuple(x for s, e in w.open for x in (s - base, e - s)),
        p.trace, stamps.pack(p.trace_stamp), p.merged_from, p.links,
        None if p.assignment is None else (p.assignment[0] - base, p.assignment[1]),
    )  # fmt: skip


def unpack_profile(p: Profile, packed: tuple[Any, ...], step: Callable[..., StepStats]) -> None:
    """Fill a bare profile (``Profile.__new__``) from :func:`pack_profile`'s tuple; ``step``
    makes a :class:`~ray_app.state.profile.StepStats` from its fields."""
    (
        version, p.user_key, c, base, first,
        p.user_id, user_stamp, p.group_id, group_stamp,
        p.anonymous_ids, traits, p.counts, p.names,
        last, received, steps,
        p.current_step, current_stamp, completed,
        session_ids, activity_sizes, buckets,
        gap, closed, closed_ms, windows,
        p.trace, trace_stamp, p.merged_from, p.links, assignment,
    ) = packed  # fmt: skip
    stamps = _Stamps(base)
    p.config = c
    p.first_seen, p.last_seen = _abs(first, base), _abs(last, base)
    p.last_received, p.completed_at = _abs(received, base), _abs(completed, base)
    p.user_id_stamp, p.group_id_stamp = stamps.unpack(user_stamp), stamps.unpack(group_stamp)
    p.current_stamp, p.trace_stamp = stamps.unpack(current_stamp), stamps.unpack(trace_stamp)
    if isinstance(traits, list):  # [traits, stamps]: not one stamp per trait
        p.traits = traits[0]
        p.trait_stamps = {k: stamps.unpack_one(s) for k, s in traits[1].items()}
    else:
        p.traits, p.trait_stamps = {}, {}
        for k, v, s in _rows(traits, 3):
            p.traits[k], p.trait_stamps[k] = v, stamps.unpack_one(s)
    p.steps = {}
    for name, views, completions, abandons, errors, fs, fv, lc, ms, stamp in _rows(steps, 10):
        own_first = _abs(fs, base)
        own = own_first if own_first is not None else base
        p.steps[name] = step(
            views, completions, abandons, errors,
            own_first, _abs(fv, own), _abs(lc, own), ms, stamps.unpack(stamp),
        )  # fmt: skip
    p.session_ids = {sid: t + base for sid, t in _rows(session_ids, 2)}
    size, retention = activity_sizes or (c.tumbling_ms, c.tumbling_retention_ms)
    p.activity = TumblingCounts(size, retention, {b + base: n for b, n in _rows(buckets, 2)})
    p.sessions = SessionWindows(
        c.session_gap_ms if gap is None else gap,
        [(s + base, s + base + length) for s, length in _rows(windows, 2)],
        closed,
        closed_ms,
    )
    p.assignment = None if assignment is None else (assignment[0] + base, assignment[1])
    if version < 2:
        from ray_app.state.profile import legacy_assignment

        p.assignment = legacy_assignment(p)


def _rows(flat: tuple[Any, ...], width: int) -> Iterator[tuple[Any, ...]]:
    """A flat tuple's rows of ``width`` items."""
    for i in range(0, len(flat), width):
        yield flat[i : i + width]


def _abs(t: int | None, base: int) -> int | None:
    return None if t is None else t + base
