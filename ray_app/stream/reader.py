"""Profile lookups from anywhere in the cluster (a Serve replica, say): key -> partition (Kafka's
murmur2) -> owning worker (:func:`~ray_app.stream.placement.owner_index`), one actor call per
worker for a batch of keys, following identity merges."""

from __future__ import annotations

import asyncio
from typing import Any

from ray_app.errors import ProfilesUnavailable
from ray_app.kafka.client import partition_for
from ray_app.stream.placement import owner_index

__all__ = ["SUPERVISOR_NAME", "ProfileReader", "StreamUnavailable"]

#: Name of the supervisor actor in Onramp's Ray namespace (``ray.namespace``).
SUPERVISOR_NAME = "onramp-supervisor"


class StreamUnavailable(ProfilesUnavailable):
    """The stream workers are not running (or not reachable) right now."""


#: Merges a profile read follows (anonymous -> user -> account is 2).
_MAX_MERGE_HOPS = 8

#: Keys whose partition a reader remembers (murmur2 in Python costs microseconds a key, and the
#: same users ask again and again); past it the memory starts afresh.
_PARTITION_CACHE = 100_000


class ProfileReader:
    """Looks profiles up from anywhere in the cluster (a Serve replica, say): key -> partition ->
    owning worker, with the routing table cached and refreshed when a worker was replaced. A
    table without workers (the stream app still starting) is not cached: every lookup asks the
    supervisor again until it has workers."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._routes: tuple[int, list[Any]] | None = None
        self._loading: asyncio.Future[tuple[int, list[Any]]] | None = None
        self._partitions: dict[str, int] = {}  # user key -> partition, for _partition_count
        self._partition_count = 0

    def _partition(self, key: str, partitions: int) -> int:
        """The partition of ``key`` among ``partitions`` (Kafka's default partitioner)."""
        if partitions != self._partition_count or len(self._partitions) >= _PARTITION_CACHE:
            self._partitions = {}
            self._partition_count = partitions
        p = self._partitions.get(key)
        if p is None:
            p = self._partitions[key] = partition_for(key.encode(), partitions)
        return p

    async def _load(self) -> tuple[int, list[Any]]:
        """The route table, from the supervisor. One load at a time, which callers share and
        which a caller giving up does not cancel (``/v1/decide`` waits ``profile_deadline_ms``
        for a profile): a supervisor that answers slower than that deadline (a loaded machine;
        its health checks hold the lock ``routes()`` takes) still fills the table for the next
        lookups, instead of every lookup starting a load that is cancelled in turn."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._fetch_routes())
            self._loading.add_done_callback(_retrieved)
        return await asyncio.shield(self._loading)

    async def _fetch_routes(self) -> tuple[int, list[Any]]:
        import ray

        try:
            sup = ray.get_actor(SUPERVISOR_NAME, namespace=self.namespace)
            routes: tuple[int, list[Any]] = await sup.routes.remote()
        except (ValueError, ray.exceptions.RayActorError) as exc:
            raise StreamUnavailable(f"stream workers are not running: {exc}") from None
        # A supervisor that is still starting its workers (its actor is up, launch() has not
        # taken its lock yet) answers with none: that is never remembered, or a replica that
        # asked that early would answer cold-start until it is replaced.
        self._routes = routes if routes[1] else None
        return routes

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
        import ray

        for attempt in range(2):
            partitions, workers = (
                self._routes if self._routes and attempt == 0 else await self._load()
            )
            if not workers:
                self._routes = None  # ask the supervisor again next time
                raise StreamUnavailable("stream workers are not running (yet)")
            by_worker: dict[int, list[tuple[int, str]]] = {}
            for key in user_keys:
                p = self._partition(key, partitions)
                by_worker.setdefault(owner_index(p, len(workers)), []).append((p, key))
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


def _retrieved(load: asyncio.Future[Any]) -> None:
    """A load whose callers all gave up: its error is not news (asyncio would log it)."""
    if not load.cancelled():
        load.exception()
