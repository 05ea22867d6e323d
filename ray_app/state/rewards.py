"""Rewards: decisions joined with the outcomes that followed them, in event time.

Stream workers read ``onramp.decisions`` beside ``onramp.events`` (same key, same partition) and
keep, per partition, the decisions whose outcome is not known yet. A decision of user ``u`` at
time ``t`` that showed action ``a`` is decided by the **first outcome** of ``u`` that matches it
within its attribution window ``[t, t + window]`` of event time, "first" in the order the
partition's events are applied (offset order through the reorder buffer, which replays
identically after a crash):

* ``step`` slots (``next_step``): ``Step Completed`` of step ``a`` gives **reward 1**
  (``completed``); a *negative event* naming step ``a`` (``Step Abandoned``, or any event the
  catalog lists under ``negative_events``) gives **reward 0** (``abandoned``) at once;
* other slots (content, checklists): ``Onboarding Completed`` gives reward 1 (``converted``); a
  negative event that echoes the decision's id gives reward 0 (``abandoned``);
* an outcome that echoes a decision id (``properties.decisionId``) concerns that decision only
  (a conversion is the exception: it credits every content decision in whose window it falls);
* no matching outcome: **reward 0** (``timeout``) once the watermark passes ``t + window``.

Explicit outcomes are rewards as soon as the stream applies them, so a learner sees 0s as early as
1s; only users who do nothing wait for their window to close.

Exactly once, whatever the interleaving of the two topics. Every outcome event applied is kept in
a per-user *outcome log* (with its position in the apply order) for ``retention_ms`` of event
time (a day by default, and at least two windows). A decision that arrives looks in the log for its first matching outcome; a decision
that waits is decided by the first matching outcome applied after it arrived, which is then the
first matching one of all (none was in the log when it arrived); a window closes only when the
watermark passes its end, after which no outcome inside it can be applied (it would be late,
and events held by the reorder buffer are never behind the watermark). Each of these gives the
same value. Each decision id is decided once and remembered until the watermark is a window past
its window, so a decision logged twice (an idempotent client retry) gets one reward. The log,
the pending decisions and the decided ids are checkpointed with the partition's state. Reward
records are written at least once (a replay after a crash may write one again, identical, with the
same decision id); readers deduplicate by decision id. The one case that is not exact: a decision
record that reaches the stream when the watermark is already ``retention_ms`` past its outcome
(the decision log lagging the events by a day) finds the log pruned and times out.

>>> j = RewardJoin(window_ms=60_000, step_slots=frozenset({"next_step"}))
>>> d = {"decisionId": "d1", "userKey": "u1", "slot": "next_step", "chosen": "role",
...      "actionIndex": 1, "propensity": 0.5, "features": [0.0], "arm": "treatment",
...      "modelVersion": 3, "timestamp": "2026-01-01T00:00:00.000+00:00",
...      "candidates": ["role", "goals"], "ranked": [{"action": "role"}, {"action": "goals"}]}
>>> j.offer_decision(d, watermark=0)
[]
>>> [(r.decision_id, r.reward, r.outcome, r.candidates)
...  for r in j.on_outcome("u1", "Step Abandoned", "role", 1767225630000, None)]
[('d1', 0.0, 'abandoned', ['role', 'goals'])]
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

from ray_app.records import DecisionRecord, DecisionRecordError, Outcome, RewardRecord
from ray_app.records.features import PackedFeatures, SparseFeatures
from ray_app.state.event import RecordRejected

__all__ = [
    "NEGATIVE_EVENTS",
    "POSITIVE_EVENTS",
    "LoggedOutcome",
    "PendingDecision",
    "RewardJoin",
    "decode_decision",
]

STEP_COMPLETED = "Step Completed"
ONBOARDING_COMPLETED = "Onboarding Completed"
#: The events that reward 1 (fixed: what the SDK and the catalog's step slots mean by success).
POSITIVE_EVENTS = frozenset({STEP_COMPLETED, ONBOARDING_COMPLETED})
#: The default negative events (a catalog's ``negative_events`` replaces them).
NEGATIVE_EVENTS = frozenset({"Step Abandoned"})

#: Outcomes kept per user in the log (the latest in apply order; a bound against abuse). The
#: latest: a decision that arrives after its outcome is a recent one, and once a user had 64
#: outcomes in a day the log used to keep the first 64, so a later outcome that came ahead of
#: its decision was lost (a timeout, where the other order rewarded it).
MAX_LOGGED_OUTCOMES = 64
#: Decisions pending per user: a further one decides the user's oldest as a timeout at once (a
#: bound against abuse: a merge record carries an id's pending decisions, and a client asking
#: /v1/decide every second for one id would make it larger than Kafka takes, stopping the
#: partition's worker at every restart).
MAX_PENDING_PER_USER = 64


@dataclass(frozen=True, slots=True)
class PendingDecision:
    """What the join keeps of a decision record until its outcome is known."""

    decision_id: str
    user_key: str
    slot: str
    step_slot: bool
    action: str
    action_index: int
    arm: str
    propensity: float
    features: PackedFeatures | SparseFeatures | tuple[float, ...]
    """Packed (two byte strings: cheap to checkpoint); sparse in checkpoints written before
    2026-12-07, a dense tuple in those written before the decision log went sparse."""
    decided_at: int
    model_version: int
    candidates: tuple[str, ...] | None = None
    feature_schema: str | None = None
    """The hash of the feature schema its vector was made under (the decision record's
    ``featureSchema``), carried into its reward: a learner refuses a vector of another schema
    even of the same width (a ``features.hash_seed`` changed)."""

    def __setstate__(self, state: Sequence[Any]) -> None:
        """A snapshot of the slots form (before ``__reduce__``): its fields in order, those it
        predates (``feature_schema``) at their defaults."""
        for i, f in enumerate(fields(self)):
            object.__setattr__(self, f.name, state[i] if i < len(state) else f.default)

    def __reduce__(self) -> tuple[Any, ...]:
        # Its fields in order, a packed vector's parts among them, for _pending to rebuild: a
        # base checkpoint pickles every pending decision (30,000 a partition at a thousand
        # decisions a second). A slots dataclass pickles
        # through __getstate__ and __setstate__ written in Python, and a NamedTuple through its
        # __getnewargs__; this is one call a decision. Snapshots of the old form still load
        # (the class keeps its __setstate__).
        f = self.features
        parts = (f.size, f.indices, f.values) if isinstance(f, PackedFeatures) else (f, None, None)
        return (
            _pending,
            (
                self.decision_id, self.user_key, self.slot, self.step_slot, self.action,
                self.action_index, self.arm, self.propensity, *parts, self.decided_at,
                self.model_version, self.candidates, self.feature_schema,
            ),
        )  # fmt: skip

    def record(self) -> dict[str, Any]:
        """This decision as the decision record :func:`decode_decision` reads back (what a merge
        record carries to the partition of the id it was merged into)."""
        return DecisionRecord(
            decision_id=self.decision_id,
            user_key=self.user_key,
            slot=self.slot,
            chosen=self.action,
            propensity=self.propensity,
            action_index=self.action_index,
            features=SparseFeatures.of(self.features),
            at_ms=self.decided_at,
            arm=self.arm,
            model_version=self.model_version,
            candidates=None if self.candidates is None else list(self.candidates),
            feature_schema=self.feature_schema,
        ).to_json()

    def reward(self, value: float, outcome: Outcome, outcome_at: int | None) -> RewardRecord:
        """The reward record of this decision (schema ``onramp.reward/2``)."""
        return RewardRecord(
            decision_id=self.decision_id,
            user_key=self.user_key,
            slot=self.slot,
            action=self.action,
            action_index=self.action_index,
            arm=self.arm,
            propensity=self.propensity,
            features=SparseFeatures.of(self.features).dense(),
            reward=value,
            outcome=outcome,
            decided_at_ms=self.decided_at,
            outcome_at_ms=outcome_at,
            model_version=self.model_version,
            candidates=None if self.candidates is None else list(self.candidates),
            feature_schema=self.feature_schema,
        )


class LoggedOutcome(NamedTuple):
    """One applied outcome event in a user's log."""

    seq: int
    """Position in the partition's apply order (what "first" means)."""
    ts: int
    positive: bool
    onboarding: bool
    """``Onboarding Completed`` (rewards content slots), else a step event."""
    step: str | None
    echo: str | None
    """The decision id the event echoed, if any."""


