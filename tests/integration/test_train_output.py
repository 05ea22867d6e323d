"""What `onramp train` prints, run as a user runs it (a subprocess that starts its own local Ray):
its own progress and results on the terminal, Ray's own log lines in the file it names
(`--verbose` shows them), no warning raised at a line of Onramp's code, and the documented exit
statuses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ray_app.sim.logs import simulated_rewards, write_reward_archive

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: Lines only Ray writes: its loggers, its actors' and workers' forwarded lines, its errors.
RAY_LINES = re.compile(
    r"pid=\d+\)|TrainController|RayTrainWorker|PlacementGroupCleaner|PreemptionWatcher"
    r"|Failed to query Ray Train Controller|core_worker\.cc|Started a local Ray instance"
    r"|streaming_executor|logging_progress|-- Token authentication|Warning:"
)
#: A warning raised at a line of this project's code (Python's "file:line: Category: ..." form).
OUR_WARNING = re.compile(r"/(training|ray_app|deployments)/[\w/]+\.py:\d+: \w*Warning")


class TrainRun:
    """One `onramp train` in a subprocess, started at once; :meth:`result` waits for it. Its
    output goes to files (a pipe nobody reads yet could fill and stop it)."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        data = tmp_path / "archive"
        if not data.exists():
            write_reward_archive(simulated_rewards(400, seed=5), data)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ONRAMP_"))}
        env.update(
            ONRAMP_STATE_DIR=str(tmp_path / "state"),
            ONRAMP_RAY__NUM_CPUS="2",
            PYTHONWARNINGS="default",  # every DeprecationWarning and FutureWarning shows
        )
        args = ["--data", str(data), "--workers", "2", "--cpus-per-worker", "0.25", "--epochs",
                "2", "--batch-size", "64", *extra]  # fmt: skip
        self.args = [sys.executable, "-m", "deployments.onramp", "train", *args]
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
                text=True,
                start_new_session=True,  # its own group: a kill takes its local Ray with it
            )

    def result(self, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return subprocess.CompletedProcess(
            self.args, self.proc.returncode, self.out.read_text(), self.err.read_text()
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[dict[str, tuple[Path, TrainRun]]]:
    """The plain run and the ``--verbose`` run, started together: each is mostly Ray starting
    and waiting on its actors, so the two overlap (46 s for both, not 58 s one after the other,
    on 2 cores); each test still asserts on its own run (its own process, local Ray, state
    directory and output). (The failed run, a few seconds, gains nothing from overlapping.)"""
    runs: dict[str, tuple[Path, TrainRun]] = {}
    for name, extra in (("plain", ()), ("verbose", ("--verbose",))):
        tmp = tmp_path_factory.mktemp(f"train-{name}")
        runs[name] = (tmp, TrainRun(tmp, *extra))
    try:
        yield runs
    finally:
        for _, run in runs.values():
            run.kill()


def test_train_shows_its_own_progress_and_results_and_logs_ray_to_a_file(runs) -> None:
    tmp_path, started = runs["plain"]
    run = started.result()
    assert run.returncode == 0, run.stderr
    leaked = [line for line in run.stderr.splitlines() if RAY_LINES.search(line)]
    assert leaked == [], "\n".join(leaked)
    summary = json.loads(run.stdout)  # stdout holds the JSON summary and nothing else
    # its own progress: a bar per epoch (plain lines: stderr is a pipe) and the epoch's metrics
    err = run.stderr
    assert re.search(r"^epoch 1/2: \[#+\] 100% \d+/\d+ steps", err, re.M), err
    assert re.search(r"^epoch 2: train_loss=\d", err, re.M), err
    # where its outputs went, on stderr and in the summary
    log = Path(summary["log"])
    assert log.parent == tmp_path / "state" / "train" / summary["run"] and log.name == "ray.log"
    assert Path(summary["model"]).is_file() and summary["model"].endswith("model.onramp")
    tail = err.strip().splitlines()[-3:]
    assert tail == [
        f"model: version 1, {summary['model']}",
        f"checkpoint: {summary['checkpoint']}",
        f"Ray's log: {log}",
    ]
    # Ray's own lines are in the log it named
    logged = log.read_text()
    for line in ("Started a local Ray instance", "(TrainController pid=", "(RayTrainWorker pid="):
        assert line in logged, logged[-3000:]
    # no warning raised at a line of Onramp's code (ray_remote_args was one), on the terminal
    # or in the log
    assert not OUR_WARNING.search(err), err
    assert not OUR_WARNING.search(logged), OUR_WARNING.findall(logged)


def test_verbose_shows_rays_lines_too(runs) -> None:
    run = runs["verbose"][1].result()
    assert run.returncode == 0, run.stderr
    assert "RayTrainWorker pid=" in run.stderr and "Started a local Ray instance" in run.stderr
    assert re.search(r"^epoch 2: train_loss=\d", run.stderr, re.M), run.stderr
    assert json.loads(run.stdout)["version"] == 1  # Ray's lines never reach stdout


def test_a_failed_run_is_one_line_and_exit_1_with_the_log_named(tmp_path) -> None:
    run = TrainRun(tmp_path, "--cpus-per-worker", "2").result()  # 2 workers x 2 CPUs, 2-CPU Ray
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith("Ray's log: ") and lines[0].split()[2].endswith("ray.log")
    assert lines[-1].startswith("onramp train: error: workers: 2 workers x 2 CPU need 4 CPUs")
    assert not [line for line in lines if RAY_LINES.search(line)]
