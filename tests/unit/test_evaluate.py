"""`onramp evaluate --logs`: Onramp's own decision and reward logs, the CLI's output and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deployments import onramp as cli
from ray_app.catalog import load_catalog
from ray_app.features import FeatureSchema
from ray_app.model import cold_start_bundle
from training.evaluate import main


def _write_logs(tmp: Path, n: int = 400, seed: int = 0) -> tuple[Path, Path, float]:
    """Decisions of a uniform logging policy over each decision's candidates, and their rewards
    (in a separate file, without candidates: the evaluator joins them by decision id)."""
    catalog = load_catalog()
    dim = FeatureSchema.from_catalog(catalog).dim
    rng = np.random.default_rng(seed)
    decisions, rewards = [], []
    slots = {name: list(s.action_ids) for name, s in catalog.slots.items()}
    for i in range(n):
        slot = ["next_step", "welcome_content"][i % 2]
        actions = slots[slot]
        cands = [a for a in actions if rng.random() < 0.7] or actions[:1]
        chosen = cands[int(rng.integers(len(cands)))]
        features = rng.normal(size=dim).round(3).tolist()
        reward = float(rng.random() < (0.6 if chosen == actions[0] else 0.2))
        decisions.append({
            "schema": "onramp.decision/1", "decisionId": f"d{i}", "userKey": f"u{i}",
            "slot": slot, "chosen": chosen, "propensity": 1 / len(cands), "candidates": cands,
            "features": features, "arm": "treatment", "modelVersion": 1,
            "timestamp": "2026-01-01T00:00:00.000+00:00",
        })  # fmt: skip
        rewards.append({
            "schema": "onramp.reward/1", "decisionId": f"d{i}", "userKey": f"u{i}",
            "slot": slot, "action": chosen, "actionIndex": actions.index(chosen),
            "arm": "treatment", "propensity": 1 / len(cands), "features": features,
            "reward": reward, "outcome": "completed" if reward else "timeout",
            "decidedAtMs": i, "outcomeAtMs": i + 5 if reward else None, "modelVersion": 1,
        })  # fmt: skip
    rewards.append(rewards[0])  # a reward written twice (at-least-once): counted once
    d, r = tmp / "decisions.jsonl", tmp / "rewards.jsonl"
    d.write_text("\n".join(json.dumps(x) for x in decisions) + "\n")
    r.write_text("\n".join(json.dumps(x) for x in rewards) + "\n")
    return d, r, float(np.mean([x["reward"] for x in rewards[:-1]]))


def test_logged_and_uniform_policies_on_onramp_logs(tmp_path, capsys) -> None:
    d, r, mean_reward = _write_logs(tmp_path)
    catalog = load_catalog()
    model = tmp_path / "model.bin"
    model.write_bytes(cold_start_bundle(FeatureSchema.from_catalog(catalog), catalog).to_bytes())
    plot = tmp_path / "ope.png"
    rc = main(["--logs", str(r), str(d), "--model", str(model), "--plot", str(plot),
               "--n-bootstrap", "100"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["n"] == 400 and summary["skipped_records"] == 0
    pol = summary["policies"]
    # the logging policy was uniform over each decision's candidates (known from the decision
    # records only: the join by decision id is tested here): the logged policy and
    # the uniform policy have IPS weights of exactly 1, so IPS is the mean reward
    assert pol["logged"]["ips"]["value"] == pytest.approx(mean_reward)
    assert pol["uniform"]["ips"]["value"] == pytest.approx(mean_reward)
    assert set(pol["greedy"]) == {"ips", "snips", "dm", "dr"}
    for est in pol["greedy"].values():
        assert est["ci_low"] <= est["value"] <= est["ci_high"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("greedy") for line in out)


def test_onramp_evaluate_is_a_cli_command(tmp_path, capsys) -> None:
    d, r, mean_reward = _write_logs(tmp_path, n=60)
    rc = cli.main(["evaluate", "--logs", str(r), str(d), "--plot", str(tmp_path / "p.png"),
                   "--n-bootstrap", "20"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["policies"]) == {"logged", "uniform"}  # no model: no greedy, no DM/DR
    assert summary["policies"]["logged"]["ips"]["value"] == pytest.approx(mean_reward)
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--help"])
    assert exc.value.code == 0
    assert "onramp evaluate --obd" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "rewards.jsonl:2: not JSON"),
        ("[1, 2]", "rewards.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_log_lines_are_named(tmp_path, capsys, line, message) -> None:
    _, r, _ = _write_logs(tmp_path, n=4)
    r.write_text(r.read_text().splitlines()[0] + "\n" + line + "\n")
    assert main(["--logs", str(r), "--plot", str(tmp_path / "p.png")]) == 1
    assert message in capsys.readouterr().err


def test_a_record_that_cannot_be_used_is_counted_and_the_rest_evaluated(tmp_path, capsys):
    """One bad record stopped the whole evaluation with a field name and no record; training
    skips and counts the same records. Now each is left out and counted by reason."""
    d, r, _ = _write_logs(tmp_path, n=40)
    good = [json.loads(x) for x in r.read_text().splitlines()[:40]]
    bad = [
        {**good[0], "decisionId": "zero", "propensity": 0},
        {**good[0], "decisionId": "gone", "slot": "old_slot"},
        {**good[0], "decisionId": "far", "actionIndex": 40},
        {**good[0], "decisionId": "odd", "outcome": "clicked"},
    ]
    r.write_text("\n".join(json.dumps(x) for x in good + bad) + "\n")
    assert main(["--logs", str(r), str(d), "--plot", str(tmp_path / "p.png"),
                 "--n-bootstrap", "20"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 40
    assert summary["invalid_records"] == {
        "invalid:propensity": 1,
        "unknown_slot": 1,
        "action": 1,
        "invalid:outcome": 1,
    }


def test_an_archive_across_a_feature_schema_change_is_evaluated(tmp_path, capsys):
    """Records logged with another feature length (an upgrade from 512 to 2,048 hash buckets):
    the model-free policies need no features, so the whole archive is evaluated; with a model,
    the rows it cannot score are left out and counted."""
    _, r, _ = _write_logs(tmp_path, n=40)
    rows = [json.loads(x) for x in r.read_text().splitlines()[:40]]
    for x in rows[:10]:
        x["features"] = x["features"][:10]
    r.write_text("\n".join(json.dumps(x) for x in rows) + "\n")
    # (their decision times span 40 ms: all within the window of the newest, kept by --censor-s 0)
    common = ["--plot", str(tmp_path / "p.png"), "--n-bootstrap", "20", "--censor-s", "0"]
    assert main(["--logs", str(r), *common]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 40
    catalog = load_catalog()
    model = tmp_path / "model.bin"
    model.write_bytes(cold_start_bundle(FeatureSchema.from_catalog(catalog), catalog).to_bytes())
    assert main(["--logs", str(r), "--model", str(model), *common]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 30 and summary["invalid_records"] == {"feature_schema": 10}


def test_the_decisions_still_in_their_window_are_left_out(tmp_path, capsys):
    """An archive taken a minute after its last decisions holds their quick outcomes and not
    yet their timeouts (written once the window and the lateness have passed): counting them
    made every estimate too high. They are left out (``recent``) unless --censor-s 0."""
    base = {"schema": "onramp.reward/1", "userKey": "u", "slot": "s", "action": "a",
            "actionIndex": 0, "arm": "treatment", "propensity": 1.0, "features": [1.0],
            "modelVersion": 0, "outcomeAtMs": None}  # fmt: skip
    t0 = 1_767_225_600_000
    old = [{**base, "decisionId": f"o{i}", "decidedAtMs": t0 + i, "reward": float(i % 2),
            "outcome": "completed" if i % 2 else "timeout"} for i in range(40)]  # fmt: skip
    late = t0 + 3_600_000  # an hour on: two completed, the other two not yet timed out
    recent = [{**base, "decisionId": f"r{i}", "decidedAtMs": late, "reward": 1.0,
               "outcome": "completed"} for i in range(2)]  # fmt: skip
    r = tmp_path / "rewards.jsonl"
    r.write_text("\n".join(json.dumps(x) for x in old + recent) + "\n")
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text("\n".join(json.dumps(
        {"schema": "onramp.decision/2", "decisionId": f"r{i}", "userKey": "u", "slot": "s",
         "chosen": "a", "propensity": 1.0, "actionIndex": 0, "features": {},
         "timestamp": "2026-01-01T01:00:00.000Z"}) for i in range(4)) + "\n")  # fmt: skip
    slots = {"s": ["a", "b"]}
    from training.evaluate import onramp_log_from_records

    records = [json.loads(x) for f in (r, decisions) for x in f.read_text().splitlines()]
    table = onramp_log_from_records(records, slots, censor_ms=600_000)
    assert table.log.n == 40 and table.invalid == {"recent": 2}
    assert float(np.mean(table.log.reward)) == 0.5
    assert onramp_log_from_records(records, slots).log.n == 42  # 0: all kept
    # every decision of the stretch rewarded (and one that showed nothing, never rewarded): a
    # complete log, read whole
    complete = [x for x in records if x.get("decisionId") not in ("r2", "r3")]
    complete.append({**json.loads(decisions.read_text().splitlines()[0]), "decisionId": "n0",
                     "chosen": None})  # fmt: skip
    assert onramp_log_from_records(complete, slots, censor_ms=600_000).log.n == 42


def test_missing_file_and_model_mismatch_are_errors(tmp_path, capsys) -> None:
    assert main(["--logs", str(tmp_path / "nope.jsonl")]) == 1
    assert "nope.jsonl: cannot read" in capsys.readouterr().err
    _, r, _ = _write_logs(tmp_path, n=4)
    assert main(["--logs", str(r), "--model", str(tmp_path / "missing.bin")]) == 1
    assert "model: cannot read" in capsys.readouterr().err


def _mixed_arms_log(n: int = 4000) -> list[dict]:
    """Half the users in control (the static flow: always ``a``, propensity 1), half in a
    treatment that explores uniformly; ``a`` completes 10% of the time, ``b`` 90%."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        if i % 2:
            action, propensity, arm = "a", 1.0, "control"
        else:
            action, propensity, arm = ("a" if rng.random() < 0.5 else "b"), 0.5, "treatment"
        reward = float(rng.random() < {"a": 0.1, "b": 0.9}[action])
        records.append(
            {"schema": "onramp.reward/1", "decisionId": f"d{i}", "userKey": "u", "slot": "s",
             "action": action, "actionIndex": "ab".index(action), "arm": arm,
             "propensity": propensity, "features": [1.0], "reward": reward,
             "outcome": "completed" if reward else "timeout", "decidedAtMs": i,
             "outcomeAtMs": None, "modelVersion": 0}
        )  # fmt: skip
    return records


