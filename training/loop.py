"""The training job's worker loop: what every Ray Train worker runs (:func:`train_loop`).

Each worker trains the scorer on its shard of the rows (DDP syncs the gradients every step),
rank 0 evaluates on the held-out rows every epoch and writes the checkpoint (``state.pt``: model
and optimizer; ``meta.json``: epoch, history and that the evidence is counted). Before the
first epoch the training rows are added to the scorer's evidence once, as the online learner
counts the rewards it learns from (:func:`count_evidence`: every worker its shard, summed over
the workers), so a learner that continues from the trained model knows what it has seen and
explores where the data was thin. Progress is a Ray ``tqdm_ray`` bar per epoch and one line of
metrics per epoch, from rank 0 only; the driver draws and prints them (:mod:`training.console`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ray_app.learn.objective import ips_loss
from ray_app.learn.update import observe_rows, optimizer_fits
from ray_app.model import Scorer
from training.console import say
from training.metrics import evaluate, logged_action_logits

__all__ = ["Interrupted", "LoggedScorer", "count_evidence", "epoch_line", "train_loop"]


class Interrupted(RuntimeError):
    """Raised by a worker to simulate an interruption (tests of ``--resume``)."""


class LoggedScorer(Scorer):
    """A Scorer whose forward can also return the logged action's logits (for DDP)."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, slot_index: Any, action: Any = None, _logged: bool = False
    ) -> torch.Tensor:
        if _logged:
            return logged_action_logits(self, x, slot_index, action)
        return super().forward(x, slot_index)


def _resume(
    scorer: nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any]
) -> tuple[int, list[dict[str, Any]], bool]:
    """Load the checkpoint to resume from into ``scorer`` and ``optimizer``: a restart within
    this run (Ray Train's own), else the one ``--resume`` found; returns (first epoch to run,
    history so far, whether its model holds the training rows' evidence), ``(0, [], False)``
    without one."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = ray.train.Checkpoint.from_directory(config["resume_from"])
    if checkpoint is None:
        return 0, [], False
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", weights_only=True, map_location="cpu")
        scorer.load_state_dict(state["model"])
        if optimizer_fits(optimizer, state["optimizer"]):
            optimizer.load_state_dict(state["optimizer"])
        else:  # written before the scorer's wide scales: its moments start afresh
            print(
                "resuming with a fresh optimizer: the checkpoint's was written over other "
                "parameters (before the scorer's wide scales)",
                file=sys.stderr,
                flush=True,
            )
        meta = json.loads((Path(d) / "meta.json").read_text())
    # checkpoints written before the evidence was counted lack the flag: count it now
    return meta["epoch"] + 1, meta["history"], bool(meta.get("evidence", False))


def count_evidence(
    scorer: Scorer, train: dict[str, np.ndarray], own: np.ndarray, device: torch.device
) -> None:
    """Add the training rows to ``scorer``'s evidence, once: this worker's rows ``own`` of
    ``train`` (its shard), each through :meth:`Scorer.observe` with its logged features and
    action in its slot, as the online learner counts a reward it learns from; with a process
    group (several Ray Train workers), the shards' evidence is summed over the workers
    (``all_reduce``), so every worker holds that of all the training rows (DDP would copy rank
    0's). What the starting weights had seen (a promoted model's evidence) is kept beneath.

    >>> s = Scorer(dim=2, slot_sizes=(2, 3), hidden=1)
    >>> cols = {"x": np.array([[1, 2], [3, 0], [1, 1]], dtype=np.float32),
    ...         "slot": np.array([0, 1, 0]), "action": np.array([1, 2, 1])}
    >>> count_evidence(s, cols, np.arange(3), torch.device("cpu"))
    >>> s.evidence(0).tolist(), s.evidence(1)[2].tolist()
    ([[0.0, 0.0], [2.0, 5.0]], [9.0, 0.0])
    """
    import torch.distributed as dist

    slots = range(len(scorer.slot_sizes))
    before = [scorer.evidence(k).clone() for k in slots]
    for k in slots:
        scorer.evidence(k).zero_()
    x = torch.from_numpy(np.ascontiguousarray(train["x"][own], dtype=np.float32)).to(device)
    a = torch.from_numpy(np.asarray(train["action"][own], dtype=np.int64)).to(device)
    observe_rows(scorer, x, a, torch.from_numpy(np.asarray(train["slot"][own], dtype=np.int64)))
    if dist.is_available() and dist.is_initialized():
        for k in slots:
            dist.all_reduce(scorer.evidence(k), op=dist.ReduceOp.SUM)
    for k in slots:
        scorer.evidence(k).add_(before[k])


def _setup(
    config: dict[str, Any], rank: int, world: int, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, int, list[dict[str, Any]]]:
    """The DDP model on ``device`` (with the training rows' evidence), its optimizer, the
    first epoch to run and the history."""
    import ray.train.torch

    torch.manual_seed(config["seed"] + rank)
    arch = config["architecture"]
    scorer = LoggedScorer(arch["dim"], arch["slot_sizes"], arch["hidden"], seed=config["seed"])
    scorer.load_state_dict(config["init_weights"])
    optimizer = torch.optim.Adam(
        scorer.parameters(), lr=config["lr"], weight_decay=config.get("weight_decay", 0.0)
    )
    start_epoch, history, counted = _resume(scorer, optimizer, config)
    scorer.to(device)
    for group in optimizer.state.values():
        for k, v in group.items():
            if isinstance(v, torch.Tensor):
                group[k] = v.to(device)
    if not counted:  # on every worker (the all_reduce needs them all), before DDP wraps it
        count_evidence(scorer, config["train"], _shard(config, rank, world), device)
    model = ray.train.torch.prepare_model(scorer, move_to_device=False)
    return model, optimizer, start_epoch, history


def _shard(config: dict[str, Any], rank: int, world: int) -> np.ndarray:
    """The training rows of worker ``rank`` of ``world``."""
    return np.arange(rank, len(config["train"]["reward"]), world)


def _bar(config: dict[str, Any], rank: int, steps: int, epoch: int) -> Any:
    """Rank 0's bar for one epoch (Ray's distributed tqdm: the driver draws it); ``None``
    elsewhere or with ``--no-progress``."""
    if rank != 0 or not config["progress"]:
        return None
    from ray.experimental.tqdm_ray import tqdm

    class Bar(tqdm):
        """Ray's bar, its states stamped with when it started (the driver shows the rate)."""

        started = time.time()

        def _get_state(self) -> dict[str, Any]:
            return {**super()._get_state(), "started": self.started}

    return Bar(total=steps, desc=f"epoch {epoch + 1}/{config['epochs']}", unit="steps")


