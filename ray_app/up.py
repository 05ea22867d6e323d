"""``onramp up``: the broker, Ray and the Serve application, started and stopped in order.

On embedded defaults everything runs on this machine: the Tansu broker on a free loopback port,
a local Ray, Serve's HTTP ingress on ``collector.port``. With ``kafka.bootstrap_servers`` set the
broker is not started; with ``ray.address`` set Onramp joins that Ray cluster.

The Serve application's builder is passed in (``Stack(settings, build_app)``: the ``onramp``
command and the benchmarks pass ``deployments.app.build_app``, the function a ``serve deploy``
config names), so the engine (``ray_app``) never imports ``deployments``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from ray_app import embedded
from ray_app.config import Settings, require_safe_keys
from ray_app.errors import OnrampError
from ray_app.kafka.broker import EmbeddedBroker, free_port
from ray_app.kafka.topics import ensure_topics

__all__ = ["APP_NAME", "Stack", "configure_http_mode"]

log = logging.getLogger(__name__)

APP_NAME = "onramp"
_HA_ENV = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_ENABLE_DIRECT_INGRESS")


def configure_http_mode(high_throughput: bool) -> str:
    """Select Serve's HTTP path for the Ray this process will start; returns ``haproxy`` or
    ``default``. Must run before ``ray.init()``: Serve reads these variables at start.

    HAProxy's config, admin socket and state files go to a directory of this process (not
    Serve's fixed ``/tmp/haproxy-serve``) and its metrics, stats and fallback-proxy ports are free
    ones, so two Onramps on one machine (a test session and a demo, say) do not collide.
    """
    if not high_throughput:
        for name in (*_HA_ENV, "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
            os.environ.pop(name, None)
        return "default"
    try:
        from ray.serve._private.haproxy import get_haproxy_binary

        get_haproxy_binary()
    except (ImportError, FileNotFoundError) as exc:
        warnings.warn(
            f"Serve's high-throughput HTTP mode needs HAProxy ({exc}); using the default proxy, "
            "about 20x fewer requests/s. Install ray[serve] on Linux or Debian's haproxy.",
            RuntimeWarning,
            stacklevel=2,
        )
        for name in (*_HA_ENV, "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
            os.environ.pop(name, None)
        return "default"
    for name in _HA_ENV:
        os.environ[name] = "1"
    # A stopping replica stays reachable this long so load balancers can deregister it. Serve's
    # 30 s suits a fleet behind an external balancer; here HAProxy is local and told at once.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    # Serve's bundle of request-path optimizations (user code on the replica's own loop, no
    # per-request log to stderr, buffered request logs): about 1.3x the requests/s here.
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    if "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC" not in os.environ:
        import tempfile

        # A short path: Serve nests a 56-character hash under it and HAProxy allows 97 bytes.
        base = Path(tempfile.mkdtemp(prefix="orh"))
        os.environ.update(
            {
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
                "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
                "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            }
        )
    # Serve's fixed ports for HAProxy's stats page and the fallback proxy: free ones instead.
    for name in (
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    ):
        os.environ.setdefault(name, str(free_port()))
    return "haproxy"


def stop_own_haproxy() -> int:
    """SIGTERM to the HAProxy processes that run with this process's HAProxy config
    (``RAY_SERVE_HAPROXY_CONFIG_FILE_LOC``, see :func:`configure_http_mode`); how many. Serve's
    HAProxy manager starts HAProxy and does not take it along when Ray's processes are killed:
    the orphan keeps the HTTP port, and the next ``onramp up`` fails to bind it. Linux
    (``/proc``); elsewhere 0."""
    import signal

    config = os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC")
    if not config:
        return 0
    base = str(Path(config).parent)
    stopped = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"haproxy") and any(base.encode() in a for a in argv):
            try:
                os.kill(int(proc.name), signal.SIGTERM)
                stopped += 1
            except OSError:
                pass
    return stopped


def ray_init_address(address: str | None) -> str | None:
    """What to pass to ``ray.init(address=...)`` for ``ray.address``: the setting when set; else
    ``None`` when Ray's own ``RAY_ADDRESS`` is set (``ray job submit`` sets it), so Ray follows
    it; else ``"local"``: a new local instance. (``None`` alone would join whatever cluster a
    ``ray start`` on this machine last left in ``/tmp/ray``, even a dead one.)

    >>> ray_init_address("ray://head:10001")
    'ray://head:10001'
    """
    if address is not None:
        return address
    return None if os.environ.get("RAY_ADDRESS") else "local"


#: How many times :func:`start_serve` asks Serve to start before it gives up.
SERVE_START_ATTEMPTS = 3
#: How long :func:`start_serve` waits for a replacement proxy to be healthy.
PROXY_HEALTHY_TIMEOUT_S = 60.0


def _cause(exc: BaseException) -> str:
    """An exception in one line: its type and its message's last non-empty line (a Ray error's
    first line is a generic one)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def _a_proxy_healthy(status: Callable[[], Any]) -> bool:
    """Whether ``serve.status()`` shows a healthy proxy (on a cluster, proxies of nodes without
    replicas may be draining; whether this machine's answers is what :meth:`Stack.start` checks
    next, over HTTP)."""
    return any(str(getattr(p, "value", p)) == "HEALTHY" for p in status().proxies.values())


