"""`onramp demo` (what `make demo` runs) end to end, in its own process with its own Ray."""

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from ray_app.kafka.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: A decision the demo shows as it happens: the step, arm, model version and propensity.
SHOWN = re.compile(r"decide next_step for u\S+: \w+ +\(arm \w+, model v\d+, propensity")
_SESSION_SERVE_ENV = ("RAY_SERVE_HAPROXY_", "RAY_SERVE_FALLBACK_PROXY_")


def test_demo_prints_urls_and_accepted_events_then_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deployments.onramp",
            "demo",
            "--port",
            str(port),
            "--users",
            "200",
            "--rate",
            "200",
            "--every",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={
            # a fresh user's shell: not the HAProxy paths and ports this test session's own
            # Serve holds (configure_http_mode put them in os.environ; `onramp` would reuse them)
            **{k: v for k, v in os.environ.items() if not k.startswith(_SESSION_SERVE_ENV)},
            "ONRAMP_STATE_DIR": str(tmp_path / "state"),
            "ONRAMP_RAY__NUM_CPUS": "2",
        },
    )
    lines = []
    accepted = 0
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"accepted (\d+)", line)
            if m and int(m.group(1)) > 0:
                accepted = int(m.group(1))
            if accepted and SHOWN.search(line):  # a user with nothing left to show says so
                break
        out = "".join(lines)
        assert accepted > 0, out
        # the demo shows decisions as they happen: arm, model version, propensity
        assert SHOWN.search(out), out
        assert f"http://127.0.0.1:{port}/v1/decide" in out
        assert f"http://127.0.0.1:{port}/v1/batch" in out and "write key" in out
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        # the demo onboarding app, with the embedded demo keys
        assert f"http://127.0.0.1:{port}/demo/" in out
        page = httpx.get(f"http://127.0.0.1:{port}/demo/", timeout=5)
        assert page.status_code == 200 and "app.js" in page.text
        config = httpx.get(f"http://127.0.0.1:{port}/demo/config.json", timeout=5).json()
        assert config["writeKey"] == "onramp-demo-write-key"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, rest
        assert "stopped" in rest and "simulator totals" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert (tmp_path / "state" / "sim" / "ground_truth.jsonl").exists()
    # the learning simulation's plot of the completion rate per arm
    png = tmp_path / "state" / "learning.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "completion rate per arm over time" in rest
