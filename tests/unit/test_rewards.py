"""The reward join: decisions meet the outcomes that followed them, exactly once, whatever the
interleaving of the two topics, across snapshots and deltas."""

import copyreg
import dataclasses
import datetime as dt
import io
import json
import pickle
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.records.features import PackedFeatures, SparseFeatures
from ray_app.state import SessionShard, StateConfig
from ray_app.state.rewards import PendingDecision
from ray_app.state.snapshot import _NOT_PICKLED

T0 = int(dt.datetime(2026, 5, 1, tzinfo=dt.UTC).timestamp() * 1000)
CONFIG = StateConfig(allowed_lateness_ms=10_000, attribution_window_ms=30_000, reorder_wait_ms=0)


def _iso(ms):
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _event(mid, user, ms, name, step=None, decision_id=None):
    props = {"decisionId": decision_id} if decision_id else {}
    return (
        user.encode(),
        json.dumps(
            {"messageId": mid, "type": "track", "event": name, "userKey": user, "userId": user,
             "timestamp": _iso(ms), "receivedAt": _iso(ms), "stepId": step, "properties": props}
        ).encode(),
    )  # fmt: skip


def _decision(did, user, ms, slot="next_step", chosen="role"):
    return (
        user.encode(),
        json.dumps(
            {"schema": "onramp.decision/1", "decisionId": did, "userKey": user, "slot": slot,
             "chosen": chosen, "actionIndex": 1, "propensity": 0.5, "arm": "treatment",
             "modelVersion": 1, "features": [0.25, 0.5], "timestamp": _iso(ms),
             "candidates": [chosen, "goals"], "ranked": [{"action": chosen}, {"action": "goals"}]}
        ).encode(),
    )  # fmt: skip


def _scenario(users=30, spacing_ms=1_000):
    """Users with decisions and what they did next; the expected reward of each decision."""
    events, decisions, expected = [], [], {}
    for u in range(users):
        user, t = f"u{u}", T0 + u * spacing_ms
        did = f"d{u}"
        decisions.append(_decision(did, user, t))
        kind = u % 10
        if kind == 0:  # completes the step shown: reward 1
            events.append(_event(f"e{u}", user, t + 5_000, "Step Completed", "role"))
            expected[did] = (1.0, "completed")
        elif kind == 1:  # completes another step: times out
            events.append(_event(f"e{u}", user, t + 5_000, "Step Completed", "goals"))
            expected[did] = (0.0, "timeout")
        elif kind == 2:  # completes it, but after the window
            events.append(_event(f"e{u}", user, t + 45_000, "Step Completed", "role"))
            expected[did] = (0.0, "timeout")
        elif kind == 3:  # a content slot, converted
            decisions[-1] = _decision(did, user, t, slot="welcome_content", chosen="video_tour")
            events.append(_event(f"e{u}", user, t + 20_000, "Onboarding Completed"))
            expected[did] = (1.0, "converted")
        elif kind == 4:  # echoes the decision id of a second decision: only that one is credited
            decisions.append(_decision(f"{did}b", user, t + 100))
            events.append(_event(f"e{u}", user, t + 5_000, "Step Completed", "role", f"{did}b"))
            expected[did] = (0.0, "timeout")
            expected[f"{did}b"] = (1.0, "completed")
        elif kind == 5:  # abandons the step shown: reward 0 at once
            events.append(_event(f"e{u}", user, t + 2_000, "Step Abandoned", "role"))
            expected[did] = (0.0, "abandoned")
        elif kind == 6:  # abandons, then completes it: the first outcome wins
            events.append(_event(f"e{u}", user, t + 2_000, "Step Abandoned", "role"))
            events.append(_event(f"f{u}", user, t + 4_000, "Step Completed", "role"))
            expected[did] = (0.0, "abandoned")
        elif kind == 7:  # completes, then abandons it: the first outcome wins
            events.append(_event(f"e{u}", user, t + 2_000, "Step Completed", "role"))
            events.append(_event(f"f{u}", user, t + 4_000, "Step Abandoned", "role"))
            expected[did] = (1.0, "completed")
        elif kind == 8:  # abandons another step, and the shown one after the window
            events.append(_event(f"e{u}", user, t + 2_000, "Step Abandoned", "goals"))
            events.append(_event(f"f{u}", user, t + 45_000, "Step Abandoned", "role"))
            expected[did] = (0.0, "timeout")
        else:  # a content decision abandoned by an echo; the other content decision converts
            decisions[-1] = _decision(did, user, t, slot="welcome_content", chosen="video_tour")
            decisions.append(
                _decision(f"{did}b", user, t + 50, slot="welcome_content", chosen="video_tour")
            )
            events.append(_event(f"e{u}", user, t + 2_000, "Step Abandoned", None, did))
            events.append(_event(f"f{u}", user, t + 9_000, "Onboarding Completed"))
            expected[did] = (0.0, "abandoned")
            expected[f"{did}b"] = (1.0, "converted")
    # traffic that moves the watermark past every window
    events += [
        _event(f"tick{n}", "ticker", T0 + users * spacing_ms + 40_000 + n * 10_000, "Heartbeat")
        for n in range(8)
    ]
    events.sort(key=lambda kv: json.loads(kv[1])["timestamp"])
    return events, decisions, expected


