"""Scorer, model bundles (bytes and every way they can be bad), policies and their propensities."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ray_app.catalog import Catalog, load_catalog
from ray_app.features import FeatureSchema, Hashing
from ray_app.model import (
    MAGIC,
    Choice,
    ControlPolicy,
    ModelBundle,
    ModelFileError,
    Policy,
    Scorer,
    cold_start_bundle,
    score_batch,
    uncertainty_from_counts,
    uniform,
)
from ray_app.sim.population import STEPS

CATALOG = load_catalog()
SCHEMA = FeatureSchema.from_catalog(CATALOG)
SIZES = [s.size for s in CATALOG.slots.values()]


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    b = cold_start_bundle(SCHEMA, CATALOG, seed=3)
    b.version = 7
    b.metadata = {"trained_on": "test", "auc": 0.71}
    with torch.no_grad():  # a trained-looking model: features matter
        for wide in b.scorer.wides:
            wide.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    return b


def features(n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).random((n, SCHEMA.dim), dtype=np.float32)


# ------------------------------------------------------------------------------------ scorer


def test_scorer_shapes_and_seeded_init():
    scorer = Scorer(SCHEMA.dim, SIZES, hidden=32, seed=5)
    x = torch.from_numpy(features())
    for k, n in enumerate(SIZES):
        assert scorer(x, k).shape == (5, n)
    state = torch.random.get_rng_state()
    same = Scorer(SCHEMA.dim, SIZES, hidden=32, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    other = Scorer(SCHEMA.dim, SIZES, hidden=32, seed=6)
    assert all(
        torch.equal(a, b)
        for a, b in zip(scorer.state_dict().values(), same.state_dict().values(), strict=True)
    )
    assert not torch.equal(scorer.trunk.weight, other.trunk.weight)
    with pytest.raises(ValueError, match="slot_sizes"):
        Scorer(SCHEMA.dim, [3, 0])


def test_the_scorer_is_wide_alone_unless_asked_and_a_deep_model_file_still_serves():
    cold = cold_start_bundle(SCHEMA, CATALOG)
    scorer = cold.scorer
    assert scorer.hidden == 0 and scorer.architecture["hidden"] == 0
    assert scorer.trunk.weight.numel() == 0 and all(h.weight.numel() == 0 for h in scorer.heads)
    with torch.no_grad():
        for wide in scorer.wides:
            wide.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    x = torch.as_tensor(features(4))
    for k, head in enumerate(scorer.heads):  # the logits: the actions' biases plus the wide part
        assert torch.allclose(scorer(x, k), head.bias + scorer.wide_logits(x, k))
    again = ModelBundle.from_bytes(cold.to_bytes(), SCHEMA, CATALOG)
    assert again.scorer.hidden == 0 and np.array_equal(
        score_batch(again, features(4), 1), score_batch(cold, features(4), 1)
    )
    # a model file with a deep part (48 hidden units: every model written before the default
    # changed) keeps its shape, and its trunk counts
    deep = cold_start_bundle(SCHEMA, CATALOG, seed=3, hidden=48)
    with torch.no_grad():
        for head in deep.scorer.heads:
            head.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    loaded = ModelBundle.from_bytes(deep.to_bytes(), SCHEMA, CATALOG)
    assert loaded.scorer.hidden == 48
    wide_only = loaded.scorer.wide_logits(x, 1) + loaded.scorer.heads[1].bias
    assert not torch.allclose(loaded.scorer(x, 1), wide_only)
    assert np.array_equal(score_batch(loaded, features(4), 1), score_batch(deep, features(4), 1))
    with pytest.raises(ValueError, match="hidden >= 0"):
        Scorer(SCHEMA.dim, SIZES, hidden=-1)


def test_scorer_survives_pickle(bundle):
    scorer = pickle.loads(pickle.dumps(bundle.scorer))
    x = features()
    for k in range(len(SIZES)):
        assert np.array_equal(score_batch(scorer, x, k), score_batch(bundle, x, k))


def test_score_batch_rows_match_single_calls(bundle):
    x = features(4)
    batch = score_batch(bundle, x, 0)
    assert batch.shape == (4, SIZES[0]) and batch.dtype == np.float32
    for i in range(4):
        one = score_batch(bundle, x[i], 0)
        assert one.shape == (1, SIZES[0])
        np.testing.assert_allclose(one[0], batch[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(score_batch(bundle, x[i : i + 1], 0), one, rtol=1e-6)
    as_float64 = score_batch(bundle, x.astype(np.float64), 0)
    np.testing.assert_allclose(as_float64, batch, rtol=1e-6)
    assert not torch.is_inference_mode_enabled()


# ------------------------------------------------------------------------------------ bundles


def test_bundle_bytes_round_trip(bundle):
    data = bundle.to_bytes()
    assert data.startswith(MAGIC)
    again = ModelBundle.from_bytes(data, SCHEMA, CATALOG)
    assert (again.version, again.schema_hash, again.catalog_digest) == (
        7,
        SCHEMA.hash,
        CATALOG.digest,
    )
    assert again.metadata == {"trained_on": "test", "auc": 0.71}
    assert again.created_at == bundle.created_at
    assert again.slot_actions["next_step"] == list(STEPS)
    x = features()
    for k in range(len(SIZES)):
        assert np.array_equal(score_batch(again, x, k), score_batch(bundle, x, k))
    assert ModelBundle.from_bytes(memoryview(data), SCHEMA, CATALOG).version == 7
    assert again.to_bytes() == data  # stable bytes


def test_a_model_file_keeps_its_evidence_and_one_written_before_it_had_none_loads(bundle):
    x = torch.from_numpy(features(3))
    bundle.scorer.observe(x, torch.tensor([0, 2, 2]), 0)
    data = bundle.to_bytes()
    again = ModelBundle.from_bytes(data, SCHEMA, CATALOG)
    assert torch.equal(again.scorer.evidence(0), bundle.scorer.evidence(0))
    assert (
        float(again.scorer.evidence(0)[2].sum()) > 0 and float(again.scorer.evidence(1).sum()) == 0
    )
    head, _ = split(data)
    old = {k: v for k, v in bundle.scorer.state_dict().items() if not k.startswith("evidence_")}
    loaded = ModelBundle.from_bytes(forge(head, weights_of(old)), SCHEMA, CATALOG)
    assert float(loaded.scorer.evidence(0).sum()) == 0.0
    assert np.array_equal(score_batch(loaded, features(), 0), score_batch(bundle, features(), 0))


def test_a_model_file_written_before_the_wide_scales_loads_with_scales_of_one(bundle):
    with torch.no_grad():
        bundle.scorer.wides[0].weight.normal_(generator=torch.Generator().manual_seed(3))
    head, _ = split(bundle.to_bytes())
    old = {k: v for k, v in bundle.scorer.state_dict().items() if not k.startswith("wide_scales")}
    loaded = ModelBundle.from_bytes(forge(head, weights_of(old)), SCHEMA, CATALOG)
    assert all(bool((s == 1).all()) for s in loaded.scorer.wide_scales)
    assert np.array_equal(score_batch(loaded, features(), 0), score_batch(bundle, features(), 0))
    # and a scale multiplies its feature's wide weights for every action of the slot
    with torch.no_grad():
        loaded.scorer.wide_scales[0][:] = 0.0
    x = torch.from_numpy(features(2))
    assert torch.equal(loaded.scorer.wide_logits(x, 0), torch.zeros(2, SIZES[0]))


def test_bundle_survives_pickle(bundle):
    again = pickle.loads(pickle.dumps(bundle))
    assert again.version == bundle.version and again.schema_hash == bundle.schema_hash
    x = features()
    assert np.array_equal(score_batch(again, x, 1), score_batch(bundle, x, 1))


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from(">I", data, len(MAGIC))
    start = len(MAGIC) + 4
    return json.loads(data[start : start + n]), data[start + n :]


def forge(head: dict, weights: bytes, fix_checksum: bool = True) -> bytes:
    if fix_checksum:
        head = {
            **head,
            "weights_bytes": len(weights),
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
        }
    text = json.dumps(head).encode()
    return MAGIC + struct.pack(">I", len(text)) + text + weights


def weights_of(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


OTHER_SCHEMA = FeatureSchema(STEPS, Hashing(buckets=256))


def bad_files(bundle: ModelBundle) -> list[tuple[str, object, str, str]]:
    data = bundle.to_bytes()
    head, weights = split(data)
    state = bundle.scorer.state_dict()
    nan_state = {k: v.clone() for k, v in state.items()}
    nan_state["heads.0.bias"][0] = float("nan")
    wrong_shape = {k: v.clone() for k, v in state.items()}
    wrong_shape["wides.0.weight"] = wrong_shape["wides.0.weight"][:, :-1]
    negative = {k: v.clone() for k, v in state.items()}
    negative["evidence_0"][1, 2] = -1.0
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    return [
        ("empty", b"", "magic", "truncated: 0 bytes"),
        ("magic prefix", MAGIC[:4], "magic", "truncated: 4 bytes"),
        ("not bytes", "ONRAMPMB", "data", "expected bytes, got str"),
        ("a zip file", b"PK\x03\x04" + b"\x00" * 40, "magic", "not an Onramp model file"),
        ("a raw torch file", weights, "magic", "not an Onramp model file"),
        ("no header length", MAGIC + b"\x00", "header", "truncated"),
        ("header cut", data[: len(MAGIC) + 4 + 10], "header", "truncated: the header needs"),
        ("header not JSON", MAGIC + struct.pack(">I", 3) + b"{x]", "header", "not JSON"),
        ("header a list", MAGIC + struct.pack(">I", 2) + b"[]", "header", "expected a JSON object"),
        ("newer format", forge({**head, "format": 2}, weights), "format", "format 2 is not the one"),
        ("missing version", forge({k: v for k, v in head.items() if k != "version"}, weights), "version", "missing from the header"),
        ("version as text", forge({**head, "version": "7"}, weights), "version", "unexpected type str"),
        ("negative version", forge({**head, "version": -1}, weights), "version", "must be >= 0"),
        ("bad architecture", forge({**head, "architecture": {**head["architecture"], "hidden": -1}}, weights), "architecture.hidden", "expected an integer >= 0"),
        ("other feature schema", forge({**head, "schema_hash": OTHER_SCHEMA.hash}, weights), "schema_hash",
         f"model was trained on feature schema {OTHER_SCHEMA.hash}, serving uses {SCHEMA.hash}"),
        ("other catalog", forge({**head, "catalog_digest": "ab" * 32}, weights), "catalog_digest",
         f"model was trained on catalog abababababab, serving uses {CATALOG.digest[:12]}"),
        ("other head sizes", forge({**head, "architecture": {**head["architecture"], "slot_sizes": [7, 4, 6]}}, weights),
         "architecture.slot_sizes", "model heads have [7, 4, 6] actions, the catalog's slots [7, 4, 5]"),
        ("other action order", forge({**head, "slot_actions": {**head["slot_actions"], "welcome_content": ["a", "b", "c", "d"]}}, weights),
         "slot_actions.welcome_content", "model was trained on actions ['a', 'b', 'c', 'd']"),
        ("other slot order", forge({**head, "slot_order": list(reversed(head["slot_order"]))}, weights),
         "slot_order", "model's heads are for the slots"),
        ("slot order not names", forge({**head, "slot_order": "next_step"}, weights), "slot_order", "expected a list"),
        ("weights truncated", data[:-100], "weights", "truncated: the header says"),
        ("trailing bytes", data + b"xx", "weights", "trailing bytes"),
        ("weights corrupted", bytes(flipped), "weights", "checksum mismatch"),
        ("weights not torch", forge(head, b"garbage" * 20), "weights", "cannot load"),
        ("weights wrong shape", forge(head, weights_of(wrong_shape)), "weights", "do not fit the architecture"),
        # a header asking for 10**12 hidden units: refused before anything that size is built
        ("hidden units the weights lack", forge({**head, "architecture": {**head["architecture"], "hidden": 10**12}}, weights),
         "architecture.hidden", "the weights do not fit the architecture"),
        ("header nested too deeply", MAGIC + struct.pack(">I", 6000) + b"[" * 6000, "header", "nested too deeply"),
        ("weights not a state dict", forge(head, weights_of({"a": 1})), "weights", "not a state_dict of tensors"),
        ("weights with NaN", forge(head, weights_of(nan_state)), "weights", "heads.0.bias holds NaN or inf"),
        ("negative evidence", forge(head, weights_of(negative)), "weights", "evidence_0 holds negative counts"),
    ]  # fmt: skip


def test_every_bad_file_is_a_model_file_error(bundle):
    cases = bad_files(bundle)
    assert len(cases) >= 20
    for name, data, field, reason in cases:
        with pytest.raises(ModelFileError) as info:
            ModelBundle.from_bytes(data, SCHEMA, CATALOG)  # type: ignore[arg-type]
        err = info.value
        assert (err.field, reason in err.reason) == (field, True), (name, err.field, err.reason)
        back = pickle.loads(pickle.dumps(err))
        assert (type(back), back.field, str(back)) == (ModelFileError, field, str(err))


def test_every_prefix_of_a_good_file_is_refused_cleanly(bundle):
    data = bundle.to_bytes()
    for cut in sorted(random.Random(0).sample(range(len(data)), 60)):
        with pytest.raises(ModelFileError):
            ModelBundle.from_bytes(data[:cut], SCHEMA, CATALOG)


def test_serving_schema_or_catalog_differs(bundle):
    data = bundle.to_bytes()
    with pytest.raises(ModelFileError) as info:
        ModelBundle.from_bytes(data, OTHER_SCHEMA, CATALOG)
    assert str(info.value) == (
        f"schema_hash: model was trained on feature schema {SCHEMA.hash}, serving uses {OTHER_SCHEMA.hash}"
    )
    reworded = copy.deepcopy(CATALOG.as_dict())
    reworded["slots"]["next_step"]["description"] = "Something else."
    other = Catalog.from_dict(reworded, source="reworded.yaml")
    with pytest.raises(ModelFileError, match=r"catalog_digest: .*\(reworded.yaml\)"):
        ModelBundle.from_bytes(data, SCHEMA, other)
    assert ModelBundle.from_bytes(data, SCHEMA, other, strict_catalog=False).version == 7
    grown = copy.deepcopy(CATALOG.as_dict())
    grown["slots"]["checklist_order"]["actions"].append({"id": "watch_webinar"})
    with pytest.raises(ModelFileError, match=r"architecture\.slot_sizes"):
        ModelBundle.from_bytes(data, SCHEMA, Catalog.from_dict(grown), strict_catalog=False)
    with pytest.raises(ModelFileError, match=r"architecture\.slot_sizes"):
        bundle.check(SCHEMA, Catalog.from_dict(grown))
    bundle.check(SCHEMA, CATALOG)


def test_metadata_must_be_json(bundle):
    b = copy.copy(bundle)
    b.metadata = {"when": object()}
    with pytest.raises(ModelFileError, match="metadata: not JSON-serializable"):
        b.to_bytes()


# --------------------------------------------------------------------------------- cold start

PROFILES = [
    None,
    {"stepsCompleted": ["welcome"]},
    {"stepsCompleted": ["welcome", "role", "team_size"], "traits": {"segment": "enterprise_admin"}},
    {"stepsCompleted": ["welcome", "integrations", "first_project"], "currentStep": "goals"},
    {"stepsCompleted": list(STEPS[:-1]), "counts": {"track": 40}, "lastSeen": 5},
]


def test_cold_start_greedy_choice_is_the_control_choice():
    b = cold_start_bundle(SCHEMA, CATALOG, seed=11)
    greedy = Policy("epsilon_greedy", epsilon=0.0)
    rng = random.Random(0)
    checked = 0
    for prof in PROFILES:
        for enrichment in (None, {"found": True, "plan": "enterprise"}):
            x = SCHEMA.featurize(prof, enrichment, {"device": "mobile"}, now_ms=1000)
            for slot in CATALOG.slots.values():
                scores = score_batch(b, x, slot.index)[0]
                eligible = CATALOG.eligible(slot.name, prof, enrichment)
                subsets = (
                    [eligible]
                    + [
                        sorted(rng.sample(eligible, rng.randint(1, len(eligible))))
                        for _ in range(5)
                    ]
                    if eligible
                    else []
                )
                for el in subsets:
                    want = CATALOG.control_choice(slot.name, el)
                    choice = greedy.choose(scores, el, key="k")
                    assert choice.chosen == choice.ranking[0] == want
                    assert (
                        choice.ranking
                        == ControlPolicy.for_slot(CATALOG, slot.name)
                        .choose(scores, el, "k")
                        .ranking
                    )
                    checked += 1
    assert checked > 100


def test_cold_start_is_reproducible():
    a = cold_start_bundle(SCHEMA, CATALOG, seed=1)
    assert a.version == 0 and a.metadata["kind"] == "cold_start"
    assert a.to_bytes() == cold_start_bundle(SCHEMA, CATALOG, seed=1).to_bytes()
    assert a.to_bytes() != cold_start_bundle(SCHEMA, CATALOG, seed=2).to_bytes()
    with pytest.raises(ValueError, match="gap"):
        cold_start_bundle(SCHEMA, CATALOG, gap=0)


# ------------------------------------------------------------------------------------ policies

SCORES = np.array([0.3, 1.2, -0.4, 1.2, 0.9, float("nan")])
POLICIES = [
    Policy("epsilon_greedy", epsilon=0.2, seed=1),
    Policy("softmax", temperature=0.5, floor=0.05, seed=2),
    Policy("thompson", prior_std=0.7, floor=0.05, draws=64, seed=3),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.kind)
def test_propensities_are_exact_and_positive(policy):
    eligible = [0, 1, 2, 3, 5]
    probs = policy.probabilities(SCORES, eligible)
    assert list(probs) == eligible
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(p > 0 for p in probs.values())
    n = 20_000
    counts = dict.fromkeys(eligible, 0)
    for i in range(n):
        c = policy.choose(SCORES, eligible, key=f"decision-{i}")
        assert c.propensity == c.probabilities[c.chosen] and c.probabilities == probs
        counts[c.chosen] += 1
    chi2 = sum((counts[a] - n * p) ** 2 / (n * p) for a, p in probs.items())
    assert chi2 < 25.0, (counts, probs)  # df = 4; p(chi2 > 25) ~ 5e-5 for a correct sampler


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.kind)
def test_deterministic_given_seed_and_key(policy):
    a = [policy.choose(SCORES, [0, 1, 2, 4], key=f"k{i}") for i in range(200)]
    b = [
        pickle.loads(pickle.dumps(policy)).choose(SCORES, [4, 2, 1, 0], key=f"k{i}")
        for i in range(200)
    ]
    assert a == b  # same seed, same keys, eligible order does not matter, survives pickle
    other = Policy(policy.kind, seed=policy.seed + 100)
    assert [c.chosen for c in a] != [
        other.choose(SCORES, [0, 1, 2, 4], f"k{i}").chosen for i in range(200)
    ]
    assert len({c.chosen for c in a}) > 1  # it explores


def test_ranking_and_ties():
    c = Policy("epsilon_greedy", epsilon=0.0).choose(SCORES, [0, 1, 2, 3, 4, 5], key="x")
    assert c.ranking == [1, 3, 4, 0, 2, 5]  # tie 1 == 3 goes to the lower index, NaN last
    assert c.chosen == 1 and c.propensity == 1.0 and not c.explored
    assert c.probabilities == {0: 0.0, 1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.0}
    eps = Policy("epsilon_greedy", epsilon=0.3).probabilities(SCORES, [3, 1])
    assert eps == {1: pytest.approx(0.85), 3: pytest.approx(0.15)}


def test_epsilon_greedy_formula():
    probs = Policy("epsilon_greedy", epsilon=0.1).probabilities([0.0, 2.0, 1.0, 0.5], [0, 1, 2, 3])
    assert probs == pytest.approx({0: 0.025, 1: 0.925, 2: 0.025, 3: 0.025})


def test_softmax_follows_the_scores_and_temperature():
    hot = Policy("softmax", temperature=5.0, floor=0.0).probabilities([0.0, 1.0], [0, 1])
    cold = Policy("softmax", temperature=0.1, floor=0.0).probabilities([0.0, 1.0], [0, 1])
    assert 0.5 < hot[1] < cold[1] < 1.0
    assert hot[1] == pytest.approx(1 / (1 + np.exp(-0.2)))
    extreme = Policy("softmax", temperature=0.01, floor=0.02).probabilities([0.0, 1e6], [0, 1])
    assert extreme[0] == pytest.approx(0.01)  # the floor keeps it explorable


def test_thompson_uncertainty():
    pol = Policy("thompson", prior_std=1.0, floor=0.0, draws=256, seed=4)
    sure = pol.probabilities([1.0, 0.0], [0, 1], uncertainty=[0.01, 0.01])
    unsure = pol.probabilities([1.0, 0.0], [0, 1], uncertainty=uncertainty_from_counts([1000, 0]))
    assert sure[0] == 1.0 and 0.05 < unsure[1] < 0.5
    assert all(p * 256 == int(p * 256) for p in unsure.values())  # win shares of the fixed draws
    with pytest.raises(ValueError, match="uncertainty has 1 values"):
        pol.choose([1.0, 0.0], [0, 1], "k", uncertainty=[1.0])


def test_bad_policy_arguments():
    with pytest.raises(ValueError, match="policy kind"):
        Policy("ucb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epsilon"):
        Policy(epsilon=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Policy("softmax", temperature=0)
    with pytest.raises(ValueError, match="draws"):
        Policy("thompson", draws=0)
    pol = Policy()
    with pytest.raises(ValueError, match="no eligible action"):
        pol.choose(SCORES, [], "k")
    with pytest.raises(ValueError, match="out of range"):
        pol.choose(SCORES, [0, 6], "k")
    with pytest.raises(ValueError, match="duplicates"):
        pol.choose(SCORES, [1, 1], "k")


def test_control_policy():
    ctl = ControlPolicy.for_slot(CATALOG, "welcome_content")
    c = ctl.choose(np.array([9.0, 0.0, 0.0, 0.0]), [0, 1, 2], key="any")
    assert c == Choice([1, 0, 2], 1, 1.0, {0: 0.0, 1: 1.0, 2: 0.0})
    assert pickle.loads(pickle.dumps(ctl)) == ctl
    with pytest.raises(ValueError):
        ctl.choose(None, [], "k")


def test_uniform_is_in_the_open_unit_interval():
    us = [uniform(0, f"k{i}") for i in range(5000)]
    assert all(0.0 < u < 1.0 for u in us) and abs(np.mean(us) - 0.5) < 0.02
    assert uniform(0, "k1") == uniform(0, "k1") != uniform(0, "k1", counter=1)


def test_the_watcher_reports_the_version_served_while_the_model_file_is_missing(tmp_path, bundle):
    """A replica that cannot see the model file (not published yet, or the shared state
    directory missing on its host) still says which version it serves: the alert on replicas
    left behind compares that gauge with the learner's."""
    from ray_app.model.watcher import ModelWatcher

    class Target:
        def __init__(self) -> None:
            self.schema, self.catalog = None, None
            self.bundles = {"treatment": bundle}

        def swap(self, arm: str, b: ModelBundle) -> bool:
            raise AssertionError("nothing to swap in")

    heard: list[tuple[str, int]] = []
    watcher = ModelWatcher(
        Target(), {"treatment": tmp_path / "absent.onramp"}, 1.0, lambda a, v: heard.append((a, v))
    )
    watcher.load()
    assert heard == [("treatment", bundle.version)]


