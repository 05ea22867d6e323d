"""What a decision replica's Serve ``user_config`` may change, checked whole before it applies.

``user_config`` (``deployments/serve_config.yaml``, changed with ``serve deploy`` and no restart)
sets the exploration policy and the arms' model files. Each key is the ``decide`` setting of
the same name, validated as that setting, and the state a replica takes is the settings with the
``user_config`` over them: a key left out is its setting again (the value a replica started
later has too), and a bad value is refused before anything changes (Serve stops a replica whose
``reconfigure`` raises; one half-updated before it did would have served the new model file with
the old policy until then).

>>> from ray_app.config import load_settings
>>> wanted = decide_user_config(load_settings(env={}), {"policy": "softmax", "temperature": "0.2"})
>>> wanted.policy.kind, wanted.policy.temperature, wanted.paths["treatment_b"]
('softmax', 0.2, None)
>>> decide_user_config(load_settings(env={}), {"epsilon": 2})
Traceback (most recent call last):
...
ValueError: user_config.epsilon: Input should be less than or equal to 1
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ray_app.config import Settings
from ray_app.config.decide import DecideSettings
from ray_app.model import Policy

__all__ = ["USER_CONFIG_KEYS", "UserConfig", "decide_user_config", "policy_of"]

#: The keys a decision replica's ``user_config`` may hold: each the ``decide`` setting of its name.
USER_CONFIG_KEYS = ("model_path", "model_b_path", "policy", "epsilon", "gamma", "temperature")


def policy_of(d: DecideSettings) -> Policy:
    """The exploring policy the ``decide`` settings describe."""
    return Policy(
        kind=d.policy, epsilon=d.epsilon, gamma=d.gamma, temperature=d.temperature, seed=d.seed
    )


@dataclass(frozen=True)
class UserConfig:
    """What a replica serves under a ``user_config``: the policy and each arm's model file."""

    policy: Policy
    paths: dict[str, Path | None]


def decide_user_config(settings: Settings, config: Mapping[str, Any]) -> UserConfig:
    """The settings with ``config`` over them; ``ValueError`` names the first key at fault."""
    if not isinstance(config, Mapping):
        raise ValueError(f"user_config: expected a mapping, got {type(config).__name__}")
    unknown = sorted(str(k) for k in config if k not in USER_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"user_config: unknown keys {unknown} (known: {list(USER_CONFIG_KEYS)})")
    try:
        decide = DecideSettings.model_validate({**settings.decide.model_dump(), **config})
        policy = policy_of(decide)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"user_config.{where}: {err['msg']}") from None
    except ValueError as exc:  # the policy's own checks (a finite temperature)
        raise ValueError(f"user_config: {exc}") from None
    treatment = settings.model_copy(update={"decide": decide}).model_path
    return UserConfig(policy, {"treatment": treatment, "treatment_b": decide.model_b_path})
