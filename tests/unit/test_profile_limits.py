"""Bounded profiles: idle profiles are evicted as the watermark passes their last event + TTL,
and per-profile caps bound event names, trait keys and sessions. Both are deterministic: a replay
from any snapshot (and its deltas) ends in the state of one pass."""

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.state import Profile, SessionShard, StateConfig, apply
from ray_app.state.event import decode_event
from ray_app.state.profile import ProfileConfig
from tests.unit.test_state import T0, iso

HOUR = 3_600_000


def rec(mid, user, ts, kind="track", name="Clicked", session=None, traits=None):
    d = {"messageId": mid, "type": kind, "userKey": user, "timestamp": iso(ts),
         "receivedAt": iso(ts + 50)}  # fmt: skip
    if kind == "track":
        d["event"] = name
    if session is not None:
        d["sessionId"] = session
    if traits is not None:
        d["traits"] = traits
    return (user.encode(), json.dumps(d).encode())


def limited(ttl_ms=HOUR, names=3, traits=3, sessions=2):
    return StateConfig(
        allowed_lateness_ms=60_000,
        reorder_wait_ms=0,
        profile_idle_ttl_ms=ttl_ms,
        profile=ProfileConfig(max_event_names=names, max_traits=traits, max_sessions=sessions),
    )


def test_new_event_names_past_the_cap_are_dropped_and_counted_known_ones_still_count():
    p, hits = Profile("u", ProfileConfig(max_event_names=2)), {}
    for i, name in enumerate(["A", "B", "C", "A", "D", "B"]):
        apply(p, decode_event(rec(f"m{i}", "u", T0 + i, name=name)[1]), hits)
    assert {k: v for k, v in p.counts.items() if k.startswith("track:")} == {
        "track:A": 2,
        "track:B": 2,
    }
    assert p.counts["track"] == 6  # call types are not capped
    assert hits == {"event_names": 2}


def test_new_trait_keys_past_the_cap_are_dropped_known_ones_still_update():
    p, hits = Profile("u", ProfileConfig(max_traits=2)), {}
    apply(p, decode_event(rec("a", "u", T0, "identify", traits={"x": 1, "y": 1})[1]), hits)
    apply(p, decode_event(rec("b", "u", T0 + 1, "identify", traits={"z": 1, "x": 2})[1]), hits)
    assert p.traits == {"x": 2, "y": 1} and hits == {"traits": 1}


def test_past_the_session_cap_the_least_recent_session_goes():
    p, hits = Profile("u", ProfileConfig(max_sessions=2)), {}
    for i, (sid, t) in enumerate([("s1", 0), ("s2", 10), ("s1", 20), ("s3", 30)]):
        apply(p, decode_event(rec(f"m{i}", "u", T0 + t, session=sid)[1]), hits)
    assert sorted(p.session_ids) == ["s1", "s3"] and hits == {"sessions": 1}


def test_an_idle_profile_is_evicted_once_the_watermark_passes_its_ttl():
    shard = SessionShard(0, limited(ttl_ms=HOUR))
    shard.process([rec("a", "idle", T0), rec("b", "busy", T0)])
    shard.process([rec("c", "busy", T0 + HOUR)])  # watermark: T0 + 1 h - 1 min: not yet
    assert set(shard.profiles) == {"idle", "busy"}
    shard.process([rec("d", "busy", T0 + HOUR + 2 * 60_000)])  # watermark T0 + 1 h + 1 min
    assert set(shard.profiles) == {"busy"} and shard.profiles_evicted == 1
    assert shard.profile("idle") is None
    shard.process([rec("e", "idle", T0 + HOUR + 3 * 60_000)])  # a new profile, from scratch
    assert shard.profile("idle")["counts"] == {"track": 1, "track:Clicked": 1}


def test_a_delta_carries_an_eviction():
    shard = SessionShard(0, limited(ttl_ms=HOUR))
    shard.process([rec("a", "idle", T0), rec("b", "busy", T0 + 50 * 60_000)])
    base = shard.snapshot()
    shard.process([rec("c", "busy", T0 + HOUR + 5 * 60_000)])
    delta = shard.snapshot_delta()
    restored = SessionShard.restore(base, [delta])
    assert set(restored.profiles) == {"busy"} and restored.profiles_evicted == 1
    # and the restored shard keeps evicting: its eviction heap was rebuilt
    restored.process([rec("e", "x", T0 + 4 * HOUR)])
    assert set(restored.profiles) == {"x"} and restored.profiles_evicted == 2


def _traffic(seed: int, n: int = 1_500):
    """Users who come and go over 12 hours of event time, more event names, traits and sessions
    than the caps allow, slightly out of order."""
    rng = random.Random(seed)
    out, t = [], T0
    for i in range(n):
        t += rng.randint(0, 60_000)
        user = f"u{rng.randrange(30)}"
        kind = rng.choice(["track", "track", "identify"])
        out.append(
            rec(
                f"m{i}",
                user,
                t - rng.randint(0, 30_000),
                kind,
                name=f"E{rng.randrange(6)}",
                session=f"s{rng.randrange(5)}",
                traits={f"t{rng.randrange(6)}": i} if kind == "identify" else None,
            )
        )
    return out


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_caps_and_evictions_replay_exactly_from_snapshots_and_deltas(seed):
    recs = _traffic(7)
    config = limited(ttl_ms=HOUR)
    reference = SessionShard(0, config)
    reference.process(recs)
    assert reference.profiles_evicted > 10  # the test exercises evictions...
    assert set(reference.cap_hits) == {"event_names", "traits", "sessions"}  # ...and every cap
    rng = random.Random(seed)
    shard, base, deltas, committed, offset = SessionShard(0, config), None, [], 0, 0
    while offset < len(recs):
        n = rng.randint(1, 150)
        shard.process(recs[offset : offset + n])
        offset += n
        roll = rng.random()
        if roll < 0.15 or (base is None and roll < 0.6):
            base, deltas, committed = shard.snapshot(), [], offset
        elif roll < 0.6:
            deltas.append(shard.snapshot_delta())
            committed = offset
        if rng.random() < 0.3:  # crash: restore base + deltas, replay from their offset
            shard = SessionShard.restore(base, deltas) if base else SessionShard(0, config)
            offset = committed if base else 0
    assert shard.profiles_as_dicts() == reference.profiles_as_dicts()
    assert shard.profiles_evicted == reference.profiles_evicted
    assert shard.cap_hits == reference.cap_hits
    assert shard.stats.as_dict() == reference.stats.as_dict()
