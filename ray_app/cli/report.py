"""``onramp report``: experiment analysis (per-arm rates, uplift, SRM, CUPED) as HTML and JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_app.config import Settings
from ray_app.errors import ConfigError, OnrampError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    report = sub.add_parser(
        "report",
        parents=[common],
        help="analyse experiments: conversion, activation, uplift, SRM, CUPED (HTML + JSON)",
        description="Per experiment and arm: conversion (decisions followed by a positive "
        "outcome) and activation (users who completed onboarding) with confidence intervals, "
        "relative uplift against control, a sample-ratio-mismatch check against the configured "
        "split (decide.arms, decide.holdout) and, with --covariates, CUPED variance reduction. "
        "Writes <experiment>.html (funnel and uplift-over-time plots) and summary.json. The logs "
        "are files, or what `onramp archive` writes (an archive root or a topic's folder of "
        "per-partition files), local or at a URI (s3://...).",
        epilog="examples:\n"
        "  onramp archive --out .onramp/archive && onramp report --archive .onramp/archive\n"
        "  onramp report --decisions decisions.jsonl --rewards rewards.jsonl --out report/\n"
        "  onramp report --archive s3://bucket/onramp/archive/2026-11-26\n"
        "  onramp report --table users.csv --covariates pre.csv --level 0.9",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument(
        "--archive",
        metavar="URI",
        help="an archive written by `onramp archive`: its decisions and rewards topics",
    )
    report.add_argument(
        "--decisions", metavar="URI", help="decision records: a JSON lines file or folder"
    )
    report.add_argument(
        "--rewards", metavar="URI", help="reward records: a JSON lines file or folder"
    )
    report.add_argument(
        "--table",
        metavar="FILE",
        help="instead of the logs: one row per user (CSV/Parquet) with user, arm, decisions, "
        "positives, activated [, steps, first_ms, experiment, covariate]",
    )
    report.add_argument(
        "--covariates",
        metavar="FILE",
        help="CSV with user,covariate: a pre-period metric per user, for CUPED",
    )
    report.add_argument("--out", default="onramp-report", help="output directory")
    report.add_argument("--control", default="control", help="the control arm")
    report.add_argument("--level", type=float, default=0.95, help="confidence level")


def _read_covariates(path: str) -> dict[str, float]:
    import pandas as pd

    try:
        cov = pd.read_csv(path)
    except OSError:
        raise  # a missing file or a folder: the command says which
    except Exception as exc:  # pandas raises many kinds for a file that is no CSV
        raise ConfigError(f"--covariates {path}: not a CSV table: {exc}") from None
    if not {"user", "covariate"} <= set(cov.columns):
        raise ConfigError(f"--covariates {path}: needs columns user,covariate")
    values = pd.to_numeric(cov["covariate"], errors="coerce")
    infinite = values.isin([float("inf"), float("-inf")])  # CUPED's theta became null
    bad = cov["covariate"][(values.isna() & cov["covariate"].notna()) | infinite]
    if len(bad):
        raise ConfigError(
            f"--covariates {path}: covariate must be a finite number, got {str(bad.iloc[0])!r} "
            f"(row {int(bad.index[0]) + 2})"
        )
    return dict(zip(cov["user"].astype(str), values.astype(float), strict=True))


def _experiments(args: argparse.Namespace, settings: Settings) -> dict[str, pd.DataFrame]:
    """One table of users per experiment, from ``--table`` or from the decision/reward logs."""
    from ray_app.experiments.report import read_json_lines, read_user_table, users_from_logs

    covariates = _read_covariates(args.covariates) if args.covariates else None
    if args.table:
        experiments = read_user_table(args.table)
        if covariates is not None:
            for name, df in experiments.items():
                experiments[name] = df.assign(covariate=df["user"].map(covariates))
    elif (args.decisions or args.archive) and (args.rewards or args.archive):
        decisions = read_json_lines(args.decisions or args.archive, settings.topics.decisions)
        rewards = read_json_lines(args.rewards or args.archive, settings.topics.rewards)
        experiments = users_from_logs(decisions, rewards, covariates)
    else:
        raise ConfigError("report: give --archive, or --decisions and --rewards, or --table")
    if not experiments:
        raise OnrampError("report: no decision with a chosen action in the input")
    return experiments


def _print_summary(summary: dict[str, Any]) -> None:
    for name, s in summary.items():
        print(f"experiment {name}: {s['users']} users -> {s['html']}")
        for arm, r in s["arms"].items():
            act, up = r["activation"], r["activation_uplift"]
            line = f"  {arm:<12} users {r['users']:>7}  activation {100 * act['value']:.2f}%"
            if up and up["value"] is not None:
                line += f"  uplift {100 * up['value']:+.1f}% [{100 * up['low']:+.1f}, {100 * up['high']:+.1f}]"
            print(line)
        srm = s["srm"]
        print(f"  SRM: p = {srm['p_value']:.3g}" + ("  MISMATCH" if srm["mismatch"] else ""))


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ray_app.experiments import Experiment
    from ray_app.experiments.report import write_report

    if not 0 < args.level < 1:
        raise ConfigError(f"--level: must be between 0 and 1, got {args.level}")
    experiments = _experiments(args, settings)
    for name, users in experiments.items():
        arms = sorted(str(a) for a in users["arm"].unique())
        if args.control not in arms:
            raise ConfigError(
                f"--control: no user of experiment {name!r} is in arm {args.control!r}; its "
                f"arms: {', '.join(arms)}"
            )
    d = settings.decide
    shares = Experiment(name=d.experiment, salt=d.salt, arms=d.arms, holdout=d.holdout).shares()
    summary = write_report(experiments, args.out, shares, args.control, args.level)
    _print_summary(summary)
    print(f"summary: {Path(args.out) / 'summary.json'}")
    return 0
