"""The stream state's side of identity stitching: what a partition does with an identify that
names another id, a link, a merge, and an event of an id merged away (see
:mod:`ray_app.state.identity` for the protocol and :func:`~ray_app.state.profile.merge_into` for
the merge itself). :class:`Stitching` is mixed into :class:`~ray_app.state.shard.SessionShard`.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

import orjson

from ray_app.state import identity
from ray_app.state.event import Event, RecordRejected
from ray_app.state.identity import Control, MergeOutcome
from ray_app.state.profile import Profile, merge_into
from ray_app.state.rewards import LoggedOutcome, RewardJoin, decode_decision
from validation.reasons import ReasonCode

if TYPE_CHECKING:
    from ray_app.state.config import ShardStats, StateConfig
    from ray_app.state.shard import BatchResult

__all__ = ["MAX_HOPS", "NO_EVENT", "Stitching", "event_previous_id", "loop_error"]

#: Most times one record is forwarded along a chain of merged ids (a loop stops here, to the DLQ).
MAX_HOPS = 8
#: The Event slot of a link or merge record in ``process`` (never applied).
NO_EVENT = Event("", "", "", None, 0, 0)


def event_previous_id(e: Event) -> str | None:
    """An alias call's ``previousId`` (events restored from older snapshots lack the slot)."""
    return getattr(e, "previous_id", None)


def loop_error(c: Control | None) -> RecordRejected:
    what = "a decision" if c is None else f"a {c.kind} record of {c.other!r}"
    return RecordRejected(
        ReasonCode.IDENTITY_LOOP,
        "hops",
        f"{what} was forwarded {MAX_HOPS} times along merged ids (a loop): not applied",
    )


def _logged_outcome(o: Any) -> LoggedOutcome:
    ok = (
        isinstance(o, list)
        and len(o) == 6
        and all(isinstance(v, int) and not isinstance(v, bool) for v in o[:2])
        and all(isinstance(v, bool) for v in o[2:4])
        and all(v is None or isinstance(v, str) for v in o[4:])
    )
    if not ok:
        raise RecordRejected(
            ReasonCode.INVALID_FIELD,
            "outcomes",
            "expected [seq, ts, positive, onboarding, step, echo]",
        )
    return LoggedOutcome(*o)


