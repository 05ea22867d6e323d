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
(promoted only with ``--promote``).

Checkpoints live under ``<state_dir>/train/<run>``; ``--resume`` continues the latest run (or
``--run NAME``) from its last checkpoint, e.g. after an interruption.

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
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch
from torch import nn

from ray_app.catalog import load_catalog
from ray_app.cli.common import EXIT_STATUS_HELP, common_options, guarded, setup_logging
from ray_app.cli.output import dumps
from ray_app.config import Settings, load_settings
from ray_app.errors import ConfigError, FieldError
from ray_app.features import FeatureSchema
from ray_app.learn.objective import ips_loss
from ray_app.model import ModelBundle, Scorer, cold_start_bundle
from ray_app.model.registry import ModelRegistry, served_version
from training.data import load_rewards, reward_files
from training.metrics import evaluate, logged_action_logits

if TYPE_CHECKING:
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

_T = TypeVar("_T")


class TrainError(FieldError):
    """A training run that cannot start or finish: the option at fault and why."""

    http_status = 400


class TrainOptionError(TrainError, ConfigError):
    """Options that make no sense together or out of range (exit status 2, not 1)."""


class TrainOptions:
    """The training job's options (the CLI's, as attributes)."""

    def __init__(self, **kw: Any) -> None:
        self.obd: bool = kw.get("obd", False)  # the OBD Random logs instead of --data
        self.data: str = kw.get("data", "")
        self.workers: int = kw.get("workers", 2)
        self.gpu: bool = kw.get("gpu", False)
        self.epochs: int = kw.get("epochs", 5)
        self.batch_size: int = kw.get("batch_size", 256)
        self.lr: float = kw.get("lr", 0.005)
        self.seed: int = kw.get("seed", 0)
        validation = kw.get("validation")  # default: 0.2, or OBD's 0.3
        self.validation: float = (0.3 if self.obd else 0.2) if validation is None else validation
        self.cpus_per_worker: float = kw.get("cpus_per_worker", 1.0)
        self.resume: bool = kw.get("resume", False)
        self.run: str | None = kw.get("run")
        self.init: str = kw.get("init", "cold")
        self.promote: bool = kw.get("promote", False)
        self.note: str = kw.get("note", "")
        self.progress: bool = kw.get("progress", True)
        self.stop_after: int | None = kw.get("stop_after")
        self.campaign: str = kw.get("campaign", "all")  # --obd: the OBD campaign
        self.cache_dir: str | None = kw.get("cache_dir")  # --obd: where the obp wheel is cached
        self.n_bootstrap: int = kw.get("n_bootstrap", 1000)  # --obd: the evaluation's resamples
        self.temperature: float = kw.get("temperature", 0.1)  # --obd: the softmax policy's


# -- the worker loop ---------------------------------------------------------------------------


