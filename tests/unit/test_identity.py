"""Identity stitching in the state core: across partitions, interleavings and crashes, the merged
profile is the one a single ordered pass over the person's events gives."""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_app.kafka.client import partition_for
from ray_app.state import SessionShard, StateConfig
from ray_app.state.event import decode_event
from ray_app.state.identity import (
    LINK,
    MERGE,
    profile_from_state,
    profile_to_state,
)
from ray_app.state.profile import Profile, ProfileConfig, apply, merge_into
from ray_app.state.stitching import MAX_HOPS

PARTITIONS = 3
T0 = 1_767_225_600_000  # 2026-01-01
CONFIG = StateConfig(
    allowed_lateness_ms=10 * 86_400_000,  # nothing is late: every event must be applied
    reorder_wait_ms=3_600_000,
    known_steps=None,
)


def _ids(n: int) -> list[str]:
    """``n`` ids on ``n`` different partitions (so every merge crosses partitions)."""
    out: list[str] = []
    seen: set[int] = set()
    i = 0
    while len(out) < n:
        key = f"id-{i}"
        p = partition_for(key.encode(), PARTITIONS)
        if p not in seen:
            seen.add(p)
            out.append(key)
        i += 1
    return out


def _pair(same_partition: bool, known_sorts_first: bool) -> tuple[str, str]:
    """(anonymous id, known id) on one partition or two, the known id sorting before or after
    the anonymous one (a tie of first-seen times must not be broken by the ids' order)."""
    anon_prefix, known_prefix = (
        ("zz-anon", "aa-user") if known_sorts_first else ("aa-anon", "zz-user")
    )
    anon = f"{anon_prefix}-0"
    home = partition_for(anon.encode(), PARTITIONS)
    for i in range(1_000):
        known = f"{known_prefix}-{i}"
        if (partition_for(known.encode(), PARTITIONS) == home) == same_partition:
            return anon, known
    raise AssertionError("no such id")


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _event(mid: str, t: int, kind: str, **f) -> dict:
    d = {
        "messageId": mid,
        "type": kind,
        "timestamp": _iso(T0 + t),
        "receivedAt": _iso(T0 + t + 50),
        **f,
    }
    d["userKey"] = d.get("userId") or d.get("anonymousId")
    return d


def person(anon: str, user: str, rng: random.Random) -> list[dict]:
    """A visitor's anonymous steps, sign-up (identify with both ids), known steps, and a second
    tab that stays anonymous after sign-up (its events reach the anonymous id's partition)."""
    out = []
    t = 0
    steps = ["welcome", "role", "goals", "invite", "tour"]
    n_anon = rng.randint(0, 4)
    for seq in range(n_anon):
        t += rng.randint(200, 5_000)
        name = rng.choice(["Step Viewed", "Step Completed", "Form Error"])
        out.append(
            _event(
                f"a{seq}", t, "track", anonymousId=anon, event=name,
                sessionId="s1", seq=seq, stepId=steps[seq % len(steps)],
                properties={"durationMs": rng.randint(0, 9_000)},
            )
        )  # fmt: skip
    t += rng.randint(200, 5_000)
    traits = {"plan": rng.choice(["free", "team"]), "seats": rng.randint(1, 50)}
    out.append(
        _event("idf", t, "identify", userId=user, anonymousId=anon, traits=traits,
               sessionId="s1", seq=n_anon)
    )  # fmt: skip
    for k in range(rng.randint(0, 4)):
        t += rng.randint(200, 5_000)
        out.append(
            _event(
                f"k{k}", t, "track", userId=user, anonymousId=anon, event="Step Completed",
                sessionId="s1", seq=n_anon + 1 + k, stepId=steps[k % len(steps)],
            )
        )  # fmt: skip
    for k in range(rng.randint(0, 3)):  # another tab, never identified
        out.append(
            _event(
                f"t{k}", t + rng.randint(-20_000, 20_000), "page", anonymousId=anon,
                name="Pricing", sessionId="s2", seq=k, context={"traits": {"tab": k}},
            )
        )  # fmt: skip
    return out


