"""Offline training with Ray Train: logged reward records -> a scorer -> the model registry.

    onramp train --data .onramp/archive --workers 2 --epochs 5
    python -m training.train --data s3://bucket/onramp/archive --gpu --workers 4 --promote

Steps: read the reward records with Ray Data (:func:`training.data.load_rewards`), hold out the
latest ``--validation`` share by decision time, train a :class:`~ray_app.model.Scorer` of the
serving architecture with ``TorchTrainer`` (``--workers`` data-parallel workers, DDP; CPU unless
``--gpu``) on the importance-weighted log loss of the logged action (the online learner's
objective, :func:`ray_app.learn.objective.ips_loss`: propensities clipped at
``learn.min_propensity``), evaluate every epoch on the
held-out records (loss, AUC, precision, recall of the outcome prediction; IPS and SNIPS
estimates of the greedy policy's value with the logged, unclipped propensities; see
:mod:`training.metrics`), checkpoint every epoch, and register the final model in the registry
(promoted only with ``--promote``). The model carries the evidence of its training rows, each
counted once as the online learner counts a reward (:func:`training.loop.count_evidence`).

Checkpoints live under ``<state_dir>/train/<run>``; ``--resume`` continues the latest run (or
``--run NAME``) from its last checkpoint, e.g. after an interruption.

What it prints: its own progress (a bar per epoch drawn from the workers' ``tqdm_ray`` bars, a
line of metrics per epoch) and results (the JSON summary on stdout; on stderr where the model,
the checkpoint and the log went). Ray's own lines (its loggers, warnings raised in its code, what
its workers and actors print) go to ``ray.log`` in the run's folder; ``--verbose`` also shows them
(:mod:`training.console`). The worker loop is :mod:`training.loop`, the run's driver side
:mod:`training.trainer`.

The model starts from the cold-start bundle (the static flow's ranking, ``--seed``) or, with
``--init promoted``, from the registry's promoted version (recorded as the parent).

``--obd`` (instead of ``--data``) runs the same job, worker loop and checkpoints on the Open Bandit
Dataset's Random logs (:func:`train_obd`): rows featurized by :mod:`training.obd_policy`, one
scorer head per list position, the latest 30% held out by time; the trained model's CTR is then
estimated off-policy on those rows (IPS/SNIPS/DR with bootstrap CIs) beside the logged Random and
BTS policies. Its runs live under ``<state_dir>/train-obd``; it is not registered (the registry
and the decision service expect Onramp's feature schema).

    onramp train --obd --epochs 3 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_app.catalog import Catalog, load_catalog
from ray_app.cli.common import (
    EXIT_STATUS_HELP,
    common_options,
    guarded,
    refuse_outside,
    seed,
    setup_logging,
)
from ray_app.cli.output import dumps, working
from ray_app.config import Settings, load_settings
from ray_app.features import FeatureSchema
from ray_app.model import ModelBundle, cold_start_bundle
from ray_app.model.registry import ModelRegistry, served_version
from ray_app.timefmt import iso_ms
from training.data import RewardData, load_rewards, reward_files
from training.metrics import evaluate
from training.trainer import (
    Fitted,
    RunPlan,
    Source,
    TrainError,
    TrainOptionError,
    TrainOptions,
    check_options,
    check_resources,
    fit,
    plan_run,
    with_ray,
)

log = logging.getLogger("onramp.train")

if TYPE_CHECKING:
    from training.console import RayConsole
    from training.obd_policy import ObdPolicyReport

__all__ = [
    "OBD_WEIGHT_DECAY",
    "ObdTrainResult",
    "TrainError",
    "TrainOptionError",
    "TrainOptions",
    "build_parser",
    "main",
    "train",
    "train_obd",
]

#: Adam's weight decay for OBD runs (the in-process OBD trainer's); reward-record runs use none.
OBD_WEIGHT_DECAY = 1e-4


@dataclass(frozen=True)
class ObdTrainResult:
    """``onramp train --obd``: the JSON-ready ``summary`` (its ``report`` is ``report``'s JSON)
    and the off-policy :class:`~training.obd_policy.ObdPolicyReport` on the held-out rows."""

    summary: dict[str, Any]
    report: ObdPolicyReport


def _tell(console: RayConsole | None, line: str) -> None:
    """A line of progress on stderr (through the console while Ray's output is routed)."""
    if console is not None:
        console.show(line)
    else:
        print(line, file=sys.stderr, flush=True)


def train(opts: TrainOptions, settings: Settings) -> dict[str, Any]:
    """Run the training job (see the module docstring); returns a JSON-ready summary with the
    registered version, its model file and the log of Ray's lines (with ``opts.obd``:
    :func:`train_obd`'s summary). Starts a local Ray unless one is running (or ``ray.address``
    is set)."""
    if opts.obd:
        return train_obd(opts, settings).summary
    check_options(opts)
    reward_files(opts.data, settings.topics.rewards)  # missing or empty data: fail before Ray
    plan = plan_run(Path(settings.state_dir).resolve() / "train", "train", opts)
    return with_ray(settings, opts, plan.log, lambda c: _train(opts, settings, plan, c))


def train_obd(opts: TrainOptions, settings: Settings) -> ObdTrainResult:
    """``onramp train --obd``: the same ``TorchTrainer`` job on the Open Bandit Dataset's Random
    logs of ``opts.campaign`` (rows featurized by :func:`training.obd_policy.obd_training_columns`,
    a scorer of one head per position from :func:`training.obd_policy.init_obd_scorer`), trained
    on all but the latest ``opts.validation`` share (0.3 by default) and evaluated off-policy on
    that share by :func:`training.obd_policy.evaluate_onramp_on_obd`. Checkpoints live under
    ``<state_dir>/train-obd``; the model is not registered (its features are OBD's, not
    Onramp's feature schema, so the decision service could not serve it)."""
    check_options(opts)
    if not 0.0 < opts.validation < 1.0:
        raise TrainOptionError(
            "validation", f"--obd needs a held-out share in (0, 1), got {opts.validation}"
        )
    if opts.init != "cold":
        raise TrainOptionError(
            "init", "--obd trains a new OBD scorer; --init promoted is for --data"
        )
    if opts.promote:
        raise TrainOptionError(
            "promote", "OBD models are not registered (their features are OBD's)"
        )
    if opts.n_bootstrap < 1:
        raise TrainOptionError("n_bootstrap", f"must be >= 1, got {opts.n_bootstrap}")
    if not opts.temperature > 0:
        raise TrainOptionError("temperature", f"must be > 0, got {opts.temperature}")
    from training.obd import obd_wheel

    obd_wheel(opts.cache_dir)  # fetched (or the reason it cannot be) before Ray starts
    root = Path(settings.state_dir).resolve() / "train-obd"
    plan = plan_run(root, f"obd-{opts.campaign}", opts)
    return with_ray(settings, opts, plan.log, lambda c: _train_obd(opts, settings, plan, c))


def _read(
    opts: TrainOptions, settings: Settings, schema: FeatureSchema, cat: Catalog
) -> RewardData:
    """The reward records under ``--data`` (read with Ray Data), saying so unless quiet."""
    with working(f"reading reward records from {opts.data}") if opts.progress else nullcontext():
        # the decisions still within their window and the lateness of the newest: their
        # timeouts are not written yet (training.data.reward_data)
        s = settings.stream
        censor_ms = int(s.attribution_window_s * 1000) + s.allowed_lateness_ms
        return load_rewards(
            opts.data, schema, cat, settings.topics.rewards, censor_ms, settings.topics.decisions
        )


@dataclass(frozen=True)
class _Job:
    """What every step of a run on reward records uses."""

    settings: Settings
    registry: ModelRegistry
    schema: FeatureSchema
    catalog: Catalog


def _start_from(opts: TrainOptions, job: _Job) -> tuple[ModelBundle, int | None]:
    """The starting model (``--init``) and its registry version (the new one's parent)."""
    if opts.init != "promoted":
        hidden = job.settings.learn.hidden
        return cold_start_bundle(job.schema, job.catalog, seed=opts.seed, hidden=hidden), None
    base = job.registry.promoted_bundle(job.schema, job.catalog)
    promoted = job.registry.promoted()
    if base is None or promoted is None:
        raise TrainError("init", "--init promoted: nothing is promoted in the registry yet")
    return base, promoted.version


def _starting_model_saw_held_out(
    registry: ModelRegistry, parent: int | None, held_out: RewardData
) -> str | None:
    """A warning when the starting model (``--init promoted``) learned from records as late as
    the first held-out one: the validation metrics then overstate the new model (they measure
    what its starting weights already saw)."""
    if parent is None or len(held_out) == 0:
        return None
    meta = registry.get(parent)
    learned_to = meta.data.get("trainToMs", meta.data.get("toMs"))
    if learned_to is None and meta.source == "online":  # it learned from live traffic
        learned_to = int(meta.created_at * 1000)
    first_held_out = int(held_out.decided_at_ms.min())
    if learned_to is None or learned_to < first_held_out:
        return None
    text = (
        f"the starting model (version {parent}) learned from records up to "
        f"{iso_ms(learned_to)}, past the first held-out record ({iso_ms(first_held_out)}): "
        "the validation metrics overstate the new model; hold out later records or train "
        "from --init cold"
    )
    log.warning(text)
    return text


def _train(
    opts: TrainOptions, settings: Settings, plan: RunPlan, console: RayConsole | None
) -> dict[str, Any]:
    check_resources(opts)
    catalog = load_catalog(settings.decide.catalog_path)
    schema = FeatureSchema.from_catalog(catalog)
    job = _Job(settings, ModelRegistry.from_settings(settings), schema, catalog)
    data = _read(opts, settings, schema, catalog)
    train_data, val_data = data.split(opts.validation)
    if len(train_data) == 0:
        raise TrainError("validation", f"nothing left to train on ({len(data)} records)")
    base, parent = _start_from(opts, job)
    seen = _starting_model_saw_held_out(job.registry, parent, val_data)
    validation = {**val_data.columns(), "mask": val_data.mask, "explored": val_data.explored}
    source = Source(
        train=train_data.columns(),
        validation=validation,
        init=base.scorer,
        describe=f"{len(train_data)} records ({len(val_data)} held out) from {opts.data}",
    )
    fitted = fit(source, plan, opts, settings, console)
    final = (
        evaluate(fitted.scorer, validation, settings.learn.min_propensity) if len(val_data) else {}
    )
    summary = _register(opts, job, fitted, final, data, train_data, parent)
    if seen is not None:
        summary["warnings"] = [seen]
    if console is not None:
        summary["log"] = str(console.log.path)
    return summary


def _register(
    opts: TrainOptions,
    job: _Job,
    fitted: Fitted,
    final: dict[str, Any],
    data: RewardData,
    train_data: RewardData,
    parent: int | None,
) -> dict[str, Any]:
    """Register the trained model (and promote it with ``--promote``); the run's summary."""
    settings, registry, catalog = job.settings, job.registry, job.catalog
    bundle = ModelBundle(
        scorer=fitted.scorer,
        schema_hash=job.schema.hash,
        catalog_digest=catalog.digest,
        version=0,
        metadata={
            "kind": "trained",
            "run": fitted.run,
            "seed": opts.seed,
            "epochs": opts.epochs,
            # served as it is, it explores where its training rows were thin, as the online
            # learner's versions do (its evidence is those rows')
            "optimism": settings.learn.optimism,
        },
        slot_actions={name: list(s.action_ids) for name, s in catalog.slots.items()},
    )
    metrics = {
        **final,
        "epochs": len(fitted.history),
        "workers": opts.workers,
        "device": "gpu" if opts.gpu else "cpu",
        "train_records": len(train_data),
        "seconds": round(time.monotonic() - fitted.started, 2),
        "history": fitted.history,
    }
    meta = registry.register(
        bundle,
        "train",
        parent=parent,
        # the rows it trained on apart from the held-out ones: a run started from this model
        # can tell whether its own held-out rows are ones this model learned from
        data={**data.data_range(), "trainToMs": train_data.data_range()["toMs"]},
        metrics=metrics,
        note=opts.note,
        above=served_version(settings.model_path),
    )
    summary: dict[str, Any] = {
        "version": meta.version,
        "registry": registry.uri,
        "model": registry.model_file(meta.version),
        "run": fitted.run,
        "checkpoint": str(fitted.checkpoint),
        "metrics": {k: v for k, v in metrics.items() if k != "history"},
        "promoted": False,
    }
    if opts.promote:
        p = registry.promote(meta.version, settings.model_path, job.schema, catalog)
        summary["promoted"] = True
        summary["promotion"] = p.epoch
        summary["served"] = str(settings.model_path)
    return summary


def _train_obd(
    opts: TrainOptions, settings: Settings, plan: RunPlan, console: RayConsole | None
) -> ObdTrainResult:
    from training.obd import load_obd
    from training.obd_policy import evaluate_onramp_on_obd, init_obd_scorer, obd_training_columns

    check_resources(opts)
    logs = load_obd("random", opts.campaign, opts.cache_dir)
    train_fraction = 1.0 - opts.validation
    train_logs, test_logs = logs.split(train_fraction)
    # the Random policy is uniform (every propensity 1/80): the loop's importance weights are
    # all equal, so this is the plain log loss of the clicks, as the in-process trainer's
    validation = obd_training_columns(test_logs, mask=True)
    source = Source(
        train=obd_training_columns(train_logs),
        validation=validation,
        init=init_obd_scorer(train_logs, seed=opts.seed),
        describe=f"the first {train_logs.n_rounds} rows of the OBD Random/{opts.campaign} logs "
        f"(the last {test_logs.n_rounds} held out)",
        weight_decay=OBD_WEIGHT_DECAY,
    )
    fitted = fit(source, plan, opts, settings, console)
    fit_seconds = round(time.monotonic() - fitted.started, 2)
    if opts.progress:
        _tell(
            console,
            f"evaluating off-policy on the {test_logs.n_rounds} held-out rows "
            f"({opts.n_bootstrap} bootstrap resamples) ...",
        )
    report = evaluate_onramp_on_obd(
        opts.campaign, opts.cache_dir, train_fraction=train_fraction, seed=opts.seed,
        temperature=opts.temperature, n_bootstrap=opts.n_bootstrap, scorer=fitted.scorer,
        train_seconds=fit_seconds,
    )  # fmt: skip
    final = evaluate(fitted.scorer, validation, settings.learn.min_propensity)
    summary: dict[str, Any] = {
        "mode": "obd",
        "campaign": opts.campaign,
        "run": fitted.run,
        "checkpoint": str(fitted.checkpoint),
        "registered": False,
        "metrics": {
            **final,
            "epochs": len(fitted.history),
            "workers": opts.workers,
            "device": "gpu" if opts.gpu else "cpu",
            "train_records": train_logs.n_rounds,
            "seconds": fit_seconds,
        },
        "history": fitted.history,
        "report": report.to_json(),
    }
    if console is not None:
        summary["log"] = str(console.log.path)
    return ObdTrainResult(summary, report)


# -- command line ----------------------------------------------------------------------------------


def build_parser(prog: str = "onramp train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train the decision model offline with Ray Train on logged reward records "
        "(an archive written by `onramp archive`), evaluate it every epoch on the latest "
        "records held out (loss, AUC, precision, recall, IPS/SNIPS policy value), checkpoint "
        "every epoch, and register it in the model registry. With --obd instead of --data: "
        "the same job on the Open Bandit Dataset's Random logs (the first 70% by time), then "
        "the model's CTR estimated off-policy (IPS/SNIPS/DR, bootstrap CIs) on the rest, beside "
        "the logged Random and BTS policies; that model is not registered (its features are "
        "OBD's) and the last line printed is a JSON summary. It shows its own progress (a bar "
        "per epoch, a line of metrics per epoch) and says where its outputs went (model, "
        "checkpoint, log); Ray's own log lines go to ray.log in the run's folder, and "
        "--verbose shows them here too.",
        epilog="examples:\n"
        "  onramp archive --out .onramp/archive && onramp train --data .onramp/archive\n"
        "  onramp train --data .onramp/archive --workers 4 --epochs 10 --promote\n"
        "  onramp train --data s3://bucket/onramp/archive --gpu --workers 2\n"
        "  onramp train --data .onramp/archive --resume     # continue the last run\n"
        "  onramp train --obd --epochs 3 --workers 2        # Onramp's model on OBD, held-out CTR\n\n"
        + EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options()],
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        metavar="URI",
        help="archive root, folder of *.jsonl reward records, or one file (path, file://, s3://)",
    )
    source.add_argument(
        "--obd",
        action="store_true",
        help="train on the Open Bandit Dataset's Random logs (fetched once with pip download "
        "obp==0.4.1 --no-deps) and evaluate off-policy on the latest --validation share",
    )
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (error if absent)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default 1)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the data (default 5)")
    p.add_argument("--batch-size", type=int, default=256, help="records per step and worker")
    p.add_argument("--lr", type=float, default=0.005, help="Adam learning rate (default 0.005)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the weights and shuffles")
    p.add_argument(
        "--validation", type=float, help="latest share held out (default 0.2; --obd: 0.3)"
    )
    p.add_argument("--init", choices=["cold", "promoted"], default="cold", help="starting weights")
    p.add_argument("--run", help="run name (default train-<time>; with --resume: the latest)")
    p.add_argument("--resume", action="store_true", help="continue a run from its last checkpoint")
    p.add_argument("--promote", action="store_true", help="promote the registered version")
    p.add_argument("--note", default="", help="free text stored with the version")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    p.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests of --resume
    obd = p.add_argument_group("--obd")
    obd.add_argument(
        "--campaign",
        default="all",
        choices=["all", "men", "women"],
        help="OBD campaign (default all)",
    )
    obd.add_argument("--cache-dir", metavar="DIR", help="OBD cache (default ~/.cache/onramp/obd)")
    obd.add_argument(
        "--n-bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)"
    )
    obd.add_argument(
        "--temperature", type=float, default=0.1, help="softmax policy temperature (default 0.1)"
    )
    return p