def _resume(
    scorer: nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any]
) -> tuple[int, list[dict[str, Any]]]:
    """Load the checkpoint to resume from into ``scorer`` and ``optimizer``: a restart within
    this run (Ray Train's own), else the one ``--resume`` found; returns (first epoch to run,
    history so far), ``(0, [])`` without one."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = ray.train.Checkpoint.from_directory(config["resume_from"])
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", weights_only=True, map_location="cpu")
        scorer.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        meta = json.loads((Path(d) / "meta.json").read_text())
    return meta["epoch"] + 1, meta["history"]


def _train_loop(config: dict[str, Any]) -> None:  # runs on every Ray Train worker
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config["seed"] + rank)
    arch = config["architecture"]
    scorer = _LoggedScorer(arch["dim"], arch["slot_sizes"], arch["hidden"], seed=config["seed"])
    scorer.load_state_dict(config["init_weights"])
    optimizer = torch.optim.Adam(
        scorer.parameters(), lr=config["lr"], weight_decay=config.get("weight_decay", 0.0)
    )
    start_epoch, history = _resume(scorer, optimizer, config)
    scorer.to(device)
    for group in optimizer.state.values():
        for k, v in group.items():
            if isinstance(v, torch.Tensor):
                group[k] = v.to(device)
    model = ray.train.torch.prepare_model(scorer, move_to_device=False)
    train = config["train"]
    n = len(train["reward"])
    own = np.arange(rank, n, world)  # this worker's shard
    rng = np.random.default_rng(config["seed"] + 1000 * rank)
    batch = config["batch_size"]
    steps = int(config["steps_per_epoch"])  # the same on every worker: DDP syncs every step
    for epoch in range(start_epoch, config["epochs"]):
        started = time.monotonic()
        order = rng.permutation(own) if len(own) else own
        total = weight = 0.0
        bar = _bar(rank == 0 and config["progress"], steps, f"epoch {epoch + 1}/{config['epochs']}")
        for step in range(steps):
            idx = order[(step * batch) % max(len(order), 1) :][:batch] if len(order) else order
            if len(idx) < batch and len(order):  # wrap around so every step has a full batch
                idx = np.concatenate([idx, order[: batch - len(idx)]])
            x = torch.from_numpy(train["x"][idx]).to(device)
            s = torch.from_numpy(train["slot"][idx]).to(device)
            a = torch.from_numpy(train["action"][idx]).to(device)
            y = torch.from_numpy(train["reward"][idx]).to(device)
            p = torch.from_numpy(train["propensity"][idx]).to(device)
            logit = model(x, s, a, _logged=True)  # through DDP's forward: its hooks sync grads
            loss = ips_loss(logit, y, p, config["min_propensity"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            weight += len(idx)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        inner = cast(nn.Module, model.module if hasattr(model, "module") else model)
        cpu = Scorer(arch["dim"], arch["slot_sizes"], arch["hidden"])
        cpu.load_state_dict({k: v.detach().cpu() for k, v in inner.state_dict().items()})
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(weight, 1.0)}
        if rank == 0:
            val = (
                evaluate(cpu, config["validation"], config["min_propensity"])
                if len(config["validation"]["reward"])
                else {}
            )
            metrics.update({f"val_{k}": v for k, v in val.items()})
            metrics["seconds"] = round(time.monotonic() - started, 3)
            metrics["records_per_s"] = round(weight * world / max(metrics["seconds"], 1e-9), 1)
            history.append(metrics)
            if config["progress"]:
                print(_epoch_line(metrics), file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                torch.save(
                    {"model": cpu.state_dict(), "optimizer": optimizer.state_dict()},
                    Path(d) / "state.pt",
                )
                (Path(d) / "meta.json").write_text(json.dumps({"epoch": epoch, "history": history}))
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report({k: v for k, v in metrics.items() if v is not None}, checkpoint=ckpt)
        if config.get("stop_after") is not None and epoch + 1 >= config["stop_after"]:
            raise _Interrupted(f"stopped after epoch {epoch + 1} (--stop-after)")


class _Interrupted(RuntimeError):
    """Raised by a worker to simulate an interruption (tests of --resume)."""


class _Progress:
    """A progress line on stderr (rewritten in place on a terminal, a line every few seconds
    otherwise): steps done, rate, time left."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.started = self.shown = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.shown >= (0.5 if self.tty else 5.0) or self.done == self.total:
            self.shown = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            line = (
                f"{self.desc}: {self.done}/{self.total} steps, {rate:.1f} steps/s, {left:.0f}s left"
            )
            print(
                ("\r" + line) if self.tty else line,
                end="" if self.tty else "\n",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def _bar(enabled: bool, total: int, desc: str) -> _Progress | None:
    return _Progress(total, desc) if enabled else None


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _epoch_line(m: dict[str, Any]) -> str:
    keys = (
        "train_loss",
        "val_loss",
        "val_auc",
        "val_precision",
        "val_recall",
        "val_ips",
        "val_snips",
    )
    return f"epoch {m['epoch']}: " + " ".join(f"{k}={_fmt(m.get(k))}" for k in keys)


# -- the driver ----------------------------------------------------------------------------------


class _LoggedScorer(Scorer):
    """A Scorer whose forward can also return the logged action's logits (for DDP)."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, slot_index: Any, action: Any = None, _logged: bool = False
    ) -> torch.Tensor:
        if _logged:
            return logged_action_logits(self, x, slot_index, action)
        return super().forward(x, slot_index)


def _find_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the highest epoch under ``run_dir`` (``None``: none)."""
    best: tuple[int, Path] | None = None
    for meta in run_dir.rglob("meta.json"):
        if not (meta.parent / "state.pt").exists():
            continue
        try:
            epoch = int(json.loads(meta.read_text())["epoch"])
        except (ValueError, KeyError, OSError):
            continue
        if best is None or epoch > best[0]:
            best = (epoch, meta.parent)
    return None if best is None else best[1]


def _latest_run(root: Path) -> Path | None:
    runs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    runs = [d for d in runs if _find_checkpoint(d) is not None]
    return max(runs, key=lambda d: d.stat().st_mtime) if runs else None


@dataclass
class _Source:
    """What one run trains on: Onramp's reward records or the OBD Random logs, as the columns
    the worker loop reads (``x``, ``slot``, ``action``, ``reward``, ``propensity``; the
    validation columns also ``mask``), the starting scorer, and where its runs live."""

    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    init: Scorer
    root: Path
    describe: str
    run_prefix: str
    weight_decay: float = 0.0


@dataclass
class _Fitted:
    """A finished ``TorchTrainer`` run: the final scorer, its per-epoch metrics, its run name and
    last checkpoint, and when the run started (``time.monotonic``)."""

    scorer: Scorer
    history: list[dict[str, Any]]
    run: str
    checkpoint: Path
    started: float


@dataclass(frozen=True)
class ObdTrainResult:
    """``onramp train --obd``: the JSON-ready ``summary`` (its ``report`` is ``report``'s JSON)
    and the off-policy :class:`~training.obd_policy.ObdPolicyReport` on the held-out rows."""

    summary: dict[str, Any]
    report: ObdPolicyReport


def _check_options(opts: TrainOptions) -> None:
    if opts.workers < 1:
        raise TrainOptionError("workers", f"must be >= 1, got {opts.workers}")
    if opts.epochs < 1:
        raise TrainOptionError("epochs", f"must be >= 1, got {opts.epochs}")
    if opts.batch_size < 1:
        raise TrainOptionError("batch_size", f"must be >= 1, got {opts.batch_size}")
    if not 0.0 <= opts.validation < 1.0:
        raise TrainOptionError("validation", f"must be in [0, 1), got {opts.validation}")
    if opts.init not in ("cold", "promoted"):
        raise TrainOptionError("init", f"expected 'cold' or 'promoted', got {opts.init!r}")


def _with_ray(settings: Settings, fn: Callable[[], _T]) -> _T:
    """``fn()`` with Ray up: unless this process has already joined one, a new local Ray is
    started (and shut down after), or the cluster at ``ray.address`` is joined."""
    import ray

    started_ray = False
    if not ray.is_initialized():
        from ray_app.up import ray_init_address

        ray.init(
            address=ray_init_address(settings.ray.address),
            num_cpus=settings.ray.num_cpus if settings.ray.address is None else None,
            include_dashboard=False,
            log_to_driver=True,
        )
        started_ray = True
    try:
        return fn()
    finally:
        if started_ray:
            ray.shutdown()


def train(opts: TrainOptions, settings: Settings) -> dict[str, Any]:
    """Run the training job (see the module docstring); returns a JSON-ready summary with the
    registered version (with ``opts.obd``: :func:`train_obd`'s summary). Starts a local Ray
    unless one is running (or ``ray.address`` is set)."""
    if opts.obd:
        return train_obd(opts, settings).summary
    _check_options(opts)
    reward_files(opts.data, settings.topics.rewards)  # missing or empty data: fail before Ray
    return _with_ray(settings, lambda: _train(opts, settings))


def train_obd(opts: TrainOptions, settings: Settings) -> ObdTrainResult:
    """``onramp train --obd``: the same ``TorchTrainer`` job on the Open Bandit Dataset's Random
    logs of ``opts.campaign`` (rows featurized by :func:`training.obd_policy.obd_training_columns`,
    a scorer of one head per position from :func:`training.obd_policy.init_obd_scorer`), trained
    on all but the latest ``opts.validation`` share (0.3 by default) and evaluated off-policy on
    that share by :func:`training.obd_policy.evaluate_onramp_on_obd`. Checkpoints live under
    ``<state_dir>/train-obd``; the model is not registered (its features are OBD's, not
    Onramp's feature schema, so the decision service could not serve it)."""
    _check_options(opts)
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
    return _with_ray(settings, lambda: _train_obd(opts, settings))


def _check_resources(opts: TrainOptions) -> None:
    import ray

    if opts.gpu:
        have = float(ray.cluster_resources().get("GPU", 0))
        if have < opts.workers:
            raise TrainError(
                "gpu",
                f"--gpu asks for {opts.workers} GPU worker(s), the Ray cluster has {have:g} "
                "GPU(s): drop --gpu to train on CPUs, or lower --workers",
            )
    cpus = float(ray.cluster_resources().get("CPU", 0))
    if not opts.gpu and cpus < opts.workers * opts.cpus_per_worker:
        raise TrainError(
            "workers",
            f"{opts.workers} workers x {opts.cpus_per_worker:g} CPU need "
            f"{opts.workers * opts.cpus_per_worker:g} CPUs, the Ray cluster has {cpus:g}: lower "
            "--workers or --cpus-per-worker",
        )


def _fit(source: _Source, opts: TrainOptions, settings: Settings) -> _Fitted:
    """Train ``source`` with ``TorchTrainer`` (the worker loop above): a new run, or with
    ``--resume`` the latest (or ``--run``) under ``source.root`` from its last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    root = source.root
    resume_from: Path | None = None
    if opts.resume:
        run_dir = root / opts.run if opts.run else _latest_run(root)
        found = _find_checkpoint(run_dir) if run_dir is not None else None
        if run_dir is None or found is None:
            raise TrainError(
                "resume", f"no checkpoint to resume from under {run_dir or root} (train once first)"
            )
        run_name = run_dir.name
        resume_from = found
    else:
        run_name = opts.run or dt.datetime.now(dt.UTC).strftime(
            f"{source.run_prefix}-%Y%m%d-%H%M%S"
        )
    n_train = len(source.train["reward"])
    steps = max(1, -(-(n_train // opts.workers) // opts.batch_size))
    arch = source.init.architecture
    config = {
        "seed": opts.seed,
        "lr": opts.lr,
        "weight_decay": source.weight_decay,
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "steps_per_epoch": steps,
        "architecture": arch,
        "init_weights": {k: v.clone() for k, v in source.init.state_dict().items()},
        "train": source.train,
        "validation": source.validation,
        "progress": opts.progress,
        "stop_after": opts.stop_after,
        "resume_from": None if resume_from is None else str(resume_from),
        "min_propensity": settings.learn.min_propensity,
    }
    resources = {"CPU": opts.cpus_per_worker}
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=opts.workers, use_gpu=opts.gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(root),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    if opts.progress:
        print(
            f"training on {source.describe}: {opts.workers} {'GPU' if opts.gpu else 'CPU'} "
            f"worker(s), {opts.epochs} epochs, run {run_name}{' (resumed)' if resume_from else ''}",
            file=sys.stderr,
            flush=True,
        )
    started = time.monotonic()
    try:
        result = trainer.fit()
    except Exception as exc:
        cause = _root_cause(exc)
        if isinstance(cause, _Interrupted):
            raise TrainError("run", f"{cause}; continue with --resume --run {run_name}") from None
        raise
    if getattr(result, "error", None) is not None:
        raise TrainError("run", f"training failed: {result.error}")
    found = _find_checkpoint(root / run_name)
    if found is None:
        raise TrainError("run", f"the run {run_name} left no checkpoint")
    state = torch.load(found / "state.pt", weights_only=True, map_location="cpu")
    history = json.loads((found / "meta.json").read_text())["history"]
    scorer = Scorer(arch["dim"], arch["slot_sizes"], arch["hidden"])
    scorer.load_state_dict(state["model"])
    scorer.eval()
    return _Fitted(scorer, history, run_name, found, started)


def _train(opts: TrainOptions, settings: Settings) -> dict[str, Any]:
    _check_resources(opts)
    catalog = load_catalog(settings.decide.catalog_path)
    schema = FeatureSchema.from_catalog(catalog)
    registry = ModelRegistry.from_settings(settings)
    data = load_rewards(opts.data, schema, catalog, settings.topics.rewards)
    train_data, val_data = data.split(opts.validation)
    if len(train_data) == 0:
        raise TrainError("validation", f"nothing left to train on ({len(data)} records)")
    parent: int | None = None
    if opts.init == "promoted":
        base = registry.promoted_bundle(schema, catalog)
        if base is None:
            raise TrainError("init", "--init promoted: nothing is promoted in the registry yet")
        parent = registry.promoted().version  # type: ignore[union-attr]
    else:
        base = cold_start_bundle(schema, catalog, seed=opts.seed)
    validation = {**val_data.columns(), "mask": val_data.mask}
    source = _Source(
        train=train_data.columns(),
        validation=validation,
        init=base.scorer,
        root=Path(settings.state_dir).resolve() / "train",
        describe=f"{len(train_data)} records ({len(val_data)} held out) from {opts.data}",
        run_prefix="train",
    )
    fitted = _fit(source, opts, settings)
    scorer, history, run_name, found = (
        fitted.scorer, fitted.history, fitted.run, fitted.checkpoint
    )  # fmt: skip
    final = evaluate(scorer, validation, settings.learn.min_propensity) if len(val_data) else {}
    bundle = ModelBundle(
        scorer=scorer,
        schema_hash=schema.hash,
        catalog_digest=catalog.digest,
        version=0,
        metadata={"kind": "trained", "run": run_name, "seed": opts.seed, "epochs": opts.epochs},
        slot_actions={name: list(s.action_ids) for name, s in catalog.slots.items()},
    )
    metrics = {
        **{k: v for k, v in final.items()},
        "epochs": len(history),
        "workers": opts.workers,
        "device": "gpu" if opts.gpu else "cpu",
        "train_records": len(train_data),
        "seconds": round(time.monotonic() - fitted.started, 2),
        "history": history,
    }
    meta = registry.register(
        bundle,
        "train",
        parent=parent,
        data=data.data_range(),
        metrics=metrics,
        note=opts.note,
        above=served_version(settings.model_path),
    )
    summary: dict[str, Any] = {
        "version": meta.version,
        "registry": registry.uri,
        "run": run_name,
        "checkpoint": str(found),
        "metrics": {k: v for k, v in metrics.items() if k != "history"},
        "promoted": False,
    }
    if opts.promote:
        p = registry.promote(meta.version, settings.model_path, schema, catalog)
        summary["promoted"] = True
        summary["promotion"] = p.epoch
        summary["served"] = str(settings.model_path)
    return summary


def _train_obd(opts: TrainOptions, settings: Settings) -> ObdTrainResult:
    from training.obd import load_obd
    from training.obd_policy import evaluate_onramp_on_obd, init_obd_scorer, obd_training_columns

    _check_resources(opts)
    logs = load_obd("random", opts.campaign, opts.cache_dir)
    train_fraction = 1.0 - opts.validation
    train_logs, test_logs = logs.split(train_fraction)
    # the Random policy is uniform (every propensity 1/80): the loop's importance weights are
    # all equal, so this is the plain log loss of the clicks, as the in-process trainer's
    validation = obd_training_columns(test_logs, mask=True)
    source = _Source(
        train=obd_training_columns(train_logs),
        validation=validation,
        init=init_obd_scorer(train_logs, seed=opts.seed),
        root=Path(settings.state_dir).resolve() / "train-obd",
        describe=f"the first {train_logs.n_rounds} rows of the OBD Random/{opts.campaign} logs "
        f"(the last {test_logs.n_rounds} held out)",
        run_prefix=f"obd-{opts.campaign}",
        weight_decay=OBD_WEIGHT_DECAY,
    )
    fitted = _fit(source, opts, settings)
    fit_seconds = round(time.monotonic() - fitted.started, 2)
    if opts.progress:
        print(
            f"evaluating off-policy on the {test_logs.n_rounds} held-out rows "
            f"({opts.n_bootstrap} bootstrap resamples) ...",
            file=sys.stderr,
            flush=True,
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
    return ObdTrainResult(summary, report)


def _root_cause(exc: BaseException) -> BaseException:
    """The ``--stop-after`` interruption inside Ray's wrappers, if that is what failed."""
    text = f"{exc!r} {exc}"
    if "--stop-after" in text:
        return _Interrupted("the run was interrupted (--stop-after)")
    return exc


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
        "OBD's) and the last line printed is a JSON summary.",
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
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and shuffles")
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
        **{n: getattr(args, n) for n in names},
    )


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    opts = _options(args)
    if opts.obd:
        from training.evaluate import print_obd_policy_report

        result = train_obd(opts, settings)
        print_obd_policy_report(result.report)
        print(dumps(result.summary))  # the last line: the JSON summary
        return 0
    print(dumps(train(opts, settings), indent=2))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m training.train") -> int:
    """Entry point of ``python -m training.train`` and ``onramp train``: the exit statuses of
    every ``onramp`` command (0 ok, 1 runtime error, 2 usage or configuration, 130 Ctrl-C)."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args)
    return guarded(prog, lambda: _run(args))


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    raise SystemExit(main())
