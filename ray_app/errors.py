"""One root exception for Onramp; every error carries its context and survives pickling across Ray."""

from __future__ import annotations

from typing import Any

__all__ = ["BrokerError", "ConfigError", "FieldError", "KafkaUnavailable", "OnrampError"]


class OnrampError(Exception):
    """Root of every error Onramp raises on purpose.

    ``http_status`` is what the HTTP layer answers when the error reaches it; ``context`` holds
    whatever locates the problem (setting name, topic, partition, offset, port, path).
    """

    http_status: int = 500

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


class BrokerError(OnrampError):
    """The embedded broker could not be found, started or stopped."""


class KafkaUnavailable(OnrampError):
    """Kafka did not acknowledge in time; the caller may retry later."""

    http_status = 503
