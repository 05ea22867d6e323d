"""The GPU path of Onramp's offline training (``onramp train --gpu``) against its CPU path.

    python bench/train_gpu.py                  # CPU run, then the GPU run when CUDA is there
    python bench/train_gpu.py --cpu-only       # the CPU run alone (a machine without a GPU)

Writes a reward archive of simulated users (:func:`ray_app.sim.logs.simulated_rewards`, the
archive layout of ``onramp archive``) in a temporary folder, starts one local Ray (with the
machine's GPUs), and runs Onramp's own training job, :func:`training.train.train` (what
``onramp train --data DIR`` calls: Ray Data read, hold-out split, ``TorchTrainer``, registry),
once with ``gpu=False`` and once with ``gpu=True``, on the same data, seed and options.

The worker loop is Onramp's (:func:`training.loop.train_loop`), wrapped by a probe that runs
inside the Ray Train worker: it records the device Ray Train hands the worker, the device of
the model's parameters after the loop's setup, the device of the first batch's logits, and
times each epoch's training steps (without the per-epoch evaluation and checkpoint). The
figure is the GPU worker's training throughput (records/s over epochs 2..N, the first is the
warm-up), the baseline the CPU worker's in the same run; the wall time of each whole
``train()`` call is reported beside them.

The last line printed is one JSON object (bench/_common.py's contract: ``figure``, ``value``,
``baseline``, ``baseline_value``, ``ratio``, ``kafka_client``, ``machine``, ``git``) with
``device_name``, ``on_cuda_in_worker`` (the parameters and the batches were on a CUDA device
inside the worker), the probes, and the final validation metrics of both runs (they should be
close: same data, seed and loop). ``--out DIR`` also writes it to ``DIR/train_gpu.json``.

Needs only what the training path needs (Ray, PyTorch, pydantic, orjson, PyYAML, numpy, pandas,
pyarrow): no Kafka, no broker, no Serve.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/train_gpu.py` from anywhere
    sys.path.insert(0, str(ROOT))


def _machine() -> dict[str, Any]:
    try:
        from bench._common import machine

        return machine()
    except Exception as exc:  # bench/_common.py is stdlib-only today; never fail on it
        return {"cpus": os.cpu_count(), "python": platform.python_version(), "note": repr(exc)}


def _git() -> str | None:
    try:
        from bench._common import git_rev

        return git_rev()
    except Exception:
        return None


# -- the probe, run inside the Ray Train worker --------------------------------------------------


def probed_loop(path: str) -> Callable[[dict[str, Any]], None]:
    """Onramp's worker loop (:func:`training.loop.train_loop`), unchanged, with a probe that
    writes to ``path`` (JSON, from rank 0): the device Ray Train gave the worker, the devices of
    the model's parameters after the loop's setup and of the first batch's logits, CUDA's view
    and each epoch's training seconds and records (the steps alone)."""

    def loop(config: dict[str, Any]) -> None:
        import ray.train
        import torch

        import training.loop as loop_module

        found: dict[str, Any] = {"epochs": []}
        setup, epoch, loss = loop_module._setup, loop_module._epoch, loop_module.ips_loss

        def probe_setup(config: dict[str, Any], rank: int, device: Any) -> Any:
            out = setup(config, rank, device)
            found["ray_device"] = str(device)
            found["param_devices"] = sorted({str(p.device) for p in out[0].parameters()})
            return out

        def probe_loss(logit: Any, *args: Any, **kw: Any) -> Any:
            found.setdefault("batch_device", str(logit.device))
            return loss(logit, *args, **kw)

        def probe_epoch(*args: Any, **kw: Any) -> Any:
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            total, weight = epoch(*args, **kw)
            if cuda:
                torch.cuda.synchronize()
            found["epochs"].append(
                {"seconds": round(time.perf_counter() - started, 4), "records": weight}
            )
            if "optimizer_state_devices" not in found:  # Adam's state exists after a step
                state = args[1].state.values()
                found["optimizer_state_devices"] = sorted(
                    {
                        str(v.device)
                        for s in state
                        for v in s.values()
                        if isinstance(v, torch.Tensor)
                    }
                )
            return total, weight

        loop_module._setup, loop_module._epoch = probe_setup, probe_epoch
        loop_module.ips_loss = probe_loss
        try:
            loop_module.train_loop(config)
        finally:
            loop_module._setup, loop_module._epoch, loop_module.ips_loss = setup, epoch, loss
            ctx = ray.train.get_context()
            found["world_size"] = ctx.get_world_size()
            found["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")
            found["torch_threads"] = torch.get_num_threads()
            found["cuda_available"] = torch.cuda.is_available()
            if any(d.startswith("cuda") for d in found.get("param_devices", [])):
                found["cuda_device_name"] = torch.cuda.get_device_name(0)
                found["cuda_max_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if ctx.get_world_rank() == 0:
                Path(path).write_text(json.dumps(found))

    return loop


# -- one run of the training job ------------------------------------------------------------------


def run_once(args: argparse.Namespace, data: Path, state: Path, gpu: bool) -> dict[str, Any]:
    """``training.train.train`` on ``data`` (``gpu`` as ``--gpu``), its worker loop probed;
    the wall time of the call, its summary's final metrics and the probe's findings."""
    import training.trainer
    from ray_app.config import load_settings
    from training.train import TrainOptions, train

    kind = "gpu" if gpu else "cpu"
    settings = load_settings(
        env={
            "ONRAMP_STATE_DIR": str(state / kind),
            "ONRAMP_DECIDE__MODEL_PATH": str(state / kind / "served.onramp"),
        }
    )
    opts = TrainOptions(
        data=str(data),
        workers=args.workers,
        gpu=gpu,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        cpus_per_worker=args.cpus_per_worker,
        run=f"bench-{kind}",
        progress=args.progress,
    )
    probe = state / f"probe-{kind}.json"
    original = training.trainer.train_loop
    training.trainer.train_loop = probed_loop(str(probe))  # type: ignore[assignment]
    print(f"[train_gpu] training on {kind} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        summary = train(opts, settings)
    finally:
        training.trainer.train_loop = original  # type: ignore[assignment]
    wall = time.perf_counter() - started
    found = json.loads(probe.read_text()) if probe.exists() else {}
    epochs = found.get("epochs", [])
    steady = epochs[1:] if len(epochs) > 1 else epochs
    seconds = sum(e["seconds"] for e in steady)
    records = sum(e["records"] for e in steady)
    world = found.get("world_size", args.workers)
    out = {
        "wall_s": round(wall, 2),
        "records_per_s": round(records * world / seconds, 1) if seconds else None,
        "step_ms": round(1000 * seconds / (records / args.batch_size), 3) if records else None,
        "epoch_s": [e["seconds"] for e in epochs],
        "final": {k: v for k, v in summary["metrics"].items() if k not in ("history",)},
        "probe": {k: v for k, v in found.items() if k != "epochs"},
    }
    print(f"[train_gpu] {kind}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


HELP = """\
Benchmark of the GPU path of `onramp train` against its CPU path.

It writes a reward archive of --users simulated users (ray_app.sim.logs, the layout of
`onramp archive`) in a temporary folder, starts one local Ray with the machine's GPUs, and runs
Onramp's own training job, training.train.train (what `onramp train --data DIR` calls: Ray Data
read, 20% held out, TorchTrainer, registry), once with gpu=False and once with gpu=True (unless
--cpu-only or no CUDA), on the same data, seed and options.

A probe wraps the worker loop (training.loop.train_loop, unchanged) inside the Ray Train worker:
it records the device Ray Train gives the worker, where the model's parameters and the first
batch's logits are, and times each epoch's training steps (no evaluation, no checkpoint).

Result, the last line on stdout (one JSON object): value = GPU records/s over epochs 2..N,
baseline_value = the CPU run's, ratio = value / baseline_value; wall_s = each whole train()
call; device_name; on_cuda_in_worker; val = both runs' final validation loss, AUC, IPS, SNIPS
(they should be close); runs = the details and probes. Progress and Ray's lines go to stderr
and stdout before it.

Default sizes: about 1 minute with --cpu-only on a 2-core machine, about 2 minutes for both
runs on a 16-core machine with an H200 (simulating the users, starting Ray and each run's
workers, and reading the archive are most of it; the timed steps take seconds)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/train_gpu.py",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--users",
        type=int,
        default=50_000,
        help="simulated users, one reward record each (default 50000; 20%% held out)",
    )
    p.add_argument("--epochs", type=int, default=8, help="epochs of each run (default 8)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="records per step and worker (default 256, onramp train's)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="Ray Train workers of each run (default 1: one GPU)"
    )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs per worker (default 1, onramp train's; Ray sets the worker's "
        "torch threads from it)",
    )
    p.add_argument("--lr", type=float, default=0.005, help="Adam learning rate (default 0.005)")
    p.add_argument("--seed", type=int, default=0, help="seed of the users, weights and shuffles")
    p.add_argument(
        "--cpu-only",
        "--cpu",
        dest="cpu_only",
        action="store_true",
        help="the CPU run alone, even where CUDA is available",
    )
    p.add_argument(
        "--progress", action="store_true", help="the training job's epoch lines on stderr"
    )
    p.add_argument("--out", metavar="DIR", help="also write the JSON result to DIR/train_gpu.json")
    return p  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    begun = time.perf_counter()
    import ray
    import torch

    from ray_app.sim.logs import simulated_rewards, write_reward_archive

    cuda = torch.cuda.is_available()
    want_gpu = cuda and not args.cpu_only
    skipped = "--cpu-only" if args.cpu_only else None if cuda else "CUDA is not available"
    with tempfile.TemporaryDirectory(prefix="onramp-train-gpu-") as tmp:
        data, state = Path(tmp) / "archive", Path(tmp) / "state"
        state.mkdir()
        started = time.perf_counter()
        write_reward_archive(simulated_rewards(args.users, seed=args.seed), data)
        sim_s = time.perf_counter() - started
        print(f"[train_gpu] {args.users} simulated users in {sim_s:.1f} s", file=sys.stderr)
        started = time.perf_counter()
        ray.init(
            address="local",  # a new local Ray with this machine's GPUs, never a running one
            num_cpus=os.cpu_count(),
            num_gpus=torch.cuda.device_count() if want_gpu else 0,
            include_dashboard=False,
        )
        ray_s = time.perf_counter() - started
        try:
            cpu = run_once(args, data, state, gpu=False)
            gpu = run_once(args, data, state, gpu=True) if want_gpu else None
        finally:
            started = time.perf_counter()
            ray.shutdown()
            print(f"[train_gpu] ray.shutdown in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr)  # fmt: skip
    on_cuda = None
    if gpu is not None:
        probe = gpu["probe"]
        on_cuda = all(d.startswith("cuda") for d in probe.get("param_devices", ["?"])) and str(
            probe.get("batch_device", "")
        ).startswith("cuda")
    val = ("loss", "auc", "ips", "snips")
    result: dict[str, Any] = {
        "benchmark": "train_gpu",
        "figure": "training records/s of onramp train's worker loop on the GPU (use_gpu=True), "
        f"{args.workers} worker(s), batch {args.batch_size}, epochs 2..{args.epochs} (steps "
        "only: no evaluation, no checkpoint)",
        "value": None if gpu is None else gpu["records_per_s"],
        "baseline": "the same on CPU (use_gpu=False, "
        f"{args.cpus_per_worker:g} CPU per worker), same run, data and seed",
        "baseline_value": cpu["records_per_s"],
        "ratio": None
        if gpu is None or not gpu["records_per_s"] or not cpu["records_per_s"]
        else round(gpu["records_per_s"] / cpu["records_per_s"], 3),
        "gpu_skipped": skipped,
        "wall_s": {"cpu": cpu["wall_s"], "gpu": None if gpu is None else gpu["wall_s"]},
        "wall_ratio": None if gpu is None else round(cpu["wall_s"] / gpu["wall_s"], 3),
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "on_cuda_in_worker": on_cuda,
        "val": {
            "cpu": {k: cpu["final"].get(k) for k in val},
            "gpu": None if gpu is None else {k: gpu["final"].get(k) for k in val},
        },
        "runs": {"cpu": cpu, "gpu": gpu},
        "users": args.users,
        "epochs": args.epochs,
        "simulate_s": round(sim_s, 2),
        "ray_start_s": round(ray_s, 2),
        "total_s": round(time.perf_counter() - begun, 1),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "kafka_client": None,
        "machine": _machine(),
        "git": _git(),
    }
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "train_gpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
