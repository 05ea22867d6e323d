"""What the collector refuses: one event, or a whole request, with its reason code.

A rejection's field and message may quote a client's text, so both are bounded and encodable
whatever was sent: messages are cut to 512 characters and fields to 256.

>>> from validation.reasons import ReasonCode
>>> rejection(ReasonCode.MISSING_FIELD, "batch[2].event", "event is required", 2).public()
{'reason': 'missing_field', 'field': 'batch[2].event', 'message': 'event is required', 'index': 2}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray_app.errors import OnrampError
from validation.reasons import ReasonCode
from validation.wire import INT_MAX, INT_MIN, WireError, safe_text

__all__ = [
    "Rejection",
    "RequestRejected",
    "client_id",
    "error_text",
    "event_rejection",
    "rejection",
]

_MESSAGE_CHARS = 512  # longest message a rejection carries
_ID_CHARS = 256  # longest id used as a DLQ key or reported messageId (the wire's IdString)


@dataclass(frozen=True)
class Rejection:
    """One refused event (``index`` >= 0) or a refused request (``index`` is None)."""

    reason: ReasonCode
    field: str | None
    message: str
    index: int | None = None
    message_id: str | None = None

    def public(self) -> dict[str, Any]:
        """The rejection as the HTTP answer reports it."""
        out: dict[str, Any] = {
            "reason": self.reason.value,
            "field": self.field,
            "message": self.message,
        }
        if self.index is not None:
            out["index"] = self.index
        if self.message_id is not None:
            out["messageId"] = self.message_id
        return out


def rejection(
    reason: ReasonCode,
    where: str | None,
    message: str,
    index: int | None = None,
    message_id: str | None = None,
) -> Rejection:
    """A :class:`Rejection` whose field and message are bounded and encodable."""
    return Rejection(
        reason,
        safe_text(where) if where else None,
        safe_text(message, _MESSAGE_CHARS),
        index,
        message_id,
    )


class RequestRejected(OnrampError):
    """The request as a whole cannot be read; carries the rejection."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.message)
        self.rejection = rejection

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.rejection,))


def event_rejection(exc: Exception, raw: Any, field_prefix: str, index: int | None) -> Rejection:
    """The rejection of one event: the contract's reason when it names one, else the generic
    last-resort code with the error's text (so that one event never fails its batch)."""
    raw_id = raw.get("messageId") if isinstance(raw, dict) else None
    message_id = raw_id if isinstance(raw_id, str) else None
    if isinstance(exc, WireError):
        reason, where, message = exc.reason, _join(field_prefix, exc.field), exc.message
    else:
        reason, where = ReasonCode.UNPROCESSABLE, field_prefix or None
        message = f"{type(exc).__name__}: {error_text(exc)}"
    return rejection(reason, where, message, index, client_id(message_id))


def client_id(value: Any) -> str | None:
    """``value`` when it can serve as an id (a message id to report, a DLQ key), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if INT_MIN <= value <= INT_MAX else None
    if not isinstance(value, str) or not value or len(value) > _ID_CHARS:
        return None
    return value if safe_text(value, _ID_CHARS) == value else None


def error_text(exc: BaseException) -> str:
    """``str(exc)``, or nothing when even that fails."""
    try:
        return str(exc)
    except Exception:
        return ""


def _join(prefix: str, field: str | None) -> str | None:
    if not prefix:
        return field
    if not field:
        return prefix
    return f"{prefix}{field}" if field.startswith("[") else f"{prefix}.{field}"
