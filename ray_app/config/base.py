"""What every settings section shares, and the constants the sections and checks use."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

__all__ = ["CONFIG_ENV", "DEMO_KEYS", "ENV_PREFIX", "MIN_KEY_CHARS", "Section"]

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
    """A settings section: frozen, unknown keys refused, defaults validated."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

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
