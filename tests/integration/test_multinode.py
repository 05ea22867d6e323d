"""Multi-node behaviour (issue 8): stream workers spread over nodes, a node removed mid-stream
loses no event and no state, a node added gets a worker. Several raylets on this machine with
``ray.cluster_utils.Cluster``, in a subprocess (a Cluster is its own Ray, apart from the
session's); see ``multinode_stream.py`` for the checks themselves."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_workers_spread_survive_a_node_loss_and_move_to_a_new_node():
    # Its own process group: on a timeout the raylets and the broker it started go with it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.multinode_stream"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"the multi-node run took over 240 s:\n{stdout[-4000:]}")
    tail = stdout[-4000:]
    assert proc.returncode == 0, tail
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    print(line)  # phases (seconds since start) and placements, shown with -s
    result = json.loads(line.removeprefix("RESULT "))
    assert result["startPlacement"] == 2  # two workers on two nodes
    assert result["decisionReplicaNodes"] == 2  # two decision replicas on two nodes
    assert result["restarts"] >= 1 and result["moves"] >= 1
    assert result["totals"]["records"] == result["produced"]
    assert result["users"] >= 100
