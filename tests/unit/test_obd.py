"""The OBD loader's pure parts: BTS Monte Carlo draws, errors for a missing or broken wheel."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from ray_app.errors import FieldError
from training.obd import OBP_WHEEL, ObdUnavailable, bts_action_dist, load_bts_prior, load_obd


def test_bts_draws_match_one_ranking_per_round() -> None:
    """Vectorized chunks give exactly the counts of ranking items one round at a time (what
    obp's select_action does): same RandomState stream, same argsort."""
    rng = np.random.default_rng(0)
    alpha, beta = rng.uniform(1, 50, 12), rng.uniform(50, 500, 12)
    rs = np.random.RandomState(99)
    counts = np.zeros((12, 3))
    for _ in range(700):
        top = rs.beta(a=alpha, b=beta).argsort()[::-1][:3]
        for pos in range(3):
            counts[top[pos], pos] += 1
    got = bts_action_dist(alpha, beta, len_list=3, n_sim=700, random_state=99, chunk=64)
    np.testing.assert_array_equal(got, counts / 700)


def test_bts_rejects_bad_parameters() -> None:
    with pytest.raises(FieldError, match="Beta parameters must be > 0"):
        bts_action_dist(np.array([1.0, 0.0]), np.array([1.0, 1.0]), len_list=1)
    with pytest.raises(FieldError, match="len_list"):
        bts_action_dist(np.ones(2), np.ones(2), len_list=3)


def test_a_wheel_without_the_data_names_the_missing_file(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / OBP_WHEEL, "w") as z:
        z.writestr("obp/__init__.py", "")
    with pytest.raises(ObdUnavailable, match=r"obp/dataset/obd/random/all/all\.csv is missing"):
        load_obd("random", "all", cache_dir=tmp_path)
    with pytest.raises(ObdUnavailable, match=r"prior_bts\.yaml is missing"):
        load_bts_prior("all", cache_dir=tmp_path)


def test_a_corrupt_wheel_says_to_delete_it(tmp_path: Path) -> None:
    (tmp_path / OBP_WHEEL).write_bytes(b"not a zip")
    with pytest.raises(ObdUnavailable, match="delete it to download it again"):
        load_obd("random", "all", cache_dir=tmp_path)


def test_unknown_policy_or_campaign_is_a_field_error(tmp_path: Path) -> None:
    with pytest.raises(FieldError, match="behavior_policy: expected one of"):
        load_obd("greedy", "all", cache_dir=tmp_path)
    with pytest.raises(FieldError, match="campaign: expected one of"):
        load_obd("random", "kids", cache_dir=tmp_path)


def test_train_obd_options_are_checked_before_ray_or_a_download(tmp_path: Path, capsys) -> None:
    """`onramp train --obd`: options that make no sense for OBD are refused, naming the option,
    before Ray starts or the wheel is fetched (the cache stays empty)."""
    from training.train import main

    cache = tmp_path / "cache"
    base = ["--obd", "--cache-dir", str(cache)]
    for extra, message in [
        (["--validation", "0"], "validation: --obd needs a held-out share in (0, 1)"),
        (["--promote"], "promote: OBD models are not registered"),
        (["--init", "promoted"], "init: --obd trains a new OBD scorer"),
        (["--n-bootstrap", "0"], "n_bootstrap: must be >= 1"),
        (["--temperature", "0"], "temperature: must be > 0"),
        (["--workers", "0"], "workers: must be >= 1"),
    ]:
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not cache.exists()
    with pytest.raises(SystemExit):  # --data and --obd are two sources: one at a time
        main(["--obd", "--data", str(tmp_path)])
    assert "not allowed with argument" in capsys.readouterr().err
