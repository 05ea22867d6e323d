"""What every settings section shares, and the constants the sections and checks use."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

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
