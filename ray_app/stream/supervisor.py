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
from typing import Any, NamedTuple

from ray_app.config import Settings
from ray_app.stream import placement
from ray_app.stream.checkpoint import checkpoint_key
from ray_app.stream.placement import assign_partitions, owner_index
from ray_app.stream.profile_socket import Address
from ray_app.stream.reader import SUPERVISOR_NAME, ProfileReader, StreamUnavailable
from ray_app.stream.runtime import RayRuntime, WorkerGone, WorkerRuntime

__all__ = [
    "SUPERVISOR_NAME",
    "ProfileReader",
    "StreamSupervisor",
    "StreamUnavailable",
    "assign_partitions",
    "start_supervisor_actor",
]

log = logging.getLogger(__name__)


class _Launched(NamedTuple):
    """A worker created but not yet started (:meth:`StreamSupervisor._launch`)."""

    position: int
    partitions: list[int]
    args: tuple[Any, ...]
    node: str | None
    handle: Any


#: How often the monitor checks the topics' partition counts (a describe call to Kafka).
TOPIC_CHECK_S = 60.0


class StreamSupervisor:
    """Runs the stream workers (call from the driver, or run it as an actor). ``runtime`` says
    how: Ray actors by default, or :class:`~ray_app.stream.runtime.LocalRuntime` in tests."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        workers: int | None = None,
        checkpoint_uri: str | None = None,
        monitor_interval_s: float = 0.5,
        runtime: WorkerRuntime | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.runtime: WorkerRuntime = runtime or RayRuntime()
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
        self.worker_addresses: dict[int, Address | None] = {}
        """Worker index -> its profile socket (:meth:`StreamWorker.profile_address`)."""
        self._last_rebalance = 0.0
        self._topics_checked = time.monotonic()  # ensure_topics checked them at start
        self.topic_problem: str | None = None
        """Why the topics do not match ``kafka.partitions`` now (:meth:`check_topics`)."""
        self._suspect: dict[str, float] = {}
        """Node -> when a worker on it died: Ray may list a lost node as alive for a while
        (its health checks have to fail first), so no worker is placed there for a minute."""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._floors: dict[tuple[str, str, str], int] = {}
        """(partition, counter, label) -> the highest value :meth:`metrics_status` reported."""
        self._floors_lock = threading.Lock()

    # -- workers -----------------------------------------------------------------------------

    def _spawn(
        self, index: int, partitions: list[int], node: str | None = None, avoid: str | None = None
    ) -> Any:
        return self._started(self._launch(index, partitions, node, avoid))

    def _launch(
        self, index: int, partitions: list[int], node: str | None = None, avoid: str | None = None
    ) -> _Launched:
        """Create a worker (Ray builds it in the background) on ``node`` or the least loaded."""
        s = self.settings.stream
        name = f"w{index}-g{self.generation}-r{self.restarts}-m{self.moves}"
        args: tuple[Any, ...] = (name, self.settings, self.bootstrap, partitions)
        args += (self.checkpoint_uri, self.checkpoint_key)
        resources = dict(s.worker_resources)
        node = (node or self._least_loaded(index, avoid=avoid)) if s.placement == "spread" else None
        handle = self.runtime.spawn(args, s.worker_num_cpus, resources, node)
        return _Launched(index, partitions, args, node, handle)

    def _started(self, launched: _Launched) -> Any:
        """Start a launched worker (once it is built), elsewhere if its node went away; record
        where it runs and which of its partitions it refused. When any of that fails, the
        worker is killed before the error goes on: a start that timed out is not cancelled on
        Ray, and a replacement left running would consume its partitions beside the next one."""
        try:
            return self._start_and_record(launched)
        except BaseException:
            self.runtime.kill(launched.handle)
            raise

    def _start_and_record(self, launched: _Launched) -> Any:
        s = self.settings.stream
        rt = self.runtime
        index, partitions, args, node, worker = launched
        if node is not None:
            try:
                rt.call(worker, "start", timeout=s.worker_start_timeout_s)
            except WorkerGone as exc:  # the node went away meanwhile: the runtime's own choice
                log.warning("worker %d could not start on node %s (%s)", index, node, exc)
                rt.kill(worker)
                worker = rt.spawn(args, s.worker_num_cpus, dict(s.worker_resources), None)
                node = None
        try:
            if node is None:
                rt.call(worker, "start", timeout=s.worker_start_timeout_s)
            where = rt.call(worker, "node_id", timeout=30)
            refused = rt.call(worker, "refused_partitions", timeout=30)
            address = rt.call(worker, "profile_address", timeout=30)
        except BaseException:
            rt.kill(worker)  # the one spawned elsewhere, if it came to that
            raise
        for p in partitions:
            self.refused.pop(p, None)
        for p, why in refused.items():
            self.refused[p] = why
            log.error("worker %d does not run partition %d: %s", index, p, why)
        while len(self.worker_nodes) <= index:
            self.worker_nodes.append(None)
        self.worker_nodes[index] = where
        self.worker_addresses[index] = address
        return worker

    def _spawn_all(self) -> None:
        """A worker per group of ``assignment``, all created before any is waited for: they
        build (a process, imports, their checkpoints) side by side, not one after another."""
        self.workers, self.worker_nodes, self.worker_addresses = [], [], {}
        launched = []
        for i, parts in enumerate(self.assignment):
            launched.append(self._launch(i, parts))
            self.workers.append(launched[-1].handle)  # so the next one's placement
            self.worker_nodes.append(launched[-1].node)  # counts this one
        for i, one in enumerate(launched):
            try:
                self.workers[i] = self._started(one)
            except BaseException:
                # the ones after it were launched but never started: killed, so that the
                # monitor finds them down and restarts them (a worker that never started
                # answered ping as healthy, its partitions never read)
                for rest in launched[i + 1 :]:
                    self.runtime.kill(rest.handle)
                raise

    def _retire(self, worker: Any) -> None:
        """Stop a worker with its final checkpoint (if it still answers), then kill it."""
        try:
            self.runtime.call(worker, "stop", timeout=60)
        except WorkerGone:
            pass  # it died: its last checkpoint stands and the replay covers the rest
        self.runtime.kill(worker)

    def nodes(self) -> list[str]:
        """Live nodes that can run a stream worker (enough CPUs and ``worker_resources``)."""
        s = self.settings.stream
        return self.runtime.nodes({"CPU": s.worker_num_cpus, **s.worker_resources})

    def _usable(self, nodes: list[str]) -> list[str]:
        out, self._suspect = placement.usable(nodes, self._suspect, time.monotonic())
        return out

    def _least_loaded(
        self, index: int, nodes: list[str] | None = None, avoid: str | None = None
    ) -> str | None:
        nodes = self._usable(self.nodes()) if nodes is None else nodes
        return placement.least_loaded(
            nodes, self.worker_nodes[: len(self.workers)], index, avoid=avoid
        )

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
        if self.settings.stream.placement != "spread":
            return 0
        moved = 0
        with self._lock:
            for _ in range(len(self.workers)):  # bounded: a fallback placement may not help
                nodes = self._usable(self.nodes())
                move = placement.next_move(nodes, self.worker_nodes[: len(self.workers)])
                if move is None:
                    return moved
                i, busiest, idlest = move
                log.info("moving worker %d from node %s to %s", i, busiest[:8], idlest[:8])
                self._retire(self.workers[i])  # its final checkpoint is what the new one resumes
                self.moves += 1
                self.workers[i] = self._spawn(i, self.assignment[i], idlest)
                moved += 1
            return moved

    def start(self) -> StreamSupervisor:
        with self._lock:
            self.assignment = assign_partitions(self.partitions, self.n_workers)
            self._spawn_all()
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

    def routes(self, addresses: bool = False) -> tuple[Any, ...]:
        """(partition count, worker handles by index) for callers that look profiles up
        directly; with ``addresses``, their profile sockets by index too (None: none, or not
        started yet), for :class:`~ray_app.stream.reader.ProfileReader`. Not behind the lock,
        as :meth:`status` is not: a restart holds it while the replacement restores its
        partitions (up to ``stream.worker_start_timeout_s``), and every profile read would
        wait that long for its routes; a worker being replaced answers as gone at once."""
        workers = list(self.workers)  # one atomic copy; restarts and rescale swap entries
        if not addresses:
            return self.partitions, workers
        where = [self.worker_addresses.get(i) for i in range(len(workers))]
        return self.partitions, workers, where

    def _watch(self) -> None:
        while not self._stop.wait(self.monitor_interval_s):
            if time.monotonic() - self._topics_checked >= TOPIC_CHECK_S:
                self._topics_checked = time.monotonic()
                try:
                    self.check_topics()
                except Exception:  # never in the way of restarting dead workers
                    log.exception("topic check failed")
            try:
                self.check()
                every = self.settings.stream.rebalance_interval_s
                if time.monotonic() - self._last_rebalance >= every:
                    self._last_rebalance = time.monotonic()
                    self.rebalance()
            except Exception:
                log.exception("supervisor check failed")

    def check_topics(self) -> str | None:
        """Whether the topics still have ``kafka.partitions`` partitions (checked at start, and
        every :data:`TOPIC_CHECK_S` by the monitor): a topic grown since sends the events of
        some users to partitions no worker reads, and keys hash elsewhere. Logged at ERROR when
        it changes; :attr:`topic_problem` holds it. A Kafka that does not answer is no answer."""
        from ray_app.errors import ConfigError, KafkaUnavailable
        from ray_app.kafka.topics import verify_topics

        topics = [self.settings.topics.events, self.settings.topics.decisions]
        try:
            verify_topics(self.bootstrap, self.settings.kafka, topics, timeout_s=5.0)
            problem = None
        except ConfigError as exc:
            problem = str(exc)
        except (KafkaUnavailable, OSError):
            return self.topic_problem
        if problem != self.topic_problem:
            if problem is not None:
                log.error("%s: events of some users are not read", problem)
            else:
                log.info("the topics have kafka.partitions partitions again")
        self.topic_problem = problem
        return problem

    def check(self) -> int:
        """Restart dead workers; returns how many were restarted."""
        restarted = 0
        with self._lock:
            for i, w in enumerate(list(self.workers)):
                try:
                    error = self.runtime.call(w, "ping", timeout=10)
                except WorkerGone as exc:
                    error = str(exc).split(":")[0]
                if error is None:
                    continue
                log.warning("worker %d is down (%s); restarting it from its checkpoints", i, error)
                self.runtime.kill(w)
                dead_node = self.worker_nodes[i] if i < len(self.worker_nodes) else None
                if dead_node is not None:
                    self._suspect[dead_node] = time.monotonic()
                self.workers[i] = self._spawn(i, self.assignment[i], avoid=dead_node)
                self.restarts += 1  # counted once the replacement runs
                restarted += 1
        return restarted

    def kill(self, index: int) -> None:
        """Kill worker ``index`` as a crash would (no final checkpoint); the monitor restarts
        it. For chaos tests."""
        with self._lock:
            self.runtime.kill(self.workers[index])

    def rescale(self, workers: int) -> None:
        """Move to ``workers`` workers; every partition's state moves with it via its checkpoint."""
        with self._lock:
            for w in self.workers:  # final checkpoints before anyone else owns the partitions
                self._retire(w)
            self.generation += 1
            self.n_workers = min(workers, self.partitions)
            self.assignment = assign_partitions(self.partitions, self.n_workers)
            self._spawn_all()

    # -- reading ----------------------------------------------------------------------------

    def owner(self, partition: int) -> Any:
        with self._lock:
            return self.workers[owner_index(partition, self.n_workers)]

    def profiles(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for p in range(self.partitions):
            out.update(self.runtime.call(self.owner(p), "profiles", p, timeout=60))
        return out

    def status(self) -> list[dict[str, Any]]:
        """Each worker's status. Not behind the supervisor's lock, which a restart holds while
        the replacement starts (20-25 s on a loaded machine): a worker being replaced raises
        :class:`~ray_app.stream.runtime.WorkerGone` here at once, as it does between its death
        and the monitor noticing it, instead of every status, scrape and console read waiting
        for the restart."""
        workers = list(self.workers)  # one atomic copy; rescale and restarts swap entries
        problem = self.topic_problem  # the monitor's last check of the topics (check_topics)
        return [
            {**self.runtime.call(w, "status", timeout=30), "topicProblem": problem} for w in workers
        ]

    def metrics_status(self) -> list[dict[str, Any]]:
        """:meth:`status` for ``/metrics``: each partition's checkpointed counters
        (:data:`CHECKPOINTED_COUNTERS`) never below what an earlier call reported. A worker
        restored from its checkpoint after a crash counts again the records it replays (the
        counters live in the state, restored to their value at the checkpoint), and a counter
        that goes down reads in Prometheus as a reset: ``rate()`` counted its whole value again,
        a spike of every record since the partition began in every graph, at every restart.
        :meth:`status` and :meth:`totals` keep the state's own values (what ``wait_for`` and the
        exactness checks compare)."""
        out = self.status()
        with self._floors_lock:
            for worker in out:
                for p, st in worker["partitions"].items():
                    _floor(self._floors, p, st)
        return out

    def ping(self) -> str | None:
        """None while the supervisor can keep its workers up (its monitor thread runs), else
        why not. Answers at once, a restart or rescale in progress or not: a health check on
        it does not time out because a worker is being replaced (see
        :class:`deployments.stream.StreamSupervision`)."""
        if self._monitor is not None and not self._monitor.is_alive() and not self._stop.is_set():
            return "the supervisor's monitor thread stopped"
        return None

    def totals(self, status: list[dict[str, Any]] | None = None) -> dict[str, int]:
        """Counters summed over every partition: ``records`` (those clients wrote: link, merge
        and forwarded records of identity stitching are counted apart, in ``control`` and
        ``relayed``), applied, duplicates, late, rejected, buffered, forwarded, and ``ticks``
        (the workers' own, in no other counter). They reconcile:
        ``records = applied + duplicates + late + rejected + buffered + forwarded - relayed``
        (a forwarded event is taken again where it was sent)."""
        keys = ("records", "applied", "duplicates", "late", "rejected", "buffered")
        out: dict[str, int] = {}
        for st in self.status() if status is None else status:
            for part in st["partitions"].values():
                for k in (*keys, "forwarded", "control", "relayed", "ticks"):
                    out[k] = out.get(k, 0) + part.get(k, 0)
        if out:
            out["records"] -= out["control"] + out["relayed"]
        return out

    def wait_for(
        self, records: int, timeout_s: float = 120.0, stall_s: float | None = None
    ) -> dict[str, int]:
        """Block until the workers have taken ``records`` records that clients wrote and the
        link, merge and forwarded records those caused (identity stitching) have settled: the
        totals unchanged over two reads and no partition lagging (for tests and benchmarks).
        Gives up after ``timeout_s``, or sooner with ``stall_s`` when no record was taken for
        that long (a slow drain may go on; a stuck one returns)."""
        deadline = time.monotonic() + timeout_s
        totals: dict[str, int] = {}
        previous: dict[str, int] | None = None
        steady = 0  # reads in a row with the same totals
        taken, moved = -1, time.monotonic()  # records taken when they last grew, and when
        while time.monotonic() < deadline:
            try:
                status = self.status()
                totals = self.totals(status)
                lagging = any(
                    part.get("lag") for st in status for part in st["partitions"].values()
                )
            except Exception:  # a worker is being replaced
                time.sleep(0.2)
                continue
            steady = steady + 1 if totals == previous else 0
            # unchanged for about a second: longer than a fetch and a poll, so records a worker
            # just wrote (links, merges) show up as lag or as taken before this returns (a
            # client's cached high watermarks can lag behind a produce for a fetch or two)
            if totals.get("records", 0) >= records and not lagging and steady >= 4:
                return totals
            if totals.get("records", 0) > taken:
                taken, moved = totals.get("records", 0), time.monotonic()
            elif stall_s is not None and time.monotonic() - moved >= stall_s:
                return totals
            previous = totals
            time.sleep(0.25)
        return totals

    def stop(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        with self._lock:
            for w in self.workers:
                try:
                    self._retire(w)
                except Exception:  # stopping: nothing may keep the others running
                    pass
            self.workers = []


#: How long starting the supervisor's workers may take.
LAUNCH_TIMEOUT_S = 300


def launch_supervisor_actor(
    settings: Settings, bootstrap: str, checkpoint_uri: str | None = None
) -> tuple[Any, Any]:
    """Create the supervisor as the named actor :data:`SUPERVISOR_NAME` and ask it to start its
    workers without waiting: ``(actor, ref)``, ``ray.get(ref)`` once they are started (``onramp
    up`` starts Serve meanwhile)."""
    import ray

    cls = ray.remote(num_cpus=0, max_concurrency=16)(StreamSupervisor)  # type: ignore[call-overload]
    actor = cls.options(name=SUPERVISOR_NAME, namespace=settings.ray.namespace).remote(
        settings, bootstrap, checkpoint_uri=checkpoint_uri
    )
    return actor, actor.launch.remote()


def start_supervisor_actor(
    settings: Settings, bootstrap: str, checkpoint_uri: str | None = None
) -> Any:
    """Run the supervisor as the named actor :data:`SUPERVISOR_NAME` and start its workers."""
    import ray

    actor, launched = launch_supervisor_actor(settings, bootstrap, checkpoint_uri)
    ray.get(launched, timeout=LAUNCH_TIMEOUT_S)
    return actor


#: Counters of a partition's status that live in its checkpointed state (the rest are gauges,
#: or count since the worker started and start again from 0, a reset Prometheus reads right).
CHECKPOINTED_COUNTERS = (
    "records", "applied", "duplicates", "late", "rejected", "forwarded", "control", "relayed",
    "ticks", "profilesEvicted", "rewards", "positiveRewards", "abandonedRewards",
    "repeatedDecisions",
)  # fmt: skip
#: ...and those counted by a label (reason, cap, outcome).
CHECKPOINTED_COUNTS = ("rejectedByReason", "decisionsRejectedByReason", "profileCaps", "identity")


def _floor(floors: dict[tuple[str, str, str], int], p: str, st: dict[str, Any]) -> None:
    """Raise each checkpointed counter of partition ``p``'s status ``st`` to the highest value
    reported before, and remember the new highs.

    >>> floors = {}
    >>> _floor(floors, "0", {"applied": 10, "identity": {"merged": 2}})
    >>> st = {"applied": 7, "identity": {"merged": 1}}  # restored from a checkpoint
    >>> _floor(floors, "0", st)
    >>> st
    {'applied': 10, 'identity': {'merged': 2}}
    """

    def high(counter: str, label: str, value: Any) -> Any:
        if not isinstance(value, int):
            return value
        key = (p, counter, label)
        best = floors.get(key, value)
        if value >= best:
            floors[key] = value
            return value
        return best

    for counter in CHECKPOINTED_COUNTERS:
        if counter in st:
            st[counter] = high(counter, "", st[counter])
    for counter in CHECKPOINTED_COUNTS:
        counts = st.get(counter)
        if isinstance(counts, dict):
            st[counter] = {label: high(counter, label, n) for label, n in counts.items()}