def test_a_model_file_named_in_user_config_is_served_whatever_its_version(tmp_path):
    """Pointing model_path at an older version's file (going back to it) answered ok and kept
    the newer model; model_b_path: null kept the arm's model instead of the cold start. A file
    named by the operator is served once whatever its version; later loads follow versions."""
    import dataclasses

    from ray_app.decide import Arms, Decider
    from ray_app.model.watcher import ModelWatcher
    from tests.conftest import make_settings

    catalog = load_catalog()
    schema = FeatureSchema.from_catalog(catalog)

    def write(path, version):
        b = dataclasses.replace(cold_start_bundle(schema, catalog), version=version)
        path.write_bytes(b.to_bytes())
        return path

    latest, older = write(tmp_path / "latest.onramp", 7), write(tmp_path / "v3.onramp", 3)
    decider = Decider(catalog, Arms(make_settings().decide), Policy("epsilon_greedy", epsilon=0))
    watcher = ModelWatcher(decider, {"treatment": latest, "treatment_b": latest}, 1.0)
    watcher.load()
    assert decider.versions() == {"treatment": 7, "treatment_b": 7}
    watcher.set_path("treatment", older, named=True)
    watcher.set_path("treatment_b", None, named=True)
    watcher.load()
    assert decider.versions() == {"treatment": 3, "treatment_b": 0}
    import os

    write(older, 2)
    os.utime(older, (1e9, 1e9))  # a new modification time: read again, and not newer
    watcher.load()
    assert decider.versions()["treatment"] == 3
    watcher.set_path("treatment", tmp_path / "typo.onramp", named=True)
    watcher.load()  # a file that is not there: logged, the current model kept
    assert decider.versions()["treatment"] == 3


