"""The onboarding catalog: validation with exact field paths, eligibility, control flow."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from ray_app.catalog import (
    Catalog,
    CatalogError,
    IneligibleCandidates,
    UnknownAction,
    UnknownSlot,
    load_catalog,
)
from ray_app.sim.population import STEPS
from ray_app.state.event import Event
from ray_app.state.profile import Profile, apply

CATALOG = load_catalog()
BASE = CATALOG.as_dict()


def ids(slot: str, indices: list[int]) -> list[str]:
    return [CATALOG.slot(slot).actions[i].id for i in indices]


def mutated(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    change(d)
    return d


def action(d: dict[str, Any], slot: str, i: int) -> dict[str, Any]:
    return d["slots"][slot]["actions"][i]


# ------------------------------------------------------------------------------ the default file


def test_default_catalog_matches_the_simulated_flow():
    assert CATALOG.known_steps == STEPS
    assert CATALOG.slot_names == ("next_step", "welcome_content", "checklist_order")
    assert CATALOG.slot("next_step").action_ids == STEPS
    assert CATALOG.source.endswith("default.yaml")
    assert [s.index for s in CATALOG.slots.values()] == [0, 1, 2]


def test_digest_is_canonical_and_changes_with_content(tmp_path):
    assert load_catalog().digest == CATALOG.digest and len(CATALOG.digest) == 64
    reordered = {k: BASE[k] for k in reversed(list(BASE))}
    assert Catalog.from_dict(reordered, source="other").digest == CATALOG.digest
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\nsteps: [a, b]\nslots:\n  s: {actions: [x, y], default: [y]}\n")
    compact = load_catalog(path)
    assert compact.source == str(path)
    spelled = Catalog.from_dict(
        {
            "version": 1,
            "steps": ["a", "b"],
            "slots": {
                "s": {"actions": [{"id": "x"}, {"id": "y", "requires": []}], "default": ["y"]}
            },
        }
    )
    assert spelled.digest == compact.digest and spelled == compact
    changed = mutated(lambda d: action(d, "checklist_order", 3)["requires"].append("role"))
    assert Catalog.from_dict(changed).digest != CATALOG.digest


def test_as_dict_round_trips():
    assert Catalog.from_dict(CATALOG.as_dict()).as_dict() == CATALOG.as_dict()


# -------------------------------------------------------------------------------------- garbage

GARBAGE: list[tuple[str, Callable[[dict[str, Any]], Any], str, str]] = [
    (
        "unknown step in requires",
        lambda d: action(d, "next_step", 2)["requires"].__setitem__(0, "welcom"),
        "slots.next_step.actions[2].requires[0]",
        "unknown step 'welcom' (steps: welcome, role,",
    ),
    (
        "duplicate action id",
        lambda d: action(d, "next_step", 3).__setitem__("id", "role"),
        "slots.next_step.actions[3].id",
        "duplicate action id 'role' (also at slots.next_step.actions[1])",
    ),
    (
        "default names an unknown action",
        lambda d: d["slots"]["welcome_content"]["default"].append("nope"),
        "slots.welcome_content.default[4]",
        "unknown action 'nope' (actions of slot 'welcome_content': video_tour,",
    ),
    (
        "duplicate in default",
        lambda d: d["slots"]["next_step"]["default"].append("role"),
        "slots.next_step.default[7]",
        "duplicate action 'role'",
    ),
    ("no slots", lambda d: d.__setitem__("slots", {}), "slots", "at least one slot required"),
    (
        "empty slot",
        lambda d: d["slots"]["welcome_content"].__setitem__("actions", []),
        "slots.welcome_content.actions",
        "at least one action required",
    ),
    (
        "empty default",
        lambda d: d["slots"]["welcome_content"].__setitem__("default", []),
        "slots.welcome_content.default",
        "at least one action required",
    ),
    (
        "unknown key in an action",
        lambda d: action(d, "next_step", 1).__setitem__("colour", "red"),
        "slots.next_step.actions[1].colour",
        "unknown key; expected one of: id, requires, segments, unless_done",
    ),
    (
        "unknown key in a slot",
        lambda d: d["slots"]["next_step"].__setitem__("weights", {}),
        "slots.next_step.weights",
        "unknown key; expected one of: description, kind, actions, default",
    ),
    (
        "unknown top-level key",
        lambda d: d.__setitem__("extra", 1),
        "extra",
        "unknown key; expected one of: version, steps, segments, negative_events, features, slots",
    ),
    (
        "string where a list belongs",
        lambda d: action(d, "next_step", 1).__setitem__("requires", "welcome"),
        "slots.next_step.actions[1].requires",
        "expected a list, got a string",
    ),
    (
        "number where a string belongs",
        lambda d: action(d, "next_step", 1)["requires"].__setitem__(0, 5),
        "slots.next_step.actions[1].requires[0]",
        "expected a string, got an integer",
    ),
    (
        "action neither id nor mapping",
        lambda d: d["slots"]["next_step"]["actions"].__setitem__(1, 7),
        "slots.next_step.actions[1]",
        "expected an action id or a mapping, got an integer",
    ),
    ("wrong version", lambda d: d.__setitem__("version", 2), "version", "expected 1, got 2"),
    ("version as text", lambda d: d.__setitem__("version", "1"), "version", "got '1'"),
    ("missing steps", lambda d: d.pop("steps"), "steps", "required"),
    (
        "missing default",
        lambda d: d["slots"]["next_step"].pop("default"),
        "slots.next_step.default",
        "required",
    ),
    (
        "unknown slot kind",
        lambda d: d["slots"]["next_step"].__setitem__("kind", "stepz"),
        "slots.next_step.kind",
        "expected 'step' or 'content', got 'stepz'",
    ),
    (
        "unknown segment",
        lambda d: action(d, "welcome_content", 3).__setitem__("segments", ["vip"]),
        "slots.welcome_content.actions[3].segments[0]",
        "unknown segment 'vip'",
    ),
    (
        "empty segments",
        lambda d: action(d, "welcome_content", 3).__setitem__("segments", []),
        "slots.welcome_content.actions[3].segments",
        "empty: omit the key",
    ),
    (
        "unknown unless_done step",
        lambda d: action(d, "checklist_order", 0).__setitem__("unless_done", "integration"),
        "slots.checklist_order.actions[0].unless_done",
        "unknown step 'integration'",
    ),
    (
        "action of a step slot that is not a step",
        lambda d: d["slots"]["next_step"]["actions"].append({"id": "tour"}),
        "slots.next_step.actions[7].id",
        "'tour' is not a known step",
    ),
    (
        "duplicate step",
        lambda d: d["steps"].append("role"),
        "steps[7]",
        "duplicate step id 'role' (also at steps[1])",
    ),
    (
        "bad step id",
        lambda d: d["steps"].__setitem__(0, "Welcome Screen"),
        "steps[0]",
        "must match [a-z0-9_]+",
    ),
    (
        "never eligible",
        lambda d: action(d, "next_step", 1).__setitem__("requires", ["role"]),
        "slots.next_step.actions[1].requires[0]",
        "it could never be chosen",
    ),
    (
        "bad slot name",
        lambda d: d["slots"].__setitem__("Bad-Slot", d["slots"]["checklist_order"]),
        "slots.Bad-Slot",
        "must match [a-z0-9_]+",
    ),
]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [g[1:] for g in GARBAGE],
    ids=[g[0] for g in GARBAGE],
)
def test_garbage_is_refused_with_the_field_path(change, field, reason):
    with pytest.raises(CatalogError) as info:
        Catalog.from_dict(mutated(change), source="test.yaml")
    err = info.value
    assert err.field == field
    assert reason in err.reason, err.reason
    assert str(err).startswith(f"test.yaml: {field}: ")
    assert err.http_status == 400
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.source, again.field, again.reason) == (
        CatalogError,
        "test.yaml",
        field,
        err.reason,
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("version: 1\nsteps: [a, b\nslots: {}\n", "YAML syntax error at line 3, column 6"),
        (
            "version: 1\nversion: 1\n",
            "YAML syntax error at line 2, column 1: duplicate key 'version'",
        ),
        ("", "expected a mapping at the top level, got null (empty file?)"),
        ("- a\n- b\n", "expected a mapping at the top level, got a list"),
        ("version: 1\n\tsteps: [a]\n", "YAML syntax error at line 2"),
    ],
)
def test_yaml_errors(text, reason, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert (info.value.source, info.value.field) == (str(path), "")
    assert info.value.reason.startswith(reason), info.value.reason


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CatalogError, match="no such file"):
        load_catalog(tmp_path / "nope.yaml")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "bin.yaml")


def test_only_the_first_of_several_errors_is_detailed_and_the_rest_counted():
    d = mutated(lambda d: (d.pop("steps"), d.__setitem__("extra", 1)))
    with pytest.raises(CatalogError, match=r"required \(and 1 more error\)"):
        Catalog.from_dict(d)


# ---------------------------------------------------------------------------------- eligibility


def test_next_step_follows_prerequisites_and_completion():
    assert ids("next_step", CATALOG.eligible("next_step", None)) == ["welcome"]
    assert ids("next_step", CATALOG.eligible("next_step", {"stepsCompleted": ["welcome"]})) == list(
        STEPS[1:]
    )
    done = {"stepsCompleted": list(STEPS)}
    assert CATALOG.eligible("next_step", done) == []


def test_unless_done_points_at_another_step():
    prof = {"stepsCompleted": ["welcome", "integrations", "first_project"]}
    assert ids("checklist_order", CATALOG.eligible("checklist_order", prof)) == [
        "invite_team",
        "import_data",
        "explore_templates",
    ]
    with pytest.raises(IneligibleCandidates) as info:
        CATALOG.eligible("checklist_order", prof, candidates=["connect_integration"])
    assert info.value.reasons == {"connect_integration": "integrations already completed"}


@pytest.mark.parametrize(
    ("profile", "enrichment", "sales"),
    [
        (None, None, False),
        ({"traits": {"segment": "developer"}}, {"plan": "free"}, False),
        ({"traits": {"segment": "enterprise_admin"}}, None, True),
        ({"traits": {}}, {"found": True, "plan": "enterprise"}, True),
        (None, {"segment": "smb_manager"}, True),
        ({"traits": {"segment": 42}}, {"plan": None}, False),
    ],
)
def test_segments_come_from_traits_and_crm(profile, enrichment, sales):
    got = ids("welcome_content", CATALOG.eligible("welcome_content", profile, enrichment))
    assert ("talk_to_sales" in got) is sales
    assert got[:3] == ["video_tour", "checklist_intro", "template_gallery"]


def test_candidates_are_checked_and_reasons_given():
    prof = {"stepsCompleted": ["welcome", "role"]}
    got = CATALOG.eligible("next_step", prof, candidates=["goals", "team_size", "goals"])
    assert ids("next_step", got) == ["team_size", "goals"]  # catalog order, repeats ignored
    with pytest.raises(IneligibleCandidates) as info:
        CATALOG.eligible("next_step", prof, candidates=["goals", "role", "welcome"])
    err = info.value
    assert err.reasons == {"role": "already completed", "welcome": "already completed"}
    assert err.field == "candidates[1]" and err.http_status == 422
    assert "role: already completed; welcome: already completed" in str(err)
    with pytest.raises(UnknownAction) as unknown:
        CATALOG.eligible("next_step", prof, candidates=["goals", "tour"])
    assert (unknown.value.field, unknown.value.action, unknown.value.index) == (
        "candidates[1]",
        "tour",
        1,
    )
    assert "unknown action 'tour' in slot 'next_step'; actions: welcome, role" in str(unknown.value)
    with pytest.raises(UnknownAction):
        CATALOG.eligible("next_step", prof, candidates="goals")  # type: ignore[arg-type]
    with pytest.raises(UnknownAction):
        CATALOG.eligible("next_step", prof, candidates=[3])  # type: ignore[list-item]


def test_requirement_reasons_name_the_missing_steps():
    cat = Catalog.from_dict(
        {
            "version": 1,
            "steps": ["welcome", "goals", "integrations"],
            "slots": {
                "next_step": {
                    "kind": "step",
                    "actions": [
                        "welcome",
                        {"id": "goals", "requires": ["welcome"]},
                        {"id": "integrations", "requires": ["welcome", "goals"]},
                    ],
                    "default": ["welcome", "goals", "integrations"],
                }
            },
        }
    )
    with pytest.raises(IneligibleCandidates) as info:
        cat.eligible("next_step", {"stepsCompleted": ["welcome"]}, candidates=["integrations"])
    assert (
        str(info.value)
        == "ineligible candidates for slot 'next_step': integrations: requires goals"
    )
    with pytest.raises(IneligibleCandidates, match="integrations: requires welcome, goals"):
        cat.eligible("next_step", None, candidates=["integrations"])


def test_segment_reason():
    with pytest.raises(IneligibleCandidates) as info:
        CATALOG.eligible(
            "welcome_content", {"traits": {"segment": "developer"}}, candidates=["talk_to_sales"]
        )
    # the user's own segments are not named: the public decide key would read another user's
    # CRM plan and segment in the refusal
    assert info.value.reasons["talk_to_sales"] == (
        "only for segments enterprise_admin, smb_manager, team, enterprise"
    )
    assert "developer" not in str(info.value)


def test_unknown_slot_lists_the_known_ones():
    with pytest.raises(UnknownSlot) as info:
        CATALOG.eligible("nxt_step", None)
    assert info.value.field == "slot" and info.value.known == CATALOG.slot_names
    assert str(info.value) == (
        "unknown slot 'nxt_step'; known slots: next_step, welcome_content, checklist_order"
    )
    with pytest.raises(UnknownSlot):
        CATALOG.slot(["not", "hashable"])  # type: ignore[arg-type]


def test_odd_profiles_do_not_crash():
    assert ids("next_step", CATALOG.eligible("next_step", {"stepsCompleted": "welcome"})) == [
        "welcome"
    ]
    assert ids("next_step", CATALOG.eligible("next_step", "garbage")) == ["welcome"]  # type: ignore[arg-type]
    derived = {"steps": {"welcome": {"completions": 2}, "role": {"completions": 0}}}
    assert "welcome" not in ids("next_step", CATALOG.eligible("next_step", derived))
    assert CATALOG.eligible("next_step", {"stepsCompleted": [None, 3, "welcome"]})[0] == 1


def test_eligibility_of_a_real_profile():
    p = Profile("u1")
    for i, (name, step) in enumerate(
        [("Step Viewed", "welcome"), ("Step Completed", "welcome"), ("Step Completed", "role")]
    ):
        apply(p, Event(f"m{i}", "u1", "track", name, 1000 * i, 1000 * i, step_id=step))
    got = ids("next_step", CATALOG.eligible("next_step", p.as_dict()))
    assert got == ["team_size", "goals", "integrations", "invite_teammates", "first_project"]


# --------------------------------------------------------------------------------------- control


def test_control_choice_is_the_first_eligible_in_default_order():
    wc = CATALOG.slot("welcome_content")
    all_wc = list(range(wc.size))
    assert wc.actions[CATALOG.control_choice("welcome_content", all_wc)].id == "checklist_intro"
    assert wc.actions[CATALOG.control_choice("welcome_content", [0, 2])].id == "video_tour"
    co = CATALOG.slot("checklist_order")
    assert [co.actions[i].id for i in co.control_order] == list(co.default)
    with pytest.raises(ValueError, match="no eligible action"):
        CATALOG.control_choice("welcome_content", [])


def test_actions_missing_from_default_come_after_it_in_catalog_order():
    cat = Catalog.from_dict(
        {
            "version": 1,
            "steps": ["a"],
            "slots": {"s": {"actions": ["x", "y", "z"], "default": ["z"]}},
        }
    )
    assert cat.slot("s").control_order == (2, 0, 1)
    assert cat.control_choice("s", [0, 1]) == 0


# --------------------------------------------------------------------------------------- pickles


def test_catalog_and_errors_survive_pickle():
    again = pickle.loads(pickle.dumps(CATALOG))
    assert again == CATALOG and again.digest == CATALOG.digest
    prof = {"stepsCompleted": ["welcome"]}
    assert again.eligible("next_step", prof) == CATALOG.eligible("next_step", prof)
    errors = [
        UnknownSlot("x", ("a", "b")),
        UnknownAction("s", "x", 2, ("a",)),
        IneligibleCandidates("s", {"a": "already completed"}, {"a": 0}),
    ]
    for err in errors:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert back.field == err.field and back.context == err.context


def test_negative_events_and_features_sections():
    from ray_app.catalog import Catalog, CatalogError
    from ray_app.features import FeatureSchema

    base = load_catalog().as_dict()
    c = Catalog.from_dict(
        {**base, "negative_events": ["Step Abandoned", "Tour Skipped"],
         "features": {"buckets": 128, "exclude": ["plan"]}}
    )  # fmt: skip
    assert c.negative_events == ("Step Abandoned", "Tour Skipped")
    assert c.digest != load_catalog().digest and Catalog.from_dict(c.as_dict()) == c
    schema = FeatureSchema.from_catalog(c)
    assert schema.hashing.buckets == 128 and schema.tokens({"traits": {"plan": "pro"}}) == []
    with pytest.raises(CatalogError, match="positive outcome"):
        Catalog.from_dict({**base, "negative_events": ["Step Completed"]})
    with pytest.raises(CatalogError, match=r"features: features.buckets must be an integer"):
        Catalog.from_dict({**base, "features": {"buckets": 3}})
    with pytest.raises(CatalogError, match="unknown key"):
        Catalog.from_dict({**base, "features": {"bucket": 3}})
    # a hash seed is part of the catalog and the schema; seed 0 leaves both as they were
    seeded = Catalog.from_dict({**base, "features": {"hash_seed": 7}})
    assert seeded.features is not None and seeded.features["hash_seed"] == 7
    assert FeatureSchema.from_catalog(seeded).hashing.hash_seed == 7
    plain = Catalog.from_dict({**base, "features": {"buckets": 512}})
    same = Catalog.from_dict({**base, "features": {"buckets": 512, "hash_seed": 0}})
    assert plain.digest == same.digest and "hash_seed" not in (same.features or {})
    with pytest.raises(CatalogError, match=r"features: features.hash_seed must be an integer"):
        Catalog.from_dict({**base, "features": {"hash_seed": -3}})
    # so are the weights of a number's thresholds and of a cross; a default (1 and 2) leaves
    # the digest as it was
    for field, weight, default_weight, bad in (
        ("threshold_weight", 0.5, 1, 2),
        ("cross_weight", 1, 2, 0.5),
    ):
        weighed = Catalog.from_dict({**base, "features": {field: weight}})
        assert getattr(FeatureSchema.from_catalog(weighed).hashing, field) == weight
        assert weighed.digest != plain.digest
        default = Catalog.from_dict({**base, "features": {"buckets": 512, field: default_weight}})
        assert default.digest == plain.digest and field not in (default.features or {})
        assert getattr(FeatureSchema.from_catalog(default).hashing, field) == default_weight
        with pytest.raises(CatalogError, match=rf"features: features.{field} must be"):
            Catalog.from_dict({**base, "features": {field: bad}})


def test_a_catalog_that_could_never_serve_as_written_is_refused():
    """Found in review as accepted: steps that require each other in a cycle (a user who has
    completed none can be shown none), ``features.include: []`` (no trait kept) and a key both
    numeric and categorical."""
    from importlib import resources

    from ray_app.catalog.model import Catalog

    text = resources.files("ray_app.catalog").joinpath("default.yaml").read_text()
    cycle = text.replace(
        "      - id: role\n        requires: [welcome]",
        "      - id: role\n        requires: [goals]",
    ).replace(
        "      - id: goals\n        requires: [welcome]",
        "      - id: goals\n        requires: [role]",
    )
    assert cycle != text
    with pytest.raises(
        CatalogError,
        match=r"actions\[1\]\.requires: steps that require each other: role -> goals -> role",
    ):
        Catalog.from_yaml(cycle, source="c.yaml")
    for features, needle in (
        ("features:\n  include: []\n", "features.include is empty"),
        ("features:\n  numeric: [seats]\n  categorical: [Seats]\n", "both name 'seats'"),
    ):
        with pytest.raises(CatalogError, match=needle):
            Catalog.from_yaml(text + "\n" + features, source="c.yaml")
