"""How the supervisor runs stream workers: on Ray (:class:`RayRuntime`, what Onramp runs) or
in this process over the in-memory broker (:class:`LocalRuntime`, so that chaos, rescale and
reward-join scenarios run as fast unit tests). The supervisor speaks only this protocol:
spawn a worker, call one of its methods, kill it, list the nodes that can run one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ray_app.errors import OnrampError

if TYPE_CHECKING:
    from ray_app.kafka.memory import InMemoryBroker

__all__ = ["LocalRuntime", "RayRuntime", "WorkerGone", "WorkerRuntime"]


class WorkerGone(OnrampError):
    """A worker did not answer: it died, was killed, or timed out."""


class WorkerRuntime(Protocol):
    def spawn(
        self, args: tuple[Any, ...], num_cpus: float, resources: dict[str, float], node: str | None
    ) -> Any:
        """Create a worker (``StreamWorker(*args)``), pinned to ``node`` when given; returns
        its handle (not started)."""

    def call(self, handle: Any, method: str, *args: Any, timeout: float = 30.0) -> Any:
        """``handle.method(*args)``; raises :class:`WorkerGone` if the worker is gone."""

    def kill(self, handle: Any) -> None:
        """Stop the worker at once: no final checkpoint (a crash)."""

    def nodes(self, need: dict[str, float]) -> list[str]:
        """Live nodes offering ``need`` (resource -> amount), sorted."""


class RayRuntime:
    """Workers as Ray actors (``max_restarts=0``: the supervisor restarts them itself)."""

    def spawn(
        self, args: tuple[Any, ...], num_cpus: float, resources: dict[str, float], node: str | None
    ) -> Any:
        import ray

        from ray_app.stream.worker import StreamWorker

        actor_cls = ray.remote(num_cpus=0, max_concurrency=8)(StreamWorker)  # type: ignore[call-overload]
        options: dict[str, Any] = {"max_restarts": 0, "num_cpus": num_cpus}
        if resources:
            options["resources"] = dict(resources)
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # Hard affinity: Ray places a soft one on the caller's node when it can.
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        return actor_cls.options(**options).remote(*args)

    def call(self, handle: Any, method: str, *args: Any, timeout: float = 30.0) -> Any:
        import ray

        try:
            return ray.get(getattr(handle, method).remote(*args), timeout=timeout)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
            raise WorkerGone(f"{type(exc).__name__}: {exc}") from None

    def kill(self, handle: Any) -> None:
        import ray

        try:
            ray.kill(handle)
        except Exception:  # already gone
            pass

    def nodes(self, need: dict[str, float]) -> list[str]:
        import ray

        out = []
        for n in ray.nodes():
            have = n.get("Resources") or {}
            if n.get("Alive") and all(have.get(k, 0) >= v for k, v in need.items() if v > 0):
                out.append(n["NodeID"])
        return sorted(out)


@dataclass
class _Local:
    worker: Any
    dead: bool = False


@dataclass
class LocalRuntime:
    """Workers as objects in this process, each with its own consumer and producer on one
    :class:`~ray_app.kafka.client.InMemoryBroker`; ``nodes`` pretends to be a cluster."""

    broker: InMemoryBroker
    node_names: list[str] = field(default_factory=lambda: ["local"])
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def spawn(
        self, args: tuple[Any, ...], num_cpus: float, resources: dict[str, float], node: str | None
    ) -> Any:
        from ray_app.kafka.memory import InMemoryConsumer, InMemoryProducer
        from ray_app.stream.worker import StreamWorker

        worker = StreamWorker(
            *args, consumer=InMemoryConsumer(self.broker), producer=InMemoryProducer(self.broker)
        )
        return _Local(worker)

    def call(self, handle: Any, method: str, *args: Any, timeout: float = 30.0) -> Any:
        if handle.dead:
            raise WorkerGone("killed")
        return getattr(handle.worker, method)(*args)

    def kill(self, handle: Any) -> None:
        if not handle.dead:
            handle.dead = True
            handle.worker.crash()

    def nodes(self, need: dict[str, float]) -> list[str]:
        return sorted(self.node_names)
