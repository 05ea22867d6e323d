"""Profile reads over a plain TCP connection: a stream worker's :class:`ProfileServer` and a
Serve replica's :class:`ProfileChannel` to it.

Why not a Ray actor call: ``/v1/decide`` reads a batch of profiles per loop tick, and on a small
machine an actor call costs about 0.5 ms of CPU on each side (Ray's core worker, gRPC threads,
pickling) for a lookup that takes microseconds; the same read over a persistent socket with
orjson frames costs ~20x less CPU and ~15x less latency (issue 18). On 2 cores,
``bench/decide.py`` answered 1,085-1,129 decisions/s at 64 connections with it and 933-958
through the actor, with ~25% less CPU per decision (ingress replica and stream workers). The
actor call (``StreamWorker.profiles_of``) stays the fallback and the answer is the same: the
server calls that very method, under the worker's lock.

Protocol: the client sends the worker's token (:data:`TOKEN_BYTES` random bytes, known only
through the supervisor's route table: profiles are user data) first, then frames, each a 4-byte
big-endian length and an orjson body. A request is ``[request_id, [[partition, user_key], ...]]``,
its answer ``[request_id, [profile_or_null, ...]]``, or ``[request_id, null]`` when the answer
does not fit JSON (ask the actor instead). Requests are pipelined; a connection answers them in
order. A wrong token, a bad frame or a frame over :data:`MAX_REQUEST` closes that connection
only.

>>> frame([7, [[0, "u1"]]])
b'\\x00\\x00\\x00\\x0e[7,[[0,"u1"]]]'
>>> parse_request(b'[7,[[0,"u1"]]]')
(7, [(0, 'u1')])
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import orjson

__all__ = [
    "MAX_REQUEST",
    "TOKEN_BYTES",
    "Address",
    "ProfileChannel",
    "ProfileServer",
    "frame",
    "parse_request",
    "serve_profiles",
]

log = logging.getLogger(__name__)

#: (host, port, token) of a worker's profile server.
Address = tuple[str, int, bytes]
Lookup = Callable[[list[tuple[int, str]]], list[Any]]

TOKEN_BYTES = 32
_HEADER = struct.Struct(">I")
#: Largest request a server reads (a batch of keys is a few hundred bytes).
MAX_REQUEST = 1 << 20
#: Largest answer a channel reads (a profile is a few KiB; its size is bounded by the stream
#: caps on event names, traits and sessions).
_MAX_ANSWER = 1 << 28
#: A client must present its token this fast.
_AUTH_TIMEOUT_S = 5.0
#: Unsent bytes past which a channel counts as stuck (the server stopped reading).
_MAX_UNSENT = 1 << 22
#: A request unanswered this long marks the channel broken (a peer gone without FIN or RST,
#: or wedged): callers give up at their own deadlines, so without it the channel would stay
#: "open" until TCP gave up, every read waiting its deadline out and no fallback tried. Long
#: next to a worker's pauses (a checkpoint slice, a collection) and the replica's own.
ANSWER_TIMEOUT_S = 5.0


def frame(message: Any) -> bytes:
    """``message`` as one frame: length, then orjson."""
    body = orjson.dumps(message)
    return _HEADER.pack(len(body)) + body


def parse_request(body: bytes) -> tuple[int, list[tuple[int, str]]]:
    """A request's id and keys; ValueError unless it is ``[int, [[int, str], ...]]``."""
    message = orjson.loads(body)
    if not (isinstance(message, list) and len(message) == 2):
        raise ValueError("a request is [request_id, keys]")
    request_id, keys = message
    if not isinstance(request_id, int) or not isinstance(keys, list):
        raise ValueError("a request is [int, list]")
    out = []
    for key in keys:
        if not (isinstance(key, list) and len(key) == 2):
            raise ValueError("a key is [partition, user_key]")
        partition, user_key = key
        if not isinstance(partition, int) or not isinstance(user_key, str):
            raise ValueError("a key is [int, str]")
        out.append((partition, user_key))
    return request_id, out


