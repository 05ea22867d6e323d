"""Onramp's errors: each carries its context and survives pickling across Ray.

The root, :class:`OnrampError`, and the public :class:`ErrorCode` are defined in
:mod:`validation.errors` (the lowest layer, so that the wire contract's errors share the root)
and re-exported here.
"""

from __future__ import annotations

from typing import Any

from validation.errors import ErrorCode, OnrampError

__all__ = [
    "BrokerError",
    "ConfigError",
    "DecisionLogBacklog",
    "ErrorCode",
    "FieldError",
    "KafkaUnavailable",
    "NotFound",
    "OnrampError",
    "ProfilesUnavailable",
    "Unauthorized",
    "error_body",
]


class FieldError(OnrampError):
    """An error about one ``field`` of an input, and why (``reason``). Picklable.

    >>> import pickle
    >>> err = pickle.loads(pickle.dumps(FieldError("reward", "must be 0 or 1")))
    >>> err.field, err.reason, str(err)
    ('reward', 'must be 0 or 1', 'reward: must be 0 or 1')
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.field = field
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.reason))


class ConfigError(OnrampError):
    """A settings file, environment variable or CLI argument is invalid."""

    http_status = 400
    error_code = ErrorCode.INVALID_CONFIG


class BrokerError(OnrampError):
    """The embedded broker could not be found, started or stopped."""

    error_code = ErrorCode.BROKER


class KafkaUnavailable(OnrampError):
    """Kafka did not acknowledge in time; the caller may retry later."""

    http_status = 503
    error_code = ErrorCode.KAFKA_UNAVAILABLE


class Unauthorized(OnrampError):
    """A request without a key, or with a key of the wrong kind."""

    http_status = 401
    error_code = ErrorCode.UNAUTHORIZED


class NotFound(OnrampError):
    """Nothing at this address (a user with no events applied yet, a demo file)."""

    http_status = 404
    error_code = ErrorCode.NOT_FOUND


class ProfilesUnavailable(OnrampError):
    """The stream workers that hold the profiles are not running or are restarting; retry."""

    http_status = 503
    error_code = ErrorCode.STREAM_UNAVAILABLE


class DecisionLogBacklog(OnrampError):
    """The decision log is not keeping up, so a decision cannot be logged; retry.

    Its HTTP body has a ``field`` (null), like every ``/v1/decide`` error.
    """

    http_status = 503
    error_code = ErrorCode.DECISION_LOG_BACKLOG
    field: str | None = None


def error_body(exc: OnrampError, code: ErrorCode | None = None) -> dict[str, Any]:
    """The JSON body of the HTTP answer to ``exc`` (sent with ``exc.http_status``):
    ``{"error": code, "message": ...}``, and ``field`` when the error names one (``None``
    included: the ``/v1/decide`` errors always carry it). ``code`` overrides
    ``exc.error_code``.

    >>> error_body(Unauthorized("send a read key"))
    {'error': 'unauthorized', 'message': 'send a read key'}
    >>> error_body(DecisionLogBacklog("not keeping up"))
    {'error': 'decision_log_backlog', 'field': None, 'message': 'not keeping up'}
    """
    body: dict[str, Any] = {"error": str(code or exc.error_code)}
    if hasattr(exc, "field"):
        body["field"] = exc.field
    body["message"] = str(exc)
    return body