def _say(config: dict[str, Any], line: str) -> None:
    """A line for the driver's terminal: marked for :class:`training.console.RayConsole` when
    the driver routes Ray's output, else printed as any worker line."""
    if config.get("console"):
        say(line)
    else:
        print(line, file=sys.stderr, flush=True)


def _epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    order: np.ndarray,
    device: torch.device,
    bar: Any,
) -> tuple[float, float]:
    """One pass of ``steps_per_epoch`` steps over ``order`` (wrapping around so every step has a
    full batch); returns (summed loss x records, records)."""
    train, batch = config["train"], config["batch_size"]
    total = weight = 0.0
    for step in range(int(config["steps_per_epoch"])):
        idx = order[(step * batch) % max(len(order), 1) :][:batch] if len(order) else order
        if len(idx) < batch and len(order):
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
    return total, weight


def _checkpoint(
    rank: int,
    cpu: Scorer,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, Any]],
    metrics: dict[str, Any],
) -> None:
    """Report ``metrics`` to Ray Train, with rank 0's checkpoint of this epoch."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if rank == 0:
            torch.save(
                {"model": cpu.state_dict(), "optimizer": optimizer.state_dict()},
                Path(d) / "state.pt",
            )
            meta = {"epoch": epoch, "history": history, "evidence": True}
            (Path(d) / "meta.json").write_text(json.dumps(meta))
            ckpt = ray.train.Checkpoint.from_directory(d)
        ray.train.report({k: v for k, v in metrics.items() if v is not None}, checkpoint=ckpt)


def train_loop(config: dict[str, Any]) -> None:
    """Every Ray Train worker's loop (``TorchTrainer``'s ``train_loop_per_worker``)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    model, optimizer, start_epoch, history = _setup(config, rank, world, device)
    arch = config["architecture"]
    own = _shard(config, rank, world)
    rng = np.random.default_rng(config["seed"] + 1000 * rank)
    steps = int(config["steps_per_epoch"])  # the same on every worker: DDP syncs every step
    for epoch in range(start_epoch, config["epochs"]):
        started = time.monotonic()
        order = rng.permutation(own) if len(own) else own
        bar = _bar(config, rank, steps, epoch)
        total, weight = _epoch(model, optimizer, config, order, device, bar)
        inner = cast(nn.Module, model.module if hasattr(model, "module") else model)
        cpu = Scorer(arch["dim"], arch["slot_sizes"], arch["hidden"])
        cpu.load_state_dict({k: v.detach().cpu() for k, v in inner.state_dict().items()})
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(weight, 1.0)}
        if rank == 0:
            val = config["validation"]
            scores = evaluate(cpu, val, config["min_propensity"]) if len(val["reward"]) else {}
            metrics.update({f"val_{k}": v for k, v in scores.items()})
            metrics["seconds"] = round(time.monotonic() - started, 3)
            metrics["records_per_s"] = round(weight * world / max(metrics["seconds"], 1e-9), 1)
            history.append(metrics)
            if config["progress"]:
                _say(config, epoch_line(metrics))
        _checkpoint(rank, cpu, optimizer, epoch, history, metrics)
        if config.get("stop_after") is not None and epoch + 1 >= config["stop_after"]:
            raise Interrupted(f"stopped after epoch {epoch + 1} (--stop-after)")


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def epoch_line(m: dict[str, Any]) -> str:
    """One epoch's metrics as a line.

    >>> epoch_line({"epoch": 2, "train_loss": 0.5, "val_auc": None}).split()[:4]
    ['epoch', '2:', 'train_loss=0.5000', 'val_loss=-']
    """
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
