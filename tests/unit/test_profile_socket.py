"""The profile socket (ray_app/stream/profile_socket.py) in one process: a real server thread
and a real asyncio channel over loopback. Answers match their requests when pipelined; a client
without the token, a garbage frame or an oversized one loses its connection and nothing else."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ray_app.stream.profile_socket import (
    MAX_REQUEST,
    TOKEN_BYTES,
    ProfileChannel,
    ProfileServer,
    frame,
    parse_request,
)

_LOCK = threading.Lock()


def _lookup(keys: list[tuple[int, str]]) -> list[dict[str, Any] | None]:
    with _LOCK:  # as StreamWorker.profiles_of
        return [None if k.startswith("nobody") else {"userKey": k, "p": p} for p, k in keys]


@pytest.fixture
def server() -> Iterator[ProfileServer]:
    s = ProfileServer(_lookup, host="127.0.0.1").start()
    yield s
    s.close()


def _connect(server: ProfileServer, token: bytes | None = None) -> socket.socket:
    conn = socket.create_connection(server.address[:2], timeout=5)
    conn.sendall(server.token if token is None else token)
    return conn


def _closed_by_server(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_requests_are_checked_for_their_shape():
    assert parse_request(b'[1,[[0,"a"],[3,"b"]]]') == (1, [(0, "a"), (3, "b")])
    for bad in (b"[1]", b'["1",[]]', b"[1,[[0]]]", b'[1,[["0","a"]]]', b"{}", b"[1,{}]"):
        with pytest.raises(ValueError):
            parse_request(bad)


def test_pipelined_requests_get_their_own_answers(server):
    async def scenario() -> tuple[list[Any], list[Any]]:
        channel = await ProfileChannel.open(server.address)
        keys = [[(i % 4, f"u{i}"), (1, "nobody")] for i in range(50)]
        answers = await asyncio.gather(*[channel.profiles_of(k) for k in keys])
        channel.close()
        return keys, answers

    keys, answers = asyncio.run(scenario())
    for asked, answer in zip(keys, answers, strict=True):
        assert answer == [{"userKey": asked[0][1], "p": asked[0][0]}, None]
    assert server.served == 50


def test_a_client_without_the_token_is_closed_and_never_answered(server):
    conn = _connect(server, token=b"x" * TOKEN_BYTES)
    conn.sendall(frame([1, [[0, "u1"]]]))
    assert _closed_by_server(conn)
    assert server.served == 0

    async def scenario() -> None:
        host, port, _ = server.address
        channel = await ProfileChannel.open((host, port, bytes(TOKEN_BYTES)))
        with pytest.raises(ConnectionError):
            await channel.profiles_of([(0, "u1")])

    asyncio.run(scenario())
    assert server.served == 0


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 5) + b"\xff\x00{[x",  # not JSON
        frame({"id": 1}),  # JSON, not a request
        struct.pack(">I", MAX_REQUEST + 1),  # more than a request may be
    ],
)
def test_a_garbage_frame_closes_that_connection_only(server, garbage):
    bad = _connect(server)
    bad.sendall(garbage)
    assert _closed_by_server(bad)
    good = _connect(server)
    good.sendall(frame([9, [[2, "u2"]]]))
    header = good.recv(4)
    body = good.recv(struct.unpack(">I", header)[0])
    assert body == b'[9,[{"userKey":"u2","p":2}]]'
    good.close()


def test_an_answer_that_is_not_json_is_left_to_the_actor_call():
    server = ProfileServer(lambda keys: [{"when": {1, 2}} for _ in keys], host="127.0.0.1")
    server.start()

    async def scenario() -> Any:
        channel = await ProfileChannel.open(server.address)
        return await channel.profiles_of([(0, "u1")])

    try:
        assert asyncio.run(scenario()) is None
    finally:
        server.close()


def test_a_closed_server_breaks_its_channels(server):
    async def scenario() -> ProfileChannel:
        channel = await ProfileChannel.open(server.address)
        assert await channel.profiles_of([(0, "u1")]) == [{"userKey": "u1", "p": 0}]
        server.close()
        with pytest.raises(ConnectionError):
            await channel.profiles_of([(0, "u1")])
        return channel

    assert asyncio.run(scenario()).broken


def test_a_peer_that_stops_answering_breaks_the_channel(monkeypatch):
    """A worker's node gone without FIN or RST (or a wedged peer): callers give up at their
    own deadlines, so the channel used to stay open, every read waiting its deadline out and
    never falling back to the actor. A request unanswered for ANSWER_TIMEOUT_S breaks it."""
    from ray_app.stream import profile_socket

    monkeypatch.setattr(profile_socket, "ANSWER_TIMEOUT_S", 0.2)
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:  # accepts, reads nothing, answers nothing
        conn, _ = silent.accept()
        held.append(conn)

    threading.Thread(target=accept, daemon=True).start()

    async def scenario() -> ProfileChannel:
        channel = await ProfileChannel.open(("127.0.0.1", silent.getsockname()[1], b"t" * 32))
        with pytest.raises(TimeoutError):  # the caller's deadline, as /v1/decide's
            await asyncio.wait_for(channel.profiles_of([(0, "u1")]), 0.05)
        assert not channel.broken  # a slow answer is not yet a dead peer
        await asyncio.sleep(0.3)
        with pytest.raises(ConnectionError, match=r"no answer in 0\.2 s"):
            await channel.profiles_of([(0, "u1")])
        return channel

    try:
        assert asyncio.run(scenario()).broken
    finally:
        silent.close()
        for conn in held:
            conn.close()


def test_answers_waiting_in_the_socket_are_taken_before_the_peer_is_judged(server, monkeypatch):
    """A replica whose event loop was busy past the timeout: the answer is in the socket, not
    missing, so the channel stays open (it was broken, and the read that had its answer with
    it)."""
    import time as clock

    from ray_app.stream import profile_socket

    monkeypatch.setattr(profile_socket, "ANSWER_TIMEOUT_S", 0.2)

    async def scenario() -> bool:
        channel = await ProfileChannel.open(server.address)
        first = asyncio.ensure_future(channel.profiles_of([(0, "u1")]))
        await asyncio.sleep(0)  # sent
        clock.sleep(0.4)  # the loop is busy: the answer arrives meanwhile, unread
        assert await channel.profiles_of([(0, "u2")]) == [{"userKey": "u2", "p": 0}]
        assert await first == [{"userKey": "u1", "p": 0}]
        return channel.broken

    assert asyncio.run(scenario()) is False
