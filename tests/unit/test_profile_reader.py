"""ProfileReader's route table: asked again when the supervisor has no workers yet, refreshed
when a worker was replaced (fake supervisor and workers in place of Ray's actors); reads over a
worker's profile socket (a real server thread) once it is open, through the actor when it is
not."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import ray

from ray_app.stream import reader
from ray_app.stream.profile_socket import Address, ProfileServer
from ray_app.stream.reader import ProfileReader, StreamUnavailable


class _Method:
    """``actor.method`` of a fake actor: ``.remote(...)`` gives an awaitable of the call, which
    answers after ``delay_s``."""

    def __init__(self, fn: Callable[..., Any], delay_s: float = 0.0) -> None:
        self.fn = fn
        self.delay_s = delay_s

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()

        def answer() -> None:
            try:
                future.set_result(self.fn(*args))
            except Exception as exc:
                future.set_exception(exc)

        asyncio.get_running_loop().call_later(self.delay_s, answer)
        return future


class _Worker:
    def __init__(self, name: str) -> None:
        self.dead = False
        self.profiles_of = _Method(self._profiles_of)
        self.name = name

    def _profiles_of(self, keys: list[tuple[int, str]]) -> list[dict[str, Any]]:
        if self.dead:
            raise ray.exceptions.RayActorError()
        return [{"userKey": k, "worker": self.name} for _, k in keys]


class _Supervisor:
    """Answers ``routes(True)`` with no profile sockets (None each) until it has some."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []
        self.addresses: list[Address | None] | None = None
        self.asked = 0
        self.routes = _Method(self._routes)

    def _routes(self, addresses: bool = False) -> tuple[Any, ...]:
        self.asked += 1
        if not addresses:
            return 4, list(self.workers)
        where = [None] * len(self.workers) if self.addresses is None else self.addresses
        return 4, list(self.workers), list(where)


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> _Supervisor:
    sup = _Supervisor()

    def get_actor(name: str, namespace: str) -> _Supervisor:
        assert (name, namespace) == (reader.SUPERVISOR_NAME, "onramp")
        return sup

    monkeypatch.setattr(ray, "get_actor", get_actor)
    return sup


def test_a_reader_that_asked_before_the_workers_started_finds_them_once_they_have(supervisor):
    """The supervisor actor answers before its launch() has started any worker (a decide
    replica up before the stream app): the empty table is not kept (it was, and the replica
    answered cold-start until it was replaced: the flaky test_serve_deploy)."""
    r = ProfileReader("onramp")

    async def scenario() -> dict[str, Any] | None:
        for _ in range(3):
            with pytest.raises(StreamUnavailable, match="not running"):
                await r.get("u1")
        supervisor.workers = [_Worker("w0")]
        return await r.get("u1")

    assert asyncio.run(scenario()) == {"userKey": "u1", "worker": "w0"}
    assert supervisor.asked == 4  # asked each time while it had no workers


def test_the_table_is_kept_while_it_works_and_refreshed_once_when_a_worker_is_replaced(
    supervisor,
):
    supervisor.workers = [_Worker("w0")]
    r = ProfileReader("onramp")

    async def scenario() -> list[Any]:
        first = [await r.get("u1"), await r.get("u2")]
        supervisor.workers[0].dead = True  # the supervisor replaced it
        supervisor.workers = [_Worker("w0-new")]
        return [*first, await r.get("u1")]

    answers = asyncio.run(scenario())
    assert [a["worker"] for a in answers] == ["w0", "w0", "w0-new"]
    assert supervisor.asked == 2


def test_a_supervisor_slower_than_the_callers_deadline_still_fills_the_table(supervisor):
    """Every caller gives up after 50 ms (the decide deadline) and the supervisor answers in
    120 ms (a loaded machine; at 100 ms the second caller's deadline raced the answer): the
    one load goes on, and later lookups use its table (each
    caller used to start a load of its own, cancelled in turn: cold-start for ever)."""
    supervisor.workers = [_Worker("w0")]
    supervisor.routes.delay_s = 0.12
    r = ProfileReader("onramp")

    async def scenario() -> list[Any]:
        answers: list[Any] = []
        for _ in range(6):
            try:
                answers.append(await asyncio.wait_for(r.get("u1"), 0.05))
            except TimeoutError:
                answers.append("deadline")
        return answers

    answers = asyncio.run(scenario())
    assert answers[:2] == ["deadline", "deadline"]
    assert answers[-1] == {"userKey": "u1", "worker": "w0"} and supervisor.asked == 1


def test_reads_go_over_the_socket_once_it_is_open_and_through_the_actor_when_it_breaks(
    supervisor,
):
    """The first read opens the socket in the background and is answered by the actor call
    (no caller waits for a connect); the next ones go over the socket; a server that went away
    (its worker stopping) sends reads back to the actor, without asking for a new table."""
    server = ProfileServer(
        lambda keys: [{"userKey": k, "worker": "socket"} for _, k in keys], host="127.0.0.1"
    ).start()
    supervisor.workers = [_Worker("w0")]
    supervisor.addresses = [server.address]
    r = ProfileReader("onramp")

    async def scenario() -> list[Any]:
        answers = [await r.get_many(["u1", "u2"])]
        await asyncio.sleep(0.1)  # the connect
        answers += [await r.get_many(["u1", "u2"]), await r.get_many(["u3"])]
        server.close()
        answers += [await r.get_many(["u1"]), await r.get_many(["u1"])]
        r.close()
        return [sorted({p["worker"] for p in a.values()}) for a in answers]

    assert asyncio.run(scenario()) == [["w0"], ["socket"], ["socket"], ["w0"], ["w0"]]
    assert r.socket_reads == 2 and server.served == 2 and supervisor.asked == 1
