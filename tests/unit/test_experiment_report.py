"""`onramp report` statistics on simulated experiments with a known true effect: the intervals
cover it at about their nominal rate, SRM fires on a skewed split and not on a fair one, CUPED
reduces variance when the covariate correlates (and costs nothing when it does not)."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from ray_app.cli import main
from ray_app.experiments.report import (
    analyze,
    cuped,
    proportion,
    srm,
    users_from_logs,
)

BASE = 0.20  # activation in control
LIFT = 0.20  # true relative uplift of treatment
CONV = 0.30  # per-decision conversion in control


def simulate(seed: int, n: int = 2000, lift: float = LIFT, cov_noise: float | None = 0.5):
    """Users of two arms. Activation probability p_i = BASE * (1 + b u_i) (* (1 + lift) in
    treatment) with u_i ~ U(-1, 1), so E[activation] is exactly BASE and BASE * (1 + lift);
    the covariate is u_i plus noise (None: independent of u). Decisions per user 1 + Poisson(2),
    each converting with the user's own rate q_i ~ Beta around CONV (* (1 + lift)): users are
    clusters, which the ratio metric's interval must account for."""
    rng = np.random.default_rng(seed)
    arm = np.where(rng.random(2 * n) < 0.5, "control", "treatment")
    treated = arm == "treatment"
    u = rng.uniform(-1, 1, 2 * n)
    p = BASE * (1 + 0.9 * u) * np.where(treated, 1 + lift, 1.0)
    activated = (rng.random(2 * n) < p).astype(int)
    decisions = 1 + rng.poisson(2, 2 * n)
    q = rng.beta(3, 7, 2 * n) * np.where(treated, 1 + lift, 1.0)  # mean 0.3
    positives = rng.binomial(decisions, np.clip(q, 0, 1))
    cov = u + rng.normal(0, cov_noise, 2 * n) if cov_noise is not None else rng.normal(size=2 * n)
    return pd.DataFrame(
        {
            "user": [f"u{i}" for i in range(2 * n)],
            "arm": arm,
            "first_ms": rng.integers(0, 86_400_000, 2 * n),
            "decisions": decisions,
            "positives": positives,
            "steps": np.minimum(positives, 4),
            "activated": activated,
            "covariate": cov,
        }
    )


@pytest.fixture(scope="module")
def runs():
    return [analyze(simulate(seed)) for seed in range(200)]


def _coverage(runs, key):
    hits = [r["arms"]["treatment"][key] for r in runs]
    return sum(h["low"] <= LIFT <= h["high"] for h in hits) / len(hits)


def test_uplift_intervals_cover_the_true_effect_at_the_nominal_rate(runs):
    # 200 seeds: the coverage of a 95% interval has a standard error of 1.5 points
    for key in ("activation_uplift", "conversion_uplift", "activation_uplift_cuped"):
        cov = _coverage(runs, key)
        assert 0.905 <= cov <= 0.99, (key, cov)
    # and the interval is not trivially wide: the effect is detected in most runs
    assert np.mean([r["arms"]["treatment"]["activation_uplift"]["low"] > 0 for r in runs]) > 0.5


def test_per_arm_intervals_cover_the_true_rates(runs):
    act = [r["arms"]["control"]["activation"] for r in runs]
    conv = [r["arms"]["treatment"]["conversion"] for r in runs]
    assert 0.905 <= np.mean([a["low"] <= BASE <= a["high"] for a in act]) <= 0.99
    true_conv = CONV * (1 + LIFT)
    assert 0.905 <= np.mean([c["low"] <= true_conv <= c["high"] for c in conv]) <= 0.99


def test_ratio_metric_interval_accounts_for_users_as_clusters():
    """Treating decisions as independent (a plain binomial over decisions) under-covers when
    users differ; the delta method over users does not."""
    naive, delta = [], []
    for seed in range(120):
        df = simulate(seed, n=1000)
        c = df[df["arm"] == "control"]
        k, n = int(c["positives"].sum()), int(c["decisions"].sum())
        naive.append(proportion(k, n).covers(CONV))
        delta.append(analyze(df)["arms"]["control"]["conversion"])
    delta_cov = np.mean([d["low"] <= CONV <= d["high"] for d in delta])
    assert delta_cov >= 0.9
    assert np.mean(naive) < delta_cov  # the naive interval is too narrow


def test_no_effect_is_rarely_significant():
    runs = [analyze(simulate(1000 + s, lift=0.0)) for s in range(120)]
    false_pos = np.mean([not (u := r["arms"]["treatment"]["activation_uplift"])["low"] <= 0 <= u["high"] for r in runs])  # fmt: skip
    assert false_pos <= 0.1  # 5% expected; 120 runs


