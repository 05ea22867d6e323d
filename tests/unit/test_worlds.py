"""ray_app/sim/worlds.py: worlds the feature code has never seen, and the benchmark helpers that
value a run on them (bench/learning.py, bench/vw_baseline.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from bench.learning import Row, gain_curve, longest_treatment_below_control, reference_rows
from bench.vw_baseline import run_vw
from ray_app.sim import population
from ray_app.sim.live import identify_call
from ray_app.sim.v2 import GroundTruth
from ray_app.sim.worlds import DEFAULT_WORLD, WORLDS, Trait, World, world

ROOT = Path(__file__).resolve().parents[2]
NAMES = [name for name in WORLDS if name != "v2"]
SLOT = "next_step"


def words(w: World) -> list[str]:
    """A world's trait names and the categorical values its users send."""
    traits = (w.first, w.second, w.noise)
    return [t.name for t in traits] + [v for t in traits if not t.numeric for v in t.values]


def oracle(w: World, cell: str, drifted: bool = False) -> int:
    return w.oracle_choice(cell, SLOT, w.eligible(cell, SLOT), drifted)


def test_there_are_three_worlds_besides_v2_and_the_default_is_not_v2():
    assert len(NAMES) >= 3
    assert DEFAULT_WORLD in NAMES
    assert isinstance(world("v2"), GroundTruth)
    for name in NAMES:
        w = world(name)
        assert 12 <= len(w.cells) <= 30, (name, len(w.cells))
        assert math.isclose(sum(w.cells.values()), 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_users_are_deterministic_by_seed_and_index(name):
    a, b, c = world(name, seed=3), world(name, seed=3), world(name, seed=4)
    assert [a.user(i) for i in range(50)] == [b.user(i) for i in range(50)]
    assert [a.user(i).traits for i in range(50)] != [c.user(i).traits for i in range(50)]
    u = a.user(7)
    assert u.traits.keys() == set(a.trait_names)
    assert u.segment in a.cells
    # the world's preferences depend on its name, not on the seed
    for cell in a.cells:
        assert a.p_complete(cell, SLOT, "goals") == c.p_complete(cell, SLOT, "goals")


def test_no_trait_name_or_value_comes_from_the_simulator_or_the_product():
    """The feature code and the v1 population never name a world's traits or values (the
    product does not know its test worlds): not in the features' source at all, not as a string
    literal anywhere in ray_app outside the simulator, not among the population's constants."""
    features = "\n".join(p.read_text() for p in (ROOT / "ray_app" / "features").rglob("*.py"))
    product = "\n".join(
        p.read_text() for p in (ROOT / "ray_app").rglob("*.py") if "sim" not in p.parts
    )
    product += "\n".join(p.read_text() for p in (ROOT / "ray_app").rglob("*.yaml"))
    constants: set[str] = set(population.STEPS) | {"segment", "role", "companySize", "referral"}
    for seg in population.SEGMENTS:
        constants |= {seg.name, *seg.roles, *seg.company_sizes, *seg.referrals}
    for name in NAMES:
        for word in words(world(name)):
            bare = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])", re.IGNORECASE)
            quoted = re.compile(rf"[\"']{re.escape(word)}[\"']", re.IGNORECASE)
            assert not bare.search(features), (name, word, "ray_app/features")
            assert not quoted.search(product), (name, word, "a string literal in ray_app")
            assert word.lower() not in {c.lower() for c in constants}, (name, word)


@pytest.mark.parametrize("name", NAMES)
def test_the_best_step_depends_on_the_pair_of_traits(name):
    w = world(name)
    cells = [tuple(c.split("/")) for c in w.cells]
    best = {(a, b): oracle(w, f"{a}/{b}") for a, b in cells}
    # two cells sharing the first trait disagree, and two sharing the second
    assert any(best[a, b] != best[a, b2] for a, b in cells for a2, b2 in cells if a2 == a)
    assert any(best[a, b] != best[a2, b] for a, b in cells for a2, b2 in cells if b2 == b)
    # given one trait alone, the best step on average is not the cell's best in most cells
    el = w.eligible("", SLOT)
    for side in (0, 1):
        differs = 0
        for value in {c[side] for c in cells}:
            mine = {c: wt for c, wt in w.cells.items() if c.split("/")[side] == value}
            marginal = max(
                el, key=lambda a: sum(wt * w.p_complete(c, SLOT, a) for c, wt in mine.items())
            )
            differs += sum(1 for c in mine if oracle(w, c) != marginal)
        assert differs >= 0.75 * len(w.cells), (name, side, differs)


@pytest.mark.parametrize("name", NAMES)
def test_few_good_and_many_mediocre_steps(name):
    w = world(name)
    for cell in w.cells:
        ps = sorted((w.p_complete(cell, SLOT, a) for a in w.eligible(cell, SLOT)), reverse=True)
        assert 0.75 <= ps[0] <= 0.86 and 0.55 <= ps[1] <= 0.65, (cell, ps)
        assert all(0.30 <= p <= 0.45 for p in ps[2:]), (cell, ps)


@pytest.mark.parametrize("name", NAMES)
def test_static_beats_random_clearly_and_is_far_from_the_oracle(name):
    w = world(name)
    rate = {p: w.expected_rate(p) for p in ("random", "static", "oracle")}
    assert rate["static"] - rate["random"] >= 0.05, rate
    assert rate["oracle"] - rate["static"] >= 0.2, rate