def test_a_model_file_replaced_within_one_tick_of_the_clock_is_still_loaded(tmp_path):
    """Two atomic replaces with the same modification time (a promote and a publish within a
    tick of the file system's clock, coarse on network file systems) used to look unchanged to
    the watcher, which kept the first file's model until the next publish. A read that fails
    is tried again at the next poll."""
    import dataclasses
    import os

    from ray_app.decide import Arms, Decider
    from ray_app.model.watcher import ModelWatcher
    from tests.conftest import make_settings

    catalog = load_catalog()
    schema = FeatureSchema.from_catalog(catalog)
    served = tmp_path / "treatment.onramp"

    def publish(version: int) -> None:
        fresh = tmp_path / "fresh.onramp"
        b = dataclasses.replace(cold_start_bundle(schema, catalog), version=version)
        fresh.write_bytes(b.to_bytes())
        os.utime(fresh, ns=(10**18, 10**18))  # one tick: the same mtime for both files
        os.replace(fresh, served)

    publish(4)
    decider = Decider(catalog, Arms(make_settings().decide), Policy("epsilon_greedy", epsilon=0))
    watcher = ModelWatcher(decider, {"treatment": served, "treatment_b": None}, 1.0)
    watcher.load()
    assert decider.versions()["treatment"] == 4
    publish(5)
    watcher.load()
    assert decider.versions()["treatment"] == 5

    real = Path.read_bytes
    fails = [1]

    def flaky(self: Path) -> bytes:
        if self == served and fails[0]:
            fails[0] -= 1
            raise OSError("stale NFS file handle")
        return real(self)

    publish(6)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "read_bytes", flaky)
        watcher.load()
        assert decider.versions()["treatment"] == 5 and not fails[0]
        watcher.load()  # the same file, read again
    assert decider.versions()["treatment"] == 6
