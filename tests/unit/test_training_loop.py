"""The training job's worker loop (:func:`training.loop.train_loop`) in this process, with Ray
Train's calls answered by a twin (one worker, no cluster): the evidence a trained model carries
is that of its training rows, counted once as the online learner counts them. The same loop
under the real Ray Train, with two workers, is in tests/integration/test_training.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from ray_app.catalog import load_catalog
from ray_app.features import FeatureSchema
from ray_app.learn.update import make_optimizer, weighted_step
from ray_app.model import Scorer, cold_start_bundle
from ray_app.records import RewardRecord
from ray_app.sim.logs import simulated_rewards
from tests.conftest import make_settings
from training.data import RewardData, reward_data
from training.loop import Interrupted, train_loop
from training.trainer import RunPlan, Source, TrainOptions, _config

CATALOG = load_catalog()
SCHEMA = FeatureSchema.from_catalog(CATALOG)


class RayTrainTwin:
    """What the worker loop asks of Ray Train, for worker ``rank`` of ``world`` in this process:
    the checkpoints it reports are copied to ``folder`` (Ray deletes the originals)."""

    def __init__(self, folder: Path, rank: int = 0, world: int = 1) -> None:
        self.folder, self.rank, self.world = folder, rank, world
        self.checkpoints: list[Path] = []
        self.metrics: list[dict[str, Any]] = []
        self.models: list[Scorer] = []  # what prepare_model was handed

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import ray.train
        import ray.train.torch

        ctx = SimpleNamespace(get_world_rank=lambda: self.rank, get_world_size=lambda: self.world)
        monkeypatch.setattr(ray.train, "get_context", lambda: ctx)
        monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
        monkeypatch.setattr(ray.train, "report", self.report)
        monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
        monkeypatch.setattr(ray.train.torch, "prepare_model", self.prepare_model)

    def prepare_model(self, model: Scorer, **_: Any) -> Scorer:
        self.models.append(model)
        return model

    def report(self, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        self.metrics.append(metrics)
        if checkpoint is not None:
            kept = self.folder / f"checkpoint_{len(self.checkpoints)}"
            shutil.copytree(checkpoint.path, kept)
            self.checkpoints.append(kept)

    def scorer(self, arch: dict[str, Any]) -> Scorer:
        """The model of the last checkpoint (what the driver registers)."""
        state = torch.load(self.checkpoints[-1] / "state.pt", weights_only=True)
        scorer = Scorer(arch["dim"], arch["slot_sizes"], arch["hidden"])
        scorer.load_state_dict(state["model"])
        return scorer


def _records() -> list[RewardRecord]:
    """Rewards of three slots in decision-time order; the latest quarter (every
    ``checklist_order`` one and some ``welcome_content`` ones) is held out."""
    return [
        *simulated_rewards(60, seed=5, slot="next_step"),
        *simulated_rewards(40, seed=5, start=60, slot="welcome_content"),
        *simulated_rewards(20, seed=5, start=100, slot="checklist_order"),
    ]


def _config_for(data: RewardData, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    """The loop's config as :func:`training.trainer.fit` builds it, on ``data``."""
    train, val = data.split(0.25)
    source = Source(
        train=train.columns(),
        validation={**val.columns(), "mask": val.mask},
        init=cold_start_bundle(SCHEMA, CATALOG, seed=0).scorer,
        describe="test",
    )
    opts = TrainOptions(data="-", workers=1, progress=False, batch_size=16, **kw)
    settings = make_settings(ONRAMP_STATE_DIR=str(tmp_path / "state"))
    return _config(source, RunPlan(tmp_path, "unit"), opts, settings, console=False)


def _online_evidence(records: list[RewardRecord]) -> list[torch.Tensor]:
    """The evidence the online learner gives ``records`` (each learned from once)."""
    scorer = cold_start_bundle(SCHEMA, CATALOG, seed=0).scorer
    optimizer = make_optimizer(scorer, "adam", lr=0.0, weight_decay=0.0)
    slot_index = {name: i for i, name in enumerate(CATALOG.slots)}
    weighted_step(scorer, optimizer, records, slot_index, 0.05, observe=len(records))
    return [scorer.evidence(k) for k in range(len(CATALOG.slots))]


