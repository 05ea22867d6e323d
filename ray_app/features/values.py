"""Any input value -> a finite float: the coercions every numeric feature goes through.

Missing fields, ``None``, text that is not a number, infinities and NaN all become 0, so that a
feature vector is finite whatever arrives.

>>> as_number("12.5"), as_number(float("nan")), as_number({"a": 1})
(12.5, 0.0, 0.0)
>>> scaled(0, 100.0), scaled(100, 100.0), scaled(9, 99.0)
(0.0, 1.0, 0.5)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["as_number", "scaled"]


def as_number(value: Any) -> float:
    """Any value -> a finite float (0.0 for what is not a finite number or numeric text)."""
    t = type(value)
    if t is float:
        return value if value - value == 0.0 else 0.0  # inf - inf and nan - nan are nan
    if t is int:
        return float(value) if -1e300 < value < 1e300 else 0.0
    if value is None:
        return 0.0
    if isinstance(value, bool | int | float | str | np.number):
        try:
            f = float(value)
        except (ValueError, OverflowError, TypeError):
            return 0.0
        return f if math.isfinite(f) else 0.0
    return 0.0


def scaled(value: Any, cap: float) -> float:
    """log1p of a non-negative number, as a share of log1p(cap), clipped to [0, 1]."""
    v = value if type(value) is float and value - value == 0.0 else as_number(value)
    if v <= 0.0:
        return 0.0
    if v >= cap:
        return 1.0
    return math.log1p(v) / math.log1p(cap)
