"""Checks of the deployment files, stricter than Ray's own: ``cluster.yaml`` and the Serve config.

``ray up`` validates a cluster config against Ray's JSON schema, which rejects unknown top-level
and node-type keys but lets anything through under ``provider`` and ``node_config`` (passed to
EC2 as they are: a typo there is found only when an instance launch fails). ``serve deploy``
validates with :class:`ray.serve.schema.ServeDeploySchema`, whose models ignore unknown fields
(``http_options`` on purpose, for forward compatibility): a misspelt ``autoscaling_confg`` is
dropped without a word. These checks run Ray's validation first, then walk the file and name
every key nobody reads, by its path.

Run ``python -m deployments.check cluster.yaml deployments/serve_config.yaml`` before deploying.

>>> problems = serve_config_problems({"applications": [{"import_path": "deployments.app:build_app",
...     "deployments": [{"name": "Collector", "autoscaling_confg": {}}]}]})
>>> problems
['applications[0].deployments[0].autoscaling_confg: unknown field']
"""

from __future__ import annotations

import copy
import re
import sys
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ray_app.decide.user_config import USER_CONFIG_KEYS as DECIDE_USER_CONFIG
from ray_app.errors import ConfigError
from ray_app.yamlfile import load_yaml, yaml_problem

__all__ = [
    "AWS_PROVIDER_KEYS",
    "EC2_NODE_CONFIG_KEYS",
    "USER_CONFIG_KEYS",
    "check_cluster_config",
    "check_serve_config",
    "cluster_config_problems",
    "ray_validate_cluster_config",
    "serve_config_problems",
]

#: Keys of an AWS ``provider`` block that Ray reads (its schema's properties and
#: ``ray/autoscaler/_private/aws``); the test checks each one against Ray's sources.
AWS_PROVIDER_KEYS = frozenset(
    {
        "type",
        "region",
        "availability_zone",
        "cache_stopped_nodes",
        "security_group",
        "use_internal_ips",
        "use_external_head_ip",
        "cloudwatch",
        "aws_credentials",
        "key_pair",
        "disable_node_updaters",
    }
)

#: Request parameters of EC2 RunInstances (the AWS API reference), which Ray passes ``node_config``
#: to, plus Ray's own ``SubnetIds`` (a list it picks a subnet from).
EC2_NODE_CONFIG_KEYS = frozenset(
    {
        "BlockDeviceMappings",
        "ImageId",
        "InstanceType",
        "Ipv6AddressCount",
        "Ipv6Addresses",
        "KernelId",
        "KeyName",
        "MaxCount",
        "MinCount",
        "Monitoring",
        "Placement",
        "RamdiskId",
        "SecurityGroupIds",
        "SecurityGroups",
        "SubnetId",
        "UserData",
        "ElasticGpuSpecification",
        "ElasticInferenceAccelerators",
        "TagSpecifications",
        "LaunchTemplate",
        "InstanceMarketOptions",
        "CreditSpecification",
        "CpuOptions",
        "CapacityReservationSpecification",
        "HibernationOptions",
        "LicenseSpecifications",
        "MetadataOptions",
        "EnclaveOptions",
        "PrivateDnsNameOptions",
        "MaintenanceOptions",
        "DisableApiStop",
        "EnablePrimaryIpv6",
        "NetworkPerformanceOptions",
        "Operator",
        "DryRun",
        "DisableApiTermination",
        "InstanceInitiatedShutdownBehavior",
        "PrivateIpAddress",
        "ClientToken",
        "AdditionalInfo",
        "NetworkInterfaces",
        "IamInstanceProfile",
        "EbsOptimized",
        "SubnetIds",
    }
)

#: ``user_config`` keys each deployment's ``reconfigure`` accepts, and the setting it changes.
USER_CONFIG_KEYS: dict[str, dict[str, str]] = {
    # each the decide setting of its name (ray_app.decide.user_config, what reconfigure reads)
    "Collector": {key: f"decide.{key}" for key in DECIDE_USER_CONFIG},
    "StreamSupervision": {"workers": "stream.workers"},
}

_BUILDERS = {"deployments.app:build_app", "deployments.app:build_stream_app"}