def start_serve(
    http_options: dict[str, Any],
    start: Callable[..., Any] | None = None,
    attempts: int = SERVE_START_ATTEMPTS,
    status: Callable[[], Any] | None = None,
    healthy_timeout_s: float = PROXY_HEALTHY_TIMEOUT_S,
) -> None:
    """``serve.start(http_options=...)``, asked again when the HTTP proxy it waits for is
    killed or is not ready in time.

    On a busy machine Serve's controller kills a proxy whose health check is late and starts
    another; ``serve.start``, which waits on the first one, then raises Ray's ``ActorDiedError``
    (``onramp demo`` failed to start that way, with a Ray traceback, while the machine's two
    cores ran other work). Asked again, ``serve.start`` joins the controller that is already
    running without waiting for any proxy, so this waits (``healthy_timeout_s``) until
    ``serve.status()`` shows a healthy proxy. A proxy whose constructor failed is not
    retried. Every failure ends in an :class:`OnrampError` that names the cause (one line from
    the CLI, no traceback); a port already taken is Serve's own error, not retried either.
    ``start`` and ``status`` stand in for ``serve.start`` and ``serve.status`` in tests.

    >>> calls = []
    >>> def flaky(http_options):
    ...     calls.append(http_options)
    ...     if len(calls) == 1:
    ...         raise TimeoutError("HTTP proxies not available after 60s.")
    >>> class Healthy:
    ...     proxies = {"node-1": "HEALTHY"}
    >>> start_serve({"port": 8000}, flaky, status=Healthy)
    >>> len(calls)
    2
    """
    import ray

    if start is None or status is None:
        from ray import serve

        start = start or serve.start
        status = status or serve.status
    first: str | None = None
    for attempt in range(1, attempts + 1):
        try:
            start(http_options=http_options)
        except (ray.exceptions.RayActorError, TimeoutError) as exc:
            cause = _cause(exc)
            if getattr(exc, "actor_init_failed", False):
                raise OnrampError(f"Serve's HTTP proxy failed to start ({cause})") from exc
            first = first or cause
            if attempt == attempts:
                raise OnrampError(f"Serve did not start ({attempts} tries; last: {cause})") from exc
            log.warning(
                "Serve's HTTP proxy did not start (%s); asking again (%d of %d)",
                cause,
                attempt + 1,
                attempts,
            )
            continue
        if first is None:
            return  # serve.start itself waited for the proxies
        deadline = time.monotonic() + healthy_timeout_s
        while not _a_proxy_healthy(status):
            if time.monotonic() > deadline:
                raise OnrampError(
                    f"Serve's HTTP proxy was not healthy {healthy_timeout_s:.0f} s after it "
                    f"was restarted (it had failed with {first})"
                )
            time.sleep(0.2)
        return


