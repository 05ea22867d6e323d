"""`serve deploy deployments/serve_config.yaml` end to end, as an operator runs it: `ray start
--head`, `serve deploy`, events in and decisions out over HTTP, then `serve shutdown -y` and
`ray stop`, all through the CLIs, against the session's embedded broker.

This is a second Ray, a cluster of its own (CLI processes, its own temp dir, GCS, dashboard and
HTTP ports), beside the session's `ray_session` whether or not that one runs. `ray stop` stops
every Ray process it can see on the machine, so the whole sequence runs in a PID namespace of
its own (`unshare --pid --mount-proc`): there `ray stop` sees only this cluster, and when the
sequence ends the kernel ends whatever it left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import WRITE_KEY

# the stages' own limits (below) bind, not pytest's 300 s: about 20 s alone, minutes when starved
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
# `serve deploy` counts as reachable from other machines: the shipped demo keys are refused
READ_KEY = "sd-read-key-0123456789"
READ = {"authorization": f"Bearer {READ_KEY}"}
#: Seconds each stage may take once Serve has the config: the apps healthy, the profile read by
#: /v1/decide, the learner's metrics. Alone it all takes about 20 s.
STAGE_S = 180

SCRIPT = r"""
set -eu
ray start --head --disable-usage-stats --num-cpus=2 --object-store-memory=200000000 \
  --resources='{"onramp_decide": 2, "onramp_control": 1}' --temp-dir="$T/ray" \
  --port=$P_GCS --node-manager-port=$P_NM --object-manager-port=$P_OM \
  --ray-client-server-port=$P_CLIENT --runtime-env-agent-port=$P_RTE \
  --metrics-export-port=$P_METRICS --dashboard-agent-listen-port=$P_AGENT \
  --dashboard-agent-grpc-port=$P_AGENT_GRPC --min-worker-port=$P_W0 --max-worker-port=$P_W1 \
  --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port=$P_DASH > "$T/start.log" 2>&1
echo RAY_STARTED
# one retry: on a starved machine Serve's controller can give up on its HTTP proxy while
# `serve deploy` waits for it (HTTP 500, "ProxyActor ... killed"); deploying again is idempotent
serve deploy -a "http://127.0.0.1:$P_DASH" "$T/serve_config.yaml" \
  || { echo DEPLOY_RETRY; sleep 5; serve deploy -a "http://127.0.0.1:$P_DASH" "$T/serve_config.yaml"; }
echo DEPLOYED
read -r _stop
serve shutdown -a "http://127.0.0.1:$P_DASH" -y
echo SERVE_SHUT_DOWN
ray stop
echo RAY_STOPPED
"""


def _namespace_cmd() -> list[str]:
    """unshare with a PID namespace (as root, or in a user namespace where that is allowed)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs util-linux unshare: `ray stop` must not stop the machine's other Rays")
    for extra in ([], ["--user", "--map-root-user"]):
        cmd = [unshare, *extra, "--pid", "--fork", "--mount-proc", "--kill-child"]
        if subprocess.run([*cmd, "true"], capture_output=True).returncode == 0:
            return cmd
    pytest.skip(
        "cannot create a PID namespace here: `ray stop` would stop every Ray on the machine"
    )