def _options(args: argparse.Namespace) -> TrainOptions:
    names = ("obd", "workers", "gpu", "epochs", "batch_size", "lr", "seed", "validation",
             "cpus_per_worker", "resume", "run", "init", "promote", "note", "stop_after",
             "campaign", "cache_dir", "n_bootstrap", "temperature")  # fmt: skip
    return TrainOptions(
        data=args.data or "",
        progress=not args.no_progress,
        verbose=bool(getattr(args, "verbose", False)),
        **{n: getattr(args, n) for n in names},
    )


def _outputs(summary: dict[str, Any]) -> None:
    """Where the run's outputs went, on stderr (the summary on stdout says it too)."""
    lines = []
    if "model" in summary:
        served = f" (promoted: served from {summary['served']})" if summary.get("promoted") else ""
        lines.append(f"model: version {summary['version']}, {summary['model']}{served}")
    if summary.get("checkpoint"):
        lines.append(f"checkpoint: {summary['checkpoint']}")
    if summary.get("log"):
        lines.append(f"Ray's log: {summary['log']}")
    if lines:
        print("\n".join(lines), file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    opts = _options(args)
    if opts.obd:
        from training.evaluate import print_obd_policy_report

        result = train_obd(opts, settings)
        print_obd_policy_report(result.report)
        _outputs(result.summary)
        print(dumps(result.summary))  # the last line: the JSON summary
        return 0
    summary = train(opts, settings)
    _outputs(summary)
    print(dumps(summary, indent=2))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m training.train") -> int:
    """Entry point of ``python -m training.train`` and ``onramp train``: the exit statuses of
    every ``onramp`` command (0 ok, 1 runtime error, 2 usage or configuration, 130 Ctrl-C)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    obd = bool(args.obd)
    refuse_outside(
        parser,
        args,
        {
            **dict.fromkeys(
                ("--campaign", "--cache-dir", "--n-bootstrap", "--temperature"), ("--obd", obd)
            ),
            # OBD models are not registered (--init and --promote say so with the reason)
            "--note": ("--data", not obd),
        },
    )
    setup_logging(args)
    return guarded(prog, lambda: _run(args))


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    raise SystemExit(main())
