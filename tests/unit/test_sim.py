import datetime as dt
import json
from collections import Counter

from ray_app.collect.parse import parse_request
from ray_app.config import SimSettings
from ray_app.sim import STEPS, Population, TrafficPlan

KEYS = {"sim": "k"}


def test_population_is_seeded():
    a = [(u.user_id, u.segment.name, u.traits["role"]) for u in Population(3, 50).users]
    b = [(u.user_id, u.segment.name, u.traits["role"]) for u in Population(3, 50).users]
    c = [(u.user_id, u.segment.name, u.traits["role"]) for u in Population(4, 50).users]
    assert a == b != c
    assert len({u.segment.name for u in Population(3, 200).users}) == 4


def test_plan_is_deterministic_and_has_the_configured_anomalies():
    s = SimSettings(users=400, seed=11)
    p1, p2 = TrafficPlan.build(s), TrafficPlan.build(s)
    assert p1.sends == p2.sends
    kinds = Counter(e["kind"] for e in p1.truth)
    n = len(p1.truth)
    assert abs(kinds["malformed"] / n - s.malformed_share) < 0.01
    assert abs(kinds["duplicate"] / n - s.duplicate_share) < 0.015
    assert abs(kinds["out_of_order"] / n - s.out_of_order_share) < 0.02


def test_journeys_are_realistic():
    p = TrafficPlan.build(SimSettings(users=500, seed=2))
    events = Counter(c.get("event") for _, c in p.sends if isinstance(c, dict))
    completed = events["Onboarding Completed"]
    assert 0.2 * 500 < completed < 0.9 * 500  # some drop off, many finish
    assert events["Form Error"] > 0 and events["Step Abandoned"] > 0
    steps = {
        c["context"]["onramp"].get("stepId")
        for _, c in p.sends
        if isinstance(c, dict)
        and isinstance(c.get("context"), dict)
        and isinstance(c["context"].get("onramp"), dict)
    }
    assert set(STEPS) <= steps


def test_every_truth_entry_matches_what_the_collector_decides():
    """The ground truth is what the real parser says, event by event."""
    plan = TrafficPlan.build(SimSettings(users=300, seed=5))
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    for (_, call), truth in zip(plan.sends, plan.truth, strict=True):
        parsed = parse_request(
            "batch",
            json.dumps({"batch": [call], "writeKey": "k"}).encode(),
            content_encoding=None,
            authorization=None,
            write_keys=KEYS,
            received_at=now,
        )
        if truth["expect"] == "accepted":
            assert parsed.events and not parsed.rejections, truth
        else:
            assert [r.reason.value for r in parsed.rejections] == [truth["expect"]], truth


def test_sessions_have_gapless_sequences():
    plan = TrafficPlan.build(SimSettings(users=100, seed=1, malformed_share=0, duplicate_share=0))
    seqs = {}
    for _, c in plan.sends:
        o = c["context"]["onramp"]
        seqs.setdefault(o["sessionId"], []).append(o["seq"])
    for s in seqs.values():
        assert sorted(s) == list(range(len(s)))


def test_ground_truth_file(tmp_path):
    plan = TrafficPlan.build(SimSettings(users=20, seed=1))
    plan.write_truth(tmp_path / "t.jsonl")
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == len(plan.sends)
    assert {json.loads(line)["kind"] for line in lines} <= {
        "event",
        "duplicate",
        "out_of_order",
        "malformed",
    }
