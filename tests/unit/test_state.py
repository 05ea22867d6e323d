"""The pure state core: profile semantics, commutativity, dedupe, ordering, lateness, snapshots."""

import datetime as dt
import functools
import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.config import SimSettings
from ray_app.kafka.client import partition_for
from ray_app.sim import TrafficPlan
from ray_app.state import Event, Profile, SessionShard, StateConfig, apply
from ray_app.state.profile import STEP_COMPLETED, STEP_VIEWED

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def iso(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def record(
    mid,
    user="u1",
    kind="track",
    name="Step Viewed",
    ts=T0,
    seq=None,
    session="s1",
    step="role",
    **extra,
):
    d = {
        "messageId": mid,
        "type": kind,
        "userKey": user,
        "timestamp": iso(ts),
        "receivedAt": iso(ts + 50),
    }
    if kind == "track":
        d["event"] = name
    if seq is not None:
        d["sessionId"], d["seq"] = session, seq
    if step:
        d["stepId"] = step
    d.update(extra)
    return (user.encode(), json.dumps(d).encode())


# -- profile semantics ----------------------------------------------------------------------


def test_profile_derives_onboarding_progress():
    recs = [
        record(
            "a",
            kind="identify",
            name=None,
            ts=T0,
            step=None,
            traits={"role": "founder"},
            userId="u1",
        ),
        record("b", name=STEP_VIEWED, ts=T0 + 1_000, step="role"),
        record("c", name="Form Error", ts=T0 + 5_000, step="role"),
        record("d", name=STEP_VIEWED, ts=T0 + 6_000, step="role"),
        record("e", name=STEP_COMPLETED, ts=T0 + 9_000, step="role"),
        record("f", name=STEP_VIEWED, ts=T0 + 10_000, step="goals"),
        record(
            "g",
            name=STEP_COMPLETED,
            ts=T0 + 30_000,
            step="goals",
            properties={"durationMs": 18_000},
        ),
        record("h", name="Onboarding Completed", ts=T0 + 31_000, step=None),
    ]
    shard = SessionShard(0)
    shard.process(recs)
    p = shard.profile("u1")
    assert p["traits"] == {"role": "founder"} and p["userId"] == "u1"
    assert p["stepsSeen"] == ["goals", "role"] and p["stepsCompleted"] == ["goals", "role"]
    assert p["steps"]["role"] == {
        "views": 2,
        "completions": 1,
        "abandons": 0,
        "formErrors": 1,
        "retries": 1,
        "timeMs": 8_000,
        "firstSeen": T0 + 1_000,
    }
    assert p["steps"]["goals"]["timeMs"] == 18_000  # the client's figure wins over the derived one
    assert p["currentStep"] == "goals" and p["completedAt"] == T0 + 31_000
    assert (p["firstSeen"], p["lastSeen"]) == (T0, T0 + 31_000)
    assert (
        p["counts"]["track"] == 7
        and p["counts"]["track:Step Viewed"] == 3
        and p["counts"]["identify"] == 1
    )


def test_sessions_split_on_inactivity_and_close_behind_the_watermark():
    cfg = StateConfig(allowed_lateness_ms=60_000)
    shard = SessionShard(0, cfg)
    gap = cfg.profile.session_gap_ms
    shard.process(
        [record("a", ts=T0), record("b", ts=T0 + 60_000), record("c", ts=T0 + gap + 120_001)]
    )
    s = shard.profile("u1")["sessions"]
    assert s["count"] == 2 and s["closed"] == 1  # the first is gap + lateness behind: closed
    shard.process([record("d", ts=T0 + 3 * gap)])
    s = shard.profile("u1")["sessions"]
    assert s["closed"] == 2 and s["closedActiveMs"] == 60_000 and s["count"] == 3


def test_tumbling_and_sliding_activity():
    shard = SessionShard(0)
    shard.process(
        [record(str(i), ts=T0 + i * 20_000) for i in range(10)]
    )  # 10 events over 3 minutes
    a = shard.profile("u1")["activity"]
    assert sum(a["perMinute"].values()) == 10 and len(a["perMinute"]) == 4
    assert a["last5m"] == 10


# -- commutativity: order of arrival does not matter -----------------------------------------

NAMES = [
    STEP_VIEWED,
    STEP_COMPLETED,
    "Step Abandoned",
    "Form Error",
    "Onboarding Completed",
    "Clicked",
]
events_st = st.lists(
    st.builds(
        lambda i, kind, name, dt_ms, seq, step, trait, dur: Event(
            message_id=f"m{i}",
            user_key="u",
            kind=kind,
            name=name,
            ts=T0 + dt_ms,
            received=T0 + dt_ms + 5,
            session_id="s" if seq is not None else None,
            seq=seq,
            step_id=step,
            user_id="u" if i % 2 else None,
            anonymous_id=f"a{i % 20}",
            traits={"plan": trait} if kind == "identify" else {},
            properties={"durationMs": dur} if dur is not None else {},
        ),
        st.integers(0, 10**6),
        st.sampled_from(["track", "track", "identify", "page"]),
        st.sampled_from(NAMES),
        st.integers(0, 4 * 3_600_000),
        st.none() | st.integers(0, 50),
        st.none() | st.sampled_from(["role", "goals", "invite"]),
        st.sampled_from(["free", "pro", "team"]),
        st.none() | st.integers(0, 100_000),
    ),
    max_size=40,
    unique_by=lambda e: e.message_id,
)


@settings(max_examples=200, deadline=None)
@given(events=events_st, seed=st.integers(0, 2**32))
def test_apply_is_commutative(events, seed):
    a, b = Profile("u"), Profile("u")
    for e in events:
        apply(a, e)
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    for e in shuffled:
        apply(b, e)
    wm = max((e.ts for e in events), default=T0)
    a.advance(wm)
    b.advance(wm)
    assert a.as_dict() == b.as_dict()


def _session_records(n, spread_ms, seed):
    rng = random.Random(seed)
    times = sorted(rng.randrange(spread_ms) for _ in range(n))
    return [
        record(
            f"m{i}", name=rng.choice(NAMES), ts=T0 + t, seq=i, step=rng.choice(["role", "goals"])
        )
        for i, t in enumerate(times)
    ]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 2**32), cut=st.integers(1, 20))