def _node_ip() -> str:
    """The address other nodes reach this process at: Ray's node IP, else loopback."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.util.get_node_ip_address())
    except Exception:
        pass
    return "127.0.0.1"


class ProfileServer:
    """Answers profile reads for one worker (``lookup``: its ``profiles_of``) on an ephemeral
    port of ``host`` (default: this node's IP), a daemon thread per connection (one per Serve
    replica). A failing connection is logged and closed; the worker never sees it."""

    def __init__(self, lookup: Lookup, host: str | None = None) -> None:
        self.lookup = lookup
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._listener = socket.create_server((host or _node_ip(), 0))
        self.address: Address = (*self._listener.getsockname()[:2], self.token)
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.served = 0
        """Requests answered (for tests and status)."""

    def start(self) -> ProfileServer:
        threading.Thread(target=self._accept, name="onramp-profiles", daemon=True).start()
        return self

    def close(self) -> None:
        """Stop accepting and end every connection (their clients fall back to the actor)."""
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), set()
        _close(self._listener)
        for conn in conns:
            _close(conn)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed:
                    _close(conn)
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # a client's node dies
            conn.settimeout(_AUTH_TIMEOUT_S)
            stream = conn.makefile("rb")
            if not hmac.compare_digest(stream.read(TOKEN_BYTES), self.token):
                log.warning("profile server: a connection without the token; closed")
                return
            conn.settimeout(None)
            while (header := stream.read(_HEADER.size)) and len(header) == _HEADER.size:
                (size,) = _HEADER.unpack(header)
                if size > MAX_REQUEST:
                    raise ValueError(f"a request of {size} bytes")
                body = stream.read(size)
                if len(body) < size:
                    return  # the client went away mid-frame
                conn.sendall(self._answer(body))
        except Exception as exc:  # a bad frame or a broken connection: that connection only
            log.info("profile server: connection closed (%s: %s)", type(exc).__name__, exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            _close(conn)

    def _answer(self, body: bytes) -> bytes:
        request_id, keys = parse_request(body)
        profiles = self.lookup(keys)
        self.served += 1
        try:
            return frame([request_id, profiles])
        except TypeError:  # not JSON (orjson.JSONEncodeError): the actor call carries it
            return frame([request_id, None])


def serve_profiles(lookup: Lookup) -> ProfileServer | None:
    """A started :class:`ProfileServer` on this node's IP; None (logged) when it cannot listen
    there, and profile reads of this worker stay actor calls: a worker never fails for it."""
    try:
        return ProfileServer(lookup).start()
    except OSError as exc:
        log.warning("no profile socket (%s); profile reads are actor calls", exc)
        return None


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class ProfileChannel:
    """One persistent connection to a :class:`ProfileServer`, in one event loop: requests
    pipelined with ids, answers matched by a reader task. Once broken it stays broken: every
    pending and later request raises ConnectionError (the caller asks the actor, and opens a
    new channel later)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.loop = asyncio.get_running_loop()
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[list[Any] | None]] = {}
        #: Request id -> when it was sent, until its answer arrives (a caller that gave up
        #: leaves it here): the oldest is first.
        self._sent: dict[int, float] = {}
        self.error: str | None = None
        self._task = asyncio.ensure_future(self._read_answers())

    @classmethod
    async def open(cls, address: Address, timeout_s: float = 5.0) -> ProfileChannel:
        host, port, token = address
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        writer.write(token)  # asyncio's TCP transports already set TCP_NODELAY
        return cls(reader, writer)

    @property
    def broken(self) -> bool:
        return self.error is not None

    async def profiles_of(self, keys: list[tuple[int, str]]) -> list[Any] | None:
        """What the worker's ``profiles_of(keys)`` answers; None: ask the actor for this one."""
        if self.error is not None:
            raise ConnectionError(self.error)
        if self._writer.transport.get_write_buffer_size() > _MAX_UNSENT:
            self._fail("the server stopped reading")
            raise ConnectionError(self.error)
        if self._sent and self.loop.time() - next(iter(self._sent.values())) > ANSWER_TIMEOUT_S:
            # answers may be waiting in the socket already (this loop was busy): let the reader
            # take them before judging the peer
            for _ in range(3):
                await asyncio.sleep(0)
            if self.error is not None:
                raise ConnectionError(self.error)
            if self._sent and self.loop.time() - next(iter(self._sent.values())) > ANSWER_TIMEOUT_S:
                self._fail(f"no answer in {ANSWER_TIMEOUT_S:g} s")
                raise ConnectionError(self.error)
        now = self.loop.time()
        self._next_id += 1
        request_id = self._next_id
        self._sent[request_id] = now
        answer = self._waiting[request_id] = self.loop.create_future()
        try:
            self._writer.write(frame([request_id, keys]))
            profiles = await answer
        finally:
            self._waiting.pop(request_id, None)
        if profiles is not None and len(profiles) != len(keys):
            self._fail(f"{len(profiles)} answers to {len(keys)} keys")
            raise ConnectionError(self.error)
        return profiles

    async def _read_answers(self) -> None:
        try:
            while True:
                (size,) = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
                if size > _MAX_ANSWER:
                    raise ValueError(f"an answer of {size} bytes")
                request_id, profiles = orjson.loads(await self._reader.readexactly(size))
                self._sent.pop(request_id, None)
                answer = self._waiting.pop(request_id, None)
                if answer is not None and not answer.done():  # else its caller gave up
                    answer.set_result(profiles)
        except asyncio.CancelledError:
            self._fail("closed")
            raise
        except (asyncio.IncompleteReadError, OSError, ValueError, TypeError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(ConnectionError(self.error))
        self._waiting.clear()
        try:
            self._writer.close()
        except RuntimeError:  # its loop is closed
            pass

    def close(self) -> None:
        self._fail("closed")
        if not self._task.done():
            self._task.cancel()