class Stitching:
    """Identity stitching over a shard's profiles, aliases and reward join."""

    # what the shard holds (declared for the type checker)
    config: StateConfig
    profiles: dict[str, Profile]
    aliases: dict[str, tuple[str, int]]
    identity: dict[str, int]
    rewards: RewardJoin
    stats: ShardStats
    cap_hits: dict[str, int]
    watermark: int
    _touched: set[str]
    _aliases_touched: set[str]
    _alias_expiry: list[tuple[int, str]]
    _expiry: list[tuple[int, str]]

    def _count(self, outcome: MergeOutcome) -> None:
        self.identity[outcome.value] = self.identity.get(outcome.value, 0) + 1

    def _ask_merge(self, profile: Profile, old: str, event: Event, out: BatchResult) -> None:
        """``event`` says ``old`` is this user too: ask ``old``'s partition for its state."""
        if profile.config.max_merges == 0:
            return  # stitching is off
        links = profile.links or frozenset()
        if old in links or old in (profile.merged_from or ()):
            return  # asked already (every identify of a signed-in user names its anonymous id)
        if len(links) >= profile.config.max_merges:
            self._count(MergeOutcome.CAP)
            return
        profile.links = links | {old}
        out.forward.append(("events", *identity.link_record(old, event.user_key, event)))

    def rebuild_alias_expiry(self) -> None:
        """The lazy expiry heap of the aliases, one entry an alias (a restore, or once stale
        entries outnumber live ones)."""
        ttl = self.config.profile_idle_ttl_ms
        self._alias_expiry = [(last + ttl, old) for old, (_, last) in self.aliases.items()]
        heapq.heapify(self._alias_expiry)

    def _forward(self, event: Event, alias: tuple[str, int], out: BatchResult) -> None:
        target, last = alias
        if event.ts > last:
            self.aliases[event.user_key] = (target, event.ts)
            self._aliases_touched.add(event.user_key)
            heap = self._alias_expiry
            heapq.heappush(heap, (event.ts + self.config.profile_idle_ttl_ms, event.user_key))
            if len(heap) > 2 * len(self.aliases) + 256:  # stale entries: one a forwarded event
                self.rebuild_alias_expiry()
        key, value = identity.forward_record(target, event)
        out.forward.append(("events", key, value))
        self.stats.forwarded += 1

    def _link(self, c: Control, out: BatchResult) -> None:
        """A link record (keyed by the old id): seal the old id's state and send it on."""
        old, new = c.user_key, c.other
        alias = self.aliases.get(old)
        if alias is not None or old == new:
            same = old == new or (alias is not None and alias[0] == new)
            self._count(MergeOutcome.DUPLICATE if same else MergeOutcome.CONFLICT)
            return
        profile = self.profiles.get(old)
        if profile is not None:
            if new in (profile.merged_from or ()):  # new was merged into old: a cycle
                self._count(MergeOutcome.CONFLICT)
                return
            if profile.user_id is not None and not self.config.allow_known_merge:
                self._count(MergeOutcome.REFUSED_KNOWN)
                return
            # sealed as of this partition's watermark, whether or not a read advanced it
            # already: what it sends does not depend on when /v1/decide looked
            profile.advance(self.watermark)
        # the merge record first: should writing it fail, the link is refused and the old id
        # keeps its profile, pending decisions and outcomes
        decisions, outcomes = self.rewards.of_user(old)
        key, value = identity.merge_record(
            old,
            new,
            c,
            profile,
            [d.record() for d in decisions],
            [list(o) for o in outcomes],
        )
        if len(value) > identity.MAX_MERGE_RECORD_BYTES:
            self._count(MergeOutcome.TOO_LARGE)  # the old id keeps its state, unmerged
            return
        if profile is not None:
            del self.profiles[old]
            self._touched.add(old)
        self.rewards.detach(old)
        self.aliases[old] = (new, c.ts)
        self._aliases_touched.add(old)
        heapq.heappush(self._alias_expiry, (c.ts + self.config.profile_idle_ttl_ms, old))
        out.forward.append(("events", key, value))

    def _merge(self, c: Control, out: BatchResult) -> None:
        """A merge record (keyed by the surviving id): fold the old id's state in, once."""
        new, old = c.user_key, c.other
        hops = c.body.get("hops", 0)
        if not isinstance(hops, int) or hops >= MAX_HOPS:
            raise loop_error(c)
        alias = self.aliases.get(new)
        if alias is not None:  # the surviving id was itself merged on: follow the chain
            body = {**c.body, "userKey": alias[0], "hops": hops + 1}
            out.forward.append(("events", alias[0].encode(), orjson.dumps(body)))
            return
        profile = self.profiles.get(new)
        if profile is not None and old in (profile.merged_from or ()):
            self._count(MergeOutcome.DUPLICATE)
            return
        # decode all of it before changing anything: a bad record merges nothing (DLQ)
        state = c.body.get("profile")
        source = None if state is None else identity.profile_from_state(state, self.config.profile)
        raw = c.body.get("decisions") or []
        if not isinstance(raw, list):
            raise RecordRejected(ReasonCode.INVALID_FIELD, "decisions", "expected a list")
        decisions = [decode_decision(d, self.rewards.step_slots) for d in raw]
        outcomes = [_logged_outcome(o) for o in c.body.get("outcomes") or []]
        if profile is None:
            profile = self.profiles[new] = Profile(new, self.config.profile)
        self._touched.add(new)
        if source is not None:
            # both as of this watermark (a read advances a profile to it, and merged windows
            # join open ones only): the merged profile does not depend on reads before it
            profile.advance(self.watermark)
            source.advance(self.watermark)
            merge_into(profile, source, self.cap_hits)
        profile.merged_from = (profile.merged_from or frozenset()) | {old}
        if profile.last_seen is not None:
            heapq.heappush(self._expiry, (profile.last_seen, new))
        out.rewards += self.rewards.adopt(new, decisions, outcomes, self.watermark)
        self._count(MergeOutcome.MERGED)
