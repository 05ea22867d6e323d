"""Whether the keys in the settings are safe for where Onramp listens: the shipped demo keys and
short keys only on a machine nobody else reaches (``local_only``, ``key_exposure``,
``require_safe_keys``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray_app.config.base import DEMO_KEYS, MIN_KEY_CHARS
from ray_app.errors import ConfigError

if TYPE_CHECKING:
    from ray_app.config import Settings

__all__ = ["key_exposure", "local_only", "require_safe_keys"]


_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def _is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip().strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bootstrap_hosts(bootstrap: str) -> list[str]:
    hosts = []
    for server in bootstrap.split(","):
        server = server.strip().split("://", 1)[-1]
        if not server:
            continue
        if server.startswith("["):  # [::1]:9092
            hosts.append(server[1 : server.find("]")])
        else:
            hosts.append(server.rsplit(":", 1)[0] if server.count(":") == 1 else server)
    return hosts


def local_only(
    settings: Settings, bootstrap: str | None = None, http_host: str | None = None
) -> bool:
    """True when Onramp can be reached from this machine alone: the HTTP ingress binds a
    loopback address (``http_host``, the address Serve's proxy really binds; default
    ``collector.host``, which ``onramp up`` binds) and Kafka is the embedded broker or another one
    on loopback. Only then are the shipped demo keys accepted and ``/demo/`` served.

    >>> from ray_app.config import Settings
    >>> local_only(Settings())
    True
    >>> local_only(Settings(collector={"host": "0.0.0.0"}))
    False
    >>> local_only(Settings(kafka={"bootstrap_servers": "kafka-1.prod:9092"}))
    False
    """
    if not _is_loopback(settings.collector.host if http_host is None else http_host):
        return False
    servers = bootstrap if bootstrap is not None else settings.kafka.bootstrap_servers
    if not servers:
        return _is_loopback(settings.broker.host)
    return all(_is_loopback(h) for h in _bootstrap_hosts(servers))


def key_exposure(
    settings: Settings, bootstrap: str | None = None, http_host: str | None = None
) -> list[str]:
    """Why these keys must not serve a reachable Onramp (empty: fine). Onramp refuses to start
    with any of these problems unless :func:`local_only`.

    >>> from ray_app.config import Settings
    >>> key_exposure(Settings())
    []
    >>> key_exposure(Settings(collector={"host": "0.0.0.0"}))[0]
    'collector.write_keys.demo is the shipped demo key: set your own (or remove it)'
    """
    if local_only(settings, bootstrap, http_host):
        return []
    problems = []
    c = settings.collector
    public: dict[str, str] = {}  # secret -> the write/decide key holding it (browsers see those)
    for scope, keys in (("write", c.write_keys), ("decide", c.decide_keys), ("read", c.read_keys)):
        for name, key in keys.items():
            secret = key.get_secret_value()
            where = f"collector.{scope}_keys.{name}"
            if secret in DEMO_KEYS.values():
                problems.append(f"{where} is the shipped demo key: set your own (or remove it)")
            elif len(secret) < MIN_KEY_CHARS:
                problems.append(f"{where} is shorter than {MIN_KEY_CHARS} characters")
            elif scope == "read" and secret in public:
                problems.append(
                    f"{where} is also {public[secret]}: a browser would hold read scope"
                )
            if scope != "read":
                public.setdefault(secret, where)
    if not c.write_keys:
        problems.append("collector.write_keys is empty: no source could send events")
    if settings.stream.checkpoint_key is None:
        problems.append(
            "stream.checkpoint_key is not set: every node must sign and verify checkpoints "
            "with the same key (a key file is one machine's)"
        )
    return problems


def require_safe_keys(
    settings: Settings, bootstrap: str | None = None, http_host: str | None = None
) -> None:
    """Raise :class:`ConfigError` when :func:`key_exposure` finds a problem: a reachable Onramp
    never runs with keys anybody can read in this repository."""
    problems = key_exposure(settings, bootstrap, http_host)
    if problems:
        raise ConfigError(
            "refusing to start a reachable Onramp with these keys: "
            + "; ".join(problems)
            + ". The shipped demo keys are accepted only when the HTTP ingress (collector.host) "
            "and Kafka are on loopback (under `serve deploy`, never: Serve's proxy binds "
            "http_options.host). See the README's Security section.",
            problems=problems,
        )
