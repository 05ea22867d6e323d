"""The supervisor: assigns partitions to stream workers, restarts dead ones, rescales.

Assignment is deterministic: partition ``p`` goes to worker ``p % workers``. A profile lookup goes
key -> partition (Kafka's murmur2, the same function every producer uses) -> owning worker.
A dead worker (its actor died, or its loop stopped on an error) is replaced by a new actor with
the same partitions, which resumes from their checkpoints. Rescaling stops every worker (each
writes a final checkpoint), then starts the new set, which loads the checkpoints of the
partitions it now owns: state moves with its partition and is neither lost nor applied twice.

Placement (``stream.placement``): with ``spread`` (the default) each worker is pinned (hard node
affinity; Ray's own choice if that node is gone by then) to the live node, among those offering ``stream.worker_resources``, that runs the
fewest workers. A worker whose node dies is restarted like any dead worker, on a live node; when
a node joins and the spread is uneven (a node runs 2 more workers than another), workers are
moved one at a time: the moved worker writes a final checkpoint and its replacement on the new
node resumes from it, while the other workers keep running. Checkpoints must then be where every
node reads them (``stream.checkpoint_uri`` on shared storage, e.g. ``s3://``).

Checkpoint key: the supervisor resolves the key that signs checkpoints once
(:func:`~ray_app.stream.checkpoint.checkpoint_key`: ``stream.checkpoint_key``, else the key file
on the supervisor's node) and hands it to every worker it starts, so all workers of one
deployment sign and verify with the same key wherever they run. A worker whose checkpoint of a
partition is refused keeps running its other partitions; the supervisor logs the refusal at ERROR
each time it starts that worker, and ``status()`` carries it (``refused``), so a refused partition
is never started empty behind the operator's back.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from ray_app.config import Settings
from ray_app.kafka.client import partition_for
from ray_app.stream.checkpoint import checkpoint_key
from ray_app.stream.worker import StreamWorker

__all__ = [
    "SUPERVISOR_NAME",
    "ProfileReader",
    "StreamSupervisor",
    "StreamUnavailable",
    "assign_partitions",
    "start_supervisor_actor",
]

#: Name of the supervisor actor in Onramp's Ray namespace (``ray.namespace``).
SUPERVISOR_NAME = "onramp-supervisor"

log = logging.getLogger(__name__)


def assign_partitions(partitions: int, workers: int) -> list[list[int]]:
    """Partition ``p`` -> worker ``p % workers``.

    >>> assign_partitions(5, 2)
    [[0, 2, 4], [1, 3]]
    """
    return [[p for p in range(partitions) if p % workers == w] for w in range(workers)]


class StreamSupervisor:
    """Runs the stream workers as Ray actors (call from the driver, or run it as an actor)."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        workers: int | None = None,
        checkpoint_uri: str | None = None,
        monitor_interval_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.partitions = settings.kafka.partitions
        self.n_workers = min(workers or settings.stream.workers, self.partitions)
        self.checkpoint_uri = (
            checkpoint_uri
            or settings.stream.checkpoint_uri
            or str(Path(settings.state_dir) / "checkpoints")
        )
        self.checkpoint_key = checkpoint_key(settings.stream, self.checkpoint_uri)
        self.monitor_interval_s = monitor_interval_s
        self.refused: dict[int, str] = {}
        """Partition -> why its checkpoint was refused, as the latest worker that owns it said."""
        self.workers: list[Any] = []
        self.assignment: list[list[int]] = []
        self.generation = 0
        self.restarts = 0
        self.moves = 0
        self.worker_nodes: list[str | None] = []
        self._last_rebalance = 0.0
        self._suspect: dict[str, float] = {}
        """Node -> when a worker on it died: Ray may list a lost node as alive for a while
        (its health checks have to fail first), so no worker is placed there for a minute."""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    def _spawn(
        self, index: int, partitions: list[int], node: str | None = None, avoid: str | None = None
    ) -> Any:
        import ray

        s = self.settings.stream
        actor_cls = ray.remote(num_cpus=0, max_concurrency=8)(StreamWorker)  # type: ignore[call-overload]
        name = f"w{index}-g{self.generation}-r{self.restarts}-m{self.moves}"
        options: dict[str, Any] = {"max_restarts": 0, "num_cpus": s.worker_num_cpus}
        if s.worker_resources:
            options["resources"] = dict(s.worker_resources)
        args = (
            name,
            self.settings,
            self.bootstrap,
            partitions,
            self.checkpoint_uri,
            self.checkpoint_key,
        )
        node = (node or self._least_loaded(index, avoid=avoid)) if s.placement == "spread" else None
        worker = None
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # Hard affinity: Ray places a soft one on the caller's node when it can. If the
            # node went away meanwhile, fall back to Ray's own choice below.
            pinned = NodeAffinitySchedulingStrategy(node, soft=False)
            worker = actor_cls.options(**options, scheduling_strategy=pinned).remote(*args)
            try:
                ray.get(worker.start.remote(), timeout=60)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
                log.warning("worker %d could not start on node %s (%s)", index, node, exc)
                ray.kill(worker)
                worker = None
        if worker is None:
            worker = actor_cls.options(**options).remote(*args)
            ray.get(worker.start.remote(), timeout=120)
        where = ray.get(worker.node_id.remote(), timeout=30)
        refused = ray.get(worker.refused_partitions.remote(), timeout=30)
        for p in partitions:
            self.refused.pop(p, None)
        for p, why in refused.items():
            self.refused[p] = why
            log.error("worker %d does not run partition %d: %s", index, p, why)
        while len(self.worker_nodes) <= index:
            self.worker_nodes.append(None)
        self.worker_nodes[index] = where
        return worker

    def nodes(self) -> list[str]:
        """Live nodes that can run a stream worker (enough CPUs and ``worker_resources``)."""
        import ray

        s = self.settings.stream
        need = {"CPU": s.worker_num_cpus, **s.worker_resources}
        out = []
        for n in ray.nodes():
            have = n.get("Resources") or {}
            if n.get("Alive") and all(have.get(k, 0) >= v for k, v in need.items() if v > 0):
                out.append(n["NodeID"])
        return sorted(out)

    def _least_loaded(
        self, index: int, nodes: list[str] | None = None, avoid: str | None = None
    ) -> str | None:
        """The live node running the fewest workers (not counting worker ``index``), other than
        ``avoid`` (the node a dead worker ran on: Ray may not know yet that it is gone) unless
        it is the only one."""
        nodes = self._usable(self.nodes()) if nodes is None else nodes
        nodes = [n for n in nodes if n != avoid] or nodes
        if not nodes:
            return None
        load = dict.fromkeys(nodes, 0)
        for i, node in enumerate(self.worker_nodes[: len(self.workers)]):
            if i != index and node in load:
                load[node] += 1
        return min(nodes, key=lambda n: load[n])

    def _usable(self, nodes: list[str], suspect_s: float = 60.0) -> list[str]:
        """``nodes`` without those where a worker died in the last ``suspect_s`` seconds."""
        now = time.monotonic()
        self._suspect = {n: t for n, t in self._suspect.items() if now - t < suspect_s}
        return [n for n in nodes if n not in self._suspect]

    def placement(self) -> dict[str, list[int]]:
        """Node id -> indices of the workers running there."""
        with self._lock:
            out: dict[str, list[int]] = {}
            for i, node in enumerate(self.worker_nodes[: len(self.workers)]):
                out.setdefault(node or "?", []).append(i)
            return out

    def rebalance(self) -> int:
        """Move workers, one at a time, from the busiest node to the idlest until no live node
        runs 2 more workers than another; returns how many moved (placement ``spread`` only)."""
        import ray

        if self.settings.stream.placement != "spread":
            return 0
        moved = 0
        with self._lock:
            for _ in range(len(self.workers)):  # bounded: a fallback placement may not help
                nodes = self._usable(self.nodes())
                if len(nodes) < 2:
                    return moved
                load: dict[str, list[int]] = {n: [] for n in nodes}
                for i, node in enumerate(self.worker_nodes[: len(self.workers)]):
                    if node in load:
                        load[node].append(i)
                busiest = max(nodes, key=lambda n: len(load[n]))
                idlest = min(nodes, key=lambda n: len(load[n]))
                if len(load[busiest]) - len(load[idlest]) <= 1:
                    return moved
                i = load[busiest][-1]
                log.info("moving worker %d from node %s to %s", i, busiest[:8], idlest[:8])
                old = self.workers[i]
                try:  # its final checkpoint is what the replacement resumes from
                    ray.get(old.stop.remote(), timeout=60)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    pass  # it died meanwhile: its last checkpoint stands, the replay covers the rest
                ray.kill(old)
                self.moves += 1
                self.workers[i] = self._spawn(i, self.assignment[i], idlest)
                moved += 1
            return moved

    def start(self) -> StreamSupervisor:
        with self._lock:
            self.assignment = assign_partitions(self.partitions, self.n_workers)
            self.workers, self.worker_nodes = [], []
            for i, parts in enumerate(self.assignment):
                self.workers.append(self._spawn(i, parts))
        if self._monitor is None:
            self._monitor = threading.Thread(
                target=self._watch, name="onramp-supervisor", daemon=True
            )
            self._monitor.start()
        return self

    def launch(self) -> bool:
        """``start()`` for when this object runs as an actor (an actor method cannot return it)."""
        self.start()
        return True

    def routes(self) -> tuple[int, list[Any]]:
        """(partition count, worker handles by index) for callers that look profiles up directly."""
        with self._lock:
            return self.partitions, list(self.workers)

    def _watch(self) -> None:
        while not self._stop.wait(self.monitor_interval_s):
            try:
                self.check()
                every = self.settings.stream.rebalance_interval_s
                if time.monotonic() - self._last_rebalance >= every:
                    self._last_rebalance = time.monotonic()
                    self.rebalance()
            except Exception:
                log.exception("supervisor check failed")

    def check(self) -> int:
        """Restart dead workers; returns how many were restarted."""
        import ray

        restarted = 0
        with self._lock:
            for i, w in enumerate(list(self.workers)):
                try:
                    error = ray.get(w.ping.remote(), timeout=10)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                    error = f"{type(exc).__name__}"
                if error is None:
                    continue
                log.warning("worker %d is down (%s); restarting it from its checkpoints", i, error)
                try:
                    ray.kill(w)
                except Exception:
                    pass
                dead_node = self.worker_nodes[i] if i < len(self.worker_nodes) else None
                if dead_node is not None:
                    self._suspect[dead_node] = time.monotonic()
                self.workers[i] = self._spawn(i, self.assignment[i], avoid=dead_node)
                self.restarts += 1  # counted once the replacement runs
                restarted += 1
        return restarted

    def rescale(self, workers: int) -> None:
        """Move to ``workers`` workers; every partition's state moves with it via its checkpoint."""
        import ray

        with self._lock:
            for w in self.workers:  # final checkpoints before anyone else owns the partitions
                try:
                    ray.get(w.stop.remote(), timeout=60)
                except ray.exceptions.RayActorError:
                    pass  # it died: its last checkpoint stands and the replay covers the rest
                ray.kill(w)
            self.generation += 1
            self.n_workers = min(workers, self.partitions)
            self.assignment = assign_partitions(self.partitions, self.n_workers)
            self.workers, self.worker_nodes = [], []
            for i, parts in enumerate(self.assignment):
                self.workers.append(self._spawn(i, parts))

    def owner(self, partition: int) -> Any:
        with self._lock:
            return self.workers[partition % self.n_workers]

    def profile(self, user_key: str) -> dict[str, Any] | None:
        """key -> partition -> owning worker -> the live profile."""
        import ray

        p = partition_for(user_key.encode(), self.partitions)
        return ray.get(self.owner(p).profile.remote(p, user_key), timeout=10)

    def profiles(self) -> dict[str, dict[str, Any]]:
        import ray

        out: dict[str, dict[str, Any]] = {}
        for p in range(self.partitions):
            out.update(ray.get(self.owner(p).profiles.remote(p), timeout=60))
        return out

    def status(self) -> list[dict[str, Any]]:
        import ray

        with self._lock:
            workers = list(self.workers)
        return [ray.get(w.status.remote(), timeout=30) for w in workers]

    def totals(self) -> dict[str, int]:
        """Counters summed over every partition: ``records`` (those clients wrote: link, merge
        and forwarded records of identity stitching are counted apart, in ``control`` and
        ``relayed``), applied, duplicates, late, rejected, buffered, forwarded. They reconcile:
        ``records = applied + duplicates + late + rejected + buffered + forwarded - relayed``
        (a forwarded event is taken again where it was sent)."""
        keys = ("records", "applied", "duplicates", "late", "rejected", "buffered")
        out: dict[str, int] = {}
        for st in self.status():
            for part in st["partitions"].values():
                for k in (*keys, "forwarded", "control", "relayed"):
                    out[k] = out.get(k, 0) + part.get(k, 0)
        if out:
            out["records"] -= out["control"] + out["relayed"]
        return out

    def wait_for(self, records: int, timeout_s: float = 120.0) -> dict[str, int]:
        """Block until the workers have taken ``records`` records that clients wrote and the
        link, merge and forwarded records those caused (identity stitching) have settled: the
        totals unchanged over two reads and no partition lagging (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout_s
        totals: dict[str, int] = {}
        previous: dict[str, int] | None = None
        while time.monotonic() < deadline:
            try:
                totals = self.totals()
                lagging = any(
                    part.get("lag") for st in self.status() for part in st["partitions"].values()
                )
            except Exception:  # a worker is being replaced
                time.sleep(0.2)
                continue
            if totals.get("records", 0) >= records and not lagging and totals == previous:
                return totals
            previous = totals
            time.sleep(0.2)
        return totals

    def stop(self) -> None:
        import ray

        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        with self._lock:
            for w in self.workers:
                try:
                    ray.get(w.stop.remote(), timeout=60)
                except Exception:
                    pass
                try:
                    ray.kill(w)
                except Exception:
                    pass
            self.workers = []


class StreamUnavailable(Exception):
    """The stream workers are not running (or not reachable) right now."""


def start_supervisor_actor(
    settings: Settings, bootstrap: str, checkpoint_uri: str | None = None
) -> Any:
    """Run the supervisor as the named actor :data:`SUPERVISOR_NAME` and start its workers."""
    import ray

    cls = ray.remote(num_cpus=0, max_concurrency=16)(StreamSupervisor)  # type: ignore[call-overload]
    actor = cls.options(name=SUPERVISOR_NAME, namespace=settings.ray.namespace).remote(
        settings, bootstrap, checkpoint_uri=checkpoint_uri
    )
    ray.get(actor.launch.remote(), timeout=300)
    return actor


#: Merges a profile read follows (anonymous -> user -> account is 2).
_MAX_MERGE_HOPS = 8


class ProfileReader:
    """Looks profiles up from anywhere in the cluster (a Serve replica, say): key -> partition ->
    owning worker, with the routing table cached and refreshed when a worker was replaced."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._routes: tuple[int, list[Any]] | None = None

    async def _load(self) -> tuple[int, list[Any]]:
        import ray

        try:
            sup = ray.get_actor(SUPERVISOR_NAME, namespace=self.namespace)
            self._routes = await sup.routes.remote()
        except (ValueError, ray.exceptions.RayActorError) as exc:
            raise StreamUnavailable(f"stream workers are not running: {exc}") from None
        return self._routes

    async def stream_status(self) -> list[dict[str, Any]]:
        """The supervisor's ``status()``: per worker, per partition counters, lag, freshness."""
        import ray

        try:
            sup = ray.get_actor(SUPERVISOR_NAME, namespace=self.namespace)
            result: list[dict[str, Any]] = await sup.status.remote()
        except (ValueError, ray.exceptions.RayActorError) as exc:
            raise StreamUnavailable(f"stream workers are not running: {exc}") from None
        return result

    async def get_many(self, user_keys: list[str]) -> dict[str, dict[str, Any] | None]:
        """Profiles of many users with one actor call per owning worker (concurrently). An id
        merged into another (identity stitching) answers with the profile it was merged into
        (its ``userKey`` is the surviving id), following a chain of merges."""
        out: dict[str, dict[str, Any] | None] = {}
        wanted = {key: key for key in dict.fromkeys(user_keys)}  # asked -> where to read it
        for _ in range(_MAX_MERGE_HOPS):
            found = await self._read(list(dict.fromkeys(wanted.values())))
            pointers: dict[str, str] = {}
            for asked, at in wanted.items():
                profile = found.get(at)
                target = profile.get("mergedInto") if profile is not None else None
                if isinstance(target, str):
                    pointers[asked] = target
                else:
                    out[asked] = profile
            if not pointers:
                return out
            wanted = pointers
        out.update(dict.fromkeys(wanted))  # a loop of merges: nothing to answer from
        return out

    async def _read(self, user_keys: list[str]) -> dict[str, dict[str, Any] | None]:
        """One round of lookups: key -> partition -> owning worker."""
        import asyncio

        import ray

        for attempt in range(2):
            partitions, workers = (
                self._routes if self._routes and attempt == 0 else await self._load()
            )
            if not workers:
                raise StreamUnavailable("stream workers are not running")
            by_worker: dict[int, list[tuple[int, str]]] = {}
            for key in user_keys:
                p = partition_for(key.encode(), partitions)
                by_worker.setdefault(p % len(workers), []).append((p, key))
            try:
                answers = await asyncio.gather(
                    *[workers[w].profiles_of.remote(keys) for w, keys in by_worker.items()]
                )
            except ray.exceptions.RayActorError:
                self._routes = None  # a worker was replaced: refresh the table once
                continue
            out: dict[str, dict[str, Any] | None] = {}
            for keys, profiles in zip(by_worker.values(), answers, strict=True):
                for (_, key), profile in zip(keys, profiles, strict=True):
                    out[key] = profile
            return out
        raise StreamUnavailable("a worker owning these users is restarting; retry shortly")

    async def get(self, user_key: str) -> dict[str, Any] | None:
        """One user's profile (see :meth:`get_many`)."""
        return (await self.get_many([user_key]))[user_key]