class Cluster:
    """Partitions of ``onramp.events`` and ``onramp.decisions`` as lists, one shard per partition
    with a checkpoint (snapshot + offsets); side outputs are appended to the topic they name, as
    Kafka would (a replay after a crash appends them again)."""

    def __init__(self, config: StateConfig = CONFIG) -> None:
        self.config = config
        self.events: list[list[tuple[bytes, bytes]]] = [[] for _ in range(PARTITIONS)]
        self.decisions: list[list[tuple[bytes, bytes]]] = [[] for _ in range(PARTITIONS)]
        self.shards = [SessionShard(p, config) for p in range(PARTITIONS)]
        self.pos = [0] * PARTITIONS
        self.dpos = [0] * PARTITIONS
        self.saved: list[tuple[bytes, int, int] | None] = [None] * PARTITIONS
        self.rewards: list = []
        self.rejected: list = []

    def send(self, record: dict, topic: str = "events") -> None:
        key = record["userKey"].encode()
        log = self.events if topic == "events" else self.decisions
        log[partition_for(key, PARTITIONS)].append((key, json.dumps(record).encode()))

    def _out(self, result) -> None:
        self.rewards += result.rewards
        self.rejected += result.rejected
        for role, key, value in result.forward:
            log = self.events if role == "events" else self.decisions
            log[partition_for(key, PARTITIONS)].append((key, value))

    def step(self, p: int, n: int) -> int:
        shard = self.shards[p]
        recs = self.decisions[p][self.dpos[p] : self.dpos[p] + n]
        if recs:
            self.dpos[p] += len(recs)
            self._out(shard.process_decisions(recs, self.dpos[p]))
        recs = self.events[p][self.pos[p] : self.pos[p] + n]
        if recs:
            self.pos[p] += len(recs)
            self._out(shard.process(recs))
        return len(recs)

    def checkpoint(self, p: int) -> None:
        self.saved[p] = (self.shards[p].snapshot(), self.pos[p], self.dpos[p])

    def crash(self, p: int) -> None:
        saved = self.saved[p]
        if saved is None:
            self.shards[p], self.pos[p], self.dpos[p] = SessionShard(p, self.config), 0, 0
        else:
            self.shards[p] = SessionShard.restore(saved[0])
            self.pos[p], self.dpos[p] = saved[1], saved[2]

    def pending(self) -> bool:
        return any(self.pos[p] < len(self.events[p]) for p in range(PARTITIONS)) or any(
            self.dpos[p] < len(self.decisions[p]) for p in range(PARTITIONS)
        )

    def run(self, rng: random.Random, crashes: bool = True) -> None:
        for _ in range(10_000):
            if not self.pending():
                return
            p = rng.randrange(PARTITIONS)
            self.step(p, rng.randint(1, 4))
            r = rng.random()
            if crashes and r < 0.15:
                self.crash(p)
            elif r < 0.4:
                self.checkpoint(p)
        raise AssertionError("the records did not settle")

    def profile(self, key: str) -> Profile | None:
        found = [s.profiles[key] for s in self.shards if key in s.profiles]
        assert len(found) <= 1
        return found[0] if found else None


def one_pass(key: str, records: list[dict]) -> dict:
    """The reference: every event of the person applied to one profile, in event order."""
    p = Profile(key, CONFIG.profile)
    events = [decode_event(json.dumps(r).encode()) for r in records]
    for e in sorted(events, key=lambda e: e.order_key):
        apply(p, replace(e, user_key=key))
    return p.as_dict()