def _load(path_or_data: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(path_or_data, dict):
        return copy.deepcopy(path_or_data)
    path = Path(path_or_data)
    try:
        text = path.read_text(encoding="utf-8")  # whatever the machine's locale
    except OSError as exc:  # missing, a directory, not allowed: one line, not a traceback
        raise ConfigError(f"cannot read it: {exc.strerror or exc}", path=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=str(path)
        ) from None
    try:
        # duplicate keys refused, as Onramp's own settings are: the first would vanish, and
        # finding settings that are silently not used is what this check is for
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {yaml_problem(exc)}", path=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path_or_data}: must hold a mapping at the top", path=str(path_or_data))
    return data


# -- cluster.yaml ------------------------------------------------------------------------------


def ray_validate_cluster_config(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's validation as ``ray up`` runs it (``prepare_config`` then ``validate_config``, the
    first steps of ``ray.autoscaler._private.commands._bootstrap_config``): defaults merged in,
    the JSON schema, node types. Offline: the provider's own bootstrap (AWS calls) comes after.
    Returns the prepared config; raises ``jsonschema.ValidationError`` or ``ValueError``."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def cluster_config_problems(config: dict[str, Any]) -> list[str]:
    """Keys Ray would accept but nobody reads: under ``provider`` (AWS) and ``node_config``."""
    problems: list[str] = []
    provider = config.get("provider") or {}
    if provider.get("type") == "aws":
        for key in provider:
            if key not in AWS_PROVIDER_KEYS:
                problems.append(f"provider.{key}: unknown key for the aws provider")
        for name, node_type in (config.get("available_node_types") or {}).items():
            for key in (node_type or {}).get("node_config") or {}:
                if key not in EC2_NODE_CONFIG_KEYS:
                    problems.append(
                        f"available_node_types.{name}.node_config.{key}: not an EC2 "
                        "RunInstances parameter"
                    )
    return problems