def _direct_evidence(columns: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Per slot: the summed squared features of its rows, per logged action."""
    out = []
    for k, slot in enumerate(CATALOG.slots.values()):
        ev = np.zeros((slot.size, SCHEMA.dim))
        rows = columns["slot"] == k
        np.add.at(ev, columns["action"][rows], columns["x"][rows].astype(np.float64) ** 2)
        out.append(ev)
    return out


def test_a_trained_model_carries_its_training_rows_evidence_once(tmp_path, monkeypatch):
    records = _records()
    data = reward_data([r.to_json() for r in records], SCHEMA, CATALOG)
    config = _config_for(data, tmp_path, epochs=3)
    n_train = len(config["train"]["reward"])
    assert (n_train, len(config["validation"]["reward"])) == (90, 30)
    twin = RayTrainTwin(tmp_path)
    twin.install(monkeypatch)
    train_loop(config)
    assert [m["epoch"] for m in twin.metrics] == [1, 2, 3]
    trained = twin.scorer(config["architecture"])
    direct = _direct_evidence(config["train"])
    online = _online_evidence(records[:n_train])  # the training rows: the first 90 by time
    for k in range(len(CATALOG.slots)):
        got = trained.evidence(k).numpy()
        np.testing.assert_allclose(got, direct[k], rtol=1e-6)  # once, not once per epoch
        np.testing.assert_allclose(got, online[k].numpy(), rtol=1e-6)
    assert direct[0].sum() > 0 and direct[1].sum() > 0
    # the held-out rows are not counted: every checklist_order reward was held out
    assert float(trained.evidence(2).abs().sum()) == 0.0
    assert _direct_evidence(data.columns())[1].sum() > direct[1].sum()


def _interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epochs: int) -> tuple[dict, Path]:
    """A run of ``epochs`` stopped after its first: (its config, its checkpoint)."""
    data = reward_data([r.to_json() for r in _records()], SCHEMA, CATALOG)
    config = _config_for(data, tmp_path, epochs=epochs, stop_after=1)
    twin = RayTrainTwin(tmp_path / "first")
    twin.install(monkeypatch)
    with pytest.raises(Interrupted):
        train_loop(config)
    return config, twin.checkpoints[-1]


def test_a_resumed_run_does_not_count_its_rows_again(tmp_path, monkeypatch):
    config, stopped = _interrupted(tmp_path, monkeypatch, epochs=3)
    assert json.loads((stopped / "meta.json").read_text())["evidence"] is True
    again = RayTrainTwin(tmp_path / "again")
    again.install(monkeypatch)
    train_loop({**config, "stop_after": None, "resume_from": str(stopped)})
    assert [m["epoch"] for m in again.metrics] == [2, 3]
    trained = again.scorer(config["architecture"])
    direct = _direct_evidence(config["train"])
    for k in range(len(CATALOG.slots)):
        np.testing.assert_allclose(trained.evidence(k).numpy(), direct[k], rtol=1e-6)


def test_a_checkpoint_from_before_the_wide_scales_resumes(tmp_path, monkeypatch, capsys):
    config, stopped = _interrupted(tmp_path, monkeypatch, epochs=2)
    state = torch.load(stopped / "state.pt", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if "wide_scales" not in k}
    old = [torch.zeros(1) for k in state["model"] if not k.startswith("evidence")]
    state["optimizer"] = torch.optim.AdamW(old).state_dict()  # over the older parameters
    torch.save(state, stopped / "state.pt")
    again = RayTrainTwin(tmp_path / "again")
    again.install(monkeypatch)
    train_loop({**config, "stop_after": None, "resume_from": str(stopped)})
    assert [m["epoch"] for m in again.metrics] == [2]
    assert "resuming with a fresh optimizer" in capsys.readouterr().err


def test_each_worker_counts_its_shard_and_the_shards_add_up_to_the_rows(tmp_path, monkeypatch):
    """Without a process group nothing is summed: each worker holds its own shard's evidence
    (under Ray Train, ``all_reduce`` adds them up; see the integration test)."""
    data = reward_data([r.to_json() for r in _records()], SCHEMA, CATALOG)
    config = _config_for(data, tmp_path, epochs=1)
    shards = []
    for rank in (0, 1):
        twin = RayTrainTwin(tmp_path / f"rank{rank}", rank=rank, world=2)
        twin.install(monkeypatch)
        train_loop(config)
        assert twin.models and (twin.checkpoints != []) == (rank == 0)  # rank 0's alone
        shards.append([twin.models[-1].evidence(k).detach().numpy() for k in range(3)])
    direct = _direct_evidence(config["train"])
    for k in range(len(CATALOG.slots)):
        assert shards[0][k].sum() < direct[k].sum() or direct[k].sum() == 0
        np.testing.assert_allclose(shards[0][k] + shards[1][k], direct[k], rtol=1e-6)


def test_validation_ips_is_over_the_rows_an_exploring_arm_logged():
    """The greedy policy's IPS value on validation rows: the control arm's rows (one action,
    propensity 1) would count as zeros wherever the greedy choice is another action, halving
    the estimate here; with ``explored`` they are left out of it (``ips_records``)."""
    from training.metrics import evaluate

    scorer = Scorer(dim=1, slot_sizes=(2,), hidden=0, seed=0)
    with torch.no_grad():
        scorer.heads[0].bias.copy_(torch.tensor([0.0, 1.0]))  # greedy: action 1 (b)
    rng = np.random.default_rng(1)
    n = 4000
    control = np.arange(n) % 2 == 1
    action = np.where(control, 0, rng.integers(0, 2, n))
    reward = (rng.random(n) < np.where(action == 1, 0.9, 0.1)).astype(np.float32)
    data = {
        "x": np.ones((n, 1), dtype=np.float32),
        "slot": np.zeros(n, dtype=np.int64),
        "action": action.astype(np.int64),
        "reward": reward,
        "propensity": np.where(control, 1.0, 0.5).astype(np.float32),
        "mask": np.ones((n, 2), dtype=bool),
    }
    mixed = evaluate(scorer, data)
    explored = evaluate(scorer, {**data, "explored": ~control})
    assert explored["ips_records"] == n // 2 and mixed["ips_records"] == n
    assert abs(explored["ips"] - 0.9) < 0.05 and abs(mixed["ips"] - 0.45) < 0.05
    # the logging policy's value and the agreement beside ips are over the same rows: the
    # exploring arm's mean reward (0.5), not every row's (the control arm showed the worse a)
    assert abs(explored["logged"] - 0.5) < 0.03 and abs(explored["logged_all"] - 0.3) < 0.03
    assert abs(explored["match"] - 0.5) < 0.03 and abs(mixed["match"] - 0.25) < 0.03


def test_a_new_run_under_a_name_with_checkpoints_is_refused(tmp_path):
    """The run's model is read back from its folder's latest epoch: a new 3-epoch run named as
    an old 10-epoch one registered the old run's model."""
    import json

    from training.trainer import TrainError, TrainOptions, plan_run

    old = tmp_path / "nightly" / "TorchTrainer_old" / "checkpoint_000009"
    old.mkdir(parents=True)
    (old / "meta.json").write_text(json.dumps({"epoch": 9, "history": []}))
    (old / "state.pt").write_bytes(b"")
    with pytest.raises(TrainError, match=r"already has checkpoints.*--resume --run nightly"):
        plan_run(tmp_path, "train", TrainOptions(data="-", run="nightly"))
    assert plan_run(tmp_path, "train", TrainOptions(data="-", run="other")).name == "other"
    resumed = plan_run(tmp_path, "train", TrainOptions(data="-", run="nightly", resume=True))
    assert resumed.resume_from == old
