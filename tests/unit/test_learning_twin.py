"""bench/learning_twin.py: the in-process twin of the learning loop learns a world whose trait
names and values the feature code has never seen, with the shipped settings."""

from __future__ import annotations

import argparse

import pytest

from bench.learning_twin import one_seed, parser


def twin_args(**over: object) -> argparse.Namespace:
    args = vars(parser().parse_args([]))  # the shipped settings: no learner flag is given
    args.update(users=4_000, drift="none", window=1_000, no_vw=True, world="teams")
    args.update(over)
    return argparse.Namespace(**args)


@pytest.mark.slow
def test_the_twin_learns_a_two_trait_world_it_has_never_seen():
    run = one_seed(twin_args(), seed=1)
    curve = {c["users"]: c for c in run["curve"]}
    # users 3,000-4,000: the model's picks capture a good share of the oracle's gain over the
    # static flow (measured 0.60 with hash seed 1; VW with hand-written interactions: 0.69)
    assert curve[4000]["treatment"] > 0.3, run["curve"]
    assert curve[4000]["treatment"] > curve[1000]["treatment"] + 0.3
    assert run["learner_counters"]["control_rollbacks"] == 0  # it never fell below control
    # the shipped reward-rate detector runs on the same rewards and stays quiet without a drift
    # (with drift_restart a false alarm would throw away what was learned)
    assert run["drift_alerts_at_users"] == [] and run["learner_counters"]["drifts"] == 0


@pytest.mark.slow
def test_a_second_run_starts_from_the_first_runs_model_file(tmp_path):
    """--save-model / --start-model: the second run's learner and replicas start from the model
    file by the learner service's own start-up, as a restarted `onramp up` does."""
    prefix = str(tmp_path / "m")
    first = one_seed(twin_args(users=3_000, save_model=prefix), seed=1)
    saved = tmp_path / "m-1.onramp"
    assert saved.exists()
    second = one_seed(twin_args(users=1_500, start_model=prefix), seed=1)
    assert second["learner_counters"]["refused_at_start"] == 0
    assert second["learner_counters"]["foreign_weights"] == 0  # the same world: it settles
    # the replicas served the file from the first user on: already well above the static flow
    assert second["curve"][0]["treatment"] > first["curve"][0]["treatment"] + 0.2


def test_each_run_hashes_with_its_own_seed_unless_told():
    from bench.learning_twin import twin_catalog
    from ray_app.catalog import load_catalog
    from ray_app.features import FeatureSchema

    assert parser().parse_args([]).hash_seed == "run"
    assert parser().parse_args(["--hash-seed", "0"]).hash_seed == 0
    for bad in ("-1", "4294967296", "seed"):
        with pytest.raises(SystemExit):
            parser().parse_args(["--hash-seed", bad])
    shipped = FeatureSchema.from_catalog(load_catalog())
    assert FeatureSchema.from_catalog(twin_catalog(0)).hash == shipped.hash
    seeded = FeatureSchema.from_catalog(twin_catalog(2))
    assert seeded.hashing.hash_seed == 2 and seeded.hash != shipped.hash
    assert seeded.bucket("t:crewSize=solo") != shipped.bucket("t:crewSize=solo")
    # --threshold-weight: the weight of a number's thresholds (1, the shipped one, changes nothing)
    assert parser().parse_args([]).threshold_weight is None
    assert parser().parse_args(["--threshold-weight", "0.5"]).threshold_weight == 0.5
    weighed = FeatureSchema.from_catalog(twin_catalog(2, 0.5))
    assert (weighed.hashing.threshold_weight, weighed.hashing.hash_seed) == (0.5, 2)
    assert twin_catalog(0, 1.0).digest == load_catalog().digest
    # --cross-weight: the weight of a cross (2, the shipped one, changes nothing)
    assert parser().parse_args([]).cross_weight is None
    assert parser().parse_args(["--cross-weight", "1"]).cross_weight == 1.0
    flat = FeatureSchema.from_catalog(twin_catalog(2, None, 1))
    assert (flat.hashing.cross_weight, flat.hashing.hash_seed) == (1.0, 2)
    assert twin_catalog(0, None, 2.0).digest == load_catalog().digest


def test_the_mean_curve_says_how_sure_its_treatment_figure_is():
    from bench.learning_twin import _mean_curve

    runs = [{"curve": [{"users": 1000, "treatment": t, "vw_cubic": None}]} for t in (0.4, 0.6, 0.8)]
    [row] = _mean_curve(runs)
    assert row["treatment"] == 0.6 and row["vw_cubic"] is None
    assert row["treatment_se"] == round(0.2 / 3**0.5, 4)  # stdev 0.2 over 3 runs
    assert _mean_curve(runs[:1])[0]["treatment_se"] is None  # one run: no error to give


def test_set_overrides_any_learner_field_and_refuses_unknown_ones():
    from bench.learning_twin import learner_config, learner_sets

    over = learner_sets(["publish_interval_s=0.5", "optimizer=sgd"])
    config = learner_config(over)
    assert (config.publish_interval_s, config.optimizer) == (0.5, "sgd")
    with pytest.raises(SystemExit):
        learner_sets(["no_such_field=1"])


def test_cell_diagnostics_find_the_cell_whose_favourite_the_model_never_serves():
    from bench.learning_twin import cell_diagnostics
    from ray_app.sim.live import Outcome
    from ray_app.sim.worlds import world

    w = world("teams", seed=1)
    slot = w.catalog.slot("next_step")
    outcomes = []
    for i in range(400):
        user = w.user(i)
        el = w.eligible(user, "next_step")
        best = slot.actions[w.oracle_choice(user.segment, "next_step", el)].id
        # the model's top action is the oracle's everywhere but in one cell, where it serves
        # the static flow's step; one decision in ten explores
        wrong = user.segment == "illustrator/solo"
        greedy = slot.actions[w.static_choice("next_step", el)].id if wrong else best
        action = "goals" if i % 10 == 0 and greedy != "goals" else greedy
        # the model rates its top action 0.6 and every other one 0.2
        rated = {slot.actions[a].id: 0.6 if slot.actions[a].id == greedy else 0.2 for a in el}
        outcomes.append(
            Outcome(i, user.segment, "treatment", action, True, False, 1, False, 0.0,
                    greedy=greedy, rated=rated)
        )  # fmt: skip
    d = cell_diagnostics(w, outcomes, 0, 400)
    assert d["users"] == 400
    assert 0.05 < d["explored"] < 0.15
    worst = d["worst_cells"][0]
    assert worst["cell"] == "illustrator/solo" and worst["greedy_is_oracle"] == 0.0
    assert d["greedy_is_oracle"] < 1.0 and d["lost_completions"] > worst["lost"] > 0
    # the oracle's action there: its true rate, the model's rating of it, how often it was served
    el = w.eligible("illustrator/solo", "next_step")
    best = slot.actions[w.oracle_choice("illustrator/solo", "next_step", el)].id
    static = slot.actions[w.static_choice("next_step", el)].id
    assert worst["best"] == best != static == worst["top"]
    assert worst["best_true"] == round(w.p_complete("illustrator/solo", "next_step", best), 3)
    assert worst["best_rated"] == 0.2 and worst["top_rated"] == 0.6
    served = [o.action for o in outcomes if o.segment == "illustrator/solo"]
    assert worst["best_served"] == round(served.count(best) / len(served), 2)
    assert worst["top_true"] == round(w.p_complete("illustrator/solo", "next_step", static), 3)