def check_cluster_config(path_or_data: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Ray's validation, then :func:`cluster_config_problems`; :class:`ConfigError` listing
    every problem. Returns the config as Ray prepared it.

    >>> check_cluster_config({"cluster_name": "x", "provider": {"type": "aws",
    ...     "region": "us-east-1", "regoin": "eu-west-1"}})
    Traceback (most recent call last):
    ...
    ray_app.errors.ConfigError: cluster config: provider.regoin: unknown key for the aws provider
    """
    config = _load(path_or_data)
    try:
        prepared = ray_validate_cluster_config(config)
    except Exception as exc:  # jsonschema.ValidationError, ValueError: Ray's message as it is
        raise ConfigError(f"cluster config: Ray's validator: {exc}") from None
    problems = cluster_config_problems(config)
    if problems:
        raise ConfigError("cluster config: " + "; ".join(problems), problems=problems)
    return prepared


# -- Serve config ------------------------------------------------------------------------------


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """(pydantic models an annotation may hold, whether it is a list of them)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        models: list[type[BaseModel]] = []
        is_list = False
        for arg in typing.get_args(annotation):
            m, lst = _models_in(arg)
            models += m
            is_list = is_list or lst
        return models, is_list
    if origin in (list, typing.List):  # noqa: UP006
        args = typing.get_args(annotation)
        return (_models_in(args[0])[0] if args else []), True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    return [], False


def _unknown_fields(model: type[BaseModel], data: dict[str, Any], where: str) -> Iterable[str]:
    known: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        known[name] = field
        if field.alias:
            known[field.alias] = field
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            yield f"{path}: unknown field"
            continue
        models, is_list = _models_in(known[key].annotation)
        if not models:
            continue
        items = list(enumerate(value)) if is_list and isinstance(value, list) else [(None, value)]
        for i, item in items:
            if isinstance(item, dict):
                yield from _unknown_fields(models[0], item, path if i is None else f"{path}[{i}]")


def _runtime_env_problems(env: Any, where: str) -> Iterable[str]:
    from ray.runtime_env import RuntimeEnv

    if isinstance(env, dict):
        for key in env:
            if key not in RuntimeEnv.known_fields:
                yield f"{where}.{key}: unknown runtime_env field"


def _settings_problems(settings: Any, where: str) -> Iterable[str]:
    from ray_app.config import Settings

    if not isinstance(settings, dict):
        yield f"{where}: must be a mapping of Onramp settings"
        return
    try:
        Settings.model_validate(settings)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            yield f"{where}.{loc}: {msg}"


def _setting_field(dotted: str) -> tuple[type[BaseModel], str]:
    from ray_app.config import Settings

    section, name = dotted.split(".")
    ann = Settings.model_fields[section].annotation
    assert isinstance(ann, type) and issubclass(ann, BaseModel)
    return ann, name


def _user_config_problems(deployment: str, user_config: Any, where: str) -> Iterable[str]:
    keys = USER_CONFIG_KEYS.get(deployment)
    if keys is None or user_config is None:
        return
    if not isinstance(user_config, dict):
        yield f"{where}: must be a mapping"
        return
    for key, value in user_config.items():
        if key not in keys:
            yield f"{where}.{key}: unknown user_config key of {deployment} (known: {sorted(keys)})"
            continue
        section, name = _setting_field(keys[key])
        try:  # validated as the setting it changes
            section.model_validate({name: value})
        except ValidationError as exc:
            yield f"{where}.{key}: {exc.errors(include_url=False)[0]['msg']}"


def serve_config_problems(config: dict[str, Any]) -> list[str]:
    """Every field of a Serve config that Serve or Onramp would ignore or reject, by path."""
    from ray.serve.schema import ServeDeploySchema

    problems = list(_unknown_fields(ServeDeploySchema, config, ""))
    for i, app in enumerate(config.get("applications") or []):
        if not isinstance(app, dict):
            continue
        here = f"applications[{i}]"
        problems += _runtime_env_problems(app.get("runtime_env"), f"{here}.runtime_env")
        if app.get("import_path") in _BUILDERS:
            args = app.get("args") or {}
            from deployments.app import ARGS

            for key, value in args.items():
                if key not in ARGS:
                    problems.append(f"{here}.args.{key}: unknown argument (known: {list(ARGS)})")
                elif key == "settings":
                    problems += _settings_problems(value, f"{here}.args.settings")
        for j, dep in enumerate(app.get("deployments") or []):
            if not isinstance(dep, dict):
                continue
            there = f"{here}.deployments[{j}]"
            problems += _user_config_problems(
                str(dep.get("name")), dep.get("user_config"), f"{there}.user_config"
            )
            if app.get("import_path") == "deployments.app:build_app":
                from deployments.app import SETTINGS_OWNED

                problems += [
                    f"{there}.{key}: set by Onramp's settings (decide.min_replicas, "
                    "max_replicas, target_ongoing_requests, upscale_delay_s, downscale_delay_s, "
                    "look_back_period_s, replica_cpus, replica_resources; collector.replicas): "
                    "set them in "
                    f"{here}.args.settings; a value here would override them silently"
                    for key in SETTINGS_OWNED
                    if key in dep
                ]
            actor = dep.get("ray_actor_options") or {}
            if isinstance(actor, dict):
                problems += _runtime_env_problems(
                    actor.get("runtime_env"), f"{there}.ray_actor_options.runtime_env"
                )
    return problems


def check_serve_config(path_or_data: str | Path | dict[str, Any]) -> Any:
    """Serve's own schema (:class:`ServeDeploySchema`), then :func:`serve_config_problems`;
    :class:`ConfigError` listing every problem. Returns the parsed schema."""
    from ray.serve.schema import ServeDeploySchema

    config = _load(path_or_data)
    try:
        parsed = ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError("serve config: " + "; ".join(lines), problems=lines) from None
    problems = serve_config_problems(config)
    if problems:
        raise ConfigError("serve config: " + "; ".join(problems), problems=problems)
    return parsed


def _kind(path: Path, data: dict[str, Any]) -> str:
    return "serve" if "applications" in data else "cluster"


def main(argv: list[str] | None = None) -> int:
    """``python -m deployments.check FILE...``: check each file, print what is wrong."""
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m deployments.check cluster.yaml deployments/serve_config.yaml")
        return 2
    failed = 0
    for path in paths:
        try:
            data = _load(path)
            kind = _kind(path, data)
            (check_serve_config if kind == "serve" else check_cluster_config)(data)
            print(f"{path}: ok ({kind} config)")
        except ConfigError as exc:
            failed += 1
            problems = exc.context.get("problems") or [re.sub(r"^[a-z ]+config: ", "", str(exc))]
            print(f"{path}: {len(problems)} problem(s)")
            for p in problems:
                print(f"  {p}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