def _run(events, decisions, rng, crash_every=None):
    """Interleave the two topics at random; optionally crash and restore from checkpoints."""
    shard = SessionShard(0, CONFIG)
    ei = di = 0
    rewards = []
    base, deltas, committed = None, [], (0, 0)
    while ei < len(events) or di < len(decisions):
        if di < len(decisions) and (ei >= len(events) or rng.random() < 0.4):
            n = rng.randint(1, 3)
            r = shard.process_decisions(decisions[di : di + n], min(di + n, len(decisions)))
            di = min(di + n, len(decisions))
        else:
            n = rng.randint(1, 4)
            r = shard.process(events[ei : ei + n])
            ei += n
        rewards += r.rewards
        if crash_every:
            roll = rng.random()
            if roll < 0.2 or base is None:
                base, deltas, committed = shard.snapshot(), [], (ei, min(di, len(decisions)))
            elif roll < 0.5:
                deltas.append(shard.snapshot_delta())
                committed = (ei, di)
            if rng.random() < crash_every:
                shard = SessionShard.restore(base, deltas)
                ei, di = committed
                assert shard.decision_offset == di
    return shard, rewards


def _final(rewards):
    out = {}
    for r in rewards:
        value = (r.reward, r.outcome)
        assert out.setdefault(r.decision_id, value) == value, "one decision, two rewards"
    return out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_every_decision_gets_its_reward_whatever_the_interleaving(seed):
    events, decisions, expected = _scenario()
    shard, rewards = _run(events, decisions, random.Random(seed))
    assert _final(rewards) == expected
    assert len(rewards) == len(expected)  # exactly once without crashes
    assert shard.rewards.stats()["pendingDecisions"] == 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_crashes_and_restores_from_deltas_keep_rewards_exact(seed):
    events, decisions, expected = _scenario()
    shard, rewards = _run(events, decisions, random.Random(seed), crash_every=0.3)
    assert _final(rewards) == expected  # replays may write a reward again, never another one
    assert shard.rewards.stats()["rewards"] == len(expected)


def test_a_decision_logged_twice_is_rewarded_once_and_garbage_is_rejected():
    shard = SessionShard(0, CONFIG)
    d = _decision("dup", "u1", T0)
    r = shard.process_decisions([d, d, (b"u1", b"{nope"), (b"u1", b'{"decisionId": "x"}')], 4)
    assert [e.reason.value for *_, e in r.rejected] == ["invalid_json", "missing_field"]
    r = shard.process([_event("c", "u1", T0 + 1_000, "Step Completed", "role")])
    assert [(x.decision_id, x.reward, x.features, x.candidates) for x in r.rewards] == [
        ("dup", 1.0, [0.25, 0.5], ["role", "goals"])
    ]
    assert shard.rewards.stats()["repeatedDecisions"] == 1


def test_a_user_asking_for_decisions_without_end_keeps_a_bounded_merge_record():
    # a client asking /v1/decide every second for one anonymous id: its pending decisions all
    # went into one merge record at sign-up, past the size Kafka takes (the worker stopped on
    # it, again at every restart)
    from ray_app.state.rewards import MAX_PENDING_PER_USER

    shard = SessionShard(0, CONFIG)
    n = MAX_PENDING_PER_USER + 36
    r = shard.process_decisions([_decision(f"d{i}", "anon", T0 + i * 10) for i in range(n)], n)
    assert [(x.decision_id, x.reward, x.outcome) for x in r.rewards] == [
        (f"d{i}", 0.0, "timeout") for i in range(36)
    ], "the oldest, superseded, decided once each"
    decisions, _ = shard.rewards.of_user("anon")
    assert len(decisions) == MAX_PENDING_PER_USER
    r = shard.process([_event("c", "anon", T0 + 5_000, "Step Completed", "role")])
    assert len(r.rewards) == MAX_PENDING_PER_USER and all(x.reward == 1.0 for x in r.rewards)
    assert shard.rewards.rewards == n  # every decision rewarded exactly once