def test_any_permutation_within_the_lateness_bound_gives_the_same_profile(n, seed, cut):
    recs = _session_records(n, spread_ms=10 * 60_000, seed=seed)
    cfg = StateConfig(allowed_lateness_ms=15 * 60_000)  # the whole session fits in the bound
    ordered = SessionShard(0, cfg)
    ordered.process(recs)
    shuffled = list(recs)
    random.Random(seed + 1).shuffle(shuffled)
    other = SessionShard(0, cfg)
    for i in range(0, len(shuffled), cut):  # and in batches of any size
        other.process(shuffled[i : i + cut])
    assert other.profiles_as_dicts() == ordered.profiles_as_dicts()
    # a far-ahead event may make a session give up on a gap early (the event that fills it is
    # then applied "behind"), but every event is applied and nothing stays buffered
    assert other.stats.applied == ordered.stats.applied == n and other.buffered == 0


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32), dups=st.integers(0, 40))
def test_duplicates_never_change_the_profile(n, seed, dups):
    recs = _session_records(n, spread_ms=10 * 60_000, seed=seed)
    rng = random.Random(seed)
    with_dups = list(recs)
    for _ in range(dups):
        with_dups.insert(rng.randrange(len(with_dups) + 1), rng.choice(recs))
    cfg = StateConfig(allowed_lateness_ms=15 * 60_000)
    a, b = SessionShard(0, cfg), SessionShard(0, cfg)
    a.process(recs)
    b.process(with_dups)
    assert a.profiles_as_dicts() == b.profiles_as_dicts()
    assert b.stats.duplicates == dups and b.stats.applied == n


# -- lateness, ordering, dedupe bounds -----------------------------------------------------


def test_late_events_are_routed_with_the_reason_and_counted():
    shard = SessionShard(0, StateConfig(allowed_lateness_ms=60_000))
    r = shard.process([record("a", ts=T0 + 10 * 60_000), record("b", ts=T0)])
    assert r.applied == 1 and len(r.late) == 1 and shard.stats.late == 1
    _, _, value, info = r.late[0]
    assert json.loads(value)["messageId"] == "b" and info["reason"] == "late"
    assert info["behindMs"] == 9 * 60_000 - 0 and info["allowedLatenessMs"] == 60_000
    # a late duplicate of an applied event is late, not a duplicate: the order of checks is fixed
    r = shard.process([record("a", ts=T0 + 10 * 60_000), record("a", ts=T0)])
    assert r.duplicates == 1 and len(r.late) == 1


