"""Identity stitching: one person, one profile, across anonymous and known ids.

Records are keyed by ``userId``, else ``anonymousId``, so what a visitor did before sign-up lives
under the anonymous id, often in another partition. Three records on ``onramp.events``, written by
the stream workers themselves (their ``type`` is none a client can send: the collector accepts
Segment call types only), move it to the known id exactly once:

1. **link** (keyed by the old id ``A``): the worker owning the new id ``U`` applies an
   ``identify`` carrying ``anonymousId: A`` (or an ``alias`` with ``previousId: A``) and asks
   ``A``'s partition to merge ``A`` into ``U``. One link per (``U``, ``A``): ``U``'s profile
   remembers the ids it asked for (``links``, at most ``max_merges``).
2. **merge** (keyed by ``U``): ``A``'s partition takes the link in offset order with ``A``'s
   events, removes ``A``'s profile, its pending decisions and its logged outcomes from its state,
   sends them to ``U``, and from then on holds ``A -> U`` (an *alias*). ``U``'s partition folds
   the profile in with :func:`~ray_app.state.profile.merge_into` once (``mergedFrom`` holds
   ``A``; a merge record written again by a replay is a no-op) and adopts the decisions, so a
   decision made for ``A`` is rewarded by what ``U`` does.
3. **forward** (keyed by ``U``): an event or decision of ``A`` that ``A``'s partition applies
   after the alias (a tab still on the anonymous id, an event the reorder buffer held back) is
   sent on to ``U`` instead, with its ``messageId``, and is deduplicated and checked for
   lateness there like any event. Chains resolve: ``U`` merged into ``M`` forwards in turn.

Every step is a function of the records in offset order, so a worker that restarts from a
checkpoint writes the same link, merge and forward records again (same ids) and the receivers
drop the copies; :func:`~ray_app.state.profile.merge_into` commutes with ``apply``, so the merged
profile is the one a single ordered pass over both ids' events gives, whatever the interleaving.

**Limits.** A link from a profile that already asked for ``max_merges`` ids is refused
(``cap``). An id that is already an alias of another id keeps its first target (``conflict``: the
first identify wins, as a shared computer's second sign-in must not take the first person's
history). A known user (a profile with a ``userId``) is merged into another only when
``allow_known_merge`` is set (else ``refused_known``). Each outcome is counted per partition
(``onramp_identity_merges_total{outcome}``).
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from ray_app.state.compact import shared
from ray_app.state.event import Event, RecordRejected
from ray_app.state.profile import Profile, ProfileConfig, StepStats, legacy_assignment
from ray_app.state.windows import SessionWindows, TumblingCounts
from ray_app.timefmt import iso_ms
from validation.reasons import ReasonCode

__all__ = [
    "CONTROL_TYPES",
    "FORWARD",
    "LINK",
    "MERGE",
    "Control",
    "MergeOutcome",
    "decode_control",
    "event_from_json",
    "event_to_json",
    "forward_record",
    "link_record",
    "merge_record",
    "profile_from_state",
    "profile_to_state",
]

LINK = "onramp.link"
MERGE = "onramp.merge"
FORWARD = "onramp.forward"
CONTROL_TYPES = frozenset({LINK, MERGE, FORWARD})


class MergeOutcome(enum.StrEnum):
    """What became of one link or merge record (the ``outcome`` label of the metric)."""

    MERGED = "merged"
    """A profile was folded into another (counted where the merge record is applied)."""
    DUPLICATE = "duplicate"
    """A link or merge record seen before (a client's repeated identify, a replay)."""
    CONFLICT = "conflict"
    """The old id is already an alias of another id: the first identify wins."""
    REFUSED_KNOWN = "refused_known"
    """Both ids are known users and ``stream.allow_known_user_merge`` is off."""
    CAP = "cap"
    """The profile already asked for ``stream.max_merges_per_profile`` ids."""
    TOO_LARGE = "too_large"
    """The old id's state (profile, pending decisions, outcomes) would make a merge record over
    :data:`MAX_MERGE_RECORD_BYTES`: the old id keeps it (a record Kafka refuses would stop the
    partition's worker at every restart)."""


#: The largest merge record written (Kafka's producers and brokers take 1 MB by default). A
#: profile keeps up to 256 traits of up to an event's size each, so a client with the public
#: write key can build one past it before signing up.
MAX_MERGE_RECORD_BYTES = 900_000


@dataclass(frozen=True, slots=True)
class Control:
    """A decoded link, merge or forward record."""

    kind: str
    message_id: str
    user_key: str
    """The id the record is keyed by (``A`` for a link, ``U`` for a merge or a forward)."""
    other: str
    """The other id: the target of a link, the source of a merge or a forward."""
    ts: int
    body: dict[str, Any]


def link_record(old: str, new: str, via: Event) -> tuple[bytes, bytes]:
    """(key, value) of the link asking ``old``'s partition to merge it into ``new``."""
    return old.encode(), orjson.dumps(
        {
            "type": LINK,
            "messageId": f"link:{via.message_id}",
            "userKey": old,
            "to": new,
            "via": via.kind,
            "timestamp": iso_ms(via.ts),
        }
    )


def merge_record(
    old: str,
    new: str,
    link: Control,
    profile: Profile | None,
    decisions: list[dict[str, Any]],
    outcomes: list[list[Any]],
) -> tuple[bytes, bytes]:
    """(key, value) of the merge record carrying ``old``'s state to ``new``'s partition."""
    return new.encode(), orjson.dumps(
        {
            "type": MERGE,
            "messageId": f"merge:{link.message_id}",
            "userKey": new,
            "from": old,
            "timestamp": iso_ms(link.ts),
            "profile": None if profile is None else profile_to_state(profile),
            "decisions": decisions,
            "outcomes": outcomes,
        }
    )


def forward_record(new: str, event: Event) -> tuple[bytes, bytes]:
    """(key, value) of ``event`` sent on to the id its user was merged into."""
    return new.encode(), orjson.dumps(
        {
            "type": FORWARD,
            "messageId": event.message_id,
            "userKey": new,
            "from": event.user_key,
            "timestamp": iso_ms(event.ts),
            "event": event_to_json(event),
        }
    )


def forwarded_id(event: Event, forward: Control) -> str:
    """The id a forwarded copy of ``event`` is deduplicated by where it arrives: its
    ``messageId`` with the id it was sent on to. The partition that sent it on took the original
    by its ``messageId`` (the same partition when both ids hash to it, which then took the copy
    for a repeat); a forward record delivered twice is still one copy, and each hop of a chain
    of merges its own.

    >>> e = Event("m1", "u-1", "track", "Step Viewed", 0, 0)
    >>> copy = forwarded_id(e, Control(FORWARD, "m1", "u-1", "anon-1", 0, {}))
    >>> copy.startswith("m1") and copy.endswith(">u-1") and copy != "m1"
    True
    """
    return f"{event.message_id}\x1f>{forward.user_key}"


def decode_control(d: dict[str, Any]) -> Control:
    """A link, merge or forward record (already a JSON object whose ``type`` is one of
    :data:`CONTROL_TYPES`) -> :class:`Control`; raises :class:`RecordRejected`."""
    from ray_app.state.event import parse_ms

    kind = d["type"]
    other_field = {LINK: "to", MERGE: "from", FORWARD: "from"}[kind]
    for name in ("messageId", "userKey", other_field):
        v = d.get(name)
        if not isinstance(v, str) or not v:
            raise RecordRejected(
                ReasonCode.MISSING_FIELD if v is None else ReasonCode.INVALID_FIELD,
                name,
                f"a {kind} record needs a non-empty string",
            )
    return Control(
        kind,
        d["messageId"],
        sys.intern(d["userKey"]),
        sys.intern(d[other_field]),
        parse_ms(d.get("timestamp"), "timestamp"),
        d,
    )


# -- events on the wire ----------------------------------------------------------------------

_EVENT_FIELDS = (
    "message_id", "user_key", "kind", "name", "ts", "received", "session_id", "seq", "step_id",
    "user_id", "anonymous_id", "traits", "properties", "trace",
)  # fmt: skip


def event_to_json(e: Event) -> dict[str, Any]:
    return {f: getattr(e, f, None) for f in _EVENT_FIELDS} | {
        "previous_id": getattr(e, "previous_id", None),
        "group_id": getattr(e, "group_id", None),
    }


def event_from_json(d: Any, user_key: str) -> Event:
    """A forwarded event, re-keyed to ``user_key``; raises :class:`RecordRejected`."""
    if not isinstance(d, dict):
        raise RecordRejected(ReasonCode.INVALID_FIELD, "event", "expected an object")
    r = _Reader(d, "event")
    return Event(
        message_id=r.text("message_id"),
        user_key=user_key,
        kind=sys.intern(r.text("kind")),
        name=shared(r.text("name", optional=True)),
        ts=r.integer("ts"),
        received=r.integer("received"),
        session_id=shared(r.text("session_id", optional=True)),
        seq=r.integer("seq", optional=True),
        step_id=shared(r.text("step_id", optional=True)),
        user_id=shared(r.text("user_id", optional=True)),
        anonymous_id=shared(r.text("anonymous_id", optional=True)),
        traits=r.obj("traits"),
        properties=r.obj("properties"),
        trace=r.text("trace", optional=True),
        previous_id=shared(r.text("previous_id", optional=True)),
        group_id=shared(r.text("group_id", optional=True)),
    )


# -- profiles on the wire --------------------------------------------------------------------


def _stamp(s: tuple[int, int, str] | None) -> list[Any] | None:
    return None if s is None else list(s)


def profile_to_state(p: Profile) -> dict[str, Any]:
    """Everything :func:`profile_from_state` needs to rebuild ``p`` (JSON-ready, no pickle:
    the record crosses Kafka)."""
    assert p.activity is not None and p.sessions is not None
    return {
        "userKey": p.user_key,
        "userId": p.user_id,
        "userIdStamp": _stamp(p.user_id_stamp),
        "groupId": p.group_id,
        "groupIdStamp": _stamp(p.group_id_stamp),
        "anonymousIds": sorted(p.anonymous_ids),
        "traits": [[k, p.traits.get(k), list(s)] for k, s in sorted(p.trait_stamps.items())],
        "counts": p.counts,
        "firstSeen": p.first_seen,
        "lastSeen": p.last_seen,
        "lastReceived": p.last_received,
        "steps": {
            k: [
                st.views,
                st.completions,
                st.abandons,
                st.form_errors,
                st.first_seen,
                st.first_viewed,
                st.last_completed,
                st.reported_ms,
                _stamp(st.reported_stamp),
                [],  # the completion times steps no longer keep (the row keeps its length)
            ]
            for k, st in p.steps.items()
        },
        "currentStep": p.current_step,
        "currentStamp": _stamp(p.current_stamp),
        "completedAt": p.completed_at,
        "sessionIds": p.session_ids,
        "activity": [[b, n] for b, n in sorted(p.activity.buckets.items())],
        "sessions": [
            p.sessions.closed,
            p.sessions.closed_active_ms,
            [list(w) for w in p.sessions.open],
        ],
        "trace": p.trace,
        "traceStamp": _stamp(p.trace_stamp),
        "mergedFrom": sorted(p.merged_from or ()),
        "links": sorted(p.links or ()),
        # firstId: the person's earliest id, this one's included; assignment: the same, for a
        # reader from before firstId (it compares it with this id's own first time too)
        "firstId": None if p.assignment is None else list(p.assignment),
        "assignment": None if p.assignment is None else list(p.assignment),
    }


class _Reader:
    """Typed reads of one JSON object, each failure an :class:`RecordRejected` naming the
    field (a merge record is written by a worker, but it crossed Kafka: it is checked)."""

    def __init__(self, d: dict[str, Any], where: str) -> None:
        self.d, self.where = d, where

    def bad(self, name: str, expected: str) -> RecordRejected:
        got = repr(self.d.get(name))[:60]
        return RecordRejected(
            ReasonCode.INVALID_FIELD, f"{self.where}.{name}", f"expected {expected}, got {got}"
        )

    def integer(self, name: str, optional: bool = False, v: Any = ...) -> Any:
        v = self.d.get(name) if v is ... else v
        if v is None and optional:
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.bad(name, "an integer")
        return v

    def text(self, name: str, optional: bool = False) -> Any:
        v = self.d.get(name)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise self.bad(name, "a string")
        return v

    def obj(self, name: str) -> dict[str, Any]:
        v = self.d.get(name)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.bad(name, "an object")
        return v

    def array(self, name: str) -> list[Any]:
        v = self.d.get(name)
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.bad(name, "a list")
        return v

    def stamp(self, name: str, v: Any = ...) -> tuple[int, int, str] | None:
        v = self.d.get(name) if v is ... else v
        if v is None:
            return None
        if not (
            isinstance(v, list)
            and len(v) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v[:2])
            and isinstance(v[2], str)
        ):
            raise self.bad(name, "[time, seq, messageId]")
        return (v[0], v[1], v[2])

    def pairs(self, name: str, value: Any, n: int = 2) -> list[tuple[Any, ...]]:
        if not isinstance(value, list) or not all(
            isinstance(x, list) and len(x) == n for x in value
        ):
            raise self.bad(name, f"a list of {n}-item lists")
        return [tuple(x) for x in value]


