"""Feature parity: archived events replayed through the stream's state code and the serving feature
code give the features the decisions logged.

For each logged decision (``onramp.decisions``, schema ``onramp.decision/2``) the replay takes the
user's archived events (``onramp.events``), keeps those the live profile had applied when the
decision was made, folds them into a fresh :class:`ray_app.state.Profile` with
:func:`ray_app.state.apply` (deduplicated by message id, as the stream does), enriches the profile
with the same CRM table and featurizes it with :meth:`FeatureSchema.featurize` at the decision's
time and with its request context, then compares with the features the decision logged.

Which events the live profile had applied: the decision logs ``profileAgeMs`` = decision time -
the profile's ``lastReceived`` (the latest collector receive time among the applied events), so
the replay keeps the events received at or before ``timestamp - profileAgeMs``; a decision
without a profile (``coldReason`` set) had none. The stream applies a user's events in order, so
this is exact unless one collector batch of a user was split between two stream polls (its events
share one receive time); such a decision would show up as a mismatch, not be hidden.

Identity stitching: a decision made from a merged profile logs the ids merged in
(``mergedFrom``); the replay folds in the state each carried, from the archived merge records
(``onramp.merge``, keyed by the surviving id), with :func:`~ray_app.state.profile.merge_into`,
and counts forwarded events (``onramp.forward``) as the surviving id's own.

Features are logged rounded to 6 decimals; the replay rounds the same way and compares exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ray_app.features import FeatureSchema
from ray_app.records import DECISION_SCHEMAS, DecisionRecord, DecisionRecordError
from ray_app.records.decision import forwarded_copy
from ray_app.state import Event, Profile, RecordRejected, apply, decode_event, identity
from ray_app.state.profile import merge_into
from ray_app.state.tick import TICK

__all__ = ["ParityReport", "replay_parity"]


@dataclass
class ParityReport:
    """How many decisions the replay reproduced exactly, and the first mismatches."""

    decisions: int = 0
    matched: int = 0
    cold: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    max_abs_diff: float = 0.0

    @property
    def all_matched(self) -> bool:
        return self.decisions > 0 and self.matched == self.decisions

    def as_dict(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "matched": self.matched,
            "cold": self.cold,
            "skipped": self.skipped,
            "maxAbsDiff": self.max_abs_diff,
            "mismatches": self.mismatches[:5],
        }


def _decision(raw: Mapping[str, Any]) -> DecisionRecord | None:
    """An archived decision record, or None for anything else (another schema, bad fields)."""
    if raw.get("schema") not in DECISION_SCHEMAS or raw.get("features") is None:
        return None
    try:
        return DecisionRecord.from_json(raw)
    except DecisionRecordError:
        return None


def _index_events(
    events: Iterable[Mapping[str, Any]], users: set[str] | None
) -> tuple[dict[str, list[tuple[int, Event]]], dict[tuple[str, str], dict[str, Any]]]:
    """The archived events by user key, with their offsets (forwarded events under the id they
    were forwarded to), and (surviving id, merged id) -> the profile state its merge record
    carried; records the stream rejects are left out, as it leaves them out."""
    by_user: dict[str, list[tuple[int, Event]]] = {}
    merges: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in events:
        body = {k: v for k, v in rec.items() if k != "_kafka"}
        try:
            kind = body.get("type")
            if kind == identity.MERGE:
                state = body.get("profile")
                key = (str(body.get("userKey")), str(body.get("from")))
                if isinstance(state, dict):
                    merges.setdefault(key, state)
                continue
            if kind == identity.FORWARD:
                e = identity.event_from_json(body.get("event"), str(body.get("userKey")))
            elif kind in identity.CONTROL_TYPES or kind == TICK:
                continue  # a link, or a worker's tick (the time): no state of its own
            else:
                e = decode_event(orjson.dumps(body))
        except RecordRejected:
            continue  # the stream rejects it too (it went to the DLQ)
        if users is not None and e.user_key not in users:
            continue
        offset = (rec.get("_kafka") or {}).get("offset", 0)
        by_user.setdefault(e.user_key, []).append((offset, e))
    return by_user, merges


def _profile_at(
    d: DecisionRecord,
    cutoff: int,
    by_user: dict[str, list[tuple[int, Event]]],
    merges: dict[tuple[str, str], dict[str, Any]],
) -> dict[str, Any] | None:
    """The profile of ``d``'s user from the events received by ``cutoff`` (in offset order,
    each id once) and the merges it had folded in (``None``: none of either)."""
    p = Profile(d.user_key)
    seen: set[str] = set()
    for _, e in sorted(by_user.get(d.user_key, []), key=lambda oe: oe[0]):
        if e.received <= cutoff and e.message_id not in seen:
            seen.add(e.message_id)
            apply(p, e)
    for old in d.merged_from or []:
        state = merges.get((d.user_key, old))
        if state is not None and old not in (p.merged_from or ()):
            merge_into(p, identity.profile_from_state(state, p.config))
    return p.as_dict() if seen or p.merged_from else None


def _read_at(record: Mapping[str, Any]) -> tuple[Any, Any]:
    """Where an archived record was in its topic: (partition, offset) of its ``_kafka``."""
    k = record.get("_kafka")
    return (k.get("partition"), k.get("offset")) if isinstance(k, Mapping) else (None, None)


def replay_parity(
    events: Iterable[Mapping[str, Any]],
    decisions: Iterable[Mapping[str, Any]],
    schema: FeatureSchema,
    enrich: Any = None,
    users: set[str] | None = None,
    late: Iterable[Mapping[str, Any]] = (),
) -> ParityReport:
    """Replay ``events`` (archived event records) for every decision in ``decisions`` (archived
    decision records), optionally only those of ``users``; ``enrich(profile_dict)`` is the CRM
    lookup the serving path used (``CrmTable.enrich``; ``None``: no enrichment). ``late``: the
    archived late records (``onramp.events.late``): the stream never applied those records
    (they came behind the watermark), so neither does the replay. They are matched by where the
    stream read them (``origin``: partition and offset), not by message id: a client's retry of
    an event already applied can come late, and the event itself was applied."""
    never = {
        (o.get("partition"), o.get("offset"))
        for r in late
        if isinstance(o := r.get("origin"), Mapping)
        and isinstance(o.get("partition"), int)
        and isinstance(o.get("offset"), int)
    }
    if never:
        events = [e for e in events if _read_at(e) not in never]
    by_user, merges = _index_events(events, users)
    report = ParityReport()
    seen: set[str] = set()
    for raw in decisions:
        if forwarded_copy(raw):  # the stream's copy for a merged id's survivor: the original
            report.skipped["forwarded"] = report.skipped.get("forwarded", 0) + 1  # is replayed
            continue
        did = raw.get("decisionId")
        if isinstance(did, str):  # written at least once, and again by each archive run
            if did in seen:
                report.skipped["duplicate"] = report.skipped.get("duplicate", 0) + 1
                continue
            seen.add(did)
        user = raw.get("userKey")
        if users is not None and user not in users:
            continue
        d = _decision(raw)
        if d is None:
            report.skipped["not_a_decision"] = report.skipped.get("not_a_decision", 0) + 1
            continue
        if d.feature_schema != schema.hash:
            report.skipped["feature_schema"] = report.skipped.get("feature_schema", 0) + 1
            continue
        report.decisions += 1
        at, age = d.at_ms, d.profile_age_ms
        profile: dict[str, Any] | None = None
        if d.cold_reason is None and age is not None:
            profile = _profile_at(d, at - age, by_user, merges)
        else:
            report.cold += 1
        enrichment = None
        if enrich is not None:
            enrichment = enrich(profile or {"userId": user, "traits": {}})
        x = schema.featurize(profile, enrichment, d.context or {}, now_ms=at)
        replayed = np.round(x.astype(np.float64), 6)
        logged = np.asarray(d.features.dense(), dtype=np.float64)
        diff = float(np.abs(replayed - logged).max()) if len(logged) == len(replayed) else np.inf
        report.max_abs_diff = max(report.max_abs_diff, diff)
        if diff == 0.0:
            report.matched += 1
        else:
            differ: Any = np.flatnonzero(replayed != logged) if len(logged) == len(replayed) else []
            report.mismatches.append(
                {
                    "decisionId": d.decision_id,
                    "userKey": user,
                    "features": {
                        schema.names[i]: {"logged": logged[i], "replayed": replayed[i]}
                        for i in differ[:8]
                    },
                }
            )
    return report