def test_events_are_released_in_seq_order_and_gaps_are_given_up():
    cfg = StateConfig(allowed_lateness_ms=60_000, reorder_max_buffer=3)
    shard = SessionShard(0, cfg)
    r = shard.process([record("m0", seq=0, ts=T0), record("m2", seq=2, ts=T0 + 2_000)])
    assert r.applied == 1 and shard.buffered == 1  # seq 2 waits for seq 1
    r = shard.process([record("m1", seq=1, ts=T0 + 1_000)])
    assert r.applied == 2 and shard.buffered == 0
    # seq 3 never comes; 4..7 overflow the buffer of 3: the gap is given up on
    r = shard.process([record(f"n{s}", seq=s, ts=T0 + s * 1_000) for s in (4, 5, 6, 7)])
    assert r.applied == 4 and shard.order.gaps == 1
    # seq 3 arrives after all, on time: applied (behind), not lost
    r = shard.process([record("m3", seq=3, ts=T0 + 3_000)])
    assert r.applied == 1 and shard.order.behind == 1


def test_two_events_with_one_seq_waiting_in_a_session_are_both_applied():
    # two users (a server integration) or two tabs sending one session id took the same seq:
    # the second one waiting replaced the first in the buffer, unapplied and uncounted
    shard = SessionShard(0, StateConfig(allowed_lateness_ms=60_000))
    shard.process(
        [
            record("a0", user="alice", seq=0, ts=T0),
            record("b0", user="bob", seq=0, ts=T0 + 10),
            record("a2", user="alice", seq=2, ts=T0 + 2_000),
            record("b2", user="bob", seq=2, ts=T0 + 2_010),
        ]
    )
    st = shard.stats
    assert st.records == 4 and st.applied + shard.buffered == 4, (st, shard.buffered)
    shard.process([record("late-1", user="carol", seq=1, ts=T0 + 1_000)])
    shard.process([record("x", user="dave", ts=T0 + 120_000, session="other")])
    got = {u: shard.profiles[u].counts.get("track:Step Viewed") for u in ("alice", "bob")}
    assert got == {"alice": 2, "bob": 2}


def test_a_gap_is_given_up_after_the_reorder_wait():
    shard = SessionShard(0, StateConfig(allowed_lateness_ms=60_000, reorder_wait_ms=2_000))
    shard.process(
        [
            record("m0", seq=0, ts=T0),
            record("m2", seq=2, ts=T0 + 1_000),
            record("m3", seq=3, ts=T0 + 2_500),
        ]
    )
    assert shard.buffered == 2  # event time has moved 1.5 s past seq 2: still waiting for seq 1
    r = shard.process([record("x", user="u2", seq=0, session="s2", ts=T0 + 3_100)])
    assert r.applied == 3 and shard.buffered == 0 and shard.order.gaps == 1


def test_a_session_first_seen_mid_way_starts_there():
    # its first events went to another partition (keyed by the anonymous id before sign-up)
    shard = SessionShard(0)
    r = shard.process([record("m5", seq=5, ts=T0), record("m6", seq=6, ts=T0 + 1)])
    assert r.applied == 2 and shard.buffered == 0 and shard.order.gaps == 0


def test_a_gap_is_given_up_when_the_watermark_passes():
    shard = SessionShard(0, StateConfig(allowed_lateness_ms=60_000, reorder_wait_ms=10**9))
    shard.process([record("m0", seq=0, ts=T0), record("m2", seq=2, ts=T0 + 1_000)])
    assert shard.buffered == 1
    r = shard.process([record("other", user="u2", seq=0, session="s2", ts=T0 + 120_000)])
    assert r.applied == 2 and shard.buffered == 0 and shard.order.gaps == 1


def test_dedupe_memory_is_bounded_by_the_horizon():
    shard = SessionShard(0, StateConfig(allowed_lateness_ms=60_000))
    for batch in range(20):
        shard.process(
            [record(f"{batch}-{i}", ts=T0 + batch * 60_000 + i * 100) for i in range(100)]
        )
    assert len(shard.dedupe) <= 300  # about one lateness worth of ids, not 2,000


def test_rejected_records_are_reported_not_raised():
    shard = SessionShard(0)
    r = shard.process([(b"u", b"not json"), (b"u", b'{"type": "track"}'), (b"u", b"[1]")])
    assert [e.reason.value for _, _, _, e in r.rejected] == [
        "invalid_json",
        "missing_field",
        "not_an_object",
    ]
    assert shard.stats.rejected == 3


# -- snapshots: crash anywhere, replay, same state -------------------------------------------


def _simulated_partitions(users=300, partitions=4, seed=5):
    """Simulator traffic, normalized by the collector's parser, split like Kafka would."""
    plan = TrafficPlan.build(SimSettings(users=users, seed=seed))
    received = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    parts = {p: [] for p in range(partitions)}
    for key, value in plan.normalized(received, batch=50):
        parts[partition_for(key, partitions)].append((key, value))
    return plan, parts


