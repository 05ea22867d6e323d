"""Feature vectors on the wire: sparse, since a decision's vector is mostly zeros.

A decision logs the feature vector it was decided from, and its reward record carries it on to
the learner. The vector is as long as the feature schema (hundreds of hashed buckets) and a user
sets a few dozen of them, so records carry it as ``{"size": n, "indices": [...], "values": [...]}``
(the non-zero positions in increasing order and their values): a fifth of the bytes of the dense
list, and a stream worker keeps a pending decision's vector in a few hundred bytes instead of
nineteen thousand. Records written before (schema ``/1``) carry the dense list; both read back.

>>> v = SparseFeatures.from_dense([0.0, 1.0, 0.0, 0.25])
>>> v
SparseFeatures(size=4, indices=(1, 3), values=(1.0, 0.25))
>>> v.to_json()
{'size': 4, 'indices': [1, 3], 'values': [1.0, 0.25]}
>>> parse_features(v.to_json()) == v, v.dense()
(True, [0.0, 1.0, 0.0, 0.25])
>>> parse_features([0, 2.5]).values
(2.5,)
>>> parse_features({"size": 2, "indices": [1, 0], "values": [1, 1]})
Traceback (most recent call last):
...
ValueError: indices: expected increasing positions in [0, 2), got [1, 0]
"""

from __future__ import annotations

import math
import operator
import sys
from array import array
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ray_app.records._read import _shown

__all__ = ["MAX_SIZE", "PackedFeatures", "SparseFeatures", "parse_features"]


#: The longest vector a record may carry: past any feature schema (``features.buckets`` is at most
#: 2**20, plus the catalog's named features). A record that claims more is refused: its reward's
#: dense list would not fit in memory (the outcome that matched such a decision was refused as
#: unprocessable, and the decision left the join without a reward).
MAX_SIZE = 1 << 21

#: Packed vectors are little-endian whatever the machine, so a checkpoint restores on any.
_SWAP = sys.byteorder == "big"


