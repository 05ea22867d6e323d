"""Experiments: validation, sticky deterministic assignment, split, holdout, nested buckets."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.experiments import HOLDOUT, Experiment, ExperimentError

USERS = [f"user-{i}" for i in range(20_000)]


def exp(arms: dict[str, float], holdout: float = 0.0, salt: str = "s1") -> Experiment:
    return Experiment(name="onboarding", salt=salt, arms=arms, holdout=holdout)


def assign_all(e: Experiment, users: list[str] = USERS) -> dict[str, str]:
    return {u: e.assign(u) for u in users}


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"arms": {"treatment": 1.0}}, "experiment.arms", "must contain 'control'"),
        ({"arms": {"control": 1.0, "treatment": -0.1}}, "experiment.arms", "weight must be a finite number >= 0"),
        ({"arms": {"control": 1.0, "treatment": float("nan")}}, "experiment.arms", "finite"),
        ({"arms": {"control": 0.0}}, "experiment.arms", "sum to more than 0"),
        ({"arms": {"control": 1.0, "Treatment-B": 1.0}}, "experiment.arms", "must match [a-z0-9_]+"),
        ({"arms": {"control": 1.0, "holdout": 0.1}}, "experiment.arms", "'holdout' is reserved"),
        ({"holdout": 1.0}, "experiment.holdout", "less than 1"),
        ({"holdout": -0.1}, "experiment.holdout", "greater than or equal to 0"),
        ({"colour": "red"}, "experiment.colour", "Extra inputs are not permitted"),
        ({"salt": ""}, "experiment.salt", "at least 1 character"),
    ],
)  # fmt: skip
def test_invalid_experiments(data, field, reason):
    with pytest.raises(ExperimentError) as info:
        Experiment.from_dict({"name": "e", "salt": "s", **data})
    assert info.value.field == field and reason in info.value.reason, info.value
    back = pickle.loads(pickle.dumps(info.value))
    assert (back.field, str(back)) == (field, str(info.value))


def test_defaults_and_pickle():
    e = Experiment.from_dict({"name": "e", "salt": "s", "holdout": 0.1})
    assert e.arms == {"control": 0.5, "treatment": 0.5}
    assert e.arm_names == ("control", "treatment", HOLDOUT)
    assert e.shares() == pytest.approx({"control": 0.45, "treatment": 0.45, HOLDOUT: 0.1})
    assert pickle.loads(pickle.dumps(e)) == e
    assert Experiment.serves_control("holdout") and not Experiment.learns_from("holdout")
    assert Experiment.learns_from("control") and not Experiment.serves_control("treatment")


# ---------------------------------------------------------------------------------- assignment


def test_assignment_is_stable_and_depends_on_the_salt_only():
    e = exp({"control": 0.5, "treatment": 0.5})
    first = assign_all(e, USERS[:2000])
    assert first == assign_all(exp({"control": 0.5, "treatment": 0.5}), USERS[:2000])
    assert first == assign_all(Experiment(name="renamed", salt="s1", arms=e.arms), USERS[:2000])
    other_salt = assign_all(exp(e.arms, salt="s2"), USERS[:2000])
    changed = sum(first[u] != other_salt[u] for u in first)
    assert 800 < changed < 1200  # a new salt reshuffles about half


@pytest.mark.parametrize(
    ("arms", "holdout"),
    [
        ({"control": 0.5, "treatment": 0.5}, 0.0),
        ({"control": 0.2, "treatment": 0.3, "treatment_b": 0.5}, 0.0),
        ({"control": 1, "treatment": 3}, 0.1),
        ({"control": 0.5, "treatment": 0.5, "treatment_b": 0.0}, 0.05),
    ],
)
def test_split_is_respected(arms, holdout):
    e = exp(arms, holdout)
    counts = Counter(assign_all(e).values())
    for arm, share in e.shares().items():
        assert abs(counts[arm] / len(USERS) - share) < 0.015, (arm, counts, e.shares())
    assert counts.get("treatment_b", 0) == 0 or arms.get("treatment_b", 0) > 0


def test_changing_the_split_never_moves_users_in_or_out_of_holdout():
    splits = [
        {"control": 0.5, "treatment": 0.5},
        {"control": 0.1, "treatment": 0.9},
        {"control": 0.3, "treatment": 0.3, "treatment_b": 0.4},
    ]
    held = [{u for u, a in assign_all(exp(s, 0.1)).items() if a == HOLDOUT} for s in splits]
    assert held[0] == held[1] == held[2] and 1700 < len(held[0]) < 2300
    bigger = {u for u, a in assign_all(exp(splits[0], 0.2)).items() if a == HOLDOUT}
    assert held[0] < bigger  # a larger holdout only adds users to it


def test_previous_arm_is_sticky_unless_reassigned():
    before = exp({"control": 0.5, "treatment": 0.5})
    after = exp({"control": 0.1, "treatment": 0.9})
    arms = assign_all(before, USERS[:3000])
    kept = {u: after.assign(u, previous=a) for u, a in arms.items()}
    assert kept == arms
    fresh = {u: after.assign(u, previous=a, reassign=True) for u, a in arms.items()}
    assert fresh == assign_all(after, USERS[:3000]) and fresh != arms
    stopped = exp({"control": 1.0, "treatment": 0.0})  # weight 0: no new users, old ones stay
    assert all(stopped.assign(u, previous="treatment") == "treatment" for u in USERS[:100])
    assert all(stopped.assign(u) == "control" for u in USERS[:100])
    removed = exp({"control": 0.5, "treatment_b": 0.5})  # arm gone: its users are drawn again
    assert {removed.assign(u, previous="treatment") for u in USERS[:200]} == {
        "control",
        "treatment_b",
    }
    with_holdout = exp(before.arms, 0.1)
    assert {with_holdout.assign(u, previous="treatment") for u in USERS[:500]} == {
        "treatment",
        HOLDOUT,
    }


def test_raising_a_weight_only_moves_users_into_that_arm():
    before = assign_all(exp({"control": 0.4, "treatment": 0.3, "treatment_b": 0.3}))
    after = assign_all(exp({"control": 0.4, "treatment": 0.6, "treatment_b": 0.3}))
    moves = Counter((before[u], after[u]) for u in USERS if before[u] != after[u])
    assert set(moves) == {("control", "treatment"), ("treatment_b", "treatment")}
    assert sum(moves.values()) > 1000
    lower = assign_all(exp({"control": 0.4, "treatment": 0.1, "treatment_b": 0.3}))
    assert {(before[u], lower[u])[0] for u in USERS if before[u] != lower[u]} == {"treatment"}


def test_adding_an_arm_only_takes_users_into_it():
    before = assign_all(exp({"control": 0.5, "treatment": 0.5}))
    after = assign_all(exp({"control": 0.5, "treatment": 0.5, "treatment_b": 0.25}))
    assert {after[u] for u in USERS if before[u] != after[u]} == {"treatment_b"}


@settings(max_examples=150, deadline=None)
@given(
    st.text(min_size=1, max_size=30),
    st.dictionaries(
        st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True).filter(lambda a: a != HOLDOUT),
        st.floats(min_value=0, max_value=10),
        max_size=3,
    ),
    st.floats(min_value=0, max_value=0.99),
)
def test_any_user_gets_a_valid_arm_deterministically(user, extra, holdout):
    e = exp({"control": 1.0, **{k: v for k, v in extra.items() if k != "control"}}, holdout)
    arm = e.assign(user)
    assert arm in e.arm_names and arm == e.assign(user)
    assert arm == HOLDOUT or e.arms[arm] > 0