@pytest.mark.parametrize("name", NAMES)
def test_abrupt_drift_moves_every_favourite_and_leaves_the_static_flow(name):
    w = world(name, seed=1, drift_at=100)
    assert not w.drifted(w.user(99)) and w.drifted(w.user(100)) and w.drifted(5_000)
    for cell in w.cells:
        assert oracle(w, cell) != oracle(w, cell, drifted=True), cell
    for p in ("static", "random"):
        assert w.expected_rate(p) == pytest.approx(w.expected_rate(p, drifted=True))
    assert w.expected_rate("stale_oracle", drifted=True) < w.expected_rate("static", drifted=True)
    assert not world(name, seed=1, drift_at=100, drift="none").drifted(5_000)


@pytest.mark.parametrize("name", NAMES)
def test_gradual_drift_ramps_the_drifted_share(name):
    w = world(name, seed=2, drift_at=1_000, drift="gradual", drift_span=2_000)

    def share(start: int) -> float:
        return sum(w.drifted(i) for i in range(start, start + 400)) / 400

    shares = [share(s) for s in (0, 1_000, 1_800, 2_600, 3_000)]
    assert shares[0] == 0.0 and shares[-1] == 1.0
    assert shares[1] < shares[2] < shares[3], shares
    assert shares[2] == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("name", NAMES)
def test_some_users_send_their_traits_in_context(name):
    w = world(name, seed=5)
    users = w.users(1_000)
    share = sum(u.traits_in_context for u in users) / len(users)
    assert 0.2 <= share <= 0.4
    for u in users[:50]:
        call = identify_call(u, "m", "2026-01-01T00:00:00.000Z")
        if u.traits_in_context:
            assert "traits" not in call and call["context"]["traits"] == u.traits
        else:
            assert call["traits"] == u.traits and "context" not in call
    assert not any(u.traits_in_context for u in world(name, context_share=0.0).users(200))


def test_a_numeric_trait_counts_by_its_decade():
    w = world("clinics", seed=1)
    numeric = [t for t in (w.first, w.second, w.noise) if t.numeric]
    assert numeric, "clinics has a numeric trait"
    t = numeric[0]
    for u in w.users(300):
        value = u.traits[t.name]
        assert isinstance(value, int)
        label = u.segment.split("/")[1]
        assert label == t.values[min(int(math.log10(value)), len(t.values) - 1)]


def test_a_numeric_trait_on_bounds_of_its_own():
    w = world("fleets", seed=3)
    t = w.second
    assert t.numeric and t.bounds is not None
    for u in w.users(300):
        value = u.traits[t.name]
        label = u.segment.split("/")[1]
        lo, hi = t.bounds[t.values.index(label)]
        assert isinstance(value, int) and lo <= value <= hi


def test_v2_wraps_the_original_simulator():
    gt = world("v2", seed=1, drift_at=50)
    assert gt.user(3) == GroundTruth(seed=1, drift_at_user=50).user(3)
    assert gt.drifted(60) and not world("v2", seed=1, drift_at=50, drift="none").drifted(60)
    with pytest.raises(ValueError, match="gradual"):
        world("v2", drift_at=10, drift="gradual")
    with pytest.raises(ValueError, match="unknown world"):
        world("nowhere")


# ----------------------------------------------------------------------- the benchmark side


def test_curve_and_guardrail_figure_from_expected_probabilities():
    rows = [Row(i, "treatment", 0.7 if i >= 1_000 else 0.5, 0.5, 0.9) for i in range(2_000)]
    rows += [Row(i, "control", 0.5, 0.5, 0.9) for i in range(2_000)]
    assert gain_curve(rows, "treatment") == [0.0, 0.5]
    assert gain_curve(rows, "control") == [0.0, 0.0]
    # the treatment arm at 0.4 for users 3,000-4,499 against a control at 0.5
    rows = [Row(i, "treatment", 0.4 if 3_000 <= i < 4_500 else 0.6, 0.5, 0.9) for i in range(8_000)]
    rows += [Row(i, "control", 0.5, 0.5, 0.9) for i in range(0, 8_000, 10)]
    longest = longest_treatment_below_control(rows, after=2_000, window=1_000)
    # below from the 501st low user on (the rolling mean under 0.5) until the window holds 500
    # low users or fewer again, 500 users after the low stretch: 1,500 users
    assert 1_498 <= longest <= 1_502, longest


def test_vw_learns_above_random_on_a_one_trait_world():
    """The VW baseline, a few hundred users on a world where one trait decides."""
    w = World(
        "vw-smoke",
        Trait("tier", ("bronze", "silver", "gold", "platinum")),
        Trait("flat", ("any",)),
        Trait("shade", ("red", "blue")),
        seed=1,
    )
    outcomes = run_vw(w, 800, seed=1, interactions="-q UA")
    rows = reference_rows(w, outcomes)
    late = [r for r in rows if r.index >= 400]
    share = sum(r.p - r.static for r in late) / sum(r.oracle - r.static for r in late)
    random_share = (w.expected_rate("random") - w.expected_rate("static")) / (
        w.expected_rate("oracle") - w.expected_rate("static")
    )
    assert share > random_share + 0.5, (share, random_share)


def test_the_demo_offers_every_world():
    from ray_app.cli import DEMO_WORLDS
    from ray_app.sim.worlds import WORLDS

    assert set(DEMO_WORLDS) == set(WORLDS)
