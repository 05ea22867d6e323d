"""What `onramp train` prints while Ray runs (training.console), without a cluster: the batches
of lines Ray forwards from workers are fed in by hand, as Ray's log thread hands them over."""

from __future__ import annotations

import io
import json
import logging
import time
import warnings
from pathlib import Path

from training.console import MARK, RayConsole

TQDM = "__ray_tqdm_magic_token__"


def _state(x: int, closed: bool = False, uuid: str = "b1", **extra: object) -> str:
    state = {"__magic_token__": TQDM, "x": x, "pos": 0, "desc": "epoch 1/2", "total": 4,
             "unit": "steps", "ip": "10.0.0.1", "pid": 7, "uuid": uuid, "closed": closed}  # fmt: skip
    return json.dumps({**state, **extra})


def _batch(*lines: str, actor: str = "RayTrainWorker", is_err: bool = False) -> dict:
    return {"ip": "10.0.0.1", "localhost": "10.0.0.1", "pid": "7", "actor_name": actor,
            "task_name": "", "is_err": is_err, "job": "01", "lines": list(lines)}  # fmt: skip


def test_marked_lines_and_bars_reach_the_terminal_and_ray_lines_the_log(tmp_path: Path) -> None:
    out = io.StringIO()  # not a terminal: a plain line at the end of each bar
    log = tmp_path / "run" / "ray.log"
    with RayConsole(log, stream=out) as console:
        console.on_batch(_batch("Requesting resources: {'CPU': 0.5} * 2", actor="TrainController"))
        console.on_batch(
            _batch(
                "Failed to query Ray Train Controller actor state. Continuing to monitor.",
                actor="PlacementGroupCleaner",
                is_err=True,
            )
        )
        console.on_batch(_batch(_state(1, started=time.time() - 4), _state(4, closed=True)))
        # Ray Train tees a print into its logger: the same states again, after the bar closed
        console.on_batch(_batch(_state(1), _state(4, closed=True), "", is_err=True))
        console.on_batch(_batch(MARK + "epoch 1: train_loss=0.5000"))
    shown = out.getvalue().splitlines()
    assert len(shown) == 2, shown
    assert shown[0].startswith("epoch 1/2: [########################] 100% 4/4 steps, 1.0/s")
    assert shown[1] == "epoch 1: train_loss=0.5000"
    logged = log.read_text().splitlines()
    assert logged[0].startswith("--- ")  # which invocation wrote what follows
    assert logged[1:] == [
        "(TrainController pid=7) Requesting resources: {'CPU': 0.5} * 2",
        "(PlacementGroupCleaner pid=7) Failed to query Ray Train Controller actor state. "
        "Continuing to monitor.",
    ]


def test_a_bar_on_a_terminal_is_redrawn_in_place_and_lines_clear_it(tmp_path: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with RayConsole(tmp_path / "ray.log", stream=out) as console:
        console.on_batch(_batch(_state(1, started=time.time() - 1)))
        time.sleep(0.25)  # the bar redraws at most every 0.2 s
        console.on_batch(_batch(_state(2)))
        console.on_batch(_batch(MARK + "a line while the bar is drawn"))
        console.on_batch(_batch(_state(4, closed=True)))
    text = out.getvalue()
    drawn, rest = text.split("\r\x1b[Ka line while the bar is drawn\n")
    assert drawn.startswith("\repoch 1/2: [") and "\n" not in drawn  # redrawn in place
    assert rest.startswith("\repoch 1/2: [") and rest.endswith("\n")  # the final bar, ended


def test_verbose_shows_ray_lines_on_stderr_too(tmp_path: Path, capsys) -> None:
    out = io.StringIO()
    with RayConsole(tmp_path / "ray.log", verbose=True, stream=out) as console:
        console.on_batch(_batch("Setting up process group", is_err=False))
        console.on_batch(_batch(MARK + "epoch 1: ok"))
    err = capsys.readouterr()
    assert "(RayTrainWorker pid=7" in err.err and "Setting up process group" in err.err
    assert err.out == ""  # stdout holds the command's results, never Ray's lines
    assert out.getvalue() == "epoch 1: ok\n"
    assert "Setting up process group" in (tmp_path / "ray.log").read_text()


def test_ray_loggers_write_to_the_log_while_it_runs_and_are_put_back(tmp_path: Path) -> None:
    logger = logging.getLogger("ray.onramp_test")
    stream = io.StringIO()
    console_handler = logging.StreamHandler(stream)
    logger.addHandler(console_handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        with RayConsole(tmp_path / "ray.log", stream=io.StringIO()):
            logger.info("Started a local Ray instance.")
        logger.info("after")
    finally:
        logger.removeHandler(console_handler)
    assert "Started a local Ray instance." in (tmp_path / "ray.log").read_text()
    assert stream.getvalue() == "after\n"  # nothing while it ran, its handler back after


def test_warnings_from_libraries_go_to_the_log_and_ours_still_show(tmp_path: Path) -> None:
    ours = str(Path(__file__).resolve().parents[2] / "training" / "data.py")
    lib = "/venv/lib/python3.11/site-packages/ray/data/context.py"
    shown: list[str] = []
    before = warnings.showwarning
    warnings.showwarning = lambda m, c, f, n, *_: shown.append(f"{f}:{n}: {c.__name__}")
    try:
        with RayConsole(tmp_path / "ray.log", stream=io.StringIO()):
            warnings.showwarning(DeprecationWarning("old"), DeprecationWarning, lib, 1)
            warnings.showwarning(FutureWarning("ours"), FutureWarning, ours, 2)
        assert warnings.showwarning is not before  # ours, put back below
    finally:
        warnings.showwarning = before
    assert shown == [f"{ours}:2: FutureWarning"]
    assert f"{lib}:1: DeprecationWarning: old" in (tmp_path / "ray.log").read_text()