def test_the_outcome_log_is_pruned_after_its_retention_and_counts_abandons():
    config = StateConfig(allowed_lateness_ms=1_000, attribution_window_ms=5_000, reorder_wait_ms=0)
    shard = SessionShard(0, config)
    shard.rewards.retention_ms = 20_000
    shard.process([_event("a", "u1", T0, "Step Abandoned", "role")])
    r = shard.process_decisions([_decision("d1", "u1", T0 - 1_000)], 1)
    assert [(x.reward, x.outcome) for x in r.rewards] == [(0.0, "abandoned")]
    assert shard.rewards.stats()["abandonedRewards"] == 1
    assert shard.rewards.stats()["loggedOutcomeUsers"] == 1
    shard.process([_event("t", "ticker", T0 + 30_000, "Heartbeat")])
    assert shard.rewards.stats()["loggedOutcomeUsers"] == 0  # past the retention: pruned
    # a decision that arrives after its window closed, with its outcome pruned: a timeout
    r = shard.process_decisions([_decision("d2", "u1", T0 - 500)], 2)
    assert [(x.reward, x.outcome) for x in r.rewards] == [(0.0, "timeout")]


def test_a_pending_decision_keeps_its_features_packed_and_its_reward_carries_them_exactly():
    """Pending decisions hold their vectors as two byte strings (what a base checkpoint pickles
    by the thousand under the worker's lock); the reward and a restored shard see the values
    the decision logged, bit for bit."""
    values = [0.1, 1.0, 2.0, 0.123457, 5e-324]
    record = json.loads(_decision("dp", "u1", T0)[1])
    record |= {"schema": "onramp.decision/2",
               "features": {"size": 2112, "indices": [0, 7, 300, 2000, 2111], "values": values}}  # fmt: skip
    shard = SessionShard(0, CONFIG)
    shard.process_decisions([(b"u1", json.dumps(record).encode())], 1)
    pending = shard.rewards.pending["dp"]
    assert isinstance(pending.features, PackedFeatures)
    restored = SessionShard.restore(shard.snapshot())
    assert restored.rewards.pending["dp"] == pending
    r = restored.process([_event("c", "u1", T0 + 1_000, "Step Completed", "role")]).rewards
    assert [x.decision_id for x in r] == ["dp"]
    dense = r[0].features
    assert len(dense) == 2112 and [dense[i] for i in (0, 7, 300, 2000, 2111)] == values
    assert sum(v != 0 for v in dense) == 5