def _deploy_config(tmp: Path, http_port: int) -> Path:
    """The shipped config with what a one-machine test needs changed: the HTTP port, one
    collector replica and one stream worker (2 cores)."""
    config = yaml.safe_load((ROOT / "deployments" / "serve_config.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=http_port)
    apps = {a["name"]: a for a in config["applications"]}
    settings = apps["onramp"]["args"]["settings"]  # scaling is Onramp settings (decide.*)
    settings["decide"].update(min_replicas=1, max_replicas=2)
    settings["collector"]["replicas"] = 1
    apps["onramp-stream"]["deployments"][0]["user_config"]["workers"] = 1
    path = tmp / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _distinct_ports(n: int) -> list[int]:
    """``n`` free loopback ports, all different: each socket stays bound until all are chosen
    (ports freed one by one can come back twice, and Ray refuses two components on one port)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait(lines, marker: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            lines.append(line)
            if line.strip() == marker:
                return
        elif proc.poll() is not None:
            break
    tail = log.read_text()[-3000:] if log.exists() else ""
    raise AssertionError(f"no {marker} within {timeout_s}s:\n{''.join(lines)}\n{tail}")


def _stages(stages: dict[str, float]) -> dict[str, float]:
    """Seconds from the start to each stage reached."""
    return {k: round(v - stages["begin"], 1) for k, v in stages.items()}


def _control_user() -> str:
    from ray_app.config import load_settings
    from ray_app.decide import Arms

    arms = Arms(load_settings(env={}).decide)
    while True:
        user = f"sd-{uuid.uuid4().hex[:10]}"
        if arms.assign(user, None) == "control":
            return user


def _batch(user: str) -> dict:
    batch = [{"type": "identify", "userId": user, "traits": {"role": "developer"}}]
    for n, step in enumerate(["welcome", "role"]):
        for k, name in enumerate(("Step Viewed", "Step Completed")):
            batch.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": name,
                    "context": {
                        "onramp": {"sessionId": f"s-{user}", "seq": 2 * n + k, "stepId": step}
                    },
                }
            )
    return {"batch": batch}


def test_serve_deploy_brings_up_onramp_on_a_ray_started_by_the_cli(broker):
    cmd = _namespace_cmd()
    tmp = Path(tempfile.mkdtemp(prefix="orsd"))  # short: Ray's socket paths live under it
    names = ("P_GCS", "P_NM", "P_OM", "P_CLIENT", "P_RTE", "P_METRICS", "P_AGENT")
    names += ("P_AGENT_GRPC", "P_DASH", "HTTP")
    free = _distinct_ports(len(names))
    ports = {name: str(port) for name, port in zip(names, free, strict=True)}
    http_port = int(ports.pop("HTTP"))
    # the workers' range: 201 ports clear of every port above
    base = next(b for b in range(30000, 60000, 250) if all(not b <= p <= b + 200 for p in free))
    ports.update(P_W0=str(base), P_W1=str(base + 200))
    _deploy_config(tmp, http_port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ONRAMP_"))}
    env.update(ports)
    # Ray's token authentication, with a token of this cluster's own (not ~/.ray/auth_token)
    token = tmp / "auth_token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env.update(
        T=str(tmp),
        PATH=f"{Path(os.sys.executable).parent}:{env.get('PATH', '')}",
        # the settings every Ray worker process inherits from `ray start` (as cluster.yaml does)
        ONRAMP_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
        ONRAMP_KAFKA__PARTITIONS="4",
        ONRAMP_KAFKA__TOPIC_PREFIX=f"sd{uuid.uuid4().hex[:6]}",  # its own topics on the broker
        ONRAMP_COLLECTOR__WRITE_KEYS=json.dumps({"test": WRITE_KEY}),
        ONRAMP_COLLECTOR__DECIDE_KEYS=json.dumps({"web": "sd-decide-key-0123456789"}),
        ONRAMP_COLLECTOR__READ_KEYS=json.dumps({"ops": READ_KEY}),
        ONRAMP_STREAM__CHECKPOINT_KEY="sd-checkpoint-key-0123456789",
        ONRAMP_STATE_DIR=str(tmp / "state"),
    )
    proc = subprocess.Popen(
        [*cmd, "bash", "-c", SCRIPT],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    log = tmp / "start.log"
    try:
        stages = {"begin": time.monotonic()}
        _wait(lines, "RAY_STARTED", proc, 120, log)
        stages["ray_started"] = time.monotonic()
        _wait(lines, "DEPLOYED", proc, 150, log)
        stages["deployed"] = time.monotonic()
        user = _control_user()
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as http:
            # each stage gets its own STAGE_S (on a loaded machine every one of them is slow)
            deadline = time.monotonic() + STAGE_S
            health = None
            while time.monotonic() < deadline:  # serve deploy returns before the apps run
                try:
                    health = http.get("/healthz")
                    if health.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            assert health is not None and health.status_code == 200, "collector never healthy"
            stages["healthy"] = time.monotonic()
            sent = http.post("/v1/batch", json=_batch(user), auth=(WRITE_KEY, ""))
            assert sent.status_code == 200, sent.text
            assert sent.json()["accepted"] == 5
            # the stream workers (onramp-stream app) apply the events; decide reads the profile
            # (the decide replica may be up before the stream app: it answers cold-start,
            # stream_unavailable, until the workers run, then finds the profile)
            answer: dict = {}
            waited: Counter[str] = Counter()  # why each answer was not the profile's
            deadline = time.monotonic() + STAGE_S
            while time.monotonic() < deadline:
                r = http.post(
                    "/v1/decide", json={"user_id": user, "slot": "next_step"}, headers=READ
                )
                if r.status_code == 200:
                    answer = r.json()
                    if not answer["coldStart"] and answer["chosen"] == "team_size":
                        break
                    waited[str(answer.get("coldReason") or answer.get("chosen"))] += 1
                else:
                    waited[f"HTTP {r.status_code}"] += 1
                time.sleep(0.5)
            stages["profile_read"] = time.monotonic()
            assert (answer.get("chosen"), answer.get("coldStart")) == ("team_size", False), (
                f"{answer}; while waiting: {dict(waited)}; {_stages(stages)}"
            )
            assert answer["arm"] == "control" and answer["decisionId"]
            profile = http.get(f"/v1/profiles/{user}", headers=READ)
            assert profile.status_code == 200 and profile.json()["userKey"] == user
            stages["decided"] = time.monotonic()
            metrics = ""
            deadline = time.monotonic() + STAGE_S
            while time.monotonic() < deadline:  # the learner starts after the stream workers
                metrics = http.get("/metrics").text
                if "onramp_learner_model_version" in metrics:
                    break
                time.sleep(1)
            assert "onramp_stream_records_total" in metrics  # the stream app's workers
            # the stream app's learner
            assert "onramp_learner_model_version" in metrics, _stages(stages)
            stages["learner"] = time.monotonic()
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        _wait(lines, "SERVE_SHUT_DOWN", proc, 120, log)
        _wait(lines, "RAY_STOPPED", proc, 120, log)
        assert proc.wait(timeout=30) == 0, "".join(lines)
        stages["stopped"] = time.monotonic()
        print(_stages(stages), dict(waited))
        # Serve is gone: nothing answers on its port any more
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2)
    finally:
        if proc.poll() is None:  # ending the namespace's first process ends all of it
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
