"""The per-user profile and ``apply(profile, event)``.

``apply`` is pure in the sense that matters for exactly-once state: it reads nothing but the
profile and the event, and it is **commutative** over a user's events: whatever order a set of
events is applied in, the profile is the same. Last-write-wins fields (traits, user id, current
step) are decided by each event's :attr:`Event.order_key` (event time, then ``seq``, then
``messageId``), never by arrival; counts, sets, minima and maxima commute by nature; windows are
built to (see :mod:`ray_app.state.windows`).

Bounded: a profile keeps at most ``max_event_names`` distinct ``track`` names in ``counts``,
``max_traits`` trait keys and ``max_sessions`` onboarding session ids (:class:`ProfileConfig`).
A *new* name or trait key past its cap is dropped (known ones still update) and a session id past
its cap drops the least recent session; each of these is counted in the ``hits`` mapping
``apply`` is given (the shard keeps it, checkpointed, for ``onramp_stream_profile_caps_total``).
Below the caps ``apply`` commutes; past one, which keys are kept depends on the order events are
applied in, and that order is itself deterministic (offset order through the reorder buffer), so a
replay from a checkpoint still gives the same profile.

Onboarding vocabulary (the SDK and the simulator send these ``track`` names):
``Step Viewed``, ``Step Completed`` (``properties.durationMs`` optional), ``Step Abandoned``,
``Form Error``, ``Onboarding Completed``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from ray_app.state.compact import Compact, shared
from ray_app.state.event import Event
from ray_app.state.packing import pack_profile, unpack_profile
from ray_app.state.windows import SessionWindows, TumblingCounts

__all__ = [
    "CAPS",
    "FORM_ERROR",
    "ONBOARDING_COMPLETED",
    "STEP_ABANDONED",
    "STEP_COMPLETED",
    "STEP_VIEWED",
    "Profile",
    "ProfileConfig",
    "StepStats",
    "apply",
    "merge_into",
]

STEP_VIEWED = "Step Viewed"
STEP_COMPLETED = "Step Completed"
STEP_ABANDONED = "Step Abandoned"
FORM_ERROR = "Form Error"
ONBOARDING_COMPLETED = "Onboarding Completed"

Stamp = tuple[int, int, str]


@dataclass(frozen=True)
class ProfileConfig:
    """Window settings of every profile."""

    session_gap_ms: int = 30 * 60_000
    tumbling_ms: int = 60_000
    tumbling_retention_ms: int = 60 * 60_000
    max_anonymous_ids: int = 16
    max_event_names: int = 256
    """Distinct ``track`` event names counted per profile (new ones past it are dropped)."""
    max_traits: int = 256
    """Distinct trait keys per profile (new ones past it are dropped; known ones update)."""
    max_sessions: int = 64
    """Onboarding session ids per profile (past it the least recent one is dropped)."""
    max_merges: int = 16
    """Other ids (anonymous ids, aliases) one profile may ask to merge into itself."""


#: Trait values this short (an enumeration: a role, a plan, a company size) are interned; longer
#: ones (free text, URLs) are not, so the interned set stays a vocabulary.
_SHARED_TRAIT_CHARS = 32

#: Names of the caps, as counted in ``apply``'s ``hits`` and labelled on the metric.
CAPS = ("event_names", "traits", "sessions")


@dataclass
class StepStats(Compact):
    """What one onboarding step saw."""

    views: int = 0
    completions: int = 0
    abandons: int = 0
    form_errors: int = 0
    first_seen: int | None = None
    first_viewed: int | None = None
    last_completed: int | None = None
    reported_ms: int | None = None
    reported_stamp: Stamp | None = None
    # (The completion times a step kept for the reward join until it got its own outcome log,
    # ``completed_times``, are gone: nothing read them. A snapshot of version 6 still has them;
    # they are dropped on its next snapshot.)

    @property
    def retries(self) -> int:
        """Views after the first one: the user came back to the step."""
        return max(self.views - 1, 0)

    @property
    def time_ms(self) -> int | None:
        """Time on the step: what the client reported, else first view to last completion."""
        if self.reported_ms is not None:
            return self.reported_ms
        if self.first_viewed is not None and self.last_completed is not None:
            return max(self.last_completed - self.first_viewed, 0)
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "views": self.views,
            "completions": self.completions,
            "abandons": self.abandons,
            "formErrors": self.form_errors,
            "retries": self.retries,
            "timeMs": self.time_ms,
            "firstSeen": self.first_seen,
        }


def _min(a: int | None, b: int) -> int:
    return b if a is None or b < a else a


def _max(a: int | None, b: int) -> int:
    return b if a is None or b > a else a


@dataclass
class Profile(Compact):
    """Everything Onramp knows about one user, as of the events applied so far."""

    user_key: str
    config: ProfileConfig = field(default_factory=ProfileConfig)
    user_id: str | None = None
    user_id_stamp: Stamp | None = None
    group_id: str | None = None
    """The account of the latest ``group`` call (the CRM join's key), by event order."""
    group_id_stamp: Stamp | None = None
    anonymous_ids: set[str] = field(default_factory=set)
    traits: dict[str, Any] = field(default_factory=dict)
    trait_stamps: dict[str, Stamp] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    names: int = 0
    """Distinct ``track:<name>`` keys in ``counts`` (what ``max_event_names`` bounds)."""
    first_seen: int | None = None
    last_seen: int | None = None
    last_received: int | None = None
    steps: dict[str, StepStats] = field(default_factory=dict)
    current_step: str | None = None
    current_stamp: Stamp | None = None
    completed_at: int | None = None
    session_ids: dict[str, int] = field(default_factory=dict)
    """Onboarding session id -> its latest event time (the least recent goes past the cap)."""
    activity: TumblingCounts | None = None
    sessions: SessionWindows | None = None
    trace: str | None = None
    """``traceparent`` of the latest traced event (by event order): what a decision made from
    this profile links its span to."""
    trace_stamp: Stamp | None = None
    # Identity stitching (see ray_app.state.identity). Plain defaults, so that profiles pickled
    # before these fields existed restore with them empty.
    merged_from: frozenset[str] | None = None
    """Ids whose profiles were merged into this one, transitively."""
    links: frozenset[str] | None = None
    """Ids this profile asked to merge (identify with an ``anonymousId``, ``alias``), at most
    ``max_merges``."""
    assignment: tuple[int, str] | None = None
    """(first seen, id) of the earliest of this person's ids, this one's included, once another
    id was merged in or sent an event on here (``first_seen`` is then the person's, no longer
    this id's own); None: this id alone, first seen at ``first_seen``."""

    @property
    def first_id(self) -> tuple[int, str]:
        """(first seen, id) of the earliest of this person's ids (ties: the smaller id)."""
        return self.assignment if self.assignment is not None else self._own_first

    @property
    def _own_first(self) -> tuple[int, str]:
        """(first seen, this id): what :attr:`first_id` is while no other id was merged in."""
        return (self.first_seen if self.first_seen is not None else 2**62, self.user_key)

    def saw(self, ts: int, origin: str | None = None) -> None:
        """Count an event at ``ts`` of ``origin`` (an id merged into this one whose event was
        sent on here; None: this id's own) in :attr:`first_id`, before the event is applied."""
        if origin is None and self.assignment is None:
            return  # this id alone: first_seen says it
        first = self.first_id
        seen = (ts, self.user_key if origin is None else origin)
        self.assignment = seen if seen < first else first

    @property
    def assignment_key(self) -> str:
        """The id whose experiment arm this person keeps: the first id seen of all merged."""
        return self.first_id[1]

    def __post_init__(self) -> None:
        if self.activity is None:
            self.activity = TumblingCounts(
                self.config.tumbling_ms, self.config.tumbling_retention_ms
            )
        if self.sessions is None:
            self.sessions = SessionWindows(self.config.session_gap_ms)

    def __getstate__(self) -> tuple[Any, ...]:
        """One flat tuple, times as small differences (:mod:`ray_app.state.packing`)."""
        return pack_profile(self)

    def __setstate__(self, state: tuple[Any, ...] | dict[str, Any]) -> None:
        if isinstance(state, dict):  # snapshot version 6: field by field
            Compact.__setstate__(self, state)
            self.assignment = legacy_assignment(self)
        else:
            unpack_profile(self, state, StepStats)

    def advance(self, watermark: int) -> None:
        """Close what the watermark has passed (sessions, old activity buckets)."""
        assert self.activity is not None and self.sessions is not None
        self.activity.advance(watermark)
        self.sessions.advance(watermark)

    def as_dict(self) -> dict[str, Any]:
        """A canonical, JSON-ready view (sorted sets), equal iff the profiles are equal."""
        assert self.activity is not None and self.sessions is not None
        last = self.last_seen or 0
        return {
            "userKey": self.user_key,
            "userId": self.user_id,
            "groupId": self.group_id,
            "anonymousIds": sorted(self.anonymous_ids),
            "traits": {k: _own(v) for k, v in sorted(self.traits.items())},
            "counts": dict(sorted(self.counts.items())),
            "firstSeen": self.first_seen,
            "lastSeen": self.last_seen,
            "lastReceived": self.last_received,
            "currentStep": self.current_step,
            "completedAt": self.completed_at,
            "steps": {k: v.as_dict() for k, v in sorted(self.steps.items())},
            "stepsSeen": sorted(self.steps),
            "stepsCompleted": sorted(k for k, v in self.steps.items() if v.completions),
            "formErrors": sum(v.form_errors for v in self.steps.values()),
            "retries": sum(v.retries for v in self.steps.values()),
            "onboardingSessions": sorted(self.session_ids),
            "sessions": {
                "count": self.sessions.count,
                "closed": self.sessions.closed,
                "closedActiveMs": self.sessions.closed_active_ms,
                "open": [list(w) for w in self.sessions.open],
            },
            "activity": {
                "perMinute": {str(k): v for k, v in sorted(self.activity.buckets.items())},
                "last5m": self.activity.count_between(last - 5 * 60_000, last + 1),
                "last60m": self.activity.count_between(last - 60 * 60_000, last + 1),
            },
            "mergedFrom": sorted(self.merged_from or ()),
            "assignmentKey": self.assignment_key,
            **({"traceparent": self.trace} if self.trace is not None else {}),
        }


def _count(profile: Profile, key: str) -> None:
    profile.counts[key] = profile.counts.get(key, 0) + 1


def _hit(hits: dict[str, int] | None, cap: str) -> None:
    if hits is not None:
        hits[cap] = hits.get(cap, 0) + 1


def _set_trait(
    profile: Profile, key: str, value: Any, stamp: Stamp, hits: dict[str, int] | None
) -> None:
    """Last write (by event order) wins; a new key past ``max_traits`` is dropped and counted."""
    old = profile.trait_stamps.get(key)
    if old is None and len(profile.trait_stamps) >= profile.config.max_traits:
        _hit(hits, "traits")
    elif old is None or stamp > old:
        if old is None:
            key = sys.intern(key)  # a new key: the same object in every profile
        if type(value) is not str:
            profile.traits[key] = _own(value)
        elif profile.traits.get(key) != value:  # (an equal one: the object held stays)
            short = len(value) <= _SHARED_TRAIT_CHARS  # "engineer": one object for all
            profile.traits[key] = sys.intern(value) if short else value
        profile.trait_stamps[key] = stamp


def _own(value: Any) -> Any:
    """A nested trait value copied (a dict or list shared with an event, or with a caller of
    :meth:`Profile.as_dict`, could change the profile behind its back); scalars as they are."""
    if isinstance(value, dict):
        return {k: _own(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_own(v) for v in value]
    return value


def _apply_step(profile: Profile, event: Event, step: str, stamp: Stamp) -> None:
    """The step half of :func:`apply`: what ``event`` tells about onboarding step ``step``."""
    st = profile.steps.setdefault(step, StepStats())
    st.first_seen = _min(st.first_seen, event.ts)
    if profile.current_stamp is None or stamp > profile.current_stamp:
        profile.current_step, profile.current_stamp = step, stamp
    if event.kind == "track":
        if event.name == STEP_VIEWED:
            st.views += 1
            st.first_viewed = _min(st.first_viewed, event.ts)
        elif event.name == STEP_COMPLETED:
            st.completions += 1
            st.last_completed = _max(st.last_completed, event.ts)
            reported = event.properties.get("durationMs")
            if (
                isinstance(reported, int)
                and not isinstance(reported, bool)
                and reported >= 0
                and (st.reported_stamp is None or stamp > st.reported_stamp)
            ):
                st.reported_ms, st.reported_stamp = reported, stamp
        elif event.name == STEP_ABANDONED:
            st.abandons += 1
        elif event.name == FORM_ERROR:
            st.form_errors += 1


def legacy_assignment(p: Profile) -> tuple[int, str] | None:
    """``assignment`` of a profile saved before it included the profile's own id (until profile
    format 1 and merge records without ``firstId``: the earliest id merged in, compared then
    with ``(first_seen, user_key)``), as it is now: the same :attr:`Profile.first_id`."""
    return None if p.assignment is None else min(p._own_first, p.assignment)


def apply(
    profile: Profile,
    event: Event,
    hits: dict[str, int] | None = None,
    origin: str | None = None,
) -> Profile:
    """Fold one event into the profile (in place; returns it). Commutative over events below
    the caps of :class:`ProfileConfig`; what a cap drops is counted in ``hits`` (cap -> n).
    ``origin``: the id the event was sent with, when it was merged into this one (forwarded)."""
    stamp = event.order_key
    config = profile.config
    profile.saw(event.ts, origin)
    _count(profile, event.kind)  # call types: a handful (batch validation refuses others)
    if event.kind == "track" and event.name:
        key = shared(f"track:{event.name}") or ""  # one object for every profile's key
        if key in profile.counts or profile.names < config.max_event_names:
            if key not in profile.counts:
                profile.names += 1
            _count(profile, key)
        else:
            _hit(hits, "event_names")
    profile.first_seen = _min(profile.first_seen, event.ts)
    profile.last_seen = _max(profile.last_seen, event.ts)
    profile.last_received = _max(profile.last_received, event.received)
    if event.user_id and (profile.user_id_stamp is None or stamp > profile.user_id_stamp):
        profile.user_id, profile.user_id_stamp = event.user_id, stamp
    group = getattr(event, "group_id", None)  # events buffered by an older checkpoint: none
    if group and (profile.group_id_stamp is None or stamp > profile.group_id_stamp):
        profile.group_id, profile.group_id_stamp = group, stamp
    if event.anonymous_id:
        ids = profile.anonymous_ids
        ids.add(event.anonymous_id)
        if len(ids) > profile.config.max_anonymous_ids:  # keep the smallest: order-independent
            ids.remove(max(ids))
    for k, v in event.traits.items():  # identify traits, and any call's context.traits
        _set_trait(profile, k, v, stamp, hits)
    if event.session_id:
        sessions = profile.session_ids
        last = sessions.get(event.session_id)
        if last is None or event.ts > last:
            sessions[event.session_id] = event.ts
        if len(sessions) > config.max_sessions:  # the least recent (then smallest id) goes
            del sessions[min(sessions, key=lambda sid: (sessions[sid], sid))]
            _hit(hits, "sessions")
    trace = getattr(event, "trace", None)  # events buffered by an older checkpoint have none
    if trace is not None and (profile.trace_stamp is None or stamp > profile.trace_stamp):
        profile.trace, profile.trace_stamp = trace, stamp
    assert profile.activity is not None and profile.sessions is not None
    profile.activity.add(event.ts)
    profile.sessions.add(event.ts)

    if event.step_id:
        _apply_step(profile, event, event.step_id, stamp)
    if event.kind == "track" and event.name == ONBOARDING_COMPLETED:
        profile.completed_at = _min(profile.completed_at, event.ts)
    return profile


def _newer(a: Stamp | None, b: Stamp | None) -> bool:
    """Whether stamp ``b`` wins over ``a`` (last write by event order)."""
    return b is not None and (a is None or b > a)


def _merge_step(st: StepStats, other: StepStats) -> None:
    st.views += other.views
    st.completions += other.completions
    st.abandons += other.abandons
    st.form_errors += other.form_errors
    for name in ("first_seen", "first_viewed"):
        theirs = getattr(other, name)
        if theirs is not None:
            setattr(st, name, _min(getattr(st, name), theirs))
    if other.last_completed is not None:
        st.last_completed = _max(st.last_completed, other.last_completed)
    if _newer(st.reported_stamp, other.reported_stamp):
        st.reported_ms, st.reported_stamp = other.reported_ms, other.reported_stamp


def merge_into(profile: Profile, other: Profile, hits: dict[str, int] | None = None) -> Profile:
    """Fold ``other`` (another id of the same person) into ``profile``, in place; returns it.

    The result is what applying both profiles' events to one profile gives (below the caps of
    :class:`ProfileConfig`), whatever order the events and the merge came in: counts add,
    minima and maxima combine, last-write-wins fields compare their event-order stamps, windows
    join (:meth:`~ray_app.state.windows.SessionWindows.merge`). ``profile`` keeps its key;
    ``other``'s key and what it had merged go to ``merged_from``."""
    config = profile.config
    # before first_seen takes the other's: the earliest id of both, each its own first time
    first = min(profile.first_id, other.first_id)
    for key, n in other.counts.items():
        if key.startswith("track:") and key not in profile.counts:
            if profile.names >= config.max_event_names:
                _hit(hits, "event_names")
                continue
            profile.names += 1
        profile.counts[key] = profile.counts.get(key, 0) + n
    if other.first_seen is not None:
        profile.first_seen = _min(profile.first_seen, other.first_seen)
    if other.last_seen is not None:
        profile.last_seen = _max(profile.last_seen, other.last_seen)
    if other.last_received is not None:
        profile.last_received = _max(profile.last_received, other.last_received)
    if _newer(profile.user_id_stamp, other.user_id_stamp):
        profile.user_id, profile.user_id_stamp = other.user_id, other.user_id_stamp
    if _newer(profile.group_id_stamp, other.group_id_stamp):
        profile.group_id, profile.group_id_stamp = other.group_id, other.group_id_stamp
    ids = profile.anonymous_ids | other.anonymous_ids
    profile.anonymous_ids = set(sorted(ids)[: config.max_anonymous_ids])
    for k, stamp in other.trait_stamps.items():
        _set_trait(profile, k, other.traits.get(k), stamp, hits)
    sessions = profile.session_ids
    for sid, ts in other.session_ids.items():
        if sid not in sessions or ts > sessions[sid]:
            sessions[sid] = ts
    while len(sessions) > config.max_sessions:
        del sessions[min(sessions, key=lambda sid: (sessions[sid], sid))]
        _hit(hits, "sessions")
    if _newer(profile.trace_stamp, other.trace_stamp):
        profile.trace, profile.trace_stamp = other.trace, other.trace_stamp
    assert profile.activity is not None and profile.sessions is not None
    assert other.activity is not None and other.sessions is not None
    profile.activity.merge(other.activity)
    profile.sessions.merge(other.sessions)
    for step, theirs in other.steps.items():
        _merge_step(profile.steps.setdefault(step, StepStats()), theirs)
    if _newer(profile.current_stamp, other.current_stamp):
        profile.current_step, profile.current_stamp = other.current_step, other.current_stamp
    if other.completed_at is not None:
        profile.completed_at = _min(profile.completed_at, other.completed_at)
    merged = {other.user_key, *(other.merged_from or ())}
    profile.merged_from = frozenset((profile.merged_from or frozenset()) | merged)
    profile.links = frozenset((profile.links or frozenset()) | (other.links or frozenset()))
    profile.assignment = first
    return profile