def _without_identity(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("mergedFrom", "assignmentKey")}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    seed=st.integers(0, 2**32 - 1),
    crashes=st.booleans(),
    same_partition=st.booleans(),
    known_sorts_first=st.booleans(),
)
def test_any_interleaving_and_crashes_give_the_one_pass_profile(
    seed, crashes, same_partition, known_sorts_first
):
    rng = random.Random(seed)
    anon, user = _pair(same_partition, known_sorts_first)
    records = person(anon, user, rng)
    arrival = records[:]
    rng.shuffle(arrival)  # the order the collector wrote them in, across both partitions
    arrival += rng.sample(records, k=min(2, len(records)))  # client retries
    cluster = Cluster()
    for r in arrival:
        cluster.send(r)
    cluster.run(rng, crashes)

    assert cluster.profile(anon) is None, "the anonymous profile was merged away"
    merged = cluster.profile(user)
    assert merged is not None
    got = merged.as_dict()
    assert _without_identity(got) == _without_identity(one_pass(user, records))
    assert got["mergedFrom"] == [anon]
    first = min((r["timestamp"], r["userKey"]) for r in records)[1]
    assert got["assignmentKey"] == first, "the first id seen keeps its experiment arm"
    assert not cluster.rejected
    totals = [s.identity for s in cluster.shards]
    assert sum(t.get("merged", 0) for t in totals) == 1
    for s in cluster.shards:  # every record is exactly one thing
        st_ = s.stats
        assert st_.records == cluster.pos[s.partition]
        assert st_.records == (
            st_.applied + st_.duplicates + st_.late + st_.rejected + s.buffered
            + st_.forwarded + st_.control
        )  # fmt: skip


@pytest.mark.parametrize("same_partition", [True, False])
def test_an_anonymous_tab_after_sign_up_reaches_the_merged_profile(same_partition):
    # the copy sent on to the surviving id came back to the partition that took the original,
    # whose messageId it carries: when both ids hash to one partition, it was a "duplicate"
    anon, user = _pair(same_partition, known_sorts_first=False)
    cluster = Cluster()
    first = [
        _event("p1", 0, "page", anonymousId=anon, name="Home"),
        _event("i1", 1_000, "identify", userId=user, anonymousId=anon),
    ]
    for r in first:
        cluster.send(r)
    cluster.run(random.Random(1), crashes=False)
    tab = _event("t1", 2_000, "track", anonymousId=anon, event="Step Viewed", stepId="role")
    cluster.send(tab)
    cluster.send(tab)  # and the client's retry of it
    cluster.run(random.Random(2), crashes=False)
    merged = cluster.profile(user)
    assert merged is not None and merged.counts.get("track:Step Viewed") == 1
    assert merged.as_dict()["assignmentKey"] == anon
    assert sum(s.stats.duplicates for s in cluster.shards) == 1  # the retry, not the copy


def test_a_profile_saved_before_its_assignment_included_its_own_id_keeps_its_arm():
    import pickle

    from ray_app.state.packing import pack_profile, unpack_profile
    from ray_app.state.profile import StepStats

    # format 1: assignment was the earliest id merged in, compared with (first_seen, own id)
    p = Profile("u-own", CONFIG.profile, first_seen=T0, assignment=(T0 + 5_000, "a-merged"))
    old = (1, *pack_profile(p)[1:])
    q = Profile.__new__(Profile)
    unpack_profile(q, old, StepStats)
    assert q.assignment_key == "u-own" and q.first_id == (T0, "u-own")
    state = profile_to_state(p)
    del state["firstId"]  # a merge record written before firstId
    assert profile_from_state(state, CONFIG.profile).assignment_key == "u-own"
    # today's: assignment is the person's first id whatever first_seen became in a merge
    p.assignment = (T0 + 5_000, "a-merged")
    assert pickle.loads(pickle.dumps(p)).assignment_key == "a-merged"
    assert profile_from_state(profile_to_state(p), CONFIG.profile).assignment_key == "a-merged"