def test_off_policy_estimates_leave_the_control_arm_out():
    """The control arm never shows what another policy would choose (one action, propensity 1):
    mixed in, uniform's IPS value came out at 0.28 with an interval that missed the truth (0.5);
    over the exploring arm's rows it is unbiased, and the control rows are counted as left out."""
    from training.evaluate import evaluate_onramp_logs, onramp_log_from_records

    table = onramp_log_from_records(_mixed_arms_log(), {"s": ["a", "b"]})
    assert table.control == 2000 and table.log.n == 2000
    est = evaluate_onramp_logs(table, n_bootstrap=200)["uniform"]["ips"]
    assert est.ci_low <= 0.5 <= est.ci_high and abs(est.value - 0.5) < 0.05
    holdout = [{**r, "arm": "holdout"} if r["arm"] == "control" else r for r in _mixed_arms_log()]
    assert onramp_log_from_records(holdout, {"s": ["a", "b"]}).control == 2000  # static flow too
    only_control = [r for r in _mixed_arms_log(10) if r["arm"] == "control"]
    with pytest.raises(Exception, match="no reward records of an exploring arm"):
        onramp_log_from_records(only_control, {"s": ["a", "b"]})


def test_rewards_that_cannot_be_what_was_shown_are_left_out_and_counted():
    """A reward whose action is not the one at its actionIndex, whose candidates name actions
    the slot does not have (or leave out the one served), or that repeats a decision's reward:
    each was taken as it came (credited to another action, a propensity of a choice among
    other actions: an IPS of 2.0 for 0/1 rewards) or dropped without a count."""
    from training.evaluate import onramp_log_from_records

    good = [r for r in _mixed_arms_log(40) if r["arm"] == "treatment"]
    odd = [
        {**good[0], "decisionId": "x1", "action": "b", "actionIndex": 0},
        {**good[1], "decisionId": "x2", "candidates": ["Welcome", "a"]},
        {**good[2], "decisionId": "x3", "candidates": ["b"], "action": "a", "actionIndex": 0},
        dict(good[3]),  # a second copy of a reward
    ]
    table = onramp_log_from_records(good + odd, {"s": ["a", "b"]})
    assert table.log.n == len(good)
    assert table.invalid == {"duplicate": 1, "action": 1, "candidates": 2}


