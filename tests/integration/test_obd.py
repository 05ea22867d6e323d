"""The Open Bandit Dataset on the real obp 0.4.1 wheel (downloaded once into the user cache),
and the Open Bandit Pipeline quickstart reproduced with our estimators."""

from __future__ import annotations

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
def test_onramp_scorer_on_heldout_obd_reports_ctr_with_cis() -> None:
    from training.obd_policy import evaluate_onramp_on_obd

    rep = evaluate_onramp_on_obd("all", epochs=1, n_bootstrap=50, seed=0)
    assert (rep.n_train, rep.n_test) == (7_000, 3_000)  # time-ordered 70/30 split
    assert set(rep.policies) == {"onramp_greedy", "onramp_softmax", "bts_prior"}
    for estimates in rep.policies.values():
        assert set(estimates) == {"ips", "snips", "dr"}
        for e in estimates.values():
            assert e.n == 3_000 and e.ci_low <= e.value <= e.ci_high
    # the logged policies' on-policy CTRs are the plain means of their logs
    logs = load_obd("random", "all")
    assert rep.on_policy["random_heldout"].value == pytest.approx(logs.reward[7_000:].mean())
    assert rep.on_policy["bts_logs"].value == pytest.approx(PUBLISHED["bts_ctr"])
    # a deterministic list of 3 of 80 items matches about 1 logged row in 80
    assert 10 < rep.effective_sample_size["onramp_greedy"] < 100
    assert 0 <= rep.heldout["auc"] <= 1 and rep.heldout["clicks"] == logs.reward[7_000:].sum()
