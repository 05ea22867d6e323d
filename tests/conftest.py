"""Shared fixtures. One broker, one local Ray and one Serve app per test session (they are
expensive on 2 cores); everything is started lazily, only when an integration test asks.
`make test` runs two pytest-xdist workers, each a session of its own, given whole test files
(`--dist loadfile`): a worker starts these only if one of its files asks."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ray_app.config import Settings, load_settings
from ray_app.kafka import EmbeddedBroker, ensure_topics, make_consumer
from ray_app.kafka.broker import free_port

WRITE_KEY = "test-write-key-0123456789"
CRM_PATH = Path(tempfile.gettempdir()) / f"onramp-test-crm-{os.getpid()}.csv"
STATE_DIR = Path(tempfile.gettempdir()) / f"onramp-test-state-{os.getpid()}"
PARTITIONS = 4


def make_settings(bootstrap: str | None = None, **env: str) -> Settings:
    base = {
        "ONRAMP_KAFKA__PARTITIONS": str(PARTITIONS),
        "ONRAMP_COLLECTOR__WRITE_KEYS": json.dumps({"test": WRITE_KEY, "web": "web-key"}),
        "ONRAMP_COLLECTOR__CORS_ORIGINS": json.dumps(["https://app.example.com"]),
        "ONRAMP_ENRICH__CRM_PATH": str(CRM_PATH),
        "ONRAMP_ENRICH__RELOAD_INTERVAL_S": "0.2",
        # never a developer's .onramp/ (a demo's model file would change what tests decide)
        "ONRAMP_STATE_DIR": str(STATE_DIR),
        # checkpoints are signed; never a key file in the developer's home
        "ONRAMP_STREAM__CHECKPOINT_KEY": "test-checkpoint-signing-key-0123456789",
    }
    if bootstrap:
        base["ONRAMP_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    return load_settings(env={**base, **env})


@pytest.fixture
def twin(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The in-memory Kafka twin (two partitions) under every stream worker built in the test."""
    from ray_app.kafka.memory import InMemoryBroker, InMemoryConsumer, InMemoryProducer
    from ray_app.stream import worker as worker_module

    memory = InMemoryBroker(partitions=2)
    monkeypatch.setattr(worker_module, "make_consumer", lambda *a, **k: InMemoryConsumer(memory))
    monkeypatch.setattr(worker_module, "make_producer", lambda *a, **k: InMemoryProducer(memory))
    return memory


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        ensure_topics(b.bootstrap, make_settings(b.bootstrap).kafka)
        yield b


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    from ray_app.up import configure_http_mode

    configure_http_mode(True)
    # Serve's direct ingress gives replicas ports from the lowest free one of a range: each
    # pytest-xdist worker's Serve gets a range of its own (gw0 30000-30499, gw1 30500-30999...),
    # so that a port one worker's replica let go is never taken by the other worker's
    worker = int("".join(c for c in os.environ.get("PYTEST_XDIST_WORKER", "") if c.isdigit()) or 0)
    for proto, base in (("HTTP", 30000), ("GRPC", 40000)):
        os.environ[f"RAY_SERVE_DIRECT_INGRESS_MIN_{proto}_PORT"] = str(base + 500 * worker)
        os.environ[f"RAY_SERVE_DIRECT_INGRESS_MAX_{proto}_PORT"] = str(base + 500 * worker + 499)
    ray.init(
        address="local",  # never a cluster a `ray start` left behind on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace="onramp-test",
    )
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


class ServeApp:
    def __init__(self, base_url: str, settings: Settings) -> None:
        self.base_url = base_url
        self.settings = settings


@pytest.fixture(scope="session")
def serve_port(ray_session: None) -> int:
    from ray_app.up import start_serve

    port = free_port()
    start_serve({"host": "127.0.0.1", "port": port})  # as onramp up: again if a proxy dies
    return port


def deploy(name: str, prefix: str, settings: Settings, port: int) -> ServeApp:
    from ray import serve

    from deployments.app import build_app

    # Serve's proxy binds loopback here (serve_port): the demo keys are fine
    serve.run(
        build_app({"settings": settings, "http_host": "127.0.0.1"}), name=name, route_prefix=prefix
    )
    base = f"http://127.0.0.1:{port}{prefix.rstrip('/')}"
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return ServeApp(base, settings)


@pytest.fixture(scope="session")
def collector(broker: EmbeddedBroker, serve_port: int) -> ServeApp:
    """The collector on Serve, writing to the session broker."""
    return deploy("onramp", "/", make_settings(broker.bootstrap), serve_port)


class TopicReader:
    """Reads a topic from the beginning and finds records by a predicate."""

    def __init__(self, bootstrap: str, settings: Settings, topic: str) -> None:
        self.consumer = make_consumer(bootstrap, settings.kafka)
        self.consumer.assign([(topic, p) for p in range(settings.kafka.partitions)])
        self.seen: list[Any] = []

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], count: int, timeout_s: float = 20.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [r for r in self.seen if predicate(r["value"])]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            for rec in self.consumer.poll(timeout_s=0.2):
                self.seen.append(
                    {"key": rec.key, "partition": rec.partition, "value": json.loads(rec.value)}
                )

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def read_topic(broker: EmbeddedBroker) -> Iterator[Callable[[str], TopicReader]]:
    readers: list[TopicReader] = []

    def open_reader(topic: str, settings: Settings | None = None) -> TopicReader:
        r = TopicReader(broker.bootstrap, settings or make_settings(broker.bootstrap), topic)
        readers.append(r)
        return r

    yield open_reader
    for r in readers:
        r.close()


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("Debian's chromium is needed: `make venv` installs it (apt-get)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright: one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium_path(), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield b
        b.close()