def _pending(
    decision_id: str,
    user_key: str,
    slot: str,
    step_slot: bool,
    action: str,
    action_index: int,
    arm: str,
    propensity: float,
    features: Any,
    indices: bytes | None,
    values: bytes | None,
    decided_at: int,
    model_version: int,
    candidates: tuple[str, ...] | None,
    feature_schema: str | None = None,
) -> PendingDecision:
    """A :class:`PendingDecision` from what its ``__reduce__`` gives a snapshot: ``features`` is
    a packed vector's size when ``indices`` and ``values`` are its bytes, else the vector
    (``feature_schema`` is absent from snapshots written before it was kept)."""
    if indices is not None and values is not None:
        features = PackedFeatures(features, indices, values)
    return PendingDecision(
        decision_id, sys.intern(user_key), sys.intern(slot), step_slot, sys.intern(action),
        action_index, sys.intern(arm), propensity, features, decided_at, model_version,
        None if candidates is None else tuple(map(sys.intern, candidates)),
        None if feature_schema is None else sys.intern(feature_schema),
    )  # fmt: skip


def decode_decision(record: dict[str, Any], step_slots: frozenset[str]) -> PendingDecision:
    """A decision log record -> what the join keeps; raises :class:`RecordRejected` for any
    field missing or of the wrong type (a record from another writer, or bytes gone bad), so a
    worker rejects the record to the DLQ instead of failing on it. The record is read by
    :meth:`DecisionRecord.from_json`, whose reason code, field and message the error carries."""
    try:
        d = DecisionRecord.from_json(record)
    except DecisionRecordError as exc:
        raise RecordRejected(exc.code, exc.field, exc.reason) from None
    assert d.chosen is not None and d.propensity is not None and d.action_index is not None
    return PendingDecision(
        decision_id=d.decision_id,
        user_key=sys.intern(d.user_key),  # the same object as the profile's key
        # a catalog's few names, one object each: less memory, and a checkpoint pickles each
        # once and refers to it after (pickle remembers objects, not equal strings)
        slot=sys.intern(d.slot),
        step_slot=d.slot in step_slots,
        action=sys.intern(d.chosen),
        action_index=d.action_index,
        arm=sys.intern(d.arm),
        propensity=d.propensity,
        features=d.features.packed(),
        decided_at=d.at_ms,
        model_version=d.model_version,
        candidates=None if d.candidates is None else tuple(map(sys.intern, d.candidates)),
        feature_schema=None if d.feature_schema is None else sys.intern(d.feature_schema),
    )


