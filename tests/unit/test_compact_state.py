"""Issue 18's compact state: dedupe by a 64-bit hash of the id, profiles pickled as flat tuples
with relative times, heaps rebuilt on restore; a version-6 checkpoint still restores and runs on
exactly as version 6 ran it; and a partition's state stays small."""

from __future__ import annotations

import base64
import copy
import pickle
import random
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.state import Event, Profile, SessionShard, StateConfig, apply
from ray_app.state.dedupe import Deduplicator, id_hash
from ray_app.state.packing import pack_profile
from ray_app.state.profile import ProfileConfig, merge_into
from ray_app.state.snapshot import SNAPSHOT_VERSION, SnapshotRefused
from tests.unit import snapshot_v6
from tests.unit.test_state import T0, _simulated_partitions, events_st, record

FIXTURE = Path(__file__).parent / "data" / "state-v6.json.gz"

# -- dedupe by hash -----------------------------------------------------------------------------


def test_dedupe_by_hash_drops_every_copy_and_takes_every_new_id():
    d = Deduplicator(horizon_ms=0)
    ids = [f"{n:08x}-4e1f-9c2a-{n * 7919:012x}" for n in range(20_000)]
    assert not any(d.seen(m, T0 + i) for i, m in enumerate(ids))  # 20,000 new ids: all taken
    assert all(d.seen(m, T0 + i) for i, m in enumerate(ids))  # every copy: a duplicate
    assert len(d) == 20_000 and all(isinstance(h, int) and h < 2**64 for h in d.ids)
    # a copy with another event time is still the same id
    assert d.seen(ids[5], T0 + 10**9) and d.ids[id_hash(ids[5])] == T0 + 5


def test_dedupe_forgets_by_event_time_and_counts_early_evictions():
    d = Deduplicator(horizon_ms=1_000, max_ids=3)
    for i, m in enumerate("abcd"):
        assert not d.seen(m, 10_000 + i)
    assert d.evicted_early == 1 and id_hash("a") not in d.ids  # the oldest, past the cap
    d.advance(watermark=11_002)  # 10_001 + 1_000 < 11_002: "b" goes; "c", "d" stay
    assert set(d.ids) == {id_hash("c"), id_hash("d")}


@settings(max_examples=100, deadline=None)
@given(
    entries=st.dictionaries(
        st.text(min_size=1, max_size=40),
        st.integers(-(2**40), 2**45),
        max_size=200,
    ),
    added=st.integers(0, 5),
)
def test_packed_ids_restore_exactly_whatever_their_times(entries, added):
    """Gaps between times of any size (2, 4 or 8 bytes), negative times, no ids at all."""
    d = Deduplicator(horizon_ms=5, max_ids=10**6)
    for m, ts in entries.items():
        d.seen(m, ts)
    pending = d.take_added()[:added]
    d.added = list(pending)
    back = pickle.loads(pickle.dumps(d, protocol=5))
    assert back.ids == d.ids and back.added == pending
    assert (back.horizon_ms, back.max_ids, back.evicted_early) == (5, 10**6, 0)
    assert sorted(back.heap) == sorted(d.heap) == back.heap  # sorted: a heap already
    # both forget the same ids at the same watermark
    for wm in sorted({ts for ts in entries.values()})[::7]:
        d.advance(wm)
        back.advance(wm)
        assert back.ids == d.ids


def test_a_remembered_id_costs_about_ten_bytes_in_a_snapshot():
    d = Deduplicator()
    for i in range(10_000):
        d.seen(f"6f1c2b9e-51a4-4c1d-9d4e-{i:012d}", T0 + i * 3)  # UUIDs, 36 characters
    d.take_added()  # (a base snapshot takes them: deltas carry them)
    assert len(pickle.dumps(d, protocol=5)) < 10_000 * 11


# -- profiles: packed losslessly ---------------------------------------------------------------


def _profile(events: list[Event], key: str = "u") -> Profile:
    p = Profile(key)
    for e in events:
        apply(p, e)
    return p


@settings(max_examples=150, deadline=None)
@given(events=events_st, other=events_st, watermark=st.integers(0, 5 * 3_600_000))
def test_a_packed_profile_restores_equal_merged_or_not(events, other, watermark):
    p = _profile(events)
    q = _profile([Event(**{**_fields(e), "message_id": "o" + e.message_id}) for e in other], "v")
    merge_into(p, q)
    p.advance(T0 + watermark)
    back = pickle.loads(pickle.dumps(p, protocol=5))
    assert back == p and back.as_dict() == p.as_dict()
    # and it goes on the same way
    more = [Event(**{**_fields(e), "message_id": "n" + e.message_id}) for e in events[:10]]
    for e in more:
        apply(p, e)
        apply(back, e)
    assert back == p


