"""The embedded broker's start failures, with a stand-in binary that exits at once (the real
broker's start and stop are tested in tests/integration/test_broker.py)."""

from __future__ import annotations

import pytest

from ray_app.kafka.broker import BrokerError, EmbeddedBroker


def test_a_failed_start_is_told_by_this_runs_log_lines_not_an_earlier_runs(tmp_path):
    log = tmp_path / "broker.log"
    log.write_text("earlier run: Error: AddrInUse\n")  # the log is appended to, run after run
    binary = tmp_path / "tansu"
    binary.write_text("#!/bin/sh\necho 'this run: no storage engine'\nexit 1\n")
    binary.chmod(0o755)
    broker = EmbeddedBroker(binary=binary, log_path=log, start_timeout_s=10)
    with pytest.raises(BrokerError) as info:
        broker.start()
    assert "exited at start" in str(info.value) and "no storage engine" in str(info.value)
    assert "earlier run" not in str(info.value)
