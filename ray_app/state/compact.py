"""Compact pickled forms of the state's objects: what a snapshot holds per user, kept small.

A snapshot (:mod:`ray_app.state.snapshot`) pickles millions of small objects. Pickled the default
way, each dataclass instance carries a dict of its field *names* (in a large pickle each name
after the 256th memoized object costs a 5-byte memo reference: 50 bytes for a ten-field
:class:`~ray_app.state.profile.StepStats`). :class:`Compact` pickles the field *values* as one
tuple, in the order of the dataclass's fields, and restores either form: the tuple of this
version, or the dict of a snapshot written before it (version 6; fields added since keep their
class defaults). Fields are only ever appended, so a shorter tuple of an older version restores
the same way; a field an older version had and this one dropped is dropped.

Strings that many objects share (user ids, step ids, session ids, event names) are interned where
events are decoded (:func:`shared`), so that every structure naming the same id holds the same
``str`` object and a snapshot writes it once (pickle memoizes objects, not values).

>>> from dataclasses import dataclass
>>> @dataclass
... class Point(Compact):
...     x: int = 0
...     y: int = 0
>>> p = Point(1, 2)
>>> p.__getstate__()
(1, 2)
>>> q = Point.__new__(Point); q.__setstate__({"x": 3})   # an older snapshot's dict
>>> q
Point(x=3, y=0)
"""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import Any, ClassVar

__all__ = ["Compact", "shared"]


def shared(value: str | None) -> str | None:
    """The one interned copy of ``value`` (None stays None): ids and names that many parts of
    the state hold are then one object, stored once per snapshot."""
    return None if value is None else sys.intern(value)


class Compact:
    """Mixin for a (non-slots) dataclass of the state: pickles as a tuple of field values."""

    _compact_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_compact_fields")
        if not names:
            names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
            cls._compact_fields = names
        return names

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self._names())  # class defaults of old objects

    def __setstate__(self, state: tuple[Any, ...] | dict[str, Any]) -> None:
        if isinstance(state, dict):  # pickled field by field (snapshot version 6)
            names = self._names()
            self.__dict__.update((k, v) for k, v in state.items() if k in names)
        else:
            self.__dict__.update(zip(self._names(), state, strict=False))