def test_srm_fires_on_a_skewed_split_and_not_on_a_fair_one():
    rng = np.random.default_rng(0)
    shares = {"control": 0.5, "treatment": 0.5}
    fair = [
        srm({"control": k, "treatment": 10_000 - k}, shares) for k in rng.binomial(10_000, 0.5, 500)
    ]
    skewed = [srm({"control": k, "treatment": 10_000 - k}, shares) for k in rng.binomial(10_000, 0.53, 500)]  # fmt: skip
    assert sum(r.mismatch for r in fair) <= 3  # threshold p < 0.001
    assert np.mean([r.mismatch for r in skewed]) >= 0.98  # a 53/47 split: z about 6
    # under a fair split the p-value is uniform: about 5% below 0.05
    assert 0.02 <= np.mean([r.p_value < 0.05 for r in fair]) <= 0.08
    # three arms with a holdout share, from the configured weights
    three = {"control": 0.45, "treatment": 0.45, "holdout": 0.1}
    assert not srm({"control": 4500, "treatment": 4480, "holdout": 1020}, three).mismatch
    assert srm({"control": 4500, "treatment": 4480, "holdout": 700}, three).mismatch


def test_srm_in_the_summary_uses_the_configured_shares():
    df = simulate(3)
    keep = (df["arm"] == "control") | (np.arange(len(df)) % 10 < 8)  # drop 20% of treatment
    r = analyze(df[keep], shares={"control": 0.5, "treatment": 0.5})
    assert r["srm"]["mismatch"] and r["srm"]["p_value"] < 1e-6


def test_cuped_reduces_variance_when_the_covariate_correlates():
    reductions, widths_raw, widths_cuped = [], [], []
    for seed in range(50):
        r = analyze(simulate(seed))
        reductions.append(r["cuped"]["varianceReduction"])
        t = r["arms"]["treatment"]
        widths_raw.append(t["activation_uplift"]["high"] - t["activation_uplift"]["low"])
        widths_cuped.append(t["activation_uplift_cuped"]["high"] - t["activation_uplift_cuped"]["low"])  # fmt: skip
    assert np.mean(reductions) > 0.03
    assert np.mean(widths_cuped) < np.mean(widths_raw)
    # an unrelated covariate reduces nothing (and the estimate stays the same)
    r = analyze(simulate(7, cov_noise=None))
    assert abs(r["cuped"]["varianceReduction"]) < 0.01
    # a strongly correlated continuous metric: reduction close to corr**2
    rng = np.random.default_rng(1)
    x = rng.normal(size=20_000)
    y = 0.8 * x + 0.6 * rng.normal(size=20_000)
    c = cuped(y, x)
    assert c.variance_reduction == pytest.approx(c.correlation**2, abs=0.01)
    assert c.variance_reduction == pytest.approx(0.64, abs=0.03)


def _logs(seed: int = 5, n: int = 600):
    """Decision and reward records as the topics hold them, with duplicates (at least once)."""
    df = simulate(seed, n=n)
    decisions, rewards = [], []
    for row in df.itertuples():
        for k in range(row.decisions):
            did = f"{row.user}-{k}"
            ts = pd.Timestamp(row.first_ms + k * 1000, unit="ms", tz="UTC").isoformat()
            d = {"schema": "onramp.decision/1", "decisionId": did, "userKey": row.user,
                 "slot": "next_step", "chosen": f"step{k}", "arm": row.arm,
                 "experiment": "onboarding", "timestamp": ts}  # fmt: skip
            decisions.append(d)
            positive = k < row.positives
            rewards.append({"schema": "onramp.reward/1", "decisionId": did, "userKey": row.user,
                            "arm": row.arm, "action": f"step{k}", "reward": float(positive),
                            "outcome": "completed" if positive else "timeout"})  # fmt: skip
        if row.activated:
            did = f"{row.user}-c"
            decisions.append({"decisionId": did, "userKey": row.user, "slot": "welcome_content",
                              "chosen": "tour", "arm": row.arm, "experiment": "onboarding",
                              "timestamp": pd.Timestamp(row.first_ms, unit="ms", tz="UTC").isoformat()})  # fmt: skip
            rewards.append(
                {"decisionId": did, "reward": 1.0, "outcome": "converted", "action": "tour"}
            )
    decisions += decisions[:50]  # replayed records
    rewards += rewards[:50]
    return df, decisions, rewards


def test_users_from_logs_rebuilds_the_user_table():
    df, decisions, rewards = _logs()
    users = users_from_logs(decisions, rewards, dict(zip(df["user"], df["covariate"], strict=True)))
    got = users["onboarding"].set_index("user").sort_index()
    want = df.set_index("user").sort_index()
    assert (got["arm"] == want["arm"]).all()
    assert (got["activated"] == want["activated"]).all()
    # the activation decision counts as a decision with a positive outcome too
    assert (got["decisions"] == want["decisions"] + want["activated"]).all()
    assert (got["positives"] == want["positives"] + want["activated"]).all()
    assert (got["covariate"] == want["covariate"]).all()