def test_a_chain_of_merges_resolves_to_one_profile():
    """anonymous -> user (identify), user -> account (alias): one profile under the last id."""
    rng = random.Random(5)
    anon, user, account = _ids(3)
    records = person(anon, user, rng)
    alias = _event("al", 10**6, "alias", userId=account, previousId=user)
    later = _event("late-anon", 10**6 + 500, "page", anonymousId=anon, name="Docs")
    config = replace(CONFIG, allow_known_merge=True)
    cluster = Cluster(config)
    for r in [*records, alias, later]:
        cluster.send(r)
    cluster.run(rng, crashes=False)
    assert cluster.profile(anon) is None and cluster.profile(user) is None
    got = cluster.profile(account).as_dict()
    want = one_pass(account, [*records, alias, later])
    assert _without_identity(got) == _without_identity(want)
    assert got["mergedFrom"] == sorted([anon, user])
    # either old id reads as a pointer to where the person is now
    pointers = [s.profile(anon) for s in cluster.shards if anon in s.aliases]
    assert pointers == [{"userKey": anon, "mergedInto": user}]


def test_known_users_are_not_merged_unless_allowed():
    rng = random.Random(9)
    anon, user, account = _ids(3)
    records = person(anon, user, rng)
    alias = _event("al", 10**6, "alias", userId=account, previousId=user)
    cluster = Cluster()
    for r in [*records, alias]:
        cluster.send(r)
    cluster.run(rng, crashes=False)
    assert cluster.profile(user) is not None, "a known user keeps their profile by default"
    assert cluster.profile(account).as_dict()["mergedFrom"] == []
    outcomes = {}
    for s in cluster.shards:
        for k, v in s.identity.items():
            outcomes[k] = outcomes.get(k, 0) + v
    assert outcomes == {"merged": 1, "refused_known": 1}


def test_the_first_identify_wins_and_merges_per_profile_are_capped():
    anon, user, other = _ids(3)
    cluster = Cluster()
    cluster.send(_event("p", 0, "page", anonymousId=anon, name="Home"))
    cluster.send(_event("i1", 1_000, "identify", userId=user, anonymousId=anon))
    cluster.run(random.Random(1), crashes=False)
    cluster.send(_event("i2", 2_000, "identify", userId=other, anonymousId=anon))
    cluster.run(random.Random(1), crashes=False)
    assert cluster.profile(user).as_dict()["counts"]["page"] == 1
    assert cluster.profile(other).as_dict()["mergedFrom"] == []
    assert sum(s.identity.get("conflict", 0) for s in cluster.shards) == 1

    capped = Cluster(replace(CONFIG, profile=ProfileConfig(max_merges=2)))
    for n in range(4):
        capped.send(_event(f"c{n}", n * 1000, "identify", userId=user, anonymousId=f"anon-{n}"))
    capped.run(random.Random(2), crashes=False)
    assert len(capped.profile(user).as_dict()["mergedFrom"]) == 2
    assert sum(s.identity.get("cap", 0) for s in capped.shards) == 2


def test_decisions_follow_the_person_and_are_rewarded_once():
    """A decision made for the anonymous id is rewarded by the step the known user completes,
    and a decision logged for the anonymous id after the merge is forwarded to the same join."""
    anon, user, _ = _ids(3)
    window = StateConfig().attribution_window_ms

    def decision(did: str, t: int, action: str) -> dict:
        return {
            "decisionId": did, "userKey": anon, "slot": "next_step", "chosen": action,
            "actionIndex": 0, "propensity": 0.5, "features": [1.0], "arm": "treatment",
            "modelVersion": 1, "timestamp": _iso(T0 + t), "candidates": [action, "tour"],
            "ranked": [{"action": action}, {"action": "tour"}],
        }  # fmt: skip

    for crashes in (False, True):
        cluster = Cluster(replace(CONFIG, attribution_window_ms=window))
        cluster.send(_event("p", 0, "page", anonymousId=anon, name="Home"))
        cluster.send(decision("d-before", 100, "role"), "decisions")
        cluster.run(random.Random(3), crashes=False)
        cluster.send(_event("i", 1_000, "identify", userId=user, anonymousId=anon))
        cluster.run(random.Random(3), crashes=crashes)
        cluster.send(decision("d-after", 1_500, "goals"), "decisions")  # a stale replica
        done = {"stepId": "role", "userId": user, "anonymousId": anon, "event": "Step Completed"}
        cluster.send(_event("c1", 2_000, "track", **done))
        cluster.send(_event("c2", 2_500, "track", **{**done, "stepId": "goals"}))
        cluster.run(random.Random(4), crashes=crashes)
        got = {(r.decision_id, r.reward, r.user_key) for r in cluster.rewards}
        assert got == {("d-before", 1.0, user), ("d-after", 1.0, user)}


