"""The errors of the record decoders: the field at fault and why, picklable across Ray."""

from __future__ import annotations

from typing import Any

from ray_app.errors import FieldError
from validation.reasons import ReasonCode

__all__ = [
    "DecisionRecordError",
    "DlqRecordError",
    "LateRecordError",
    "RecordError",
    "RewardRecordError",
]


class RecordError(FieldError):
    """A wire record that cannot be read: the ``field`` at fault (``""``: the record as a
    whole) and why (``reason``, a sentence). Picklable."""

    http_status = 422


class RewardRecordError(RecordError):
    """A reward record that cannot be read: the ``field`` at fault and why. Picklable.

    >>> import pickle
    >>> pickle.loads(pickle.dumps(RewardRecordError("reward", "must be 0 or 1"))).field
    'reward'
    """


class DlqRecordError(RecordError):
    """A DLQ record (``onramp.dlq/1``) that cannot be read."""


class LateRecordError(RecordError):
    """A late record (``onramp.late/1``) that cannot be read."""


class DecisionRecordError(RecordError):
    """A decision record that cannot be read: besides ``field`` and ``reason`` (the sentence),
    ``code`` is the DLQ reason code the stream rejects the record with. Picklable.

    >>> import pickle
    >>> e = pickle.loads(pickle.dumps(DecisionRecordError(
    ...     ReasonCode.MISSING_FIELD, "slot", "required in a decision record")))
    >>> e.code.value, e.field, e.reason
    ('missing_field', 'slot', 'required in a decision record')
    """

    def __init__(self, code: ReasonCode, field: str, message: str) -> None:
        super().__init__(field, message)
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.field, self.reason))