def _matches(d: PendingDecision, o: LoggedOutcome, window_ms: int) -> bool:
    """Whether outcome ``o`` decides decision ``d`` (see the module docstring)."""
    if not d.decided_at <= o.ts <= d.decided_at + window_ms:
        return False
    if o.onboarding and o.positive:
        return not d.step_slot
    if o.echo is not None and o.echo != d.decision_id:
        return False
    if d.step_slot:
        return o.step == d.action
    return not o.positive and o.echo == d.decision_id


@dataclass
class RewardJoin:
    """The pending decisions of one partition, its outcome log and the rules above. Pure and
    picklable."""

    window_ms: int = 300_000
    step_slots: frozenset[str] = frozenset({"next_step"})
    negative_events: frozenset[str] = NEGATIVE_EVENTS
    retention_ms: int = 86_400_000
    """How long (event time) an applied outcome stays in the log for decisions still to come."""
    pending: dict[str, PendingDecision] = field(default_factory=dict)
    by_user: dict[str, list[str]] = field(default_factory=dict)
    closing: list[tuple[int, str]] = field(default_factory=list)
    decided: dict[str, int] = field(default_factory=dict)
    """Decision ids already rewarded -> end of their window (to drop repeated log records)."""
    forget: list[tuple[int, str]] = field(default_factory=list)
    log: dict[str, list[LoggedOutcome]] = field(default_factory=dict)
    """user -> the outcomes applied in the last ``retention_ms`` of event time, in apply order."""
    log_expiry: list[tuple[int, str]] = field(default_factory=list)
    seq: int = 0
    rewards: int = 0
    positives: int = 0
    explicit_negatives: int = 0
    repeated: int = 0
    # what changed since the last take_delta(): so a delta checkpoint carries only that
    added: dict[str, PendingDecision] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    decided_added: dict[str, int] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)
    log_touched: set[str] = field(default_factory=set)

    @property
    def _retention(self) -> int:
        return max(self.retention_ms, 2 * self.window_ms)

    def is_outcome(self, name: str | None) -> bool:
        """Whether a ``track`` event of this name is an outcome (positive or negative)."""
        return name in POSITIVE_EVENTS or name in self.negative_events

    # -- inputs ----------------------------------------------------------------------------

    def offer_decision(self, record: dict[str, Any], watermark: int) -> list[RewardRecord]:
        """A decision log record; raises :class:`RecordRejected` for a malformed one."""
        return self._offer(decode_decision(record, self.step_slots), watermark)

    def knows(self, decision_id: str) -> bool:
        """Whether ``decision_id`` is pending or was decided here (within its forget horizon):
        a decision record with it again is a repeat, whichever id it names now."""
        return decision_id in self.pending or decision_id in self.decided

    def _offer(self, d: PendingDecision, watermark: int) -> list[RewardRecord]:
        if self.knows(d.decision_id):
            self.repeated += 1
            return []
        for o in self.log.get(d.user_key, ()):
            if _matches(d, o, self.window_ms):
                return [self._decide_by(d, o)]
        end = d.decided_at + self.window_ms
        if watermark > end:
            return [self._decide(d, 0.0, "timeout", None)]
        self.pending[d.decision_id] = d
        self.added[d.decision_id] = d
        ids = self.by_user.setdefault(d.user_key, [])
        ids.append(d.decision_id)
        heapq.heappush(self.closing, (end, d.decision_id))
        if len(ids) > MAX_PENDING_PER_USER:  # the oldest is superseded: its window cut short
            return [self._decide(self.pending[ids[0]], 0.0, "timeout", None)]
        return []

    def on_outcome(
        self, user_key: str, name: str, step: str | None, ts: int, echo: str | None
    ) -> list[RewardRecord]:
        """An outcome event (``is_outcome(name)``) of ``user_key`` was applied: log it and decide
        the pending decisions it matches."""
        o = self._log(
            user_key,
            LoggedOutcome(0, ts, name in POSITIVE_EVENTS, name == ONBOARDING_COMPLETED, step, echo),
        )
        ids = self.by_user.get(user_key)
        if not ids:
            return []
        return [
            self._decide_by(d, o)
            for d in [self.pending[did] for did in list(ids)]
            if _matches(d, o, self.window_ms)
        ]

    def advance(self, watermark: int) -> list[RewardRecord]:
        """Close the windows the watermark has passed (reward 0, ``timeout``); prune the log."""
        out = []
        while self.closing and self.closing[0][0] < watermark:
            _, did = heapq.heappop(self.closing)
            d = self.pending.get(did)
            if d is not None:
                out.append(self._decide(d, 0.0, "timeout", None))
        while self.forget and self.forget[0][0] < watermark:
            _, did = heapq.heappop(self.forget)
            if self.decided.pop(did, None) is not None:
                self.forgotten.add(did)
                self.decided_added.pop(did, None)
        horizon = watermark - self._retention
        while self.log_expiry and self.log_expiry[0][0] < watermark:
            _, user = heapq.heappop(self.log_expiry)
            entries = self.log.get(user)
            if entries is None:
                continue
            kept = [o for o in entries if o.ts >= horizon]
            if len(kept) != len(entries):
                self.log_touched.add(user)
                if kept:
                    self.log[user] = kept
                    # an entry that took an evicted one's place has no expiry entry of its own
                    first = min(o.ts for o in kept) + self._retention
                    heapq.heappush(self.log_expiry, (first, user))
                else:
                    del self.log[user]
        return out

    # -- identity stitching --------------------------------------------------------------------

    def of_user(self, user_key: str) -> tuple[list[PendingDecision], list[LoggedOutcome]]:
        """A user's pending decisions and logged outcomes, as :meth:`detach` would take them
        (nothing changes)."""
        decisions = [self.pending[did] for did in self.by_user.get(user_key, ())]
        return decisions, list(self.log.get(user_key, ()))

    def detach(self, user_key: str) -> tuple[list[PendingDecision], list[LoggedOutcome]]:
        """Remove a user's pending decisions and logged outcomes (their id was merged into
        another, whose partition adopts them): nothing is rewarded here."""
        decisions = [self.pending[did] for did in self.by_user.pop(user_key, [])]
        for d in decisions:
            del self.pending[d.decision_id]
            if self.added.pop(d.decision_id, None) is None:
                self.removed.add(d.decision_id)
        outcomes = self.log.pop(user_key, [])
        if outcomes:
            self.log_touched.add(user_key)
        return decisions, outcomes

    def adopt(
        self,
        user_key: str,
        decisions: list[PendingDecision],
        outcomes: list[LoggedOutcome],
        watermark: int,
    ) -> list[RewardRecord]:
        """Take another id's pending decisions and outcome log as ``user_key``'s (the other id
        was merged into it). The outcomes join the log after this partition's own (in apply
        order), and a decision already pending here is decided by the first of them it matches,
        as if they had arrived as events; each adopted decision is then offered like a decision
        record: decided at once by the first matching outcome in the log, by its timeout if the
        watermark passed its window, else pending. A decision already pending or decided here is
        not taken twice."""
        logged = [self._log(user_key, o) for o in outcomes]
        out = []
        # the decisions already pending here meet the adopted outcomes as they would have met
        # them arriving as events (the first that matches in apply order decides), so that the
        # reward does not depend on whether the decision or the merge came first
        if logged:
            for did in list(self.by_user.get(user_key, ())):
                d = self.pending[did]
                o = next((o for o in logged if _matches(d, o, self.window_ms)), None)
                if o is not None:
                    out.append(self._decide_by(d, o))
        for d in sorted(decisions, key=lambda d: (d.decided_at, d.decision_id)):
            out += self._offer(replace(d, user_key=user_key), watermark)
        return out

    # -- internals ---------------------------------------------------------------------------

    def _log(self, user_key: str, o: LoggedOutcome) -> LoggedOutcome:
        """Append ``o`` to the user's outcome log at the next position in apply order (the
        latest ``MAX_LOGGED_OUTCOMES`` are kept); returns it with that position."""
        self.seq += 1
        o = o._replace(seq=self.seq)
        entries = self.log.setdefault(user_key, [])
        self.log_touched.add(user_key)
        if len(entries) >= MAX_LOGGED_OUTCOMES:
            # the earliest goes; its expiry entry stays for the new one (the heap holds at most
            # MAX_LOGGED_OUTCOMES entries a user, whatever a flood of outcomes)
            del entries[0]
            entries.append(o)
            return o
        entries.append(o)
        heapq.heappush(self.log_expiry, (o.ts + self._retention, user_key))
        return o

    def _decide_by(self, d: PendingDecision, o: LoggedOutcome) -> RewardRecord:
        if o.positive:
            return self._decide(d, 1.0, "completed" if d.step_slot else "converted", o.ts)
        reward = self._decide(d, 0.0, "abandoned", o.ts)
        self.explicit_negatives += 1
        return reward

    def _decide(
        self, d: PendingDecision, value: float, outcome: Outcome, at: int | None
    ) -> RewardRecord:
        # the record first: should building it fail, the decision is still pending, not lost
        record = d.reward(value, outcome, at)
        if self.pending.pop(d.decision_id, None) is not None:
            if self.added.pop(d.decision_id, None) is None:
                self.removed.add(d.decision_id)
            ids = self.by_user[d.user_key]
            ids.remove(d.decision_id)
            if not ids:
                del self.by_user[d.user_key]
        end = d.decided_at + self.window_ms
        self.decided[d.decision_id] = end
        self.decided_added[d.decision_id] = end
        heapq.heappush(self.forget, (end + self.window_ms, d.decision_id))
        self.rewards += 1
        self.positives += value > 0
        return record

    # -- incremental checkpoints -------------------------------------------------------------

    def reset_changes(self) -> None:
        """A full snapshot was taken: later deltas are relative to it."""
        self.added, self.removed, self.decided_added, self.forgotten = {}, set(), {}, set()
        self.log_touched = set()

    def take_delta(self) -> tuple[Any, ...]:
        """What changed since the previous snapshot or delta (and forget that)."""
        delta = (
            self.added,
            self.removed,
            self.decided_added,
            self.forgotten,
            {u: list(self.log[u]) if u in self.log else None for u in self.log_touched},
            (self.rewards, self.positives, self.explicit_negatives, self.repeated, self.seq),
        )
        self.reset_changes()
        return delta

    def apply_delta(self, delta: tuple[Any, ...]) -> None:
        """Bring a restored join up to date with a delta of :meth:`take_delta`."""
        added, removed, decided_added, forgotten, logs, counters = delta
        for did in removed:
            d = self.pending.pop(did, None)
            if d is not None:
                ids = self.by_user.get(d.user_key, [])
                if did in ids:
                    ids.remove(did)
                if not ids:
                    self.by_user.pop(d.user_key, None)
        for did, d in added.items():
            self.pending[did] = d
            self.by_user.setdefault(d.user_key, []).append(did)
            heapq.heappush(self.closing, (d.decided_at + self.window_ms, did))
        for did in forgotten:
            self.decided.pop(did, None)
        for did, end in decided_added.items():
            self.decided[did] = end
            heapq.heappush(self.forget, (end + self.window_ms, did))
        for user, entries in logs.items():
            if entries is None:
                self.log.pop(user, None)
                continue
            self.log[user] = entries
            for o in entries:
                heapq.heappush(self.log_expiry, (o.ts + self._retention, user))
        self.rewards, self.positives, self.explicit_negatives, self.repeated, self.seq = counters
        self.reset_changes()

    # -- pickling ----------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The fields, less the three heaps (rebuilt from what they index on restore) and with
        each user's outcome log packed (see :func:`_pack_log`)."""
        state = {k: v for k, v in self.__dict__.items() if k not in _HEAPS}
        state["log"] = {u: _pack_log(entries) for u, entries in self.log.items()}
        # a snapshot is a fresh start for the deltas after it: what changed before is in it
        # (so pickling changes nothing, and may run beside the thread that applies records)
        state |= {"added": {}, "removed": set(), "decided_added": {}, "forgotten": set()}
        state["log_touched"] = set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "log_expiry" in state:  # snapshot version 6: the heaps and the log as they were
            return
        self.log = {u: _unpack_log(packed) for u, packed in state["log"].items()}
        retention, window = self._retention, self.window_ms
        self.log_expiry = [(o.ts + retention, u) for u, log in self.log.items() for o in log]
        self.closing = [(d.decided_at + window, did) for did, d in self.pending.items()]
        self.forget = [(end + window, did) for did, end in self.decided.items()]
        for heap in (self.log_expiry, self.closing, self.forget):
            heapq.heapify(heap)

    def stats(self) -> dict[str, int]:
        return {
            "pendingDecisions": len(self.pending),
            "rewards": self.rewards,
            "positiveRewards": self.positives,
            "abandonedRewards": self.explicit_negatives,
            "repeatedDecisions": self.repeated,
            "loggedOutcomeUsers": len(self.log),
        }


