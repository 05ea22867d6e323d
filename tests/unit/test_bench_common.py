"""The benchmarks' own accounting (bench/_common.py): what they report must be what happened."""

from __future__ import annotations

import os
import time

from bench._common import _TICK_S, cores_by_process, cpu_ticks


def test_cores_match_processes_by_pid_whatever_their_title_says_now():
    """A Ray actor's title names the method it runs, so it changes between two snapshots;
    matched by label, the new title counted the process's whole lifetime as this run's."""
    second = round(1 / _TICK_S)
    before = {"7": ("ray::ServeController", 1_000 * second), "9": ("tansu-v0.6.0", 0)}
    after = {
        "7": ("ray::ServeController.listen_for_change", 1_000 * second + second // 20),
        "8": ("wrk", second // 10),  # born between the snapshots: all of it counts
        "9": ("tansu-v0.6.0", second // 5),
    }
    cores = cores_by_process(before, after, 1.0)
    assert cores == {"tansu-v0.6.0": 0.2, "wrk": 0.1, "ray::ServeController": 0.05,
                     "other": 0, "total": 0.35}  # fmt: skip
    assert cores_by_process(before, after, 0.0) == {}


def test_cpu_ticks_see_what_this_process_spent():
    """The ticks of this process between two snapshots are its own CPU time (os.times), to a
    tick or two, however busy the machine is."""
    me = str(os.getpid())
    before, mine = cpu_ticks(), os.times()
    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:
        sum(i * i for i in range(10_000))
    after, spent = cpu_ticks(), os.times()
    cpu_s = (spent.user + spent.system) - (mine.user + mine.system)
    ticks = after[me][1] - before[me][1]
    assert cpu_s >= 0.25 and abs(ticks * _TICK_S - cpu_s) <= 3 * _TICK_S