def test_cli_writes_html_with_plots_and_a_json_summary(tmp_path, capsys):
    df, decisions, rewards = _logs()
    d, r = tmp_path / "decisions.jsonl", tmp_path / "rewards.jsonl"
    d.write_text("\n".join(json.dumps(x) for x in decisions) + "\n")
    r.write_text("\n".join(json.dumps(x) for x in rewards) + "\n")
    cov = tmp_path / "pre.csv"
    df[["user", "covariate"]].to_csv(cov, index=False)
    out = tmp_path / "report"
    rc = main(["report", "--decisions", str(d), "--rewards", str(r), "--covariates", str(cov),
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "experiment onboarding: 1200 users" in printed and "SRM: p =" in printed
    summary = json.loads((out / "summary.json").read_text())["onboarding"]
    assert set(summary["arms"]) == {"control", "treatment"}
    assert summary["cuped"]["varianceReduction"] > 0
    page = (out / "onboarding.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2  # the funnel and the uplift over time
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "Completion funnel" in page and "Uplift over time" in page


def test_cli_table_input_and_errors(tmp_path, capsys):
    df = simulate(11, n=300)
    table = tmp_path / "users.csv"
    df.to_csv(table, index=False)
    assert main(["report", "--table", str(table), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "default.html").exists()
    df.drop(columns="activated").to_csv(table, index=False)
    assert main(["report", "--table", str(table), "--out", str(tmp_path / "r")]) == 1
    assert "missing columns ['activated']" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "r")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"decisionId": "a"}\nnot json\n')
    assert main(["report", "--decisions", str(bad), "--rewards", str(bad)]) == 1
    assert f"{bad}:2: not JSON" in capsys.readouterr().err


def test_chi_square_tail_matches_torch():
    """The report's own chi-square tail (no SciPy here) against torch's regularized gamma."""
    import torch

    from ray_app.experiments.stats import chi2_sf

    for df in (1, 2, 3, 7, 30):
        for x in (0.01, 0.5, 1.0, 3.84, 10.0, 25.0, 80.0):
            want = float(
                torch.special.gammaincc(
                    torch.tensor(df / 2, dtype=torch.float64),
                    torch.tensor(x / 2, dtype=torch.float64),
                )
            )
            assert chi2_sf(x, df) == pytest.approx(want, rel=1e-9, abs=1e-15), (df, x)


def test_small_arms_missing_covariates_and_file_order_found_in_review():
    """Three edge cases a review found: an arm with no activation had a zero-width uplift
    interval; one user without a pre-period covariate turned CUPED off for everybody (it now
    takes the mean for them); a user's arm was the first record read, not the earliest."""
    users = pd.DataFrame(
        {
            "user": [f"u{i}" for i in range(200)],
            "arm": ["control"] * 100 + ["treatment"] * 100,
            "positives": [1] * 200,
            "decisions": [1] * 200,
            "activated": [1] * 10 + [0] * 90 + [0] * 100,
            "steps": [1] * 200,
            "first_ms": [0] * 200,
        }
    )
    uplift = analyze(users)["arms"]["treatment"]["activation_uplift"]
    assert uplift["low"] == -1.0 < uplift["high"], uplift  # not the single point -1
    rng = np.random.default_rng(0)
    with_cov = users.assign(covariate=rng.normal(size=200))
    with_cov.loc[3, "covariate"] = np.nan
    assert analyze(with_cov)["cuped"] is not None
    decisions = [
        {"decisionId": "d2", "userKey": "u", "arm": "treatment", "chosen": "a", "timestamp": 5000},
        {"decisionId": "d1", "userKey": "u", "arm": "control", "chosen": "a", "timestamp": 1000},
    ]
    [frame] = users_from_logs(decisions, []).values()
    assert frame.iloc[0]["arm"] == "control" and frame.iloc[0]["first_ms"] == 1000


@pytest.mark.parametrize(
    ("cell", "value", "needle"),
    [
        ("activated", 7, "activated must be 0 or 1"),  # a math domain error deep in the stats
        ("activated", 2, "activated must be 0 or 1"),  # counted as 2 activations, exit 0
        ("arm", "", "arm is empty"),  # a TypeError comparing str with float
        ("experiment", "", "experiment is empty"),  # the row dropped by the groupby, exit 0
        ("positives", 1_000, "positives must be at most decisions"),
        ("decisions", 1.5, "decisions must be a count"),
        ("first_ms", 10**17, "first_ms must be a time of 1970-2200"),  # OutOfBoundsDatetime
    ],
)
def test_cli_table_cells_that_no_report_can_take_are_refused_by_row(
    tmp_path, capsys, cell, value, needle
):
    df = simulate(11, n=50).assign(experiment="e1")
    df[cell] = df[cell].astype(object)
    df.loc[3, cell] = value
    table = tmp_path / "users.csv"
    df.to_csv(table, index=False)
    assert main(["report", "--table", str(table), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert needle in err and "(row 5)" in err and "Traceback" not in err


def test_cli_an_infinite_covariate_is_refused(tmp_path, capsys):
    """A covariate of inf passed, and CUPED's theta and correlation were written as null."""
    df = simulate(11, n=50)
    table, cov = tmp_path / "users.csv", tmp_path / "cov.csv"
    df.to_csv(table, index=False)
    cov.write_text("user,covariate\n" + "".join(f"{u},1.0\n" for u in df["user"][:-1]) + "x,inf\n")
    args = ["report", "--table", str(table), "--covariates", str(cov), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "covariate must be a finite number, got 'inf'" in capsys.readouterr().err
