"""Profile lookups from anywhere in the cluster (a Serve replica, say): key -> partition (Kafka's
murmur2) -> owning worker (:func:`~ray_app.stream.placement.owner_index`), one read per worker
for a batch of keys, following identity merges. A read goes over the worker's profile socket
(:mod:`ray_app.stream.profile_socket`: a persistent connection per worker, opened in the
background on first use) and falls back to the actor call ``profiles_of`` while that connection
is not open, when it breaks, or when the worker has none (``stream.profile_socket`` off)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ray_app.errors import ProfilesUnavailable
from ray_app.kafka.client import partition_for
from ray_app.stream.placement import owner_index
from ray_app.stream.profile_socket import Address, ProfileChannel

__all__ = ["NOT_HELD", "SUPERVISOR_NAME", "ProfileReader", "StreamUnavailable", "not_read"]

#: A worker's answer for a user of a partition it does not hold (the partition moved, or its
#: checkpoint was refused and it is not consumed): not "no such user". A reader given it asks
#: the supervisor for the routes again once; then it stays, for the decision to say the profile
#: could not be read (an unknown user would get a new user's arm and eligibility).
NOT_HELD = "notHeld"


def not_read(profile: dict[str, Any] | None) -> bool:
    """Whether a lookup's answer is :data:`NOT_HELD`'s, not a profile (nor None: no such user).

    >>> not_read({NOT_HELD: 3}), not_read({"userKey": "u1"}), not_read(None)
    (True, False, False)
    """
    return profile is not None and NOT_HELD in profile


#: Name of the supervisor actor in Onramp's Ray namespace (``ray.namespace``).
SUPERVISOR_NAME = "onramp-supervisor"


class StreamUnavailable(ProfilesUnavailable):
    """The stream workers are not running (or not reachable) right now."""


#: Merges a profile read follows (anonymous -> user -> account is 2).
_MAX_MERGE_HOPS = 8

#: Keys whose partition a reader remembers (murmur2 in Python costs microseconds a key, and the
#: same users ask again and again); past it the memory starts afresh.
_PARTITION_CACHE = 100_000

#: After a profile socket failed to open or broke, reads of that worker go through the actor
#: this long before the socket is tried again (a worker being replaced, a firewall).
_SOCKET_RETRY_S = 5.0
#: How long a partition that fresh routes left without a worker is not asked about again.
_NOT_HELD_S = 5.0

#: A route table: partition count, worker handles, their profile socket addresses (or None).
Routes = tuple[int, list[Any], list[Address | None]]


@dataclass
class _Link:
    """The profile socket of one worker address, in one event loop."""

    loop: asyncio.AbstractEventLoop
    channel: ProfileChannel | None = None
    opening: asyncio.Future[ProfileChannel] | None = None
    failed_at: float = float("-inf")


class ProfileReader:
    """Looks profiles up from anywhere in the cluster (a Serve replica, say): key -> partition ->
    owning worker, with the routing table cached and refreshed when a worker was replaced. A
    table without workers (the stream app still starting) is not cached: every lookup asks the
    supervisor again until it has workers."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._routes: Routes | None = None
        self._loading: asyncio.Future[Routes] | None = None
        self._partitions: dict[str, int] = {}  # user key -> partition, for _partition_count
        self._partition_count = 0
        self._links: dict[Address, _Link] = {}
        self.socket_reads = 0
        """Worker reads answered over a profile socket (the rest went through the actor)."""
        self._not_held: dict[int, float] = {}
        """Partition -> until when (monotonic) a fresh route table still had no worker holding
        it (its checkpoint refused): answered NOT_HELD without asking the supervisor again."""

    def _partition(self, key: str, partitions: int) -> int:
        """The partition of ``key`` among ``partitions`` (Kafka's default partitioner)."""
        if partitions != self._partition_count or len(self._partitions) >= _PARTITION_CACHE:
            self._partitions = {}
            self._partition_count = partitions
        p = self._partitions.get(key)
        if p is None:
            p = self._partitions[key] = partition_for(key.encode(), partitions)
        return p

    async def _load(self) -> Routes:
        """The route table, from the supervisor. One load at a time, which callers share and
        which a caller giving up does not cancel (``/v1/decide`` waits ``profile_deadline_ms``
        for a profile): a supervisor that answers slower than that deadline (a loaded machine;
        its health checks hold the lock ``routes()`` takes) still fills the table for the next
        lookups, instead of every lookup starting a load that is cancelled in turn."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._fetch_routes())
            self._loading.add_done_callback(_retrieved)
        return await asyncio.shield(self._loading)

    async def _fetch_routes(self) -> Routes:
        import ray

        try:
            sup = ray.get_actor(SUPERVISOR_NAME, namespace=self.namespace)
            answer = await sup.routes.remote(True)
        except (ValueError, ray.exceptions.RayActorError) as exc:
            raise StreamUnavailable(f"stream workers are not running: {exc}") from None
        partitions, workers, addresses = answer
        routes: Routes = (partitions, workers, addresses)
        self._forget_links(set(routes[2]))
        # A supervisor that is still starting its workers (its actor is up, launch() has not
        # taken its lock yet) answers with none: that is never remembered, or a replica that
        # asked that early would answer cold-start until it is replaced.
        self._routes = routes if routes[1] else None
        return routes

    async def stream_status(self) -> list[dict[str, Any]]:
        """The supervisor's ``metrics_status()``: per worker, per partition counters (never
        below what an earlier call reported), lag, freshness."""
        import ray

        try:
            sup = ray.get_actor(SUPERVISOR_NAME, namespace=self.namespace)
            result: list[dict[str, Any]] = await sup.metrics_status.remote()
        except (ValueError, ray.exceptions.RayActorError) as exc:
            raise StreamUnavailable(f"stream workers are not running: {exc}") from None
        return result

    async def get_many(self, user_keys: list[str]) -> dict[str, dict[str, Any] | None]:
        """Profiles of many users with one read per owning worker (concurrently). An id
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
            partitions, workers, addresses = (
                self._routes if self._routes and attempt == 0 else await self._load()
            )
            if not workers:
                self._routes = None  # ask the supervisor again next time
                raise StreamUnavailable("stream workers are not running (yet)")
            by_worker: dict[int, list[tuple[int, str]]] = {}
            for key in user_keys:
                p = self._partition(key, partitions)
                by_worker.setdefault(owner_index(p, len(workers)), []).append((p, key))
            calls = [self._ask(workers[w], addresses[w], keys) for w, keys in by_worker.items()]
            try:  # one worker (the usual batch on a small cluster): no task to gather
                answers = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)
            except ray.exceptions.RayActorError:
                self._routes = None  # a worker was replaced: refresh the table once
                continue
            out: dict[str, dict[str, Any] | None] = {}
            moved: set[int] = set()
            for keys, profiles in zip(by_worker.values(), answers, strict=True):
                for (p, key), profile in zip(keys, profiles, strict=True):
                    out[key] = profile
                    if not_read(profile):
                        moved.add(p)
            now = time.monotonic()
            if attempt == 0 and any(self._not_held.get(p, 0.0) < now for p in moved):
                self._routes = None  # a partition moved since the routes were read: again
                continue
            if attempt == 1:  # held by nobody even in fresh routes: do not ask for a while
                self._not_held.update(dict.fromkeys(moved, now + _NOT_HELD_S))
            return out
        raise StreamUnavailable("a worker owning these users is restarting; retry shortly")

    async def get(self, user_key: str) -> dict[str, Any] | None:
        """One user's profile (see :meth:`get_many`); :class:`StreamUnavailable` while the
        partition holding it is not being consumed."""
        profile = (await self.get_many([user_key]))[user_key]
        if not_read(profile):
            assert profile is not None
            raise StreamUnavailable(
                f"partition {profile[NOT_HELD]} of {user_key!r} is not being consumed right now "
                "(its worker is restarting, or its checkpoint was refused: see onramp status)"
            )
        return profile

    # -- profile sockets ----------------------------------------------------------------------

    async def _ask(
        self, worker: Any, address: Address | None, keys: list[tuple[int, str]]
    ) -> list[dict[str, Any] | None]:
        """``worker.profiles_of(keys)``: over its socket when that is open, else (and when it
        breaks meanwhile) as an actor call, whose RayActorError says the worker is gone."""
        channel = self._channel(address)
        if channel is not None:
            try:
                profiles = await channel.profiles_of(keys)
            except ConnectionError:
                profiles = None
                self._broken(address)
            if profiles is not None:
                self.socket_reads += 1
                return profiles
        answer: list[dict[str, Any] | None] = await worker.profiles_of.remote(keys)
        return answer

    def _channel(self, address: Address | None) -> ProfileChannel | None:
        """The open channel to ``address``; None while there is none, after starting to open
        one in the background (no caller waits for a connect: the actor call answers them)."""
        if address is None:
            return None
        loop = asyncio.get_running_loop()
        link = self._links.get(address)
        if link is not None and link.loop is not loop:  # asyncio.run again, say (tests)
            _drop(link)
            link = None
        if link is None:
            link = self._links[address] = _Link(loop)
        if link.channel is not None and not link.channel.broken:
            return link.channel
        if link.opening is None and time.monotonic() - link.failed_at >= _SOCKET_RETRY_S:
            link.channel = None
            link.opening = asyncio.ensure_future(ProfileChannel.open(address))
            link.opening.add_done_callback(lambda opened: self._opened(address, opened))
        return None

    def _opened(self, address: Address, opened: asyncio.Future[ProfileChannel]) -> None:
        link = self._links.get(address)
        if link is None or link.opening is not opened:  # forgotten meanwhile
            if not opened.cancelled() and opened.exception() is None:
                opened.result().close()
            return
        link.opening = None
        if opened.cancelled() or opened.exception() is not None:
            link.failed_at = time.monotonic()
        else:
            link.channel = opened.result()

    def _broken(self, address: Address | None) -> None:
        link = self._links.get(address) if address is not None else None
        if link is not None:
            link.failed_at = time.monotonic()

    def _forget_links(self, keep: set[Address | None]) -> None:
        """Close the sockets of workers no longer in the route table."""
        for address in [a for a in self._links if a not in keep]:
            _drop(self._links.pop(address))

    def close(self) -> None:
        """Close every profile socket (a reader that is done; reads still work after it)."""
        self._forget_links(set())


def _drop(link: _Link) -> None:
    try:
        if link.channel is not None:
            link.channel.close()
        if link.opening is not None:
            link.opening.cancel()
    except RuntimeError:  # its event loop is closed: so are its sockets
        pass


def _retrieved(load: asyncio.Future[Any]) -> None:
    """A load whose callers all gave up: its error is not news (asyncio would log it)."""
    if not load.cancelled():
        load.exception()