def test_training_leaves_out_rewards_whose_candidates_the_slot_does_not_have():
    from ray_app.catalog import load_catalog
    from ray_app.features import FeatureSchema
    from training.data import reward_data

    catalog = load_catalog()
    schema = FeatureSchema.from_catalog(catalog)
    row = {"decisionId": "d1", "userKey": "u", "slot": "next_step", "action": "goals",
           "actionIndex": 3, "arm": "treatment", "propensity": 0.5, "features": [0.0] * schema.dim,
           "reward": 1, "outcome": "completed", "decidedAtMs": 5, "outcomeAtMs": 9,
           "modelVersion": 0}  # fmt: skip
    data = reward_data(
        [row, {**row, "decisionId": "d2", "candidates": ["Goals", "goals"]},
         {**row, "decisionId": "d3", "candidates": ["role"]}],
        schema, catalog,
    )  # fmt: skip
    assert len(data) == 1 and data.skipped == {"invalid:candidates": 2}


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--seed", "-1"], "--seed: expected an integer >= 0, got '-1'"),
        (["--plot", "ope.txt"], "--plot: expected a file ending in .png"),
        (["--n-sim", "0"], "--n-sim: expected an integer >= 1, got '0'"),
        (["--n-bootstrap", "-5"], "--n-bootstrap: expected an integer >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_the_run(tmp_path, capsys, args, said) -> None:
    """They were tracebacks from numpy or matplotlib, the plot's after the whole run."""
    _, r, _ = _write_logs(tmp_path, n=4)
    with pytest.raises(SystemExit) as info:
        main(["--logs", str(r), *args])
    assert info.value.code == 2 and said in capsys.readouterr().err


def test_train_refuses_a_negative_seed_before_it_starts_ray(capsys) -> None:
    from training.train import main as train

    with pytest.raises(SystemExit) as info:
        train(["--data", "nowhere", "--seed", "-1"])
    assert info.value.code == 2 and "--seed: expected an integer >= 0" in capsys.readouterr().err


def test_evaluate_reads_an_archive_root(tmp_path, capsys) -> None:
    """Report, audit and train take `onramp archive`'s root; evaluate said there were no JSON
    lines files there (they are in its topic folders)."""
    from ray_app.config import load_settings

    topics = load_settings(env={}).topics
    d, r, mean_reward = _write_logs(tmp_path, n=40)
    root = tmp_path / "archive"
    for topic, src in ((topics.decisions, d), (topics.rewards, r)):
        (root / topic).mkdir(parents=True)
        (root / topic / "part-0000-000000000000-000000000040.jsonl").write_text(src.read_text())
    for given in (str(root), f"file://{root}"):  # a URI too, as report, audit and train take
        plot = str(tmp_path / "p.png")
        assert main(["--logs", given, "--plot", plot, "--n-bootstrap", "50"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["n"] == 40
        assert summary["policies"]["logged"]["ips"]["value"] == pytest.approx(mean_reward)
