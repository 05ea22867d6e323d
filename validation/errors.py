"""The root of Onramp's exceptions and the public error codes of its HTTP answers.

They live in the lowest layer (``validation`` <- ``ray_app`` <- ``deployments``) so that every
error, the wire contract's own included, derives from one class; :mod:`ray_app.errors` re-exports
them beside the errors of the engine.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

__all__ = ["ErrorCode", "OnrampError"]


class ErrorCode(StrEnum):
    """The public ``error`` of an HTTP error body: part of the API, so named here, once, rather
    than derived from class names (a rename must not change what clients see)."""

    INTERNAL = "internal"
    INVALID_CONFIG = "invalid_config"
    BROKER = "broker"
    KAFKA_UNAVAILABLE = "kafka_unavailable"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    DEMO_DISABLED = "demo_disabled"
    INVALID_EVENT = "invalid_event"
    STREAM_UNAVAILABLE = "stream_unavailable"
    DECISION_LOG_BACKLOG = "decision_log_backlog"
    INVALID_DECISION_REQUEST = "invalid_decision_request"
    UNKNOWN_SLOT = "unknown_slot"
    UNKNOWN_ACTION = "unknown_action"
    INELIGIBLE_CANDIDATES = "ineligible_candidates"


class OnrampError(Exception):
    """Root of every error Onramp raises on purpose.

    ``http_status`` is what the HTTP layer answers when the error reaches it and ``error_code``
    the public ``error`` of its body (:func:`error_body`); ``context`` holds whatever locates the
    problem (setting name, topic, partition, offset, port, path).
    """

    http_status: ClassVar[int] = 500
    error_code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __reduce__(self) -> tuple[Any, ...]:  # keep context across Ray's pickling
        return (_rebuild, (type(self), self.message, self.context))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[OnrampError], message: str, context: dict[str, Any]) -> OnrampError:
    return cls(message, **context)