def test_simulated_traffic_reconciles_and_catches_every_duplicate():
    plan, parts = _simulated_partitions()
    shards = {p: SessionShard(p) for p in parts}
    for p, recs in parts.items():
        for i in range(0, len(recs), 500):
            shards[p].process(recs[i : i + 500])
    total = Counter()
    for s in shards.values():
        total.update(s.stats.as_dict())
        total["buffered"] += s.buffered
    produced = sum(len(r) for r in parts.values())
    assert (
        produced
        == total["applied"]
        + total["duplicates"]
        + total["late"]
        + total["rejected"]
        + total["buffered"]
    )
    assert total["duplicates"] == plan.count("duplicate")
    assert total["rejected"] == 0  # the collector already kept malformed events out
    # every user who finished is seen as finished, except where the final event still waits in a
    # reorder buffer for a seq the simulator sent malformed (the watermark has not passed it yet)
    finished = {
        c["userId"]
        for (_, c), truth in zip(plan.sends, plan.truth, strict=True)
        if truth["expect"] == "accepted" and c.get("event") == "Onboarding Completed"
    }
    completed = {
        k for s in shards.values() for k, p in s.profiles.items() if p.completed_at is not None
    }
    waiting = {
        e.user_key
        for s in shards.values()
        for cur in s.order.sessions.values()
        for e in cur.buffer.values()
        if e.name == "Onboarding Completed"
    }
    assert completed | waiting == finished and not completed & waiting


@functools.cache
def _one_partition_and_its_state() -> tuple[tuple[tuple[str, bytes], ...], SessionShard]:
    """The crash tests' input (one partition of 60 simulated users) and the state of a shard
    that processed it without a crash: built once, not for each of the tests' examples. The
    tests only read them (``profiles_as_dicts`` advances each profile to the shard's watermark,
    which the first read already did), so no example depends on another."""
    _, parts = _simulated_partitions(users=60, partitions=1, seed=3)
    reference = SessionShard(0)
    reference.process(parts[0])
    return tuple(parts[0]), reference


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_crash_and_replay_from_any_snapshot_gives_the_same_state(seed):
    recs, reference = _one_partition_and_its_state()
    rng = random.Random(seed)
    shard, committed_state, committed_offset, offset = SessionShard(0), None, 0, 0
    while offset < len(recs):
        n = rng.randint(1, 200)
        shard.process(recs[offset : offset + n])
        offset += n
        if rng.random() < 0.5:  # checkpoint: state and offset together
            committed_state, committed_offset = shard.snapshot(), offset
        if rng.random() < 0.3:  # crash: lose everything since the checkpoint, replay from there
            shard = SessionShard.restore(committed_state) if committed_state else SessionShard(0)
            offset = committed_offset if committed_state else 0
    assert shard.profiles_as_dicts() == reference.profiles_as_dicts()
    assert shard.stats.as_dict() == reference.stats.as_dict()


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_crash_and_replay_from_base_plus_deltas_gives_the_same_state(seed):
    """Incremental checkpoints: a base, then deltas of what changed; a crash restores
    base + deltas and replays from the last delta's offset."""
    recs, reference = _one_partition_and_its_state()
    rng = random.Random(seed)
    shard, base, deltas, committed_offset, offset = SessionShard(0), None, [], 0, 0
    while offset < len(recs):
        n = rng.randint(1, 200)
        shard.process(recs[offset : offset + n])
        offset += n
        roll = rng.random()
        if roll < 0.15 or (base is None and roll < 0.6):
            base, deltas, committed_offset = shard.snapshot(), [], offset
        elif roll < 0.6:
            deltas.append(shard.snapshot_delta())
            committed_offset = offset
        if rng.random() < 0.3:
            shard = SessionShard.restore(base, deltas) if base else SessionShard(0)
            offset = committed_offset if base else 0
    assert shard.profiles_as_dicts() == reference.profiles_as_dicts()
    assert shard.stats.as_dict() == reference.stats.as_dict()
    assert shard.dedupe.ids == reference.dedupe.ids
    assert shard.watermark == reference.watermark


