"""Serve autoscales the ingress on ongoing requests (``decide.target_ongoing_requests``): a load
step on ``/v1/decide`` over real HTTP adds replicas while every request is answered 200, and once
the load is gone the deployment comes back to ``decide.min_replicas``.

The app is deployed with its own autoscaling settings beside the session's (the shared Ray and
broker, the session's HTTP mode). The load is wrk's closed loop (bench/wrk/post.lua) at many more
connections than ``target_ongoing_requests``; during the scale-down a slow probe, one request at a
time, keeps checking the answers. Only behaviour is asserted, never a timing figure: the deadlines
are generous because Serve's metrics arrive every few seconds and this machine is shared. The
test averages the load over 12 s (``decide.look_back_period_s``; Serve wants more than its 10 s
metrics interval), not the shipped 30 s, which only made both steps wait longer.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.decide import ingress_replicas
from tests.conftest import ServeApp, deploy, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "autoscale"
PREFIX = "/autoscale"
DECIDE_KEY = "onramp-demo-decide-key"  # the demo keys are fine: Serve binds loopback here
WRK_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "wrk" / "post.lua"

MIN_REPLICAS = 1
MAX_REPLICAS = 3
TARGET = 2
CONNECTIONS = 16  # 8x the target: desired replicas well above 1 even if half the load is lost

UP_DEADLINE_S = 75.0  # Serve's metrics push every 10 s, averaged over 12 s, then 1 s delay
HOLD_S = 5.0  # load kept on the scaled-up deployment, so the new replicas answer too
DOWN_DEADLINE_S = 100.0  # the 12 s window must empty, then 5 s downscale delay


@pytest.fixture
def scaling_app(broker, serve_port, tmp_path) -> Iterator[ServeApp]:
    from ray import serve

    settings = make_settings(
        broker.bootstrap,
        ONRAMP_DECIDE__MIN_REPLICAS=str(MIN_REPLICAS),
        ONRAMP_DECIDE__MAX_REPLICAS=str(MAX_REPLICAS),
        ONRAMP_DECIDE__TARGET_ONGOING_REQUESTS=str(TARGET),
        ONRAMP_DECIDE__UPSCALE_DELAY_S="1",
        ONRAMP_DECIDE__DOWNSCALE_DELAY_S="5",
        # Serve averages the load over this window: the shipped 30 s only makes the scale-down
        # wait for the window to empty (and the scale-up for it to fill)
        ONRAMP_DECIDE__LOOK_BACK_PERIOD_S="12",
        ONRAMP_DECIDE__REPLICA_CPUS="0.1",  # three fit beside the session's apps on 2 CPUs
        ONRAMP_STATE_DIR=str(tmp_path / "state"),
    )
    app = deploy(APP, PREFIX, settings, serve_port)
    try:
        yield app
    finally:
        serve.delete(APP)


class Wrk:
    """wrk's closed loop on one URL until :meth:`stop`; its JSON line (statuses, errors)."""

    def __init__(self, url: str, bodies: Path, connections: int, max_s: int) -> None:
        self.proc = subprocess.Popen(
            ["wrk", "-t1", f"-c{connections}", f"-d{max_s}s", "--timeout=10s", f"-s{WRK_SCRIPT}",
             url, "--", str(bodies), "0", f"Authorization: Bearer {DECIDE_KEY}",
             "Content-Type: application/json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        """SIGINT ends wrk's run early; it still prints its summary (post.lua's done())."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        for line in out.splitlines():
            if line.startswith("ONRAMP_WRK "):
                return json.loads(line.removeprefix("ONRAMP_WRK "))
        raise AssertionError(f"wrk printed no result (rc {self.proc.returncode}):\n{out}")


def _bodies(path: Path, users: int = 500) -> Path:
    slots = ("next_step", "welcome_content", "checklist_order")
    lines = [
        json.dumps({"user_id": f"as-{uuid.uuid4().hex[:10]}", "slot": slots[i % 3]})
        for i in range(users)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (make system-deps)")
def test_load_step_scales_ingress_up_and_back_down(scaling_app, tmp_path):
    url = f"{scaling_app.base_url}/v1/decide"
    headers = {"authorization": f"Bearer {DECIDE_KEY}"}
    body = {"user_id": "as-probe", "slot": "next_step"}
    timeline: list[tuple[float, str, dict[str, int]]] = []  # (s since start, phase, states)
    started = time.monotonic()

    def watch(phase: str) -> dict[str, int]:
        states = ingress_replicas(APP)
        if not timeline or timeline[-1][1:] != (phase, states):
            timeline.append((round(time.monotonic() - started, 1), phase, states))
        return states

    def story() -> str:
        return "replicas over time: " + "; ".join(f"{t}s {p} {s}" for t, p, s in timeline)

    with httpx.Client(timeout=30) as http:
        # settled at min_replicas, and answering, before the step
        deadline = time.monotonic() + 60
        while watch("idle") != {"RUNNING": MIN_REPLICAS} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert watch("idle") == {"RUNNING": MIN_REPLICAS}, story()
        r = http.post(url, json=body, headers=headers)
        assert r.status_code == 200, r.text

        # the load step: closed loop at CONNECTIONS >> target, until a replica is added and
        # has served under load for HOLD_S
        load = Wrk(url, _bodies(tmp_path / "bodies.jsonl"), CONNECTIONS, max_s=300)
        try:
            peak, scaled_at = MIN_REPLICAS, None
            deadline = time.monotonic() + UP_DEADLINE_S
            while time.monotonic() < deadline and load.proc.poll() is None:
                running = watch("load").get("RUNNING", 0)
                peak = max(peak, running)
                if running > MIN_REPLICAS and scaled_at is None:
                    scaled_at = time.monotonic()
                if scaled_at is not None and time.monotonic() - scaled_at >= HOLD_S:
                    break
                time.sleep(0.5)
        finally:
            result = load.stop()
        assert peak > MIN_REPLICAS, f"no replica added under load; {story()}; wrk {result}"
        assert peak <= MAX_REPLICAS, story()
        statuses = {int(s): n for s, n in result["statuses"].items()}
        assert sum(statuses.values()) > 0, result
        assert set(statuses) == {200}, f"non-200 answers under load: {statuses}; {story()}"
        assert not any(result["errors"].values()), f"wrk errors: {result['errors']}"

        # the load is gone: back to min_replicas, one request at a time still answered 200
        probes: list[int] = []
        deadline = time.monotonic() + DOWN_DEADLINE_S
        while time.monotonic() < deadline:
            probes.append(http.post(url, json=body, headers=headers).status_code)
            if watch("after") == {"RUNNING": MIN_REPLICAS}:
                break
            time.sleep(1)
        assert watch("after") == {"RUNNING": MIN_REPLICAS}, story()
        assert set(probes) == {200}, f"probe answers during scale-down: {probes}; {story()}"
    print(story(), f"requests under load {sum(statuses.values())}", sep="\n")
