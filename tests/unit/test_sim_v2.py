"""Simulator v2: the ground truth's shape (oracle > static > random), drift, determinism."""

from __future__ import annotations

import random

import pytest

from ray_app.catalog import load_catalog
from ray_app.features import FeatureSchema
from ray_app.sim.population import SEGMENTS
from ray_app.sim.v2 import PREFERENCES, GroundTruth, SimUserV2

CATALOG = load_catalog()
GT = GroundTruth(seed=1, catalog=CATALOG)
SEGMENT_NAMES = [s.name for s in SEGMENTS]


@pytest.mark.parametrize(
    ("slot", "margin"), [("next_step", 0.08), ("welcome_content", 0.03), ("checklist_order", 0.05)]
)
def test_oracle_beats_static_beats_random(slot, margin):
    oracle, static, rand = (GT.expected_rate(p, slot=slot) for p in ("oracle", "static", "random"))
    assert oracle - static > margin
    assert static - rand > margin
    # the journey view agrees
    if slot == "next_step":
        j = {p: GT.journey_rate(p) for p in ("oracle", "static", "random")}
        assert j["oracle"] > j["static"] + 0.05 > j["random"] + 0.05


def test_static_flow_is_suboptimal_and_the_best_action_depends_on_the_segment():
    slot = CATALOG.slot("next_step")
    best = {}
    for seg in SEGMENT_NAMES:
        el = GT.eligible(seg, "next_step")
        assert [slot.actions[i].id for i in el] == [
            "role",
            "team_size",
            "goals",
            "integrations",
            "invite_teammates",
            "first_project",
        ]
        best[seg] = GT.oracle_choice(seg, "next_step", el)
        assert GT.static_choice("next_step", el) != best[seg]  # never optimal
        assert (
            GT.p_complete(seg, "next_step", best[seg])
            - GT.p_complete(seg, "next_step", GT.static_choice("next_step", el))
            > 0.19
        )
    assert len(set(best.values())) == len(SEGMENT_NAMES)
    for slot_name in PREFERENCES:
        chosen = {
            GT.oracle_choice(seg, slot_name, GT.eligible(seg, slot_name)) for seg in SEGMENT_NAMES
        }
        assert len(chosen) >= 3, slot_name


@pytest.mark.parametrize("slot", sorted(PREFERENCES))
def test_drift_makes_the_old_optimum_poor(slot):
    changed = 0
    for seg in SEGMENT_NAMES:
        el = GT.eligible(seg, slot)
        before = GT.oracle_choice(seg, slot, el, drifted=False)
        after = GT.oracle_choice(seg, slot, el, drifted=True)
        changed += before != after
        values = sorted(GT.p_complete(seg, slot, a, drifted=True) for a in el)
        assert GT.p_complete(seg, slot, before, drifted=True) == values[0]  # now the worst
    assert changed == len(SEGMENT_NAMES)
    # the world changed for the learner only: static and random keep their rates on next_step
    stale = GT.expected_rate("stale_oracle", drifted=True, slot=slot)
    assert stale < GT.expected_rate("random", drifted=True, slot=slot)
    assert GT.expected_rate("oracle", drifted=True, slot=slot) == pytest.approx(
        GT.expected_rate("oracle", slot=slot)
    )
    if slot == "next_step":
        for p in ("static", "random"):
            assert GT.expected_rate(p, drifted=True) == pytest.approx(GT.expected_rate(p))


def test_users_and_responses_are_deterministic_by_seed():
    a, b, c = GroundTruth(3).users(200), GroundTruth(3).users(200), GroundTruth(4).users(200)
    assert a == b != c
    assert GroundTruth(3).user(150) == a[150]
    assert {u.segment for u in a} == set(SEGMENT_NAMES)

    def run(seed: int) -> list[tuple[bool, float]]:
        gt, rng = GroundTruth(seed), random.Random(seed)
        return [gt.simulate_response(u, "next_step", "goals", rng) for u in gt.users(300)]

    assert run(5) == run(5) != run(6)


def test_drift_starts_at_the_configured_user():
    gt = GroundTruth(seed=0, drift_at_user=100)
    assert not gt.drifted(gt.user(99)) and gt.drifted(gt.user(100)) and gt.drifted(5000)
    assert not GroundTruth().drifted(10**9)


def test_simulated_completions_follow_p_complete():
    gt, rng = GroundTruth(seed=8), random.Random(8)
    users = gt.users(20_000)
    for drifted in (False, True):
        hits = expected = 0.0
        seconds = []
        for u in users:
            done, secs = gt.simulate_response(u, "next_step", "integrations", rng, drifted)
            hits += done
            expected += gt.p_complete(u.segment, "next_step", "integrations", drifted)
            seconds.append(secs)
        assert abs(hits - expected) / len(users) < 0.015
        assert min(seconds) >= 0.1 and sorted(seconds)[len(seconds) // 2] > 5


def test_every_trait_reaches_the_feature_vector():
    schema = FeatureSchema.from_catalog(CATALOG)
    for u in GT.users(500):
        assert isinstance(u, SimUserV2)
        assert set(u.traits) == {"segment", "role", "companySize", "referral", "accountId"}
        x = schema.featurize(u.profile(), None, None, now_ms=0)
        for key in ("segment", "role", "companySize"):
            assert x[schema.bucket(f"t:{key}={str(u.traits[key]).lower()}")] == 1.0
        assert f"t:accountId={u.traits['accountId']}" not in schema.tokens(u.profile())


def test_every_slot_action_has_a_truth_and_bad_input_is_refused():
    for slot_name, by_segment in PREFERENCES.items():
        ids = set(CATALOG.slot(slot_name).action_ids)
        for ranked in by_segment.values():
            assert {a for a, _ in ranked} <= ids
            values = [p for _, p in ranked]
            assert values == sorted(values, reverse=True) and len(set(values)) == len(values)
    with pytest.raises(ValueError, match="no ground truth"):
        GT.p_complete("astronaut", "next_step", "goals")
    with pytest.raises(ValueError, match="policy must be one of"):
        GT.expected_rate("greedy")  # type: ignore[arg-type]
    assert GT.p_complete("developer", "welcome_content", "talk_to_sales") == 0.05
