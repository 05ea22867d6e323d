"""The driver's side of one ``TorchTrainer`` run of the training job: its options and errors,
the run's folder (a new run, or the one ``--resume`` continues), Ray started (or joined) with
its output routed (:class:`training.console.RayConsole`), the run itself with the worker loop
of :mod:`training.loop`, and the trained scorer read back from the last checkpoint.

A run lives in ``<root>/<run name>``: Ray Train's checkpoints and ``ray.log``, the log of Ray's
own lines (appended to by every invocation on that run).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ray_app.cli.output import working
from ray_app.config import Settings
from ray_app.errors import ConfigError, FieldError
from ray_app.model import Scorer
from training.console import RayConsole
from training.loop import train_loop

__all__ = [
    "Fitted",
    "RunPlan",
    "Source",
    "TrainError",
    "TrainOptionError",
    "TrainOptions",
    "check_options",
    "check_resources",
    "fit",
    "plan_run",
    "with_ray",
]

_T = TypeVar("_T")

#: The log of Ray's own lines, in the run's folder.
RAY_LOG = "ray.log"

#: How often Ray Train's controller polls the workers (seconds). A worker's ``report`` waits
#: in a queue of one until that poll, so Ray's default of 2 s (set for clusters of hundreds of
#: workers) is the floor of every epoch that reports: on 3,000 logged rewards an epoch's work
#: took 0.2 s and each epoch after the second 2 s. Onramp's runs are a few workers on a few
#: hundred thousand rows at most; 0.1 s costs each worker 10 small actor calls a second.
#: ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` set by the user wins.
CONTROLLER_POLL_S = 0.1
_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


@contextmanager
def controller_poll(interval_s: float = CONTROLLER_POLL_S) -> Iterator[str]:
    """Within: ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` is ``interval_s`` unless the user set it
    (Ray Train hands the variables it knows from the driver to its controller); yields the value
    in force. The variable is as before afterwards.

    >>> os.environ.pop(_POLL_ENV, None)
    >>> with controller_poll(0.1) as v:
    ...     v, os.environ[_POLL_ENV]
    ('0.1', '0.1')
    >>> _POLL_ENV in os.environ
    False
    """
    own = os.environ.get(_POLL_ENV)
    if own is not None:
        yield own
        return
    os.environ[_POLL_ENV] = str(interval_s)
    try:
        yield os.environ[_POLL_ENV]
    finally:
        os.environ.pop(_POLL_ENV, None)


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
        self.verbose: bool = kw.get("verbose", False)  # Ray's own lines on the terminal too
        self.stop_after: int | None = kw.get("stop_after")
        self.campaign: str = kw.get("campaign", "all")  # --obd: the OBD campaign
        self.cache_dir: str | None = kw.get("cache_dir")  # --obd: where the obp wheel is cached
        self.n_bootstrap: int = kw.get("n_bootstrap", 1000)  # --obd: the evaluation's resamples
        self.temperature: float = kw.get("temperature", 0.1)  # --obd: the softmax policy's


def check_options(opts: TrainOptions) -> None:
    """:class:`TrainOptionError` for the first option out of range."""
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
    if not (math.isfinite(opts.lr) and opts.lr > 0):
        raise TrainOptionError("lr", f"must be a finite number > 0, got {opts.lr}")
    if not (math.isfinite(opts.cpus_per_worker) and opts.cpus_per_worker > 0):
        raise TrainOptionError(
            "cpus_per_worker", f"must be a finite number > 0, got {opts.cpus_per_worker}"
        )
    if not opts.obd and not opts.data.strip():
        raise TrainOptionError("data", "empty: give the archive root, a folder or a file")


# -- the run's folder ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """Where one run lives (``root / name``: Ray Train's storage path and run name) and the
    checkpoint it continues from (``None``: a new run)."""

    root: Path
    name: str
    resume_from: Path | None = None

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def log(self) -> Path:
        """The log of Ray's own lines."""
        return self.folder / RAY_LOG


def find_checkpoint(run_dir: Path) -> Path | None:
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
    runs = [d for d in runs if find_checkpoint(d) is not None]
    return max(runs, key=lambda d: d.stat().st_mtime) if runs else None


def plan_run(root: Path, prefix: str, opts: TrainOptions) -> RunPlan:
    """A new run under ``root`` (``--run``, else ``<prefix>-<UTC time>``) or, with
    ``--resume``, the latest run there (or ``--run``) from its last checkpoint. Needs no Ray."""
    if not opts.resume:
        name = opts.run or dt.datetime.now(dt.UTC).strftime(f"{prefix}-%Y%m%d-%H%M%S")
        if find_checkpoint(root / name) is not None:  # the run's result is read back from
            raise TrainError(  # its folder: an earlier run's later epoch would win
                "run",
                f"a run named {name!r} already has checkpoints under {root / name}: continue "
                f"it with --resume --run {name}, or name a new run",
            )
        return RunPlan(root, name)
    run_dir = root / opts.run if opts.run else _latest_run(root)
    found = find_checkpoint(run_dir) if run_dir is not None else None
    if run_dir is None or found is None:
        raise TrainError(
            "resume", f"no checkpoint to resume from under {run_dir or root} (train once first)"
        )
    return RunPlan(root, run_dir.name, found)


# -- Ray ---------------------------------------------------------------------------------------


def with_ray(
    settings: Settings, opts: TrainOptions, log: Path, fn: Callable[[RayConsole | None], _T]
) -> _T:
    """``fn(console)`` with Ray up. Unless this process has already joined one (then
    ``fn(None)``: its Ray, its output), a new local Ray is started (and shut down after), or the
    cluster at ``ray.address`` is joined, with Ray's lines in ``log`` (:class:`RayConsole`)."""
    import ray

    if ray.is_initialized():
        return fn(None)
    from ray_app.up import ray_init_address

    address = ray_init_address(settings.ray.address)
    with RayConsole(log, verbose=opts.verbose) as console:
        console.show(f"Ray's log: {log}" + ("" if opts.verbose else " (--verbose shows it here)"))
        what = "starting a local Ray" if address == "local" else f"joining Ray at {address}"
        with working(what, stream=console.stream) if opts.progress else nullcontext():
            ray.init(
                address=address,
                num_cpus=settings.ray.num_cpus if settings.ray.address is None else None,
                include_dashboard=False,
                log_to_driver=True,  # forwarded to the console, which routes it
            )
        try:
            console.attach()
            return fn(console)
        finally:
            ray.shutdown()


def check_resources(opts: TrainOptions) -> None:
    """:class:`TrainError` when the cluster has too few GPUs or CPUs for the workers."""
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


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Source:
    """What one run trains on: Onramp's reward records or the OBD Random logs, as the columns
    the worker loop reads (``x``, ``slot``, ``action``, ``reward``, ``propensity``; the
    validation columns also ``mask``), and the starting scorer."""

    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    init: Scorer
    describe: str
    weight_decay: float = 0.0


@dataclass
class Fitted:
    """A finished ``TorchTrainer`` run: the final scorer, its per-epoch metrics, its run name and
    last checkpoint, and when the run started (``time.monotonic``)."""

    scorer: Scorer
    history: list[dict[str, Any]]
    run: str
    checkpoint: Path
    started: float


def _config(
    source: Source, plan: RunPlan, opts: TrainOptions, settings: Settings, console: bool
) -> dict[str, Any]:
    """The worker loop's ``train_loop_config``."""
    n_train = len(source.train["reward"])
    return {
        "seed": opts.seed,
        "lr": opts.lr,
        "weight_decay": source.weight_decay,
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "steps_per_epoch": max(1, -(-(n_train // opts.workers) // opts.batch_size)),
        "architecture": source.init.architecture,
        "init_weights": {k: v.clone() for k, v in source.init.state_dict().items()},
        "train": source.train,
        "validation": source.validation,
        "progress": opts.progress,
        "console": console,
        "stop_after": opts.stop_after,
        "resume_from": None if plan.resume_from is None else str(plan.resume_from),
        "min_propensity": settings.learn.min_propensity,
    }


def fit(
    source: Source,
    plan: RunPlan,
    opts: TrainOptions,
    settings: Settings,
    console: RayConsole | None = None,
) -> Fitted:
    """Train ``source`` with ``TorchTrainer`` (:func:`training.loop.train_loop`) as the run
    ``plan`` says; the worker loop's lines and bars go through ``console`` when given."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    routed = console is not None and console.attached
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=_config(source, plan, opts, settings, routed),
        scaling_config=ScalingConfig(
            num_workers=opts.workers,
            use_gpu=opts.gpu,
            resources_per_worker={"CPU": opts.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=plan.name,
            storage_path=str(plan.root),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    if opts.progress:
        line = (
            f"training on {source.describe}: {opts.workers} {'GPU' if opts.gpu else 'CPU'} "
            f"worker(s), {opts.epochs} epochs, run {plan.name}"
            f"{' (resumed)' if plan.resume_from else ''}"
        )
        if console is not None:
            console.show(line)
        else:
            print(line, file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        with controller_poll():
            result = trainer.fit()
    except Exception as exc:
        if "--stop-after" in f"{exc!r} {exc}":  # loop.Interrupted, inside Ray's wrappers
            raise TrainError(
                "run",
                f"the run was interrupted (--stop-after); continue with --resume --run {plan.name}",
            ) from None
        raise TrainError("run", f"training failed: {_last_line(exc)}{_see(console)}") from exc
    error = getattr(result, "error", None)
    if error is not None:
        raise TrainError("run", f"training failed: {_last_line(error)}{_see(console)}")
    found = find_checkpoint(plan.folder)
    if found is None:
        raise TrainError("run", f"the run {plan.name} left no checkpoint")
    state = torch.load(found / "state.pt", weights_only=True, map_location="cpu")
    history = json.loads((found / "meta.json").read_text())["history"]
    arch = source.init.architecture
    scorer = Scorer(arch["dim"], arch["slot_sizes"], arch["hidden"])
    scorer.load_state_dict(state["model"])
    scorer.eval()
    return Fitted(scorer, history, plan.name, found, started)


def _last_line(exc: BaseException) -> str:
    """The line of a (multi-line) error from Ray that says what failed: its last."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return lines[-1] if lines else type(exc).__name__


def _see(console: RayConsole | None) -> str:
    return "" if console is None else f" (the workers' tracebacks are in {console.log.path})"
