"""Builds Onramp's Serve application; the import path for ``serve run`` / ``serve deploy`` is
``deployments.app:build_app``.

Arguments (``args`` in a Serve config, or keyword arguments from ``onramp up``):

* ``settings``: a :class:`ray_app.config.Settings` (from ``onramp up``), or
* ``config``: path of an Onramp YAML settings file (``serve deploy``); the environment applies too;
* ``bootstrap``: Kafka bootstrap servers; defaults to ``kafka.bootstrap_servers``.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.collector import CollectorIngress
from ray_app.config import Settings, load_settings
from ray_app.errors import ConfigError

__all__ = ["build_app"]


def build_app(args: dict[str, Any] | None = None) -> Application:
    args = dict(args or {})
    settings = args.pop("settings", None)
    if settings is None:
        settings = load_settings(args.pop("config", None))
    if not isinstance(settings, Settings):
        raise ConfigError("build_app: 'settings' must be an onramp Settings object")
    bootstrap = args.pop("bootstrap", None) or settings.kafka.bootstrap_servers
    if args:
        raise ConfigError(f"build_app: unknown arguments {sorted(args)}", arguments=sorted(args))
    if not bootstrap:
        raise ConfigError(
            "no Kafka to write to: set kafka.bootstrap_servers (ONRAMP_KAFKA__BOOTSTRAP_SERVERS) "
            "or start Onramp with `onramp up`, which runs the embedded broker"
        )
    d = settings.decide
    return CollectorIngress.options(
        autoscaling_config={
            "min_replicas": d.min_replicas,
            "initial_replicas": max(settings.collector.replicas, d.min_replicas),
            "max_replicas": max(d.max_replicas, settings.collector.replicas, d.min_replicas),
            "target_ongoing_requests": d.target_ongoing_requests,
        },
        ray_actor_options={"num_cpus": 0.25},
    ).bind(settings, bootstrap)
