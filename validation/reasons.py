"""Reason codes: every way Onramp can refuse an event or a request.

Each code carries the HTTP status the collector answers with when the code decides the response.
The same codes label DLQ records (``onramp.events.dlq``) and the ``onramp_events_rejected_total``
metric, so an operator can go from a dashboard spike to the records behind it.

>>> ReasonCode.INVALID_JSON.http_status
400
>>> ReasonCode("body_too_large").http_status
413
"""

from __future__ import annotations

import enum

__all__ = ["ReasonCode"]


class ReasonCode(enum.StrEnum):
    """Why an event (or a whole request) was rejected."""

    # -- request level: the body could not be read as events ---------------------------------
    BODY_TOO_LARGE = "body_too_large"
    """The request body (compressed or not) is over the per-request limit (500 KB by default)."""
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    """``Content-Encoding`` other than ``gzip`` or ``identity``."""
    INVALID_GZIP = "invalid_gzip"
    """``Content-Encoding: gzip`` but the body is not a valid gzip stream."""
    INVALID_UTF8 = "invalid_utf8"
    """The body is not UTF-8 text."""
    INVALID_JSON = "invalid_json"
    """The body is not a JSON document (or nests deeper than the JSON decoder can follow)."""
    NOT_AN_OBJECT = "not_an_object"
    """The body (or one element of ``batch``) is JSON but not an object."""
    INVALID_BATCH = "invalid_batch"
    """``/v1/batch``: ``batch`` is missing, not a list, or empty."""
    TOO_MANY_EVENTS = "too_many_events"
    """``/v1/batch``: more events than the per-request cap."""

    # -- auth ---------------------------------------------------------------------------------
    AUTH_MISSING = "auth_missing"
    """No write key: neither HTTP Basic auth nor ``writeKey`` in the body."""
    AUTH_INVALID = "auth_invalid"
    """A write key that is not configured."""

    # -- event level --------------------------------------------------------------------------
    EVENT_TOO_LARGE = "event_too_large"
    """One event is over the per-event limit (32 KB by default)."""
    MISSING_TYPE = "missing_type"
    """A batch element without ``type``."""
    UNKNOWN_TYPE = "unknown_type"
    """``type`` is not one of track, identify, page, screen, group, alias."""
    TYPE_MISMATCH = "type_mismatch"
    """The body's ``type`` contradicts the route (``type: page`` posted to ``/v1/track``)."""
    MISSING_IDENTITY = "missing_identity"
    """Neither ``userId`` nor ``anonymousId``."""
    MISSING_FIELD = "missing_field"
    """A field the call type requires is absent (``event`` on track, ``groupId`` on group, ...)."""
    INVALID_FIELD = "invalid_field"
    """A field has the wrong type or an impossible value."""
    INVALID_TIMESTAMP = "invalid_timestamp"
    """``timestamp``, ``originalTimestamp`` or ``sentAt`` is not an ISO-8601 date-time, or lies
    outside the years 1970..2200."""
    INVALID_ONRAMP_CONTEXT = "invalid_onramp_context"
    """``context.onramp`` (session id, ``seq``, step id) is malformed."""
    NESTING_TOO_DEEP = "nesting_too_deep"
    """Objects and arrays in one event nest more than 32 levels (the event itself is level 1)."""
    NUMBER_OUT_OF_RANGE = "number_out_of_range"
    """A number no consumer can hold: an integer outside signed 64 bits, ``NaN``, ``Infinity``,
    a float that overflows (``1e999``), or a literal over 64 characters."""
    INVALID_STRING = "invalid_string"
    """A string or key holds a lone UTF-16 surrogate (a ``\\ud800`` escape): not valid Unicode."""
    UNPROCESSABLE = "unprocessable"
    """The event (or, with no index, the request) could not be processed for a reason no other
    code names: the last-resort catch, so that one event never fails its batch and no input
    becomes a 500; the message names the error."""

    IDENTITY_LOOP = "identity_loop"
    """A forwarded event, decision or merge of a merged id went round more hops than any chain
    of merges needs (ids merged into each other both ways): kept in the DLQ, not applied."""

    # -- stream batch validation (semantic checks on decoded events) ----------------------------
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    """Event time (after skew correction) too far before or after ``receivedAt``."""
    NEGATIVE_DURATION = "negative_duration"
    """``properties.durationMs`` is negative."""
    UNKNOWN_STEP = "unknown_step"
    """The step id is not in the onboarding catalog."""
    IMPLAUSIBLE_RATE = "implausible_rate"
    """More events from one user in one second of event time than a person can produce."""

    @property
    def http_status(self) -> int:
        """The status the collector answers with when this code decides the response."""
        return _HTTP_STATUS.get(self, 400)


_HTTP_STATUS: dict[ReasonCode, int] = {
    ReasonCode.BODY_TOO_LARGE: 413,
    ReasonCode.EVENT_TOO_LARGE: 413,
    ReasonCode.TOO_MANY_EVENTS: 413,
    ReasonCode.UNSUPPORTED_ENCODING: 415,
    ReasonCode.AUTH_MISSING: 401,
    ReasonCode.AUTH_INVALID: 401,
}