def profile_from_state(d: Any, config: ProfileConfig) -> Profile:
    """The profile a merge record carries; raises :class:`RecordRejected` for anything of the
    wrong shape (the record then goes to the DLQ and nothing is merged)."""
    if not isinstance(d, dict):
        raise RecordRejected(ReasonCode.INVALID_FIELD, "profile", "expected an object")
    r = _Reader(d, "profile")
    p = Profile(sys.intern(r.text("userKey")), config)
    p.user_id = shared(r.text("userId", optional=True))
    p.user_id_stamp = r.stamp("userIdStamp")
    p.group_id = shared(r.text("groupId", optional=True))  # absent in records of older workers
    p.group_id_stamp = r.stamp("groupIdStamp")
    p.anonymous_ids = {sys.intern(str(x)) for x in r.array("anonymousIds")}
    for k, v, s in r.pairs("traits", r.array("traits"), 3):
        p.traits[sys.intern(str(k))] = v
        p.trait_stamps[sys.intern(str(k))] = r.stamp("traits", s) or (0, -1, "")
    for k, v in r.obj("counts").items():
        p.counts[sys.intern(k)] = r.integer("counts", v=v)
    p.names = sum(1 for k in p.counts if k.startswith("track:"))
    p.first_seen = r.integer("firstSeen", optional=True)
    p.last_seen = r.integer("lastSeen", optional=True)
    p.last_received = r.integer("lastReceived", optional=True)
    for step, row in r.obj("steps").items():
        if not isinstance(row, list) or len(row) != 10:
            raise r.bad("steps", "10-item lists")
        st = StepStats()
        st.views, st.completions, st.abandons, st.form_errors = (
            r.integer("steps", v=x) for x in row[:4]
        )
        st.first_seen, st.first_viewed, st.last_completed, st.reported_ms = (
            r.integer("steps", optional=True, v=x) for x in row[4:8]
        )
        st.reported_stamp = r.stamp("steps", row[8])
        r.pairs("steps", row[9])  # completion times (older workers send them): unused
        p.steps[sys.intern(str(step))] = st
    p.current_step = shared(r.text("currentStep", optional=True))
    p.current_stamp = r.stamp("currentStamp")
    p.completed_at = r.integer("completedAt", optional=True)
    p.session_ids = {
        sys.intern(str(k)): r.integer("sessionIds", v=v) for k, v in r.obj("sessionIds").items()
    }
    p.activity = TumblingCounts(config.tumbling_ms, config.tumbling_retention_ms)
    for b, n in r.pairs("activity", r.array("activity")):
        p.activity.buckets[r.integer("activity", v=b)] = r.integer("activity", v=n)
    sessions = r.array("sessions")
    if len(sessions) != 3:
        raise r.bad("sessions", "[closed, closedActiveMs, open windows]")
    p.sessions = SessionWindows(config.session_gap_ms)
    p.sessions.closed = r.integer("sessions", v=sessions[0])
    p.sessions.closed_active_ms = r.integer("sessions", v=sessions[1])
    p.sessions.open = sorted(
        (r.integer("sessions", v=a), r.integer("sessions", v=b))
        for a, b in r.pairs("sessions", sessions[2])
    )
    p.trace = r.text("trace", optional=True)
    p.trace_stamp = r.stamp("traceStamp")
    p.merged_from = frozenset(sys.intern(str(x)) for x in r.array("mergedFrom")) or None
    p.links = frozenset(sys.intern(str(x)) for x in r.array("links")) or None
    name = "firstId" if "firstId" in d else "assignment"  # before firstId: assignment alone
    a = d.get(name)
    if a is not None:
        if not (isinstance(a, list) and len(a) == 2 and isinstance(a[1], str)):
            raise r.bad(name, "[first seen, id]")
        p.assignment = (r.integer(name, v=a[0]), sys.intern(a[1]))
        if name == "assignment":
            p.assignment = legacy_assignment(p)
    return p