def test_profile_state_round_trips_and_merge_commutes_with_apply():
    rng = random.Random(11)
    anon, user, _ = _ids(3)
    records = person(anon, user, rng) + person(anon, user, random.Random(12))
    for n, r in enumerate(records):
        r["messageId"] = f"m{n}"
    events = [decode_event(json.dumps(r).encode()) for r in records]
    a, b = Profile(user, CONFIG.profile), Profile(anon, CONFIG.profile)
    half = len(events) // 2
    for e in events[:half]:
        apply(a, replace(e, user_key=user))
    for e in events[half:]:
        apply(b, e)
    restored = profile_from_state(json.loads(json.dumps(profile_to_state(b))), CONFIG.profile)
    assert restored.as_dict() == b.as_dict()
    merge_into(a, restored)
    assert _without_identity(a.as_dict()) == _without_identity(one_pass(user, records))


@pytest.mark.parametrize(
    "bad",
    [
        {"type": MERGE, "messageId": "m", "userKey": "u", "from": "a", "timestamp": "x"},
        {"type": MERGE, "messageId": "m", "userKey": "u", "from": "a",
         "timestamp": "2026-01-01T00:00:00Z", "profile": {"userKey": "a", "counts": {"x": "1"}}},
        {"type": MERGE, "messageId": "m", "userKey": "u", "from": "a",
         "timestamp": "2026-01-01T00:00:00Z", "outcomes": [[1]]},
        {"type": LINK, "messageId": "m", "userKey": "a", "timestamp": "2026-01-01T00:00:00Z"},
        {"type": "onramp.forward", "messageId": "m", "userKey": "u", "from": "a",
         "timestamp": "2026-01-01T00:00:00Z", "event": {"kind": 3}},
    ],
)  # fmt: skip
def test_a_malformed_identity_record_is_rejected_alone_and_merges_nothing(bad):
    shard = SessionShard(0, CONFIG)
    ok = _event("ok", 0, "page", userId="u", name="Home")
    result = shard.process([(b"u", json.dumps(bad).encode()), (b"u", json.dumps(ok).encode())])
    assert len(result.rejected) == 1 and result.applied == 1
    assert shard.profile("u")["mergedFrom"] == []


def test_a_forwarding_loop_stops_in_the_dlq():
    """Two ids that each point at the other (no identify makes this: a link that would close
    a cycle is refused, but a race of two could): a merge goes round 8 hops, then to the DLQ."""
    a, b, c = _ids(3)
    cluster = Cluster()
    cluster.shards[partition_for(a.encode(), PARTITIONS)].aliases[a] = (b, 0)
    cluster.shards[partition_for(b.encode(), PARTITIONS)].aliases[b] = (a, 0)
    cluster.send(
        {"type": MERGE, "messageId": "m", "userKey": a, "from": c, "profile": None,
         "timestamp": "2026-01-01T00:00:00Z"}
    )  # fmt: skip
    cluster.run(random.Random(1), crashes=False)
    assert [r[3].reason.value for r in cluster.rejected] == ["identity_loop"]


