"""Every ingress replica's metrics in every scrape, each series labelled with its replica.

Serve routes a scrape of ``/metrics`` to one replica of its choosing. If each replica answered
with its own counters only, one Prometheus series would jump from replica to replica between
scrapes (a false reset in ``rate()`` every time it lands on a replica that counted less).
Instead each replica publishes its exposition every few seconds to one small named actor
(:class:`ReplicaMetrics`, one per Ray namespace), and whichever replica answers a scrape returns
all replicas' latest figures, each series with ``replica="<id>"``: Prometheus sees every
replica once, whoever answers, and ``sum by (...)`` adds them up. A replica that stops
publishing (gone, or scaled down) drops out after ``ttl_s``.

>>> a = "# HELP onramp_x_total x\\n# TYPE onramp_x_total counter\\nonramp_x_total{source=\\"web\\"} 3.0\\n"
>>> b = "# TYPE onramp_x_total counter\\nonramp_x_total{source=\\"web\\"} 4.0\\n"
>>> print(merge_expositions({"r1": a, "r2": b}).decode().strip())
# HELP onramp_x_total x
# TYPE onramp_x_total counter
onramp_x_total{replica="r1",source="web"} 3.0
onramp_x_total{replica="r2",source="web"} 4.0
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = [
    "HUB_NAME",
    "PUBLISH_INTERVAL_S",
    "Publisher",
    "ReplicaMetrics",
    "ReplicaMetricsStore",
    "merge_expositions",
    "metrics_hub",
    "replica_name",
]

log = logging.getLogger(__name__)

#: The named actor replicas publish to (in Onramp's Ray namespace).
HUB_NAME = "onramp-replica-metrics"
#: How often a replica publishes its figures (a scrape sees them at most this old).
PUBLISH_INTERVAL_S = 2.0
#: A replica silent for this long is dropped from scrapes.
TTL_S = 60.0


def merge_expositions(texts: Mapping[str, str]) -> bytes:
    """Prometheus text expositions by replica id -> one exposition: each metric family once,
    with every sample labelled ``replica``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            for s in fam.samples:
                merged.add_sample(s.name, {**s.labels, "replica": replica}, s.value, s.timestamp)

    class _Families:
        def collect(self) -> Iterator[Metric]:
            yield from families.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())  # type: ignore[arg-type]
    return generate_latest(registry)


class ReplicaMetricsStore:
    """The latest exposition of each replica, forgetting those silent for ``ttl_s``."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._latest: dict[str, tuple[float, str]] = {}

    def put(self, replica: str, text: str, now: float | None = None) -> None:
        self._latest[replica] = (time.monotonic() if now is None else now, text)

    def texts(self, now: float | None = None) -> dict[str, str]:
        now = time.monotonic() if now is None else now
        self._latest = {r: v for r, v in self._latest.items() if now - v[0] <= self.ttl_s}
        return {r: text for r, (_, text) in self._latest.items()}


class ReplicaMetrics:
    """The actor around a :class:`ReplicaMetricsStore` (no CPU reserved; two calls a replica
    every :data:`PUBLISH_INTERVAL_S`, one per scrape)."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.store = ReplicaMetricsStore(ttl_s)

    def put(self, replica: str, text: str) -> None:
        self.store.put(replica, text)

    def texts(self) -> dict[str, str]:
        return self.store.texts()


def metrics_hub(namespace: str) -> Any:
    """The hub actor of ``namespace``, started by the first replica that asks. It belongs to
    that replica: if the replica goes, so does the hub, and the next replica to publish starts
    another (the figures are back within :data:`PUBLISH_INTERVAL_S`)."""
    import ray

    return (
        ray.remote(ReplicaMetrics)
        .options(
            name=HUB_NAME,
            namespace=namespace,
            get_if_exists=True,
            num_cpus=0,
        )
        .remote()
    )


class Publisher:
    """One replica's side: publishes ``own()`` (its exposition) to the hub every
    :data:`PUBLISH_INTERVAL_S` on a daemon thread, and answers a scrape with every replica's
    figures (its own as of now). Without Ray, or with the hub unreachable, a scrape still
    answers with this replica's own series, labelled."""

    def __init__(self, namespace: str, replica: str, own: Callable[[], bytes]) -> None:
        self.namespace, self.replica, self.own = namespace, replica, own
        self._hub: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="onramp-replica-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _handle(self) -> Any:
        """The hub, or ``None`` while this process is not connected to Ray: reaching for an
        actor then would start a Ray of its own (Ray's auto-init), which a daemon thread did at
        the exit of a process whose Ray had been shut down."""
        import ray

        if not ray.is_initialized():
            self._hub = None
            return None
        if self._hub is None:
            self._hub = metrics_hub(self.namespace)
        return self._hub

    def _run(self) -> None:
        import ray

        while not self._stop.wait(PUBLISH_INTERVAL_S):
            try:
                hub = self._handle()
                if hub is not None:
                    ray.get(hub.put.remote(self.replica, self.own().decode()), timeout=5)
            except Exception:  # the hub went with the replica that owned it: start another
                self._hub = None
                log.debug("publishing replica metrics failed", exc_info=True)

    async def scrape(self, timeout_s: float = 3.0) -> bytes:
        """Every live replica's series, each labelled ``replica``."""
        texts: dict[str, str] = {}
        try:
            hub = self._handle()
            if hub is not None:
                texts = await asyncio.wait_for(hub.texts.remote(), timeout_s)
        except Exception:
            self._hub = None
            log.warning("other replicas' metrics unavailable for this scrape", exc_info=True)
        texts[self.replica] = self.own().decode()
        return merge_expositions(texts)


def replica_name() -> str:
    """This Serve replica's tag (what ``replica`` labels its series with), else a process id."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_tag)
    except Exception:
        from ray_app.telemetry.resource import instance_id

        return instance_id()
