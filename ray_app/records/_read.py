"""Field readers shared by the record decoders: each raises the record's own error class."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray_app.records.errors import RecordError, RewardRecordError
from validation.wire import INT_MAX, INT_MIN


def _shown(v: Any) -> str:
    """``repr(v)``, cut to 80 characters for an error message."""
    shown = repr(v)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _schema(data: Mapping[str, Any], expected: str, err: type[RecordError]) -> None:
    schema = data.get("schema")
    if schema != expected:
        raise err("schema", f"expected {expected!r}, got {schema!r}")


def _maybe_text(data: Mapping[str, Any], key: str, err: type[RecordError]) -> str | None:
    v = data.get(key)
    if v is not None and not isinstance(v, str):
        raise err(key, f"expected a string, got {v!r}")
    return v


def _flag(data: Mapping[str, Any], key: str, err: type[RecordError]) -> bool:
    v = data.get(key, False)
    if not isinstance(v, bool):
        raise err(key, f"expected true or false, got {v!r}")
    return v


def _text(data: Mapping[str, Any], key: str, err: type[RecordError] = RewardRecordError) -> str:
    v = data.get(key)
    if not isinstance(v, str) or not v:
        raise err(key, f"expected a non-empty string, got {v!r}")
    return v


def _number(data: Mapping[str, Any], key: str) -> float:
    v = data.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise RewardRecordError(key, f"expected a finite number, got {v!r}")
    return float(v)


def _integer(data: Mapping[str, Any], key: str, err: type[RecordError] = RewardRecordError) -> int:
    v = data.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise err(key, f"expected an integer, got {v!r}")
    if not INT_MIN <= v <= INT_MAX:  # what the records' JSON encoder can write back
        raise err(key, f"expected a 64-bit integer, got {v}")
    return v