def _feed(shard: SessionShard, records: list[dict]) -> None:
    """``records`` processed, and what they send on to the events topic fed back (one shard
    stands for every partition)."""
    todo = [(r["userKey"].encode(), json.dumps(r).encode()) for r in records]
    for _ in range(MAX_HOPS + 2):
        if not todo:
            return
        out = shard.process(todo)
        todo = [(k, v) for topic, k, v in out.forward if topic == "events"]


def test_an_alias_expires_its_idle_ttl_after_the_last_record_it_forwarded():
    """``profile_idle_ttl_ms`` holds for a merged id's alias as for a profile (the alias used to
    be kept for ever, in memory and in every base checkpoint), also after a restore."""
    config = StateConfig(allowed_lateness_ms=10_000, reorder_wait_ms=0, profile_idle_ttl_ms=60_000)
    for restore in (False, True):
        shard = SessionShard(0, config)
        _feed(shard, [_event("a0", 0, "track", anonymousId="anon", event="X")])
        _feed(shard, [_event("i1", 1_000, "identify", userId="user", anonymousId="anon")])
        assert shard.aliases["anon"][0] == "user"
        # the second tab's record, forwarded at 30 s, keeps it alive past 61 s
        _feed(shard, [_event("t1", 30_000, "page", anonymousId="anon", name="P")])
        if restore:
            shard = SessionShard.restore(shard.snapshot())
        _feed(shard, [_event("z1", 95_000, "track", anonymousId="other", event="X")])
        assert "anon" in shard.aliases  # watermark 85 s: 30 s + 60 s not yet passed
        _feed(shard, [_event("z2", 101_000, "track", anonymousId="other", event="X")])
        assert "anon" not in shard.aliases, restore  # watermark 91 s: expired


def test_an_alias_restored_under_a_shorter_idle_ttl_expires_by_it():
    config = StateConfig(allowed_lateness_ms=10_000, reorder_wait_ms=0, profile_idle_ttl_ms=600_000)
    shard = SessionShard(0, config)
    _feed(shard, [_event("a0", 0, "track", anonymousId="anon", event="X")])
    _feed(shard, [_event("i1", 1_000, "identify", userId="user", anonymousId="anon")])
    restored = SessionShard.restore(shard.snapshot())
    restored.reconfigure(replace(config, profile_idle_ttl_ms=60_000))
    _feed(restored, [_event("z1", 80_000, "track", anonymousId="other", event="X")])
    assert "anon" not in restored.aliases  # 1 s + 60 s passed by the watermark (70 s)


def test_an_id_whose_state_would_not_fit_a_merge_record_keeps_it():
    # 40 identify calls of 30 KB traits each, then a sign-up: a merge record of 1.2 MB, which
    # Kafka refuses (the worker stopped on it at every restart)
    shard = SessionShard(0, StateConfig(allowed_lateness_ms=10_000, reorder_wait_ms=0))
    big = "x" * 30_000
    for i in range(40):
        trait = {f"t{i}": big}
        _feed(shard, [_event(f"a{i}", i, "identify", anonymousId="anon", traits=trait)])
    link = _event("i1", 1_000, "identify", userId="user", anonymousId="anon")
    links = shard.process([(b"user", json.dumps(link).encode())]).forward  # the link record
    assert [json.loads(v)["type"] for _, _, v in links] == ["onramp.link"]
    merges = shard.process([(k, v) for _, k, v in links]).forward  # would carry anon's state
    assert merges == [], "no merge record over the limit is written"
    assert shard.identity.get("too_large") == 1
    assert "anon" in shard.profiles and "anon" not in shard.aliases