def test_a_checkpoint_of_the_previous_release_still_restores_its_pending_decisions():
    """Before 2026-12-07 a base snapshot was one pickle (version 7), its reward join inside, and
    a pending decision pickled as a slots dataclass does (its __getstate__) with its vector as a
    SparseFeatures: such a checkpoint loads and its rewards come out."""
    shard = SessionShard(0, CONFIG)
    shard.process_decisions([_decision("old", "u1", T0)], 1)
    p = shard.rewards.pending["old"]
    old = dataclasses.replace(p, features=SparseFeatures.of(p.features))

    class PreviousRelease(pickle.Pickler):
        def reducer_override(self, obj):
            if type(obj) is PendingDecision:
                return (copyreg.__newobj__, (PendingDecision,), PendingDecision.__getstate__(obj))
            return NotImplemented

    shard.rewards.pending["old"] = old
    buf = io.BytesIO()
    PreviousRelease(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(
        (7, "base", {k: v for k, v in shard.__dict__.items() if k not in _NOT_PICKLED}
         | {"aliases": ()})
    )  # fmt: skip
    assert b"_pending" not in buf.getvalue()  # the old form, not this release's
    restored = SessionShard.restore(buf.getvalue())
    assert restored.rewards.pending["old"] == old
    r = restored.process([_event("c", "u1", T0 + 1_000, "Step Completed", "role")]).rewards
    assert [(x.decision_id, x.reward, x.features) for x in r] == [("old", 1.0, [0.25, 0.5])]


def test_measuring_a_snapshot_changes_nothing_the_next_delta_carries():
    """``snapshot(rebase=False)`` (the stream benchmark's state size) leaves the changes since
    the last base to the next delta: the outcome logs touched as well as the decisions."""
    shard = SessionShard(0, CONFIG)
    base = shard.snapshot()
    shard.process_decisions([_decision("d1", "u1", T0)], 1)
    shard.process([_event("a", "u2", T0 + 500, "Step Completed", "goals")])  # a logged outcome
    shard.snapshot(rebase=False)
    restored = SessionShard.restore(base, [shard.snapshot_delta()])
    assert restored.rewards.log == shard.rewards.log and restored.rewards.log
    assert set(restored.rewards.pending) == {"d1"}
    assert restored.dedupe.ids == shard.dedupe.ids and len(shard.dedupe.ids) == 1


def test_a_reward_that_fails_to_build_leaves_its_decision_pending(monkeypatch):
    """Deciding is one step: the record is built before the decision leaves ``pending``, so a
    failure there loses nothing and counts nothing; the next outcome rewards it once."""
    shard = SessionShard(0, CONFIG)
    shard.process_decisions([_decision("d1", "u1", T0)], 1)
    join = shard.rewards
    build = PendingDecision.reward

    def broken(self, *args):
        raise RuntimeError("no memory for the record")

    monkeypatch.setattr(PendingDecision, "reward", broken)
    try:
        join.on_outcome("u1", "Step Abandoned", "role", T0 + 1_000, None)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failure was swallowed")
    assert "d1" in join.pending and join.rewards == 0 and join.explicit_negatives == 0
    monkeypatch.setattr(PendingDecision, "reward", build)
    r = join.on_outcome("u1", "Step Completed", "role", T0 + 2_000, None)
    assert [(x.decision_id, x.reward, x.outcome) for x in r] == [("d1", 1.0, "completed")]
    assert "d1" not in join.pending and join.rewards == 1


def test_a_window_closes_at_the_record_that_passes_it_wherever_the_batch_is_cut():
    """Timeouts ran once per batch: a merge later in the batch that moved the watermark past a
    pending decision's window, carrying that decision's outcome, rewarded it, where the same
    records cut into two batches timed it out. Where a worker cuts its batches is timing, so a
    replay could reward a decision a second time, otherwise."""
    config = dataclasses.replace(CONFIG, attribution_window_ms=60_000)
    merge = (
        b"U",
        json.dumps(
            {"type": "onramp.merge", "messageId": "merge:link:i1", "userKey": "U", "from": "A",
             "timestamp": _iso(T0 + 20_000), "profile": None, "decisions": [],
             "outcomes": [[7, T0 + 10_000, True, False, "role", None]]}
        ).encode(),
    )  # fmt: skip
    passes = _event("x1", "Z", T0 + 200_000, "Step Viewed", "role")  # the watermark past it

    def rewards(chunks: list[list]) -> list[tuple]:
        shard = SessionShard(0, config)
        shard.process([_event("u0", "U", T0 - 1_000, "Step Viewed", "role")])
        out = shard.process_decisions([_decision("d1", "U", T0)], 1).rewards
        for chunk in chunks:
            out += shard.process(chunk).rewards
        return [(r.decision_id, r.reward, r.outcome) for r in out]

    assert rewards([[passes, merge]]) == rewards([[passes], [merge]]) == [("d1", 0.0, "timeout")]


def test_the_watermark_never_moves_back_after_a_restart_with_a_longer_lateness():
    """reconfigure() kept the watermark, but the next event set it to max_ts - lateness: with a
    longer lateness it moved back, and a copy of an event that dedupe had forgotten (it was
    behind the old watermark) was applied a second time."""
    shard = SessionShard(0, dataclasses.replace(CONFIG, allowed_lateness_ms=60_000))
    shard.process([_event("m1", "u1", T0, "Step Viewed", "role"),
                   _event("m2", "u1", T0 + 600_000, "Step Viewed", "role")])  # fmt: skip
    restored = SessionShard.restore(shard.snapshot())
    restored.reconfigure(dataclasses.replace(CONFIG, allowed_lateness_ms=3_600_000))
    mark = restored.watermark
    restored.process([_event("m3", "u1", T0 + 600_001, "Step Viewed", "role")])
    assert restored.watermark == mark
    again = restored.process([_event("m1", "u1", T0, "Step Viewed", "role")])
    assert again.applied == 0 and len(again.late) == 1
    assert restored.profile("u1")["steps"]["role"]["views"] == 3


def test_the_segment_mix_stays_bounded_whatever_segments_clients_send():
    """traits.segment is whatever a client sends, and the data-quality mix counted every
    distinct one for ever; checkpointed with the state, 10,000 of them made every delta of
    the partition 2 MB."""
    from validation.batch import MAX_SEGMENTS, OTHER_SEGMENTS
    from validation.columns import SampledChecks

    shard = SessionShard(0, CONFIG, SampledChecks.for_state(CONFIG))
    events = []
    for i in range(3 * MAX_SEGMENTS):
        user, body = _event(f"m{i}", f"u{i}", T0 + i, "Step Viewed", "role")
        data = json.loads(body)
        data["context"] = {"traits": {"segment": f"segment-{i}"}}
        events.append((user, json.dumps(data).encode()))
    shard.process(events)
    segments = shard.quality.segments
    assert len(segments) == MAX_SEGMENTS + 1 and segments[OTHER_SEGMENTS] == 2 * MAX_SEGMENTS


def test_a_users_latest_outcomes_are_kept_whatever_came_before():
    """The outcome log kept a user's first 64 outcomes of a day: a later outcome that arrived
    ahead of its decision was not logged, and the decision timed out where the other order
    rewarded it. The latest are kept now, and the expiry heap stays bounded under a flood."""
    from ray_app.state.rewards import MAX_LOGGED_OUTCOMES

    config = dataclasses.replace(CONFIG, attribution_window_ms=300_000)
    n = MAX_LOGGED_OUTCOMES
    history = [_event(f"h{i}", "u1", T0 + i * 1_000, "Step Completed", "goals") for i in range(n)]
    t = T0 + n * 1_000
    outcome = _event("win", "u1", t + 10_000, "Step Completed", "role")
    later = _event("tick", "u2", t + 3_600_000, "Step Viewed", "role")

    def rewards(decision_first: bool) -> list[tuple]:
        shard = SessionShard(0, config)
        out = shard.process(history).rewards
        steps = [lambda: shard.process_decisions([_decision("d1", "u1", t)], 1),
                 lambda: shard.process([outcome])]  # fmt: skip
        for step in steps if decision_first else steps[::-1]:
            out += step().rewards
        out += shard.process([later]).rewards
        return [(r.decision_id, r.reward, r.outcome) for r in out]

    assert rewards(True) == rewards(False) == [("d1", 1.0, "completed")]
    flood = SessionShard(0, config)
    flood.process([_event(f"f{i}", "u3", T0 + i, "Step Completed", "goals") for i in range(5 * n)])
    assert len(flood.rewards.log["u3"]) == n and len(flood.rewards.log_expiry) <= n


def test_a_decisions_feature_schema_reaches_its_reward_and_survives_checkpoints():
    """The decision record's ``featureSchema`` is kept with the pending decision, through a
    checkpoint, into its reward record (a learner refuses a vector of another schema of the
    same width); a snapshot written before it was kept still loads, without it."""
    import pickle

    from ray_app.records.reward import RewardRecord
    from ray_app.state.rewards import _pending, decode_decision

    record = json.loads(_decision("d1", "u1", T0)[1])
    d = decode_decision({**record, "featureSchema": "abcd1234abcd1234"}, frozenset({"next_step"}))
    restored = pickle.loads(pickle.dumps(d))
    assert restored.feature_schema == "abcd1234abcd1234"
    reward = restored.reward(1.0, "completed", T0 + 5_000)
    assert RewardRecord.from_json(reward.to_json()).feature_schema == "abcd1234abcd1234"
    assert decode_decision(restored.record(), frozenset()).feature_schema == "abcd1234abcd1234"
    # a snapshot of the form before: _pending's arguments without the schema
    _, args = d.__reduce__()
    old = _pending(*args[:-1])
    assert old.feature_schema is None and old.reward(0.0, "timeout", None).feature_schema is None
    assert "featureSchema" not in old.reward(0.0, "timeout", None).to_json()