def _fields(e: Event) -> dict:
    return {f: getattr(e, f) for f in e.__dataclass_fields__}


def test_packing_keeps_one_stamp_object_for_every_trait_an_event_set():
    e = Event("m1", "u", "identify", None, T0, T0, user_id="u", traits={"a": 1, "b": 2, "c": 3})
    back = pickle.loads(pickle.dumps(_profile([e]), protocol=5))
    stamps = list(back.trait_stamps.values())
    assert stamps[0] == (T0, -1, "m1") and all(s is stamps[0] for s in stamps)


def test_a_profile_with_other_window_sizes_and_no_events_packs_too():
    cfg = ProfileConfig(session_gap_ms=1_000, tumbling_ms=10_000)
    p = Profile("u", cfg)
    p.activity.size_ms = 5_000  # not the configured size: written out
    back = pickle.loads(pickle.dumps(p, protocol=5))
    assert back == p and back.activity.size_ms == 5_000 and back.first_seen is None
    p.traits["x"] = 1  # a trait without a stamp (not made by apply): still kept
    assert pickle.loads(pickle.dumps(p, protocol=5)).traits == {"x": 1}


def test_times_are_small_numbers_in_a_packed_profile():
    events = [
        Event(f"m{i}", "u", "track", "Step Viewed", T0 + i * 1_000, T0 + i * 1_000, step_id="s")
        for i in range(5)
    ]
    packed = pack_profile(_profile(events))
    ints = [x for i, x in enumerate(packed) if isinstance(x, int) and i != 3]
    ints += [x for x in packed[15] if isinstance(x, int)]  # the step's
    assert packed[3] == T0 and max(ints) < 2**16  # the base, then differences


# -- a partition's state ------------------------------------------------------------------------


def test_state_per_user_stays_compact():
    """Simulated traffic (the benchmark's kind, without its live phase): the partition
    snapshots hold about 550 bytes a user here (version 6: about 1,270)."""
    _, parts = _simulated_partitions(users=400, partitions=2, seed=11)
    shards = {p: SessionShard(p) for p in parts}
    for p, recs in parts.items():
        for i in range(0, len(recs), 200):
            shards[p].process(recs[i : i + 200])
    size = sum(len(s.snapshot(rebase=False)) for s in shards.values())
    users = sum(len(s.profiles) for s in shards.values())
    assert size / users < 650, f"{size / users:.0f} bytes a user"


