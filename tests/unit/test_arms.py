"""Arm assignment when a profile cannot be read in time: what a replica remembers of the users
whose arm their id alone does not tell."""

from __future__ import annotations

import pytest

import ray_app.decide.arms as arms_module
from ray_app.config import DecideSettings
from ray_app.decide.arms import Arms

OLD_SPLIT_MS = 1_767_225_600_000  # 2026-01-01, the old split's start
NEW_SPLIT_MS = 1_769_904_000_000  # 2026-02-01, the current split's


def _arms() -> Arms:
    return Arms(
        DecideSettings(
            arms={"control": 1.0, "treatment": 0.0},
            earlier_splits=[
                {"since": "2026-01-01T00:00:00Z", "arms": {"control": 0.0, "treatment": 1.0}}
            ],
            arms_since="2026-02-01T00:00:00Z",
        )
    )


def test_a_full_memory_forgets_the_least_recently_read_user_not_everyone(monkeypatch):
    """The memory was emptied whole when it filled: every user first seen under an earlier
    split, or merged, then switched arms at the next missed deadline."""
    monkeypatch.setattr(arms_module, "_REMEMBERED", 4)
    arms = _arms()
    for u in range(5):  # first seen under the old split: treatment, where the current is control
        assert arms.assign(f"u{u}", {"firstSeen": OLD_SPLIT_MS + u}) == "treatment"
    assert arms.assign("u1", {"firstSeen": OLD_SPLIT_MS + 1}) == "treatment"  # read again
    arms.assign("u5", {"firstSeen": OLD_SPLIT_MS + 5})  # u0 and u2 were read least recently
    unread = {u: arms.assign_unread(f"u{u}") for u in range(6)}
    assert unread == {0: "control", 1: "treatment", 2: "control", 3: "treatment",
                      4: "treatment", 5: "treatment"}  # fmt: skip


@pytest.mark.parametrize(
    "profile",
    [{"firstSeen": NEW_SPLIT_MS + 1}, {"firstSeen": NEW_SPLIT_MS, "assignmentKey": "u9"}, None],
)
def test_users_whose_id_tells_their_arm_take_no_memory(profile):
    arms = _arms()
    read = arms.assign("u9", profile)
    assert arms._basis == {} and arms.assign_unread("u9") == read


def test_a_merged_user_keeps_the_first_ids_arm_when_unread():
    arms = Arms(DecideSettings())
    read = arms.assign("user-7", {"assignmentKey": "anon-7", "firstSeen": 1})
    assert arms.assign_unread("user-7") == read == arms.assign("anon-7", None)
    assert set(arms._basis) == {"user-7"}
