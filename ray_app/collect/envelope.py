"""The batch envelope: the ``sentAt`` and ``context`` a batch gives to each of its events.

An event without its own ``sentAt`` takes the batch's; an event whose ``context`` is an object
(or absent) takes the batch's ``context`` under its own keys. Each part is checked and encoded
once per request, so that an event's size after the merge is known before the merged event is
built: its own compact size plus the compact sizes of the parts it takes, an upper bound.

>>> envelope = Envelope.of({"sentAt": "2026-01-01T10:00:05Z", "context": {"ip": "10.0.0.1"}})
>>> event = {"type": "page", "userId": "u", "context": {"locale": "fr"}}
>>> envelope.take(event, checked_json(event), max_event_bytes=32 * 1024)
{'type': 'page', 'userId': 'u', 'context': {'ip': '10.0.0.1', 'locale': 'fr'}, \
'sentAt': '2026-01-01T10:00:05Z'}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray_app.collect.body import checked_json
from validation.reasons import ReasonCode
from validation.wire import MAX_NESTING_DEPTH, WireError

__all__ = ["Envelope"]

_CONTEXT_KEY_BYTES = len(b',"context":')
_SENT_AT_KEY_BYTES = len(b',"sentAt":')


@dataclass(frozen=True)
class _EnvelopePart:
    """A batch-level ``sentAt`` or ``context`` an event without its own takes.

    Checked and encoded once per request: ``extra`` is the bytes it adds to an event that
    takes it, ``problem`` the rejection of every event that would.
    """

    value: Any
    extra: int
    problem: WireError | None = None

    @classmethod
    def of(
        cls,
        value: Any,
        name: str,
        key_bytes: int,
        max_depth: int,
        max_bytes: int | None = None,
    ) -> _EnvelopePart:
        try:
            blob = checked_json(value, name, max_depth, max_bytes)
            return cls(value, key_bytes + len(blob))
        except WireError as exc:
            return cls(value, 0, exc)

    def raise_problem(self) -> None:
        """Refuse the event that takes this part, if the part is outside the bounds."""
        if self.problem is not None:  # a fresh error each time: no traceback grows per event
            raise WireError(self.problem.reason, self.problem.field, self.problem.message)


@dataclass(frozen=True)
class Envelope:
    """The parts of a batch its events take; none for a single call (``Envelope()``)."""

    sent_at: _EnvelopePart | None = None
    context: _EnvelopePart | None = None

    @classmethod
    def of(cls, payload: Mapping[str, Any], max_event_bytes: int | None = None) -> Envelope:
        """The envelope of a batch request's body: ``sentAt`` when set, ``context`` when it is
        a non-empty object, each checked as deep as the event's own fields may go (and, with
        ``max_event_bytes``, walked no further than an event may be large: a part that must be
        larger is every taker's ``event_too_large``)."""
        sent_at = context = None
        if payload.get("sentAt") is not None:
            # sentAt sits in the event object: as deep as the event's own fields.
            sent_at = _EnvelopePart.of(
                payload["sentAt"],
                "sentAt",
                _SENT_AT_KEY_BYTES,
                MAX_NESTING_DEPTH - 1,
                max_event_bytes,
            )
        env_context = payload.get("context")
        if isinstance(env_context, dict) and env_context:
            context = _EnvelopePart.of(
                env_context, "context", _CONTEXT_KEY_BYTES, MAX_NESTING_DEPTH - 1, max_event_bytes
            )
        return cls(sent_at, context)

    def take(self, raw: dict[str, Any], blob: bytes, max_event_bytes: int) -> dict[str, Any]:
        """``raw`` (encoded as ``blob``) with the parts it takes merged in.

        Raises :class:`WireError` when the merged event would be over ``max_event_bytes``, or
        when it takes a part outside the contract's bounds.
        """
        sent_at, context = self.sent_at, self.context
        takes_sent_at = sent_at is not None and raw.get("sentAt") is None  # null: not sent
        takes_context = context is not None and isinstance(raw.get("context", {}), dict)
        size = len(blob)
        if takes_sent_at and sent_at is not None:
            size += sent_at.extra
        if takes_context and context is not None:
            size += context.extra
        if size > max_event_bytes:
            merged = " with the batch's sentAt and context" if size > len(blob) else ""
            raise WireError(
                ReasonCode.EVENT_TOO_LARGE,
                None,
                f"event is {size} bytes{merged}; the limit is {max_event_bytes}",
            )
        if takes_sent_at and sent_at is not None:
            sent_at.raise_problem()
            raw = {**raw, "sentAt": sent_at.value}
        if takes_context and context is not None:
            context.raise_problem()
            raw = {**raw, "context": {**context.value, **raw.get("context", {})}}
        return raw
