"""The model registry: round trip, promotion and rollback (including what replicas swap in), the
errors users see, and the online learner continuing from a promotion."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ray_app.catalog import load_catalog
from ray_app.cli import main as cli
from ray_app.decide import Arms, Decider
from ray_app.features import FeatureSchema, Hashing
from ray_app.learn.learner import LearnerConfig, OnlineLearner
from ray_app.model import ModelBundle, ModelFileError, Policy, cold_start_bundle
from ray_app.model.registry import ModelRegistry, RegistryError, read_header
from ray_app.records import RewardRecord
from tests.conftest import make_settings

CATALOG = load_catalog()
SCHEMA = FeatureSchema.from_catalog(CATALOG)


def _bundle(seed: int, favour: int = 0) -> ModelBundle:
    b = cold_start_bundle(SCHEMA, CATALOG, seed=seed)
    with torch.no_grad():
        b.scorer.heads[CATALOG.slot("welcome_content").index].bias[favour] = 9.0
    return b


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    reg = ModelRegistry(f"file://{tmp_path}/reg")
    assert reg.list() == [] and reg.promoted() is None
    meta = reg.register(
        _bundle(1, favour=2),
        "train",
        data={"uri": "s3://x", "records": 10, "fromMs": 1, "toMs": 2},
        metrics={"auc": 0.71, "loss": float("nan")},
        note="first",
    )
    assert meta.version == 1 and meta.schema_hash == SCHEMA.hash and meta.metrics["loss"] is None
    again = ModelRegistry(tmp_path / "reg")  # a plain path reads the same registry
    assert again.get(1) == meta
    loaded = again.load(1, SCHEMA, CATALOG)
    original = _bundle(1, favour=2).scorer.state_dict()
    assert all(torch.equal(original[k], v) for k, v in loaded.scorer.state_dict().items())
    assert loaded.version == 1 and loaded.metadata["registry"]["note"] == "first"
    on_disk = json.loads((tmp_path / "reg/versions/000001/meta.json").read_text())
    assert on_disk["data"]["records"] == 10 and on_disk["source"] == "train"


def test_versions_go_above_registered_and_served(tmp_path):
    reg = ModelRegistry(tmp_path)
    assert reg.register(_bundle(0)).version == 1
    assert reg.register(_bundle(0), above=41).version == 42  # the learner served 41 meanwhile
    assert reg.register(_bundle(0), "online", parent=42).parent == 42
    with pytest.raises(RegistryError, match="no version 9"):
        reg.register(_bundle(0), parent=9)
    with pytest.raises(RegistryError, match="source"):
        reg.register(_bundle(0), "magic")  # type: ignore[arg-type]


def test_promote_and_rollback_are_what_a_replica_serves(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    serve = tmp_path / "models" / "treatment.onramp"
    for favour in (0, 1, 2):
        reg.register(_bundle(favour, favour=favour))
    decider = Decider(CATALOG, Arms(make_settings().decide), Policy("epsilon_greedy", epsilon=0))

    def load() -> bool:
        return decider.swap(
            "treatment", ModelBundle.from_bytes(serve.read_bytes(), SCHEMA, CATALOG, False)
        )

    assert reg.promote(3, serve, SCHEMA, CATALOG).epoch == 1
    assert load() and decider.versions()["treatment"] == 3
    # the online learner publishes version 4 on top of promotion 1: swapped in
    learner = OnlineLearner(ModelBundle.from_bytes(serve.read_bytes(), SCHEMA, CATALOG))
    learner.learn([_reward(f"d{i}") for i in range(80)])
    online = learner.maybe_publish(now=10.0)
    assert online is not None and online.serving_rank == (1, 4)
    serve.write_bytes(online.to_bytes())
    assert load() and decider.versions()["treatment"] == 4
    # promoting an OLDER version still swaps in (a new promotion outranks any version)
    assert reg.promote(1, serve, SCHEMA, CATALOG).epoch == 2
    assert load() and decider.versions()["treatment"] == 1
    assert reg.promote(2, serve, SCHEMA, CATALOG).epoch == 3
    assert load() and decider.versions()["treatment"] == 2
    # rollback: back to 1, then back to 3; a stale online file of promotion 1 is refused
    rb = reg.rollback(serve, SCHEMA, CATALOG)
    assert (rb.version, rb.action, rb.epoch) == (1, "rollback", 4)
    assert load() and decider.versions()["treatment"] == 1
    assert reg.rollback(serve, SCHEMA, CATALOG).version == 3
    assert load() and decider.versions()["treatment"] == 3
    serve.write_bytes(online.to_bytes())
    assert not load() and decider.versions()["treatment"] == 3
    with pytest.raises(RegistryError, match="only one promoted"):
        reg.rollback(serve, SCHEMA, CATALOG)
    assert [p.version for p in reg.history()] == [3, 1, 2, 1, 3]


def _reward(decision_id: str) -> RewardRecord:
    x = SCHEMA.featurize({"stepsCompleted": ["welcome"]}).tolist()
    return RewardRecord(
        decision_id, "u", "next_step", "goals", 3, "treatment", 0.2, x, 1.0, "completed", 0, 1, 0
    )


def test_promotion_epochs_survive_a_lost_registry(tmp_path):
    """A new registry (say, the old one was deleted) must still outrank the file being served."""
    serve = tmp_path / "treatment.onramp"
    old = ModelRegistry(tmp_path / "old")
    old.register(_bundle(0))
    for _ in range(3):
        old.promote(1, serve, SCHEMA, CATALOG)
    new = ModelRegistry(tmp_path / "new")
    new.register(_bundle(1))
    assert new.promote(1, serve, SCHEMA, CATALOG).epoch == 4
    assert read_header(serve.read_bytes())["metadata"]["promotion"] == 4


def test_errors_name_what_is_wrong(tmp_path):
    reg = ModelRegistry(tmp_path)
    serve = tmp_path / "serve.onramp"
    with pytest.raises(RegistryError, match="the registry is empty"):
        reg.promote(1, serve, SCHEMA, CATALOG)
    with pytest.raises(RegistryError, match="nothing has been promoted"):
        reg.rollback(serve, SCHEMA, CATALOG)
    other = FeatureSchema(tuple(CATALOG.known_steps), Hashing(buckets=64))
    reg.register(cold_start_bundle(other, CATALOG))
    with pytest.raises(RegistryError, match=r"feature schema .* current feature schema") as info:
        reg.promote(1, serve, SCHEMA, CATALOG)
    assert info.value.field == "schema_hash" and not serve.exists()
    reg.register(_bundle(0))
    with pytest.raises(RegistryError, match=r"versions: 1, 2"):
        reg.get(3)
    # a corrupted model file is refused at promote, and nothing is written
    (tmp_path / "versions/000002/model.onramp").write_bytes(b"ONRAMPMB junk")
    with pytest.raises(ModelFileError):
        reg.promote(2, serve, SCHEMA, CATALOG)
    assert not serve.exists() and reg.promoted() is None
    # a hand-edited meta.json or promotions.json: a RegistryError naming the file, not a
    # JSONDecodeError traceback from `onramp models list`
    (tmp_path / "versions/000002/meta.json").write_text("{not json")
    with pytest.raises(RegistryError, match="not JSON") as meta:
        reg.get(2)
    assert meta.value.field == "versions/000002/meta.json"
    (tmp_path / "versions/000002/meta.json").write_text("[1]")
    with pytest.raises(RegistryError, match="expected a JSON object, got list"):
        reg.get(2)
    (tmp_path / "promotions.json").write_text(
        json.dumps({"history": [{"version": 1, "epoch": 1, "at": 0, "action": "bogus"}]})
    )
    with pytest.raises(RegistryError, match="action must be promote or rollback"):
        reg.history()


def test_learner_adopts_a_newer_promotion_and_keeps_its_offsets():
    learner = OnlineLearner(cold_start_bundle(SCHEMA, CATALOG), LearnerConfig(batch_size=8))
    learner.learn([_reward(f"d{i}") for i in range(40)], offsets={0: 40})
    promoted = dataclasses.replace(
        _bundle(5), version=12, metadata={"promotion": 2, "registryVersion": 12}
    )
    learner.adopt(promoted)
    assert learner.offsets == {0: 40} and learner.learn([_reward("d3")]).duplicates == 1
    learner.learn([_reward(f"e{i}") for i in range(40)])
    published = learner.maybe_publish(now=1.0)
    assert published is not None and published.serving_rank == (2, 13)
    assert published.metadata["registryVersion"] == 12
    restored = OnlineLearner.from_bytes(learner.to_bytes())
    assert restored.lineage == {"promotion": 2, "registryVersion": 12}


def test_cli_models_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ONRAMP_STATE_DIR", str(tmp_path))
    settings = make_settings(ONRAMP_STATE_DIR=str(tmp_path))
    assert cli(["models", "list"]) == 0
    assert "is empty" in capsys.readouterr().out
    assert cli(["models", "promote", "1"]) == 1
    assert "no version 1 in the registry" in capsys.readouterr().err
    assert cli(["models", "rollback"]) == 1
    assert "nothing has been promoted" in capsys.readouterr().err
    reg = ModelRegistry.from_settings(settings)
    reg.register(_bundle(0), metrics={"auc": 0.61})
    reg.register(_bundle(1), metrics={"auc": 0.66})
    assert cli(["models", "promote", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["promoted"] == 2
    assert settings.model_path.exists()
    assert cli(["models", "promote", "1"]) == 0 and cli(["models", "rollback"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["promoted"] == 2
    assert cli(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "*       2" in out and "0.6600" in out
    assert cli(["models", "show", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["promoted"] is False


def test_an_interrupted_register_leaves_the_registry_listable(tmp_path):
    """A register writes the model file, then meta.json: interrupted between the two, every
    `onramp models list` failed ("no version 2 (versions: 1, 2)")."""
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(_bundle(0))
    reg.register(_bundle(1))
    (tmp_path / "reg/versions/000002/meta.json").unlink()
    assert [m.version for m in reg.list()] == [1]
    with pytest.raises(RegistryError, match="version 2 is incomplete"):
        reg.get(2)
    assert reg.register(_bundle(2)).version == 3  # its number stays taken


def test_a_failed_promotion_leaves_the_record_and_the_served_file_agreeing(tmp_path, monkeypatch):
    """Whichever of the two writes fails, the registry names the version replicas serve: the
    served file was written first, so a failed record (a full disk) left them serving a
    version the registry did not name, and rollback went back past it."""
    import ray_app.model.registry as registry_module

    reg = ModelRegistry(tmp_path / "reg")
    serve = tmp_path / "models" / "treatment.onramp"
    for favour in (0, 1):
        reg.register(_bundle(favour, favour=favour))
    reg.promote(1, serve, SCHEMA, CATALOG)

    def served() -> int:
        return read_header(serve.read_bytes())["metadata"]["registryVersion"]

    write = reg._store.write

    def record_fails(rel: str, data: bytes) -> None:
        if rel == "promotions.json":
            raise OSError(28, "No space left on device")
        write(rel, data)

    monkeypatch.setattr(reg._store, "write", record_fails)
    with pytest.raises(OSError, match="No space left"):
        reg.promote(2, serve, SCHEMA, CATALOG)
    monkeypatch.setattr(reg._store, "write", write)
    assert reg.promoted().version == served() == 1  # type: ignore[union-attr]

    def served_file_fails(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_module, "write_file_atomically", served_file_fails)
    with pytest.raises(OSError, match="No space left"):
        reg.promote(2, serve, SCHEMA, CATALOG)
    assert reg.promoted().version == served() == 1  # type: ignore[union-attr]


def test_training_from_a_model_that_learned_the_held_out_records_is_warned(tmp_path):
    """--init promoted holds out the latest records: when the starting model learned from
    them (a run on the same archive, or the online learner), the new model's validation
    metrics measure what its weights already saw."""
    import numpy as np

    from training.train import _starting_model_saw_held_out

    class HeldOut:
        decided_at_ms = np.array([5_000, 9_000], dtype=np.int64)

        def __len__(self) -> int:
            return 2

    reg = ModelRegistry(tmp_path / "reg")
    reg.register(_bundle(0), "train", data={"toMs": 8_000, "trainToMs": 4_000})
    reg.register(_bundle(1), "train", data={"toMs": 8_000})
    reg.register(_bundle(2), "online")
    assert _starting_model_saw_held_out(reg, 1, HeldOut()) is None  # type: ignore[arg-type]
    said = _starting_model_saw_held_out(reg, 2, HeldOut())  # type: ignore[arg-type]
    assert said is not None and "(version 2) learned from records up to" in said
    assert _starting_model_saw_held_out(reg, 3, HeldOut()) is not None  # type: ignore[arg-type]
    assert _starting_model_saw_held_out(reg, None, HeldOut()) is None  # type: ignore[arg-type]


def test_an_undone_promotions_epoch_is_never_taken_again(tmp_path, monkeypatch):
    """A learner that read the record between its write and the failed served-file write
    adopted epoch E; the record was undone, the next promotion took E again, and the learner
    skipped it as seen."""
    import ray_app.model.registry as registry_module

    reg = ModelRegistry(tmp_path / "reg")
    serve = tmp_path / "models" / "treatment.onramp"
    for favour in (0, 1):
        reg.register(_bundle(favour, favour=favour))
    first = reg.promote(1, serve, SCHEMA, CATALOG)
    real = registry_module.write_file_atomically

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_module, "write_file_atomically", full_disk)
    with pytest.raises(OSError):
        reg.promote(2, serve, SCHEMA, CATALOG)  # took epoch first.epoch + 1, then undone
    monkeypatch.setattr(registry_module, "write_file_atomically", real)
    again = reg.promote(2, serve, SCHEMA, CATALOG)
    assert again.epoch == first.epoch + 2
    assert [p.version for p in reg.history()] == [1, 2]


@pytest.mark.parametrize(
    ("field", "value"),
    [("createdAt", 1e20), ("createdAt", float("nan")), ("version", 1e999),
     ("source", ["train"]), ("data", [1]), ("metrics", "fast")],
)  # fmt: skip
def test_hand_edited_version_metadata_is_a_registry_error(tmp_path, field, value):
    """``onramp models list`` ended in a traceback (OverflowError, TypeError in a format) on a
    meta.json with a time past datetime's range, an infinite version, or a list where a text
    belongs; each is now the registry's one-line error naming the file."""
    reg = ModelRegistry(tmp_path)
    reg.register(_bundle(1), "train", data={"records": 10})
    path = tmp_path / "versions/000001/meta.json"
    meta = json.loads(path.read_text())
    meta[field] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match=r"meta\.json"):
        reg.list()


def test_a_promotions_file_nested_past_the_decoder_is_a_registry_error(tmp_path):
    reg = ModelRegistry(tmp_path)
    reg.register(_bundle(1), "train")
    (tmp_path / "promotions.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RegistryError, match=r"promotions\.json"):
        reg.promoted()