class Stack:
    """Broker (embedded unless configured), Ray and Onramp's Serve application."""

    def __init__(
        self,
        settings: Settings,
        build_app: Callable[[dict[str, Any]], Any],
        start_stream: bool = True,
        fresh: bool = False,
    ) -> None:
        # Actors and replicas may run in another directory: make the local paths absolute.
        settings = settings.model_copy(update={"state_dir": Path(settings.state_dir).resolve()})
        if settings.enrich.crm_path is not None:
            enrich = settings.enrich.model_copy(
                update={"crm_path": settings.enrich.crm_path.resolve()}
            )
            settings = settings.model_copy(update={"enrich": enrich})
        self.settings = settings
        self.build_app = build_app
        self.start_stream = start_stream
        self.fresh = fresh
        self.notes: list[str] = []
        """What an embedded run kept from earlier ones and what it removed (:mod:`embedded`)."""
        self.supervisor: Any = None
        self.learner: Any = None
        self.broker: EmbeddedBroker | None = None
        self._claimed: Path | None = None  # the state directory this stack's embedded run holds
        self.bootstrap: str | None = settings.kafka.bootstrap_servers
        self.http_mode = "default"
        self._ray_started = False
        self._own_cluster = False
        self._deployed = False  # this stack ran serve.run of APP_NAME (so stop may delete it)

    def _init_ray(self) -> None:
        """``ray.init``: a local Ray of this stack's own, whose Serve is shut down whole on stop;
        or the cluster ``ray.address`` names, or Ray's ``RAY_ADDRESS`` (``ray job submit`` sets
        it), which keeps its other applications (only what this stack deployed is deleted)."""
        import ray

        s = self.settings
        address = ray_init_address(s.ray.address)
        own = address == "local"
        if own:
            self.http_mode = configure_http_mode(s.collector.high_throughput_http)
        ray.init(
            address=address,
            namespace=s.ray.namespace,
            num_cpus=s.ray.num_cpus if own else None,
            include_dashboard=False,
            log_to_driver=False,
        )
        self._ray_started = True
        self._own_cluster = own

    @property
    def base_url(self) -> str:
        """Where the collector answers: its host, or for one bound to every interface, this
        machine, unless Onramp joined a remote Ray cluster through Ray Client (``ray://``),
        whose Serve proxies run on the cluster's nodes: then the head node's address."""
        c = self.settings.collector
        host = c.host
        if host in ("0.0.0.0", ""):
            joined = self.settings.ray.address or os.environ.get("RAY_ADDRESS")
            host = _ray_client_host(joined) or "127.0.0.1"
        elif host == "::":  # every IPv6 interface: this machine's
            host = "::1"
        if ":" in host and not host.startswith("["):  # an IPv6 address, bracketed in a URL
            host = f"[{host}]"
        return f"http://{host}:{c.port}"

    def urls(self) -> dict[str, str]:
        base = self.base_url
        return {
            "collector": f"{base}/v1/batch",
            "docs": f"{base}/docs",
            "openapi": f"{base}/openapi.json",
            "health": f"{base}/healthz",
            "metrics": f"{base}/metrics",
            "profiles": f"{base}/v1/profiles/{{user_id}}",
            "decide": f"{base}/v1/decide",
        }

    def _refusal(self, path: Path) -> str | None:
        """Why the model file at ``path`` cannot be served with this run's catalog and feature
        schema (as the learner and the replicas will judge it), ``None`` if it can."""
        from ray_app.catalog import load_catalog
        from ray_app.errors import FieldError
        from ray_app.features import FeatureSchema
        from ray_app.model.bundle import ModelBundle

        try:
            catalog = load_catalog(self.settings.decide.catalog_path)
            ModelBundle.from_bytes(
                path.read_bytes(), FeatureSchema.from_catalog(catalog), catalog, False
            )
        except (FieldError, OSError, ValueError) as exc:
            return str(exc)
        return None

    def start(self) -> Stack:
        import ray
        from ray import serve

        s = self.settings
        require_safe_keys(s, self.bootstrap)
        state_dir = Path(s.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        if not self.bootstrap:
            embedded.claim(state_dir)  # one embedded run a state directory
            self._claimed = state_dir
            b = s.broker
            self.broker = EmbeddedBroker(
                b.host, b.port, b.binary, b.start_timeout_s, log_path=state_dir / "broker.log"
            ).start()
            self.bootstrap = self.broker.bootstrap
            self.notes = embedded.prepare(state_dir, s.model_path, self.fresh, self._refusal)
        created = ensure_topics(self.bootstrap, s.kafka)
        if created:
            log.info("created topics: %s", ", ".join(created))
        if not ray.is_initialized():
            self._init_ray()
        if not self._own_cluster:
            self._refuse_a_running_onramp()
        # The stream supervisor's workers and the learner start while Serve does (each is
        # mostly processes importing their modules): waited for before the stack is up.
        starting: list[tuple[str, Any, float]] = []
        if self.start_stream:
            from ray_app.stream import supervisor

            checkpoints = s.stream.checkpoint_uri
            if checkpoints is None and self.broker is not None:
                # The embedded broker keeps topics in memory: offsets of an earlier run mean
                # nothing to it, so its checkpoints start afresh with it.
                checkpoints = str(state_dir.resolve() / "checkpoints" / embedded.run_name())
            self.supervisor, launched = supervisor.launch_supervisor_actor(
                s, self.bootstrap, checkpoints
            )
            starting.append(("the stream workers", launched, supervisor.LAUNCH_TIMEOUT_S))
            if s.learn.enabled:
                from ray_app.learn import service

                if s.learn.state_path is None and self.broker is not None:
                    # same reason: reward offsets of an earlier run mean nothing to this broker;
                    # the learner starts from the model file that run published
                    run_state = state_dir.resolve() / "learner" / embedded.run_name()
                    s = s.model_copy(
                        update={"learn": s.learn.model_copy(update={"state_path": run_state})}
                    )
                self.learner, launched = service.launch_learner_actor(s, self.bootstrap)
                starting.append(("the learner", launched, service.LAUNCH_TIMEOUT_S))
        start_serve({"host": s.collector.host, "port": s.collector.port})
        self._deployed = True
        serve.run(
            self.build_app(
                {"settings": s, "bootstrap": self.bootstrap, "http_host": s.collector.host}
            ),
            name=APP_NAME,
            route_prefix="/",
            # as deployments/serve_config.yaml: Serve's access log line per request costs
            # about 3% of a replica's time on /v1/decide (Onramp's metrics count requests)
            logging_config={"enable_access_log": False},
        )
        for what, launched, timeout_s in starting:
            try:
                ray.get(launched, timeout=timeout_s)
            except ray.exceptions.GetTimeoutError:
                raise OnrampError(f"{what} did not start within {timeout_s:.0f} s") from None
        self._wait_healthy()
        return self

    def _refuse_a_running_onramp(self) -> None:
        """On a cluster this stack joined, an Onramp application already running there (one
        ``serve deploy`` started) is not replaced by this one, nor deleted when it stops."""
        from ray import serve

        try:
            running = APP_NAME in serve.status().applications
        except Exception:  # Serve not started on the cluster: nothing runs there
            return
        if running:
            raise OnrampError(
                f"the Ray cluster at {self.settings.ray.address or 'this address'} already runs "
                f"a Serve application {APP_NAME!r}: this would replace it. Stop it first "
                f"(serve delete {APP_NAME}), or point ray.address at another cluster"
            )

    def _wait_healthy(self, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        last: str = ""
        while time.monotonic() < deadline:
            try:
                r = httpx.get(self.urls()["health"], timeout=2.0)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise OnrampError(f"the collector did not become healthy in {timeout_s}s: {last}")

    def _ray_lost(self, wait_s: float = 0.3) -> list[str]:
        """The processes of the local Ray this stack started that are gone, after waiting up to
        ``wait_s`` for one to go: a SIGTERM to the whole process group (``timeout``, a
        supervisor that signals every process of a service) reaches Ray's own processes too,
        and they exit at once (Ray blocks only SIGINT in them: Ctrl-C in a terminal is fine)."""
        if not self._ray_started:
            return []
        try:
            from ray._private import worker

            node = worker._global_node
        except Exception:
            return []
        deadline = time.monotonic() + wait_s
        while True:
            try:
                gone: list[str] = (
                    [kind for kind, _ in node.dead_processes()] if node is not None else []
                )
            except Exception:
                return []
            if gone or time.monotonic() >= deadline:
                return gone
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop in reverse order: Serve (replicas flush their producers), Ray, then the broker.

        If Ray's own processes were stopped from outside, Serve and the actors cannot be asked
        to stop (Serve alone would wait 30 s for its controller, then Ray's driver aborts the
        process a minute later with the broker still running): Ray is shut down at once, the
        HAProxy of this process (Serve starts it; it outlives its manager) is stopped, then the
        broker. The stream's and learner's state since their last checkpoints is lost then, as
        after any crash; no acknowledged event is."""
        import ray
        from ray import serve

        try:
            lost = self._ray_lost() if ray.is_initialized() else []
            if lost:
                log.warning(
                    "Ray's processes were stopped from outside (%s gone; a signal to the whole "
                    "process group?): shutting Ray down without stopping Serve and the stream "
                    "in order",
                    ", ".join(sorted(set(lost))),
                )
                ray.shutdown()
                stop_own_haproxy()
            elif ray.is_initialized():
                try:
                    if self._own_cluster:
                        serve.shutdown()
                    elif self._deployed:  # a cluster it joined: only the application it
                        serve.delete(APP_NAME)  # deployed, never one it found there
                    if self.learner is not None:
                        ray.get(self.learner.stop.remote(), timeout=60)
                        self.learner = None
                    if self.supervisor is not None:  # final checkpoints before Ray goes
                        ray.get(self.supervisor.stop.remote(), timeout=120)
                        self.supervisor = None
                finally:
                    if self._ray_started:
                        ray.shutdown()
        finally:
            if self.broker is not None:
                self.broker.stop()
            if self._claimed is not None:
                embedded.release(self._claimed)
                self._claimed = None

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _ray_client_host(address: str | None) -> str | None:
    """The head node of a Ray Client address (``ray://head:10001`` -> ``head``), else None.

    >>> _ray_client_host("ray://head-node:10001"), _ray_client_host("auto"), _ray_client_host(None)
    ('head-node', None, None)
    >>> _ray_client_host("ray://[::1]:10001"), _ray_client_host("ray://[::1]"), _ray_client_host("ray://head")
    ('[::1]', '[::1]', 'head')
    """
    if not address or not address.startswith("ray://"):
        return None
    rest = address[len("ray://") :]
    if rest.startswith("["):  # [IPv6]:port, kept in brackets for a URL
        end = rest.find("]")
        return rest[: end + 1] if end > 1 else None
    host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest
    return host or None
