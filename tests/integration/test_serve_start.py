"""Serve's HTTP proxy dying while Serve starts does not stop Onramp from starting
(:func:`ray_app.up.start_serve`, what ``onramp up`` and ``onramp demo`` call).

On a busy machine Serve's controller kills a proxy that is late to start and starts another;
``serve.start`` waits on the first one and raises ``ActorDiedError``. Here the proxy is killed
the moment it exists, in a Ray of its own (a subprocess: the session's Ray already runs Serve),
and the app must still answer over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_SESSION_SERVE_ENV = ("RAY_SERVE_HAPROXY_", "RAY_SERVE_FALLBACK_PROXY_")

SCRIPT = r"""
import threading, time
import httpx, ray
from ray import serve
from ray_app.kafka.broker import free_port
from ray_app.up import configure_http_mode, start_serve, stop_own_haproxy

configure_http_mode(True)
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
killed = []

def kill_the_first_proxy():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for a in ray.util.list_named_actors(all_namespaces=True):
            if a["name"].startswith("SERVE_PROXY_ACTOR"):
                ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]))
                killed.append(a["name"])
                return
        time.sleep(0.02)

threading.Thread(target=kill_the_first_proxy, daemon=True).start()
port = free_port()
try:
    start_serve({"host": "127.0.0.1", "port": port})
    print("KILLED", len(killed), flush=True)

    @serve.deployment
    class Hello:
        def __call__(self, request):
            return "hello"

    serve.run(Hello.bind(), name="hello", route_prefix="/")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            print("HTTP", r.status_code, r.text, flush=True)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
finally:
    serve.shutdown()
    ray.shutdown()
    stop_own_haproxy()  # a killed HAProxy manager does not take its HAProxy along
"""


def test_a_proxy_killed_while_serve_starts_is_replaced_and_http_answers():
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SESSION_SERVE_ENV)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "KILLED 1" in done.stdout, out  # the proxy died while serve.start waited on it
    assert "asking again (2 of 3)" in done.stderr, out  # ... and Serve was asked again
    assert "HTTP 200 hello" in done.stdout, out
