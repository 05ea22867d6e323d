"""Builds Onramp's Serve application; the import path for ``serve run`` / ``serve deploy`` is
``deployments.app:build_app``.

Arguments (``args`` in a Serve config, or keyword arguments from ``onramp up``):

* ``settings``: a :class:`ray_app.config.Settings` (from ``onramp up``), or a mapping of
  settings (``serve deploy``: ``args.settings`` in the Serve config) applied over ``config`` and
  the environment, checked like any settings (unknown keys are an error that names them);
* ``config``: path of an Onramp YAML settings file (``serve deploy``); the environment applies too;
* ``bootstrap``: Kafka bootstrap servers; defaults to ``kafka.bootstrap_servers``;
* ``http_host``: the address Serve's HTTP proxy binds, given by ``onramp up`` (which starts
  Serve itself). Without it (``serve deploy``) Onramp counts as reachable from other machines:
  the shipped demo keys are refused and ``/demo/`` is not served
  (:func:`ray_app.config.require_safe_keys`).

:func:`build_stream_app` (same arguments) builds the stream supervision application: the stream
workers and the online learner, which ``onramp up`` starts without Serve
(``deployments/serve_config.yaml`` deploys both applications).
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.ingress import CollectorIngress
from ray_app.config import Settings, load_settings, require_safe_keys
from ray_app.errors import ConfigError

__all__ = ["ARGS", "SETTINGS_OWNED", "build_app", "build_stream_app", "ingress_options"]

#: The arguments both builders accept.
ARGS = ("settings", "config", "bootstrap", "http_host")

#: What counts as the HTTP bind address when the caller does not say: reachable.
_ANY_HOST = "0.0.0.0"


def build_app(args: dict[str, Any] | None = None) -> Application:
    args = dict(args or {})
    settings = args.pop("settings", None)
    if settings is None or isinstance(settings, dict):
        settings = _settings_from(args.pop("config", None), settings)
    if not isinstance(settings, Settings):
        raise ConfigError("build_app: 'settings' must be an onramp Settings object")
    bootstrap = args.pop("bootstrap", None) or settings.kafka.bootstrap_servers
    http_host = args.pop("http_host", None) or _ANY_HOST
    if args:
        raise ConfigError(f"build_app: unknown arguments {sorted(args)}", arguments=sorted(args))
    if not bootstrap:
        raise ConfigError(
            "no Kafka to write to: set kafka.bootstrap_servers (ONRAMP_KAFKA__BOOTSTRAP_SERVERS) "
            "or start Onramp with `onramp up`, which runs the embedded broker"
        )
    require_safe_keys(settings, bootstrap, http_host)
    return CollectorIngress.options(**ingress_options(settings)).bind(
        settings, bootstrap, http_host
    )


#: The ingress deployment's options that :func:`ingress_options` sets from the settings: a Serve
#: config that sets them too would override the settings silently (deployments.check refuses).
SETTINGS_OWNED = ("autoscaling_config", "num_replicas", "ray_actor_options")


def ingress_options(settings: Settings) -> dict[str, Any]:
    """Scaling and placement of the ingress replicas, from ``decide.*`` (and
    ``collector.replicas``, the initial count): the one place they are set.

    >>> ingress_options(Settings())["autoscaling_config"]["target_ongoing_requests"]
    32.0
    """
    d = settings.decide
    actor: dict[str, Any] = {"num_cpus": d.replica_cpus}
    if d.replica_resources:
        actor["resources"] = dict(d.replica_resources)
    return {
        "autoscaling_config": {
            "min_replicas": d.min_replicas,
            "initial_replicas": max(settings.collector.replicas, d.min_replicas),
            "max_replicas": max(d.max_replicas, settings.collector.replicas, d.min_replicas),
            "target_ongoing_requests": d.target_ongoing_requests,
            "upscale_delay_s": d.upscale_delay_s,
            "downscale_delay_s": d.downscale_delay_s,
            "look_back_period_s": d.look_back_period_s,
        },
        "ray_actor_options": actor,
    }


def _settings_from(config: str | None, overrides: dict[str, Any] | None) -> Settings:
    """Settings from a YAML file with ``overrides`` (a mapping, e.g. ``args.settings`` of a Serve
    config) merged over it, then the environment on top: the usual order, defaults < file <
    environment, with the overrides counted as part of the file."""
    import os

    from pydantic import ValidationError

    from ray_app.config import CONFIG_ENV, _env_overrides, _explain, _merge

    if not overrides:
        return load_settings(config)
    path = config or os.environ.get(CONFIG_ENV)
    base = load_settings(path, env={}).model_dump(exclude_unset=True) if path else {}
    try:
        merged = _merge(_merge(base, overrides), _env_overrides(os.environ))
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise _explain(exc, " in the Serve config's args.settings") from None


def build_stream_app(args: dict[str, Any] | None = None) -> Application:
    """The stream supervision application (see :mod:`deployments.stream`)."""
    from deployments.stream import StreamSupervision

    args = dict(args or {})
    settings = args.pop("settings", None)
    if settings is None or isinstance(settings, dict):
        settings = _settings_from(args.pop("config", None), settings)
    bootstrap = args.pop("bootstrap", None) or settings.kafka.bootstrap_servers
    http_host = args.pop("http_host", None) or _ANY_HOST
    if args:
        raise ConfigError(
            f"build_stream_app: unknown arguments {sorted(args)}", arguments=sorted(args)
        )
    if not bootstrap:
        raise ConfigError(
            "no Kafka to read: set kafka.bootstrap_servers (ONRAMP_KAFKA__BOOTSTRAP_SERVERS)"
        )
    # the same keys serve the collector app beside it; above all, one checkpoint key
    require_safe_keys(settings, bootstrap, http_host)
    return StreamSupervision.options(user_config={"workers": settings.stream.workers}).bind(
        settings, bootstrap
    )
