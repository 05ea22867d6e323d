"""Training data: reading reward archives, and the errors for missing, empty or mismatched data."""

from __future__ import annotations

import numpy as np
import pytest

from ray_app.catalog import load_catalog
from ray_app.features import FeatureSchema
from ray_app.sim.logs import simulated_rewards, write_reward_archive
from training.data import TrainingDataError, reward_data, reward_files
from training.metrics import auc
from training.train import main as train_main

CATALOG = load_catalog()
SCHEMA = FeatureSchema.from_catalog(CATALOG)


def test_archive_layout_is_found_from_the_root_the_folder_or_the_file(tmp_path):
    path = write_reward_archive(simulated_rewards(20, seed=1), tmp_path)
    assert reward_files(str(tmp_path)) == [path]
    assert reward_files(f"file://{tmp_path}/onramp.rewards") == [path]
    assert reward_files(path) == [path]


def test_missing_and_empty_data_are_clear_errors(tmp_path, capsys):
    with pytest.raises(TrainingDataError, match="no such file or directory") as info:
        reward_files(str(tmp_path / "nope"))
    assert info.value.field == "data"
    (tmp_path / "onramp.rewards").mkdir()
    with pytest.raises(TrainingDataError, match=r"no reward records \(\*\.jsonl\)"):
        reward_files(str(tmp_path))
    with pytest.raises(TrainingDataError, match="no reward records to train on"):
        reward_data([], SCHEMA, CATALOG)
    # the CLI answers with the reason before starting anything (missing input: a runtime error)
    assert train_main(["--data", str(tmp_path / "nope")]) == 1
    assert "data: " in capsys.readouterr().err


def test_records_from_another_feature_schema_are_refused():
    records = simulated_rewards(5, seed=2)
    rows = [r.to_json() for r in records]
    # four features fewer, as schema /1 wrote them (the dense list): read the same way
    short = [
        {**row, "schema": "onramp.reward/1", "features": r.features[:-4]}
        for row, r in zip(rows, records, strict=True)
    ]
    with pytest.raises(TrainingDataError, match="another feature schema") as info:
        reward_data(short, SCHEMA, CATALOG)
    assert info.value.field == "features"
    # mixed: the odd ones out are counted, never trained on silently
    data = reward_data(rows + short[:2], SCHEMA, CATALOG)
    assert len(data) == 5 and data.skipped == {"duplicate": 2}
    renamed = [{**r, "decisionId": r["decisionId"] + "x"} for r in short[:2]]
    assert reward_data(rows + renamed, SCHEMA, CATALOG).skipped == {"feature_schema": 2}


def test_reward_data_orders_by_decision_time_and_splits_the_latest_off():
    rows = [r.to_json() for r in simulated_rewards(30, seed=3)]
    rows[0]["arm"] = "holdout"
    data = reward_data(list(reversed(rows)), SCHEMA, CATALOG)
    assert data.skipped == {"holdout": 1} and len(data) == 29
    assert (np.diff(data.decided_at_ms) >= 0).all()
    train, val = data.split(0.2)
    assert (len(train), len(val)) == (
        23,
        6,
    ) and train.decided_at_ms.max() <= val.decided_at_ms.min()
    assert data.mask[np.arange(len(data)), data.action].all()  # the logged action is eligible
    assert data.data_range()["records"] == 29
    assert data.explored is not None and data.explored.all()  # every row from treatment
    # the control arm's rows train too, marked as not exploring (left out of the IPS metrics)
    rows[5]["arm"] = "control"
    mixed = reward_data(rows, SCHEMA, CATALOG)
    assert mixed.explored is not None and int((~mixed.explored).sum()) == 1
    [at] = np.flatnonzero(~mixed.explored)
    assert int(mixed.decided_at_ms[at]) == rows[5]["decidedAtMs"]
    assert mixed.take(np.array([at])).explored.tolist() == [False]


def test_auc_against_a_brute_force_count():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 10, 200).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auc(y, s) == pytest.approx(brute)


def test_reward_files_takes_what_the_other_archive_readers_take(tmp_path):
    """A folder of .jsonl.gz files (which report and audit read) had no reward records for
    training."""
    import gzip

    from training.data import reward_files

    folder = tmp_path / "onramp.rewards"
    folder.mkdir()
    (folder / "part-0000-0-9.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n'))
    assert reward_files(str(tmp_path)) == [f"{folder}/part-0000-0-9.jsonl.gz"]
    one = folder / "part-0000-0-9.jsonl.gz"
    assert reward_files(str(one)) == [str(one)]


def test_a_batch_decided_at_once_trains_the_same_whatever_order_its_files_are_read():
    """Ray Data reads an archive's partition files in no fixed order, and a batch of decisions
    shares one time: ties went by the order read, so one archive gave other splits (and models)
    from one seed."""
    rows = [r.to_json() for r in simulated_rewards(40, seed=4)]
    for n, row in enumerate(rows):
        row["decidedAtMs"] = rows[0]["decidedAtMs"] + n // 8 * 1_000  # batches of 8
    a = reward_data(rows, SCHEMA, CATALOG)
    b = reward_data(list(reversed(rows)), SCHEMA, CATALOG)
    for name in ("x", "slot", "action", "reward", "propensity", "decided_at_ms"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.split(0.2)[1].reward, b.split(0.2)[1].reward)


def test_the_last_stretch_is_left_out_where_its_decisions_wait_for_their_timeouts():
    """An archive taken while decisions of its last window still wait for their timeouts holds
    only their quick outcomes: left out (``recent``) when the archive's decision records show a
    decision there without a reward; a complete log (every decision rewarded) is kept whole."""
    rows = [r.to_json() for r in simulated_rewards(30, seed=5)]
    times = [(row["decisionId"], row["decidedAtMs"]) for row in rows]
    newest = max(t for _, t in times)
    waiting = [("waiting", newest)]  # decided last, no reward yet
    data = reward_data(rows, SCHEMA, CATALOG, censor_ms=10_000, decisions=times + waiting)
    assert data.skipped == {"recent": 10} and len(data) == 20  # one user a second
    assert len(reward_data(rows, SCHEMA, CATALOG, censor_ms=10_000, decisions=times)) == 30
    assert len(reward_data(rows, SCHEMA, CATALOG, censor_ms=0, decisions=times + waiting)) == 30


def test_a_time_near_the_int64_limit_is_not_turned_negative():
    rows = [r.to_json() for r in simulated_rewards(3, seed=6)]
    rows[0]["decidedAtMs"] = 2**63 - 1
    assert int(reward_data(rows, SCHEMA, CATALOG).decided_at_ms.max()) == 2**63 - 1
