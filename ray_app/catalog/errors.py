"""The catalog's errors: a bad catalog file, and decision requests the catalog cannot serve.

:class:`CatalogError` is a configuration error (the file at ``source`` is wrong at ``field``);
:class:`DecisionRequestError` and its subclasses are a client's error (an HTTP 422 naming the
request field at fault). All of them survive pickling with their context (Ray moves them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ray_app.errors import ConfigError, OnrampError

__all__ = [
    "CatalogError",
    "DecisionRequestError",
    "IneligibleCandidates",
    "UnknownAction",
    "UnknownSlot",
]


class CatalogError(ConfigError):
    """A catalog file is not a valid catalog: where (``source``, ``field`` path) and why.

    >>> err = CatalogError("c.yaml", "slots.next_step.actions[2].requires[0]", "unknown step 'x'")
    >>> str(err)
    "c.yaml: slots.next_step.actions[2].requires[0]: unknown step 'x'"
    >>> import pickle; pickle.loads(pickle.dumps(err)).field
    'slots.next_step.actions[2].requires[0]'
    """

    def __init__(self, source: str, field: str, message: str) -> None:
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(where + message, source=source, field=field)
        self.source = source
        self.field = field
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.field, self.reason))


class DecisionRequestError(OnrampError):
    """A decision request names a slot or candidates the catalog cannot serve (an HTTP 4xx).

    ``field`` is the request field at fault (``slot``, ``candidates[1]``).
    """

    http_status = 422
    field: str = ""

    _args: tuple[Any, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._args:
            return (type(self), self._args)
        return super().__reduce__()


class UnknownSlot(DecisionRequestError):
    """The catalog has no such slot.

    >>> str(UnknownSlot("nxt", ("next_step", "welcome_content")))
    "unknown slot 'nxt'; known slots: next_step, welcome_content"
    """

    def __init__(self, slot: Any, known: Sequence[str]) -> None:
        super().__init__(
            f"unknown slot {slot!r}; known slots: {', '.join(known)}", slot=slot, known=list(known)
        )
        self._args = (slot, tuple(known))
        self.slot, self.known, self.field = slot, tuple(known), "slot"


class UnknownAction(DecisionRequestError):
    """A candidate is not an action of the slot (``index``: its position in ``candidates``)."""

    def __init__(self, slot: str, action: Any, index: int, known: Sequence[str]) -> None:
        super().__init__(
            f"candidates[{index}]: unknown action {action!r} in slot {slot!r}; "
            f"actions: {', '.join(known)}",
            slot=slot,
            action=action,
            index=index,
        )
        self._args = (slot, action, index, tuple(known))
        self.slot, self.action, self.index, self.known = slot, action, index, tuple(known)
        self.field = f"candidates[{index}]"


class IneligibleCandidates(DecisionRequestError):
    """Some candidates are not eligible for this user: ``reasons`` maps each to why.

    >>> err = IneligibleCandidates("next_step", {"role": "already completed"}, {"role": 0})
    >>> str(err), err.field
    ("ineligible candidates for slot 'next_step': role: already completed", 'candidates[0]')
    """

    def __init__(self, slot: str, reasons: Mapping[str, str], indices: Mapping[str, int]) -> None:
        text = "; ".join(f"{a}: {r}" for a, r in reasons.items())
        super().__init__(
            f"ineligible candidates for slot {slot!r}: {text}", slot=slot, reasons=dict(reasons)
        )
        self._args = (slot, dict(reasons), dict(indices))
        self.slot, self.reasons, self.indices = slot, dict(reasons), dict(indices)
        first = next(iter(reasons), "")
        self.field = f"candidates[{indices[first]}]" if first in indices else "candidates"
