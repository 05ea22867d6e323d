"""The OpenTelemetry resource every Onramp process reports: ``service.name`` and a
``service.instance.id`` of its own, so that a backend receiving OTLP from several replicas and
workers tells their series apart (without it, the sums of two replicas' counters interleave as
one series that seems to reset).

>>> attrs = resource_attributes("onramp", "stream")
>>> attrs["service.name"], attrs["onramp.component"], attrs["service.instance.id"] == instance_id()
('onramp', 'stream', True)
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from typing import Any

__all__ = ["instance_id", "resource_attributes"]


@functools.cache
def instance_id() -> str:
    """This process's id for telemetry: ``<host>-<pid>-<random>`` (unique across restarts)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def resource_attributes(service: str, component: str | None = None) -> dict[str, Any]:
    """``service.name``, ``service.instance.id``, ``host.name`` and the Onramp component."""
    attrs: dict[str, Any] = {
        "service.name": service,
        "service.instance.id": instance_id(),
        "host.name": socket.gethostname(),
    }
    if component is not None:
        attrs["onramp.component"] = component
    return attrs