def test_the_alias_expiry_heap_stays_near_one_entry_an_alias():
    # one entry was pushed for every forwarded event, and only a restore shrank the heap
    config = StateConfig(allowed_lateness_ms=10_000, reorder_wait_ms=0)
    shard = SessionShard(0, config)
    _feed(shard, [_event("a0", 0, "track", anonymousId="anon", event="X")])
    _feed(shard, [_event("i1", 1_000, "identify", userId="user", anonymousId="anon")])
    for i in range(2_000):
        _feed(shard, [_event(f"t{i}", 2_000 + i, "page", anonymousId="anon", name="P")])
    assert shard.stats.forwarded == 2_000
    assert len(shard._alias_expiry) <= 2 * len(shard.aliases) + 256
    assert shard.aliases["anon"] == ("user", 2_000 + 1_999 + T0)


def _decision_record(did: str, user: str, t: int) -> bytes:
    return json.dumps(
        {"schema": "onramp.decision/1", "decisionId": did, "userKey": user, "slot": "next_step",
         "chosen": "role", "actionIndex": 1, "propensity": 0.5, "arm": "treatment",
         "modelVersion": 1, "features": [0.25], "timestamp": _iso(T0 + t),
         "candidates": ["role", "goals"]}
    ).encode()  # fmt: skip


def test_a_decision_logged_again_after_its_id_was_merged_is_rewarded_once():
    """A decision rewarded for the anonymous id, logged again (a client's retry) after that id
    was merged into the signed-in one: the copy is a repeat where it was decided, not a new
    decision for the surviving id (it got a second, conflicting reward there)."""
    config = StateConfig(allowed_lateness_ms=10_000, reorder_wait_ms=0)
    anon, user = _ids(2)
    shards = {anon: SessionShard(0, config), user: SessionShard(1, config)}
    rewards: list = []

    def feed(key: str, value: bytes, decisions: bool = False) -> None:
        shard = shards[key]
        r = (
            shard.process_decisions([(key.encode(), value)], 0)
            if decisions
            else shard.process([(key.encode(), value)])
        )
        rewards.extend(r.rewards)
        for topic, k, v in r.forward:
            feed(k.decode(), v, topic == "decisions")

    def event(mid: str, t: int, kind: str, **f) -> None:
        e = _event(mid, t, kind, **f)
        feed(e["userKey"], json.dumps(e).encode())

    feed(anon, _decision_record("d1", anon, 0), decisions=True)
    event("u1", 1_000, "track", userId=user, event="Step Abandoned", stepId="role")
    event("a1", 2_000, "track", anonymousId=anon, event="Step Completed", stepId="role")
    event("i1", 3_000, "identify", userId=user, anonymousId=anon)
    assert shards[anon].aliases[anon][0] == user
    feed(anon, _decision_record("d1", anon, 0), decisions=True)  # the retry
    event("z1", 60_000, "track", userId=user, event="X")
    event("z2", 60_000, "track", anonymousId=anon, event="X")
    assert [(r.decision_id, r.reward, r.outcome) for r in rewards] == [("d1", 1.0, "completed")]
    assert shards[anon].rewards.stats()["repeatedDecisions"] == 1


@pytest.mark.parametrize("decision_first", [True, False])
def test_an_outcome_adopted_in_a_merge_decides_a_decision_pending_for_the_survivor(decision_first):
    """The signed-in id's decision, and its step completed in a second, anonymous tab before the
    merge reached that tab's partition: rewarded 1 whether the decision record was read before
    the merge (it timed out to 0 before) or after it."""
    config = StateConfig(allowed_lateness_ms=10_000, reorder_wait_ms=0)
    shard = SessionShard(0, config)
    rewards: list = []

    def events(*records: dict) -> list:
        r = shard.process([(e["userKey"].encode(), json.dumps(e).encode()) for e in records])
        rewards.extend(r.rewards)
        return [(k, v) for topic, k, v in r.forward if topic == "events"]

    def decision() -> None:
        r = shard.process_decisions([(b"user", _decision_record("d1", "user", 1_000))], 1)
        rewards.extend(r.rewards)

    link = events(_event("i1", 0, "identify", userId="user", anonymousId="anon"))
    if decision_first:
        decision()
    events(_event("a1", 5_000, "track", anonymousId="anon", event="Step Completed", stepId="role"))
    merge = shard.process(link)  # the link, sealing anon's state into a merge record
    rewards.extend(merge.rewards)
    done = shard.process([(k, v) for topic, k, v in merge.forward if topic == "events"])
    rewards.extend(done.rewards)
    if not decision_first:
        decision()
    events(_event("z", 60_000, "track", anonymousId="other", event="X"))
    assert [(r.decision_id, r.reward, r.outcome) for r in rewards] == [("d1", 1.0, "completed")]


