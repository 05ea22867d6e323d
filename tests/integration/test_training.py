"""Offline training with Ray Train on the session's real Ray: a 2-worker CPU run that checkpoints
and resumes, the GPU error, the evidence two workers write into the model (the sum of their
shards), and a model trained by `onramp train` on simulated logs that is promoted and served by
/v1/decide without restarting the Serve app."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from ray_app.catalog import load_catalog
from ray_app.features import FeatureSchema
from ray_app.model.registry import ModelRegistry
from ray_app.sim.logs import simulated_rewards, write_reward_archive
from ray_app.sim.v2 import GroundTruth
from tests.conftest import deploy, make_settings
from training.data import reward_data
from training.train import TrainError, TrainOptions, train

pytestmark = pytest.mark.integration

READ = {"authorization": "Bearer onramp-demo-read-key"}
# small CPU shares: the session's Ray has 2 CPUs and the Serve replicas hold some
CPUS = "0.25"


def test_gpu_without_gpus_is_a_clear_error(ray_session, tmp_path):
    write_reward_archive(simulated_rewards(5, seed=1), tmp_path)
    opts = TrainOptions(data=str(tmp_path), gpu=True, workers=2, progress=False)
    with pytest.raises(TrainError, match=r"the Ray cluster has 0 GPU") as info:
        train(opts, make_settings(ONRAMP_STATE_DIR=str(tmp_path / "state")))
    assert info.value.field == "gpu"


def _evidence_of(columns: dict[str, np.ndarray], slot: int, n_actions: int) -> np.ndarray:
    """One pass over the rows: the summed squared features of ``slot``'s rows, per action."""
    rows = columns["slot"] == slot
    ev = np.zeros((n_actions, columns["x"].shape[1]))
    np.add.at(ev, columns["action"][rows], columns["x"][rows].astype(np.float64) ** 2)
    return ev


def _greedy_value(scorer, truth: GroundTruth, users: int) -> tuple[float, float]:
    """Expected completion rate of the model's greedy next_step choice, and of the static flow,
    over fresh simulated users (the ground truth's probabilities, no sampling noise)."""
    from ray_app.model import score_batch

    catalog = truth.catalog
    schema = FeatureSchema.from_catalog(catalog)
    slot = catalog.slot("next_step")
    model = static = 0.0
    for i in range(100_000, 100_000 + users):
        user = truth.user(i)
        profile = user.profile()
        eligible = catalog.eligible("next_step", profile)
        x = schema.featurize(profile, None, {"device": "desktop"}, now_ms=0)
        s = score_batch(scorer, x, slot.index)[0]
        best = max(eligible, key=lambda a: s[a])
        model += truth.p_complete(user.segment, "next_step", best)
        static += truth.p_complete(
            user.segment, "next_step", truth.static_choice("next_step", eligible)
        )
    return model / users, static / users


@pytest.mark.slow
def test_trained_model_is_promoted_and_served_without_restart(
    broker, serve_port, tmp_path, monkeypatch, capsys
):
    """Two CPU workers train on simulated logs; the run is interrupted after 3 epochs and
    `onramp train --resume --promote` finishes it; /v1/decide then serves the promoted version
    without a restart, and that model beats the static flow on the simulator's ground truth."""
    from ray import serve

    from deployments.onramp import main as cli

    state = tmp_path / "state"
    model = tmp_path / "served" / "treatment.onramp"
    env = {
        "ONRAMP_STATE_DIR": str(state),
        "ONRAMP_DECIDE__MODEL_PATH": str(model),
        "ONRAMP_DECIDE__MODEL_POLL_S": "0.1",
        "ONRAMP_DECIDE__ARMS": '{"control": 0, "treatment": 1}',
        "ONRAMP_DECIDE__POLICY": "epsilon_greedy",
        "ONRAMP_DECIDE__EPSILON": "0",
    }
    settings = make_settings(broker.bootstrap, **env)
    data = tmp_path / "archive"
    write_reward_archive(simulated_rewards(3000, seed=21), data)
    args = ["--data", str(data), "--workers", "2", "--cpus-per-worker", CPUS, "--epochs", "8",
            "--batch-size", "64", "--lr", "0.01", "--no-progress"]  # fmt: skip
    app = deploy("train-serve", "/trained", settings, serve_port)
    try:
        ask = {"user_id": "trained-user-1", "slot": "next_step"}
        with httpx.Client(base_url=app.base_url, timeout=30, headers=READ) as http:
            assert http.post("/v1/decide", json=ask).json()["modelVersion"] == 0
            opts = TrainOptions(
                data=str(data), workers=2, epochs=8, batch_size=64, lr=0.01,
                cpus_per_worker=float(CPUS), progress=False, run="sim", stop_after=3,
            )  # fmt: skip
            with pytest.raises(TrainError, match="--resume --run sim") as info:
                train(opts, settings)  # interrupted after epoch 3
            assert info.value.field == "run"
            assert ModelRegistry.from_settings(settings).list() == []  # nothing registered
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            capsys.readouterr()
            rc = cli(["train", *args, "--resume", "--run", "sim", "--promote"])
            out = capsys.readouterr()
            assert rc == 0, out.err
            summary = json.loads(out.out)
            version = summary["version"]
            assert summary["promoted"] and summary["run"] == "sim" and model.exists()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                after = http.post("/v1/decide", json=ask).json()
                if after["modelVersion"] == version:
                    break
                time.sleep(0.2)
            assert after["modelVersion"] == version, after
            assert http.get("/healthz", headers=READ).json()["models"]["treatment"] == version
    finally:
        serve.delete("train-serve")
    registry = ModelRegistry.from_settings(settings)
    meta = registry.get(version)
    history = meta.metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, 9))  # 1-3 were not redone
    for h in history:
        assert np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"])
        assert 0 <= h["val_auc"] <= 1 and h["val_ips"] >= 0
    assert meta.metrics["workers"] == 2 and meta.metrics["train_records"] == 2400
    assert meta.data["records"] == 3000 and meta.data["fromMs"] < meta.data["toMs"]
    assert meta.schema_hash == FeatureSchema.from_catalog(load_catalog()).hash
    # what was served is what was trained, and it learned: its greedy choices beat the static
    # flow's on the simulator's ground truth, and its SNIPS estimate beats the logging policy
    catalog = load_catalog()
    bundle = registry.load(version, FeatureSchema.from_catalog(catalog), catalog)
    # the model carries the evidence of its 2,400 training rows, each counted once over 2
    # workers, 8 epochs and a resume (the rows held out are not counted)
    logged = [r.to_json() for r in simulated_rewards(3000, seed=21)]
    schema = FeatureSchema.from_catalog(catalog)
    columns = reward_data(logged, schema, catalog).split(0.2)[0].columns()
    slot = catalog.slot("next_step")
    np.testing.assert_allclose(
        bundle.scorer.evidence(slot.index).numpy(),
        _evidence_of(columns, slot.index, slot.size),
        rtol=1e-5,
    )
    assert bundle.metadata["optimism"] == settings.learn.optimism > 0  # the replicas' bonus
    trained, static = _greedy_value(bundle.scorer, GroundTruth(seed=21), 400)
    print(f"trained greedy {trained:.4f} vs static {static:.4f}; metrics {meta.metrics}")
    assert trained > static + 0.05, (trained, static)
    assert meta.metrics["snips"] > meta.metrics["logged"]
