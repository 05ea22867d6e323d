"""The Open Bandit Dataset on the real obp 0.4.1 wheel (downloaded once into the user cache),
and the Open Bandit Pipeline quickstart reproduced with our estimators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.obd import PUBLISHED, ObdUnavailable, load_bts_prior, load_obd, obd_wheel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def random_all():
    return load_obd("random", "all")


def test_loader_reads_the_real_wheel(random_all) -> None:
    logs = random_all
    assert (logs.n_rounds, logs.n_actions, logs.len_list) == (10_000, 80, 3)
    assert {"timestamp", "item_id", "position", "click", "propensity_score"} <= set(logs.data)
    assert logs.data["timestamp"].is_monotonic_increasing
    assert logs.context.shape == (10_000, 20)  # obp's default context: 20 one-hot columns
    assert logs.action_context.shape == (80, 5)
    assert set(np.unique(logs.position)) == {0, 1, 2}
    assert set(np.unique(logs.reward)) == {0.0, 1.0}
    # the Random policy is uniform over the 80 items at every position: the propensities of the
    # distinct items seen at a position sum to 1
    for pos in range(3):
        at = logs.position == pos
        per_item = dict(zip(logs.action[at], logs.pscore[at], strict=False))
        assert len(per_item) == 80
        assert sum(per_item.values()) == pytest.approx(1.0)
    bts = load_obd("bts", "all")
    assert bts.n_rounds == 10_000 and ((bts.pscore > 0) & (bts.pscore <= 1)).all()
    alpha, beta = load_bts_prior("all")
    assert alpha.shape == beta.shape == (80,) and (alpha > 0).all() and (beta > 0).all()


def test_a_failed_download_says_why(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(ObdUnavailable, match=r"could not download obp==0\.4\.1"):
        obd_wheel(tmp_path)
    assert not any(tmp_path.iterdir())  # no partial file left behind


@pytest.mark.slow
def test_quickstart_is_reproduced() -> None:
    from training.obd import reproduce_quickstart

    res = reproduce_quickstart("all", n_bootstrap=200)
    err = res.relative_errors()
    assert err["ips"] < 0.03, (res.estimates["ips"], PUBLISHED["ips"])
    assert err["dm"] < 0.10, (res.estimates["dm"], PUBLISHED["dm"])
    assert err["dr"] < 0.10, (res.estimates["dr"], PUBLISHED["dr"])
    for e in res.estimates.values():
        assert e.ci_low <= e.value <= e.ci_high


@pytest.mark.slow
def test_onramp_train_obd_trains_with_ray_train_and_reports_heldout_ctr_with_cis(
    ray_session, tmp_path, monkeypatch, capsys
) -> None:
    """`onramp train --obd`: 2 Ray Train workers train Onramp's scorer on the first 70% of the
    Random logs (time order), and its CTR on the other 30% is estimated with CIs beside the
    logged Random and BTS policies; the table and a one-line JSON summary are printed."""
    import json

    from training.train import main

    monkeypatch.setenv("ONRAMP_STATE_DIR", str(tmp_path / "state"))
    # the session's Ray has 2 CPUs and Serve replicas may hold some: small CPU shares
    argv = ["--obd", "--workers", "2", "--epochs", "1", "--cpus-per-worker", "0.25"]
    assert main([*argv, "--n-bootstrap", "50", "--seed", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    table = "\n".join(out[:-1])
    for name in ("onramp_greedy", "onramp_softmax", "bts_prior", "random_heldout", "bts_logs"):
        assert name in table
    assert "effective sample size" in table
    # trained by the Ray Train job: per-epoch metrics from the workers, a checkpoint on disk,
    # nothing registered
    assert summary["mode"] == "obd" and summary["registered"] is False
    assert summary["metrics"]["workers"] == 2 and summary["metrics"]["epochs"] == 1
    assert [h["epoch"] for h in summary["history"]] == [1]
    assert summary["history"][0]["val_records"] == 3_000
    ckpt = tmp_path / "state" / "train-obd" / summary["run"]
    assert (Path(summary["checkpoint"]) / "state.pt").is_file()
    assert Path(summary["checkpoint"]).is_relative_to(ckpt)
    assert not (tmp_path / "state" / "registry").exists()
    rep = summary["report"]
    assert (rep["n_train"], rep["n_test"]) == (7_000, 3_000)  # time-ordered 70/30 split
    assert set(rep["policies"]) == {"onramp_greedy", "onramp_softmax", "bts_prior"}
    for estimates in rep["policies"].values():
        assert set(estimates) == {"ips", "snips", "dr"}
        for e in estimates.values():
            assert e["n"] == 3_000 and e["ci_low"] <= e["value"] <= e["ci_high"]
    # the logged policies' on-policy CTRs are the plain means of their logs
    logs = load_obd("random", "all")
    heldout = rep["on_policy"]["random_heldout"]
    assert heldout["value"] == pytest.approx(logs.reward[7_000:].mean())
    assert heldout["ci_low"] <= heldout["value"] <= heldout["ci_high"]
    assert rep["on_policy"]["bts_logs"]["value"] == pytest.approx(PUBLISHED["bts_ctr"])
    # a deterministic list of 3 of 80 items matches about 1 logged row in 80
    assert 10 < rep["effective_sample_size"]["onramp_greedy"] < 100
    assert 0 <= rep["heldout"]["auc"] <= 1
    assert rep["heldout"]["clicks"] == logs.reward[7_000:].sum()
