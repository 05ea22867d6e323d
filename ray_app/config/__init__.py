"""Onramp's settings: one frozen, typed object per process, built once from YAML and the environment.

Sources, later ones winning: defaults < YAML file < environment variables. The YAML file is the
path given with ``--config`` or in ``ONRAMP_CONFIG``. Environment variables are ``ONRAMP_`` plus
the dotted path with ``__`` between levels, e.g. ``ONRAMP_KAFKA__BOOTSTRAP_SERVERS=broker:9092``.
Unknown keys are an error that names them. Secrets are ``SecretStr`` and print masked.

>>> s = load_settings(env={"ONRAMP_KAFKA__PARTITIONS": "4"})
>>> s.kafka.partitions, s.kafka.client
(4, 'confluent')
>>> load_settings(env={"ONRAMP_KAFKA__PARTITONS": "4"})
Traceback (most recent call last):
...
ray_app.errors.ConfigError: invalid settings (ONRAMP_* environment): kafka.partitons: unknown setting
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError

from ray_app.config.base import CONFIG_ENV, DEMO_KEYS, ENV_PREFIX, MIN_KEY_CHARS
from ray_app.config.base import Section as _Section
from ray_app.config.connect import BrokerSettings, CollectorSettings, KafkaSettings, RaySettings
from ray_app.config.decide import (
    DecideSettings,
    ExperimentSplit,
    LearnSettings,
    RegistrySettings,
    TelemetrySettings,
)
from ray_app.config.keys import key_exposure, local_only, require_safe_keys
from ray_app.config.stream import EnrichSettings, SimSettings, StreamSettings
from ray_app.errors import ConfigError
from ray_app.yamlfile import load_yaml, yaml_problem

__all__ = [
    "CONFIG_ENV",
    "DecideSettings",
    "ExperimentSplit",
    "LearnSettings",
    "MIN_KEY_CHARS",
    "ENV_PREFIX",
    "Topics",
    "described",
    "BrokerSettings",
    "EnrichSettings",
    "CollectorSettings",
    "KafkaSettings",
    "RaySettings",
    "RegistrySettings",
    "Settings",
    "SimSettings",
    "StreamSettings",
    "TelemetrySettings",
    "DEMO_KEYS",
    "key_exposure",
    "load_settings",
    "local_only",
    "masked",
    "require_safe_keys",
]


class Settings(_Section):
    """All of Onramp's settings."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)  # type: ignore[arg-type]
    broker: BrokerSettings = Field(default_factory=BrokerSettings)  # type: ignore[arg-type]
    collector: CollectorSettings = Field(default_factory=CollectorSettings)  # type: ignore[arg-type]
    ray: RaySettings = Field(default_factory=RaySettings)  # type: ignore[arg-type]
    sim: SimSettings = Field(default_factory=SimSettings)  # type: ignore[arg-type]
    stream: StreamSettings = Field(default_factory=StreamSettings)  # type: ignore[arg-type]
    enrich: EnrichSettings = Field(default_factory=EnrichSettings)  # type: ignore[arg-type]
    decide: DecideSettings = Field(default_factory=DecideSettings)  # type: ignore[arg-type]
    learn: LearnSettings = Field(default_factory=LearnSettings)  # type: ignore[arg-type]
    registry: RegistrySettings = Field(default_factory=RegistrySettings)  # type: ignore[arg-type]
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)  # type: ignore[arg-type]
    state_dir: Path = Field(Path(".onramp"), description="Local directory for logs and state.")

    @property
    def crm_path(self) -> Path:
        return self.enrich.crm_path or Path(self.state_dir) / "crm.csv"

    @property
    def model_path(self) -> Path:
        """The treatment arm's model file: what the learner publishes and replicas watch."""
        return self.decide.model_path or Path(self.state_dir) / "models" / "treatment.onramp"

    @property
    def learner_state_path(self) -> Path:
        return self.learn.state_path or Path(self.state_dir) / "learner.state"

    @property
    def registry_uri(self) -> str:
        """The model registry's URI (``registry.uri``, else ``<state_dir>/registry``)."""
        return self.registry.uri or str(Path(self.state_dir) / "registry")

    @property
    def topics(self) -> Topics:
        return Topics(self.kafka.topic_prefix)


class Topics:
    """Names of Onramp's topics under a prefix."""

    def __init__(self, prefix: str = "onramp") -> None:
        self.events = f"{prefix}.events"
        self.dlq = f"{prefix}.events.dlq"
        self.late = f"{prefix}.events.late"
        self.decisions = f"{prefix}.decisions"
        self.rewards = f"{prefix}.rewards"

    def all(self) -> list[str]:
        return [self.events, self.dlq, self.late, self.decisions, self.rewards]


def _set_path(tree: dict[str, Any], path: list[str], value: str) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(path)}: cannot set below a scalar setting", key=path)
        node = nxt
    node[path[-1]] = value


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        if value.strip().startswith(("[", "{")) and not _takes_text(path):
            # lists and maps come as YAML/JSON text; a text setting (a key, a secret) is taken
            # as written, whatever its first character
            try:
                value = load_yaml(value)
            except yaml.YAMLError as exc:
                raise ConfigError(  # the value is not repeated: it may be a secret
                    f"{name}: not YAML/JSON: {yaml_problem(exc)}", key=path
                ) from None
        _set_path(tree, path, value)
    return tree


def _takes_text(path: list[str]) -> bool:
    """Whether the setting at ``path`` is text (str, a secret, a path), not a list or a map."""
    model: Any = Settings
    for part in path:
        fields = getattr(model, "model_fields", None)
        if fields is not None:
            if part not in fields:
                return False
            model = fields[part].annotation
        elif typing.get_origin(model) is dict:  # one entry of a map (a key by its name)
            model = typing.get_args(model)[1]
        else:
            return False
    union = typing.get_origin(model) in (typing.Union, types.UnionType)  # X | None
    args = [a for a in typing.get_args(model) if a is not type(None)] if union else [model]
    return bool(args) and all(a in (str, SecretStr, Path) for a in args)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _explain(exc: ValidationError, origin: str) -> ConfigError:
    lines = []
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{key}: {msg}")
    return ConfigError(f"invalid settings{origin}: " + "; ".join(lines), errors=lines)


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from an optional YAML file and the environment (``os.environ``)."""
    env = os.environ if env is None else env
    if path is not None and not str(path).strip():  # --config "$UNSET": not "no file"
        raise ConfigError("--config: an empty path (leave it out to use no settings file)")
    path = path or env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    origin = ""
    if path:
        origin = f" in {path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read settings file {path}: {exc.strerror}", path=str(path)
            ) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"settings file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}",
                path=str(path),
            ) from None
        try:
            loaded = load_yaml(text)  # duplicate keys refused: the first would vanish
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"settings file {path} is not YAML: {yaml_problem(exc)}", path=str(path)
            ) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"settings file {path} must hold a mapping at the top", path=str(path)
            )
        data = loaded or {}
    overrides = _env_overrides(env)
    if overrides:
        origin = f"{origin} (with ONRAMP_* environment)" if origin else " (ONRAMP_* environment)"
    try:
        return Settings.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        raise _explain(exc, origin) from None


def masked(settings: BaseModel) -> dict[str, Any]:
    """Settings as plain data with every secret replaced by ``'**********'``."""
    return settings.model_dump(mode="json")


def described(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, description) for every setting, for ``onramp config describe``."""
    out: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += described(ann, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field.description or ""))
    return out