def test_heaps_left_out_of_a_snapshot_are_rebuilt_with_the_same_entries():
    _, parts = _simulated_partitions(users=60, partitions=1, seed=3)
    recs = parts[0]
    shard = SessionShard(0, StateConfig(allowed_lateness_ms=600_000))
    shard.process(recs[: len(recs) // 2])
    back = SessionShard.restore(shard.snapshot(rebase=False))
    cursors = shard.order.sessions
    live = {(ts, s) for ts, s in shard.order.idle if s in cursors and cursors[s].last_ts == ts}
    assert set(back.order.idle) == live
    retention = shard.rewards._retention
    logged = {(o.ts + retention, u) for u, log in shard.rewards.log.items() for o in log}
    assert set(back.rewards.log_expiry) == logged <= set(shard.rewards.log_expiry)
    assert back.rewards.log == shard.rewards.log and back.aliases == shard.aliases
    rest = recs[len(recs) // 2 :]
    shard.process(rest)
    back.process(rest)
    assert back.profiles_as_dicts() == shard.profiles_as_dicts()


# -- checkpoints of snapshot version 6 ------------------------------------------------------------


def _v6() -> tuple[dict, SessionShard]:
    fixture = snapshot_v6.load(FIXTURE)
    base = base64.b64decode(fixture["base"])
    deltas = [base64.b64decode(d) for d in fixture["deltas"]]
    assert pickle.loads(base)[0] == 6 != SNAPSHOT_VERSION
    return fixture, SessionShard.restore(base, deltas)


def _queues(fixture: dict) -> tuple[deque, deque]:
    return (
        deque(tuple(r) for r in fixture["events"]),
        deque(tuple(r) for r in fixture["decisions"]),
    )


def test_a_version_6_checkpoint_restores_to_the_state_version_6_had():
    fixture, shard = _v6()
    assert fixture["pending"] and fixture["logged"] and fixture["atCheckpoint"]["buffered"]
    assert fixture["atCheckpoint"]["aliases"]  # merges, pending decisions, held-back events
    assert set(shard.dedupe.ids) == {id_hash(m) for m in fixture["dedupeIds"]}
    assert snapshot_v6.outcome(shard, []) == fixture["atCheckpoint"]


def test_a_version_6_checkpoint_runs_on_exactly_as_version_6_did():
    fixture, shard = _v6()
    events, decisions = _queues(fixture)
    rewards = snapshot_v6.drive(shard, events, decisions)
    assert snapshot_v6.outcome(shard, rewards) == fixture["atEnd"]
    assert set(shard.dedupe.ids) == {id_hash(m) for m in fixture["dedupeIdsAtEnd"]}


@pytest.mark.parametrize("seed", range(4))
def test_a_version_6_state_checkpointed_again_as_this_version_runs_on_the_same(seed):
    """Restored from 6, checkpointed as this version (a base, then deltas) at random points, crashed and
    restored from those: the end is still version 6's."""
    fixture, shard = _v6()
    events, decisions = _queues(fixture)
    rng = random.Random(seed)
    rewards: list = []
    base, deltas, saved = shard.snapshot(), [], (copy.copy(events), copy.copy(decisions), [])
    assert pickle.loads(base)[0] == SNAPSHOT_VERSION
    while events or decisions:
        rewards += snapshot_v6.drive(shard, events, decisions, rounds=1)
        if rng.random() < 0.5:
            deltas.append(shard.snapshot_delta())
            saved = (copy.copy(events), copy.copy(decisions), list(rewards))
        if rng.random() < 0.3:
            shard = SessionShard.restore(base, deltas)
            events, decisions, rewards = copy.copy(saved[0]), copy.copy(saved[1]), list(saved[2])
    assert snapshot_v6.outcome(shard, rewards) == fixture["atEnd"]


@pytest.mark.parametrize("version", [5, SNAPSHOT_VERSION + 1])
def test_other_snapshot_versions_are_refused_by_name(version):
    blob = pickle.dumps((version, "base", {}))
    expected = f"is snapshot version {version}; this Onramp reads 6 and 7"
    with pytest.raises(SnapshotRefused, match=expected):
        SessionShard.restore(blob)


def test_a_base_cut_short_before_its_reward_join_is_refused():
    shard = SessionShard(0)
    whole = shard.snapshot()
    head = pickle.dumps(pickle.loads(whole))  # the first pickle alone: the state, no join
    assert len(head) < len(whole)
    for blob in (head, whole + b"\x80"):
        with pytest.raises(SnapshotRefused) as refused:
            SessionShard.restore(blob)
        assert refused.value.index == 0 and "reward join" in str(refused.value)
    with pytest.raises(SnapshotRefused, match="state is a list"):
        SessionShard.restore(pickle.dumps((SNAPSHOT_VERSION, "base", [1])))


def test_a_profile_read_between_slices_of_a_base_changes_no_read_after_a_restore(monkeypatch):
    """A read advances a profile's windows to the watermark (closing its sessions): a base whose
    profiles are pickled a slice at a time, with reads in between, restores to the same reads,
    whether a profile was pickled before or after its read."""
    from ray_app.state import snapshot as snap

    monkeypatch.setattr(snap, "PROFILE_SLICE", 3)
    shard = SessionShard(0, StateConfig(allowed_lateness_ms=0, reorder_wait_ms=0))
    users = [f"u{i}" for i in range(10)]
    shard.process([record(f"m{i}", user=u, ts=T0 + i) for i, u in enumerate(users)])
    shard.process([record("late", user="u-clock", ts=T0 + 3_600_000)])  # the watermark moves on
    finish = snap.begin_base(shard, rebase=True)
    order = iter(users)
    blob = finish(between=lambda: [shard.profile(next(order, "u0")) for _ in range(2)])
    restored = SessionShard.restore(blob)
    assert restored.profiles_as_dicts() == shard.profiles_as_dicts()
    assert any(p["sessions"]["closed"] for p in shard.profiles_as_dicts().values())