def test_a_delta_is_smaller_than_the_state_it_updates():
    _, parts = _simulated_partitions(users=200, partitions=1, seed=5)
    recs = parts[0]
    shard = SessionShard(0)
    shard.process(recs[:-20])
    base = shard.snapshot()
    shard.process(recs[-20:])
    delta = shard.snapshot_delta()
    assert len(delta) * 5 < len(base)
    restored = SessionShard.restore(base, [delta])
    assert restored.profiles_as_dicts() == shard.profiles_as_dicts()
    with pytest.raises(ValueError, match="base snapshot first"):
        SessionShard.restore(delta)


def test_context_traits_count_as_traits_and_top_level_identify_traits_win():
    import orjson

    from ray_app.state.event import decode_event
    from ray_app.state.profile import Profile, apply

    def rec(mid, kind, ts, **extra):
        return orjson.dumps({"messageId": mid, "type": kind, "userKey": "u1", "event": "Clicked",
                             "timestamp": ts, "receivedAt": ts, **extra})  # fmt: skip

    p = Profile("u1")
    # RudderStack's identify: traits only in context.traits
    apply(p, decode_event(rec("a", "identify", "2026-01-01T00:00:00Z",
                              context={"traits": {"jobFunction": "nurse", "seats": 12}})))  # fmt: skip
    # a track call carrying context.traits (Segment libraries) updates them too
    apply(p, decode_event(rec("b", "track", "2026-01-01T00:00:01Z",
                              context={"traits": {"seats": 14}})))  # fmt: skip
    # top-level identify traits beat the same call's context.traits
    apply(p, decode_event(rec("c", "identify", "2026-01-01T00:00:02Z", traits={"plan": "pro"},
                              context={"traits": {"plan": "free"}})))  # fmt: skip
    # a group call's traits describe the account, not the user
    apply(p, decode_event(rec("d", "group", "2026-01-01T00:00:03Z", traits={"plan": "acme"})))
    assert p.traits == {"jobFunction": "nurse", "seats": 14, "plan": "pro"}


def test_a_client_clock_ahead_of_the_server_cannot_make_honest_events_late():
    """The attack of issue 15: events stamped just under max_event_future ahead, every 100 ms,
    used to drag every partition's watermark to "now" and send honest events to the late topic."""
    import datetime as dt

    import orjson

    from ray_app.state import SessionShard, StateConfig

    config = StateConfig(allowed_lateness_ms=60_000, max_future_ms=300_000, reorder_wait_ms=0)
    shard = SessionShard(0, config)
    t0 = int(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp() * 1000)

    def iso(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")

    def record(mid: str, user: str, ts: int, received: int) -> tuple[bytes, bytes]:
        return user.encode(), orjson.dumps(
            {"messageId": mid, "type": "track", "event": "Clicked", "userKey": user,
             "timestamp": iso(ts), "receivedAt": iso(received)}
        )  # fmt: skip

    attack = [record(f"a{i}", "attacker", t0 + i * 100 + 299_000, t0 + i * 100) for i in range(200)]
    honest = [
        record(f"h{i}", f"u{i}", t0 + 1_500 + i * 100, t0 + 1_500 + i * 100) for i in range(192)
    ]
    batch = sorted(attack + honest, key=lambda kv: orjson.loads(kv[1])["receivedAt"])
    result = shard.process(batch)
    assert len(result.rejected) == 0 and len(result.late) == 0
    assert all(shard.profile(f"u{i}") is not None for i in range(192))
    # the watermark is the server's clock less the lateness, not the attacker's clock
    assert shard.watermark <= t0 + 200 * 100 + 1_500 - 60_000


def test_extras_the_stream_does_not_read_do_not_refuse_the_event():
    """``traits`` is read from an identify and ``properties`` from a track, page or screen; on
    another call either is an extra the collector keeps as sent (any JSON value), which used to
    make the stream refuse the whole event, traits and all."""
    from ray_app.state.event import RecordRejected, event_from_record

    common = {"messageId": "m", "userKey": "u", "userId": "u", "timestamp": "2026-01-01T00:00:00Z",
              "receivedAt": "2026-01-01T00:00:00Z"}  # fmt: skip
    identify = event_from_record({**common, "type": "identify", "traits": {"role": "cto"},
                                  "properties": [1]})  # fmt: skip
    assert identify.traits == {"role": "cto"} and identify.properties == {}
    track = event_from_record({**common, "type": "track", "event": "e", "traits": "abc",
                               "properties": {"stepId": "role"}})  # fmt: skip
    assert track.traits == {} and track.properties == {"stepId": "role"}
    for kind, field in (("identify", "traits"), ("track", "properties"), ("page", "properties")):
        with pytest.raises(RecordRejected, match="expected objects"):  # where it is read
            event_from_record({**common, "type": kind, "event": "e", field: [1]})
