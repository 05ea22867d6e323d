"""Ctrl-C in a real `onramp` process: one line, exit 130, no traceback. (A process of its own:
it runs with the other tests that start processes, on make test's integration worker.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_in_a_real_process_leaves_no_traceback(tmp_path) -> None:
    """SIGINT while `onramp evaluate` waits on its input (a FIFO nobody writes to)."""
    fifo = tmp_path / "logs.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.onramp", "evaluate", "--logs", str(fifo)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    opened = threading.Event()
    holder: list[Any] = []

    def writer() -> None:  # returns once the command has opened the FIFO to read it
        holder.append(open(fifo, "w"))
        opened.set()

    threading.Thread(target=writer, daemon=True).start()
    try:
        assert opened.wait(60), "the command never opened its input"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # a writer still waiting: released
        for f in holder:
            f.close()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().endswith("onramp evaluate: interrupted")