class SparseFeatures(NamedTuple):
    """A feature vector of ``size`` positions: ``values[k]`` at ``indices[k]``, zero elsewhere."""

    size: int
    indices: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def from_dense(cls, features: Sequence[float] | np.ndarray) -> SparseFeatures:
        """The sparse form of a dense vector (a list, a tuple or a 1-d numpy array)."""
        if isinstance(features, np.ndarray):
            nz = np.flatnonzero(features)
            return cls(len(features), tuple(nz.tolist()), tuple(features[nz].tolist()))
        index = tuple(i for i, v in enumerate(features) if v)
        return cls(len(features), index, tuple(float(features[i]) for i in index))

    @classmethod
    def from_rows(cls, matrix: np.ndarray, decimals: int | None = None) -> list[SparseFeatures]:
        """:meth:`from_dense` of each row of a 2-d array, with one ``nonzero`` and one
        ``tolist`` for the whole matrix rather than a few numpy calls per row (a decision batch).
        With ``decimals``, of the matrix rounded to that many decimals in float64 (what a
        decision logs), rounding only the non-zero entries: a row of 2,112 features sets a few
        dozen.

        >>> SparseFeatures.from_rows(np.array([[0.0, 2.0], [0.0, 0.0]]))[0].indices
        (1,)
        >>> SparseFeatures.from_rows(np.array([[0.1234567, 4e-7]], dtype=np.float32), 6)[0]
        SparseFeatures(size=2, indices=(0,), values=(0.123457,))
        """
        # one flat boolean scan: ``np.nonzero`` of a [8, 2112] float32 matrix took 86 us, this 12
        flat = np.flatnonzero(matrix.ravel() != 0)
        width = matrix.shape[1]
        rows, cols = (flat // width, flat % width) if width else (flat, flat)
        if decimals is None:
            values = matrix[rows, cols].tolist()
        else:  # as np.round(matrix.astype(np.float64), decimals), then its non-zero entries
            rounded = np.round(matrix[rows, cols].astype(np.float64), decimals)
            kept = rounded != 0
            rows, cols, values = rows[kept], cols[kept], rounded[kept].tolist()
        cols_l = cols.tolist()
        ends = np.cumsum(np.bincount(rows, minlength=len(matrix))).tolist()
        out, start = [], 0
        for end in ends:
            out.append(cls(width, tuple(cols_l[start:end]), tuple(values[start:end])))
            start = end
        return out

    @classmethod
    def of(cls, features: SparseFeatures | PackedFeatures | Sequence[float]) -> SparseFeatures:
        """``features`` in the sparse form (as it is if it already is)."""
        if isinstance(features, SparseFeatures):
            return features
        if isinstance(features, PackedFeatures):
            return features.sparse()
        return cls.from_dense(features)

    def packed(self) -> PackedFeatures:
        """The same vector with its positions and values as two little-endian arrays."""
        index, value = array("i", self.indices), array("d", self.values)
        if _SWAP:
            index.byteswap()
            value.byteswap()
        return PackedFeatures(self.size, index.tobytes(), value.tobytes())

    def dense(self) -> list[float]:
        """The dense vector."""
        out = [0.0] * self.size
        for i, v in zip(self.indices, self.values, strict=True):
            out[i] = v
        return out

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {"size": self.size, "indices": list(self.indices), "values": list(self.values)}


class PackedFeatures(NamedTuple):
    """A :class:`SparseFeatures` held as two byte strings: the positions as 32-bit ints and the
    values as 64-bit floats (the same values, bit for bit), little-endian.

    What a stream worker keeps of each pending decision's vector until its outcome: tens of
    thousands of them a partition at a thousand decisions a second, and every base checkpoint
    pickles them all. Two byte strings pickle as two copies; the tuples of a sparse vector
    pickle one boxed number at a time, and load one at a time too (and take 3.4 times the
    memory).

    >>> v = SparseFeatures(4, (1, 3), (1.0, 0.25))
    >>> p = v.packed()
    >>> len(p.indices), len(p.values), p.sparse() == v
    (8, 16, True)
    """

    size: int
    indices: bytes
    values: bytes

    def sparse(self) -> SparseFeatures:
        index, value = array("i"), array("d")
        index.frombytes(self.indices)
        value.frombytes(self.values)
        if _SWAP:
            index.byteswap()
            value.byteswap()
        return SparseFeatures(self.size, tuple(index), tuple(value))


def parse_features(raw: Any) -> SparseFeatures:
    """A record's ``features``: the sparse object, or the dense list of schema ``/1`` records.
    ``ValueError`` names the part at fault (``size``, ``indices``, ``values``; the list itself
    for a dense one) and why."""
    if isinstance(raw, list):
        if len(raw) > MAX_SIZE:
            raise ValueError(f"expected at most {MAX_SIZE} numbers, got {len(raw)}")
        dense = _finite_floats(raw)
        if dense is None:
            raise ValueError(f"expected a list of finite numbers, got {_shown(raw)}")
        return SparseFeatures.from_dense(dense)
    if not isinstance(raw, dict):
        raise ValueError(
            'expected {"size": n, "indices": [...], "values": [...]} or a list of numbers, '
            f"got {_shown(raw)}"
        )
    size, index, value = raw.get("size"), raw.get("indices"), raw.get("values")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        raise ValueError(f"size: expected an integer in [0, {MAX_SIZE}], got {size!r}")
    if not isinstance(index, list) or not _increasing(index, size):
        raise ValueError(
            f"indices: expected increasing positions in [0, {size}), got {_shown(index)}"
        )
    floats = _finite_floats(value) if isinstance(value, list) else None
    if floats is None or len(floats) != len(index):
        raise ValueError(
            f"values: expected {len(index)} finite numbers (one per index), got {_shown(value)}"
        )
    return SparseFeatures(size, tuple(index), tuple(floats))


def _finite(v: Any) -> bool:
    """A finite int or float, not a bool (an int past a float's range is not finite)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


# Every record a stream worker joins and every reward the learner takes is read here, a few
# dozen positions and values each: the checks run per list in C (the items' types as one set,
# the order with ``map(operator.lt)``, the finiteness of a sum), not per item in Python: 14.5 ->
# 6.0 us a record of 52 positions.


def _increasing(index: list[Any], size: int) -> bool:
    """``index`` holds ints (not bools) that increase strictly, within [0, ``size``)."""
    if not index:
        return True
    if set(map(type, index)) != {int}:
        return False
    return 0 <= index[0] and index[-1] < size and all(map(operator.lt, index, index[1:]))


def _finite_floats(value: list[Any]) -> list[float] | None:
    """``value``'s items as floats if every one is a finite int or float (not a bool), else
    None."""
    if not set(map(type, value)) <= {int, float}:
        return None
    try:
        # a finite sum has no inf or nan in it; one that is not (or an int past a float's range)
        # is looked at item by item, since finite values may add up past the largest float
        if math.isfinite(sum(value)):
            return list(map(float, value))
    except OverflowError:
        pass
    return list(map(float, value)) if all(map(_finite, value)) else None
