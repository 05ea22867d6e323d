"""What every settings section shares, and the constants the sections and checks use."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

__all__ = [
    "CONFIG_ENV",
    "DEMO_KEYS",
    "ENV_PREFIX",
    "MIN_KEY_CHARS",
    "Section",
    "check_ray_resources",
]

ENV_PREFIX = "ONRAMP_"

#: Shortest key a reachable Onramp accepts.
MIN_KEY_CHARS = 16

#: The keys Onramp ships with, by scope. Accepted only when Onramp is reachable from this machine
#: alone (see :func:`key_exposure`).
DEMO_KEYS: dict[str, str] = {
    "write": "onramp-demo-write-key",
    "decide": "onramp-demo-decide-key",
    "read": "onramp-demo-read-key",
}
CONFIG_ENV = "ONRAMP_CONFIG"


class Section(BaseModel):
    """A settings section: frozen, unknown keys refused, defaults validated, numbers finite
    (``.inf`` passed every bound and failed later, in every worker: "cannot convert float
    infinity to integer")."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _empty_path(cls, value: Any, info: ValidationInfo) -> Any:
        """An empty path (``ONRAMP_DECIDE__MODEL_PATH=``, ``state_dir: ""``) is not the current
        directory, which is what ``Path("")`` is: a path that may be left out reads as left
        out (its documented default), one that may not is refused."""
        if not isinstance(value, str) or value.strip() or info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if annotation is Path:
            raise ValueError("an empty path: name a directory, or leave the setting out")
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        if union and set(typing.get_args(annotation)) == {Path, type(None)}:
            return None
        return value


#: Resources Ray names itself: a custom resource map may not ask for them (Ray refuses them when
#: the actor is created, long after the settings were read).
_RAY_OWN = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


def check_ray_resources(resources: dict[str, float], where: str) -> dict[str, float]:
    """A custom Ray resource map (``{stream: 1}``): names Ray does not reserve for itself,
    amounts >= 0 (finiteness is the section's)."""
    for name, amount in resources.items():
        if not name.strip():
            raise ValueError(f"{where}: an empty resource name")
        if name in _RAY_OWN:
            raise ValueError(
                f"{where}.{name}: a resource Ray names itself; set the CPUs with "
                "stream.worker_num_cpus or decide.replica_cpus"
            )
        if amount < 0:
            raise ValueError(f"{where}.{name}: must be >= 0, got {amount}")
    return resources