@pytest.mark.parametrize("read", [False, True])
def test_a_profile_read_changes_nothing_the_records_decide(read):
    """``/v1/decide`` reads a profile as of the watermark, which closes the sessions it has
    passed. What the records make of a profile must not depend on such a read: an event at the
    watermark (on time) still joins a session that ended a gap before it, and a merge folds
    both ids' sessions as of its own watermark (either used to depend on whether a read came
    first)."""
    from ray_app.state.profile import ProfileConfig

    config = StateConfig(
        allowed_lateness_ms=10_000, reorder_wait_ms=0, profile=ProfileConfig(session_gap_ms=30_000)
    )
    shard = SessionShard(0, config)
    # the watermark at 30 s: u's session (0 s) ends exactly a gap before it
    _feed(shard, [_event("a", 0, "track", userId="u", event="X"),
                  _event("b", 40_000, "track", userId="v", event="X")])  # fmt: skip
    if read:
        shard.profile("u")
    _feed(shard, [_event("c", 30_000, "track", userId="u", event="X")])  # on time
    assert shard.profile("u")["sessions"]["count"] == 1
    # user and anon active 10 s apart, both sessions past the watermark (190 s) at the merge
    _feed(shard, [_event("u0", 100_000, "track", userId="user", event="X"),
                  _event("a0", 110_000, "track", anonymousId="anon", event="X"),
                  _event("o0", 200_000, "track", userId="v", event="X")])  # fmt: skip
    if read:
        shard.profile("user")
        shard.profile("anon")
    _feed(shard, [_event("i1", 200_000, "identify", userId="user", anonymousId="anon")])
    sessions = shard.profile("user")["sessions"]
    assert (sessions["count"], sessions["closed"], sessions["closedActiveMs"]) == (3, 2, 0)


def test_a_link_whose_merge_record_cannot_be_written_changes_nothing():
    """The merge record is written before the old id's state is sealed: traits nested past what
    the encoder writes (a record not from the collector, which caps nesting) refuse the link,
    and the old id keeps its profile and its pending decision, which is still rewarded (both
    used to be gone, the decision never rewarded)."""
    config = StateConfig(allowed_lateness_ms=10_000, reorder_wait_ms=0)
    shard = SessionShard(0, config)
    deep: object = 1
    for _ in range(300):
        deep = {"x": deep}
    shard.process_decisions([(b"anon", _decision_record("d1", "anon", 0))], 1)
    _feed(shard, [_event("a0", 500, "identify", anonymousId="anon", traits={"prefs": deep})])
    link = shard.process(
        [
            (
                b"user",
                json.dumps(
                    _event("i1", 1_000, "identify", userId="user", anonymousId="anon")
                ).encode(),
            )
        ]
    )
    out = shard.process([(k, v) for topic, k, v in link.forward if topic == "events"])
    assert len(out.rejected) == 1 and not out.forward
    assert "anon" in shard.profiles and "anon" not in shard.aliases
    assert list(shard.rewards.pending) == ["d1"]
    late = shard.process(
        [(b"o", json.dumps(_event("z", 400_000, "track", userId="o", event="X")).encode())]
    )
    assert [(r.decision_id, r.outcome) for r in late.rewards] == [("d1", "timeout")]