#: RewardJoin's heaps: each holds (time, key) for what ``log``, ``pending`` or ``decided`` holds
#: (stale entries, skipped when popped, aside), so a snapshot leaves them out.
_HEAPS = frozenset({"closing", "forget", "log_expiry"})


def _pack_log(entries: list[LoggedOutcome]) -> tuple[Any, ...]:
    """One user's outcome log as one flat tuple: per outcome its position and time as the
    difference from the previous one's (small numbers pickle in fewer bytes), both flags in one
    number, its step and the decision id it echoed.

    >>> log = [LoggedOutcome(5, 1_000, True, False, "role", None),
    ...        LoggedOutcome(9, 1_400, False, False, "goals", "d1")]
    >>> _pack_log(log)
    (5, 1000, 1, 'role', None, 4, 400, 0, 'goals', 'd1')
    >>> _unpack_log(_pack_log(log)) == log
    True
    """
    out: list[Any] = []
    seq = ts = 0
    for o in entries:
        out += (o.seq - seq, o.ts - ts, o.positive | o.onboarding << 1, o.step, o.echo)
        seq, ts = o.seq, o.ts
    return tuple(out)


def _unpack_log(packed: tuple[Any, ...]) -> list[LoggedOutcome]:
    out = []
    seq = ts = 0
    for i in range(0, len(packed), 5):
        d_seq, d_ts, flags, step, echo = packed[i : i + 5]
        seq, ts = seq + d_seq, ts + d_ts
        out.append(LoggedOutcome(seq, ts, bool(flags & 1), bool(flags & 2), step, echo))
    return out
