"""The DLQ record of a refused event or request: what was refused, why, and what was sent.

The DLQ record of a refused event keeps the event as sent (not merged with the batch's
envelope): as JSON under ``raw`` when it fits in 32 KB, else its first 32 KB of text under
``rawText`` with ``rawSize`` and ``rawTruncated``. A refused body is kept as its start, as text,
or as base64 when it is not UTF-8. Any value can be written, whatever it holds: lone surrogates,
numbers out of range and nesting too deep are sanitized first.

>>> raw_event_payload({"type": "track"}, None)
{'raw_json': b'{"type":"track"}', 'raw_size': 16}
>>> dlq_key({"anonymousId": "a-1"})
b'a-1'
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import orjson

from ray_app.collect.rejection import Rejection, client_id
from ray_app.records import DlqRecord
from ray_app.records.dlq import RAW_CAP, fit_text
from validation.wire import INT_MAX, INT_MIN, MAX_NESTING_DEPTH, UnrepresentableNumber, safe_text

__all__ = ["dlq_key", "dlq_record", "raw_event_payload"]

_TOO_DEEP = f"<nested deeper than {MAX_NESTING_DEPTH} levels>"
_CUT = "<cut>"


def dlq_record(
    rejection: Rejection, origin: Mapping[str, Any], raw: dict[str, Any], key: bytes | None
) -> tuple[bytes | None, bytes]:
    """The (key, value) of a rejection's :class:`DlqRecord`; ``raw`` is what
    :func:`raw_event_payload` or :func:`~ray_app.records.raw_payload` kept of the refused value."""
    record = DlqRecord(
        reason=rejection.reason,
        field=rejection.field,
        message=rejection.message,
        message_id=rejection.message_id,
        origin={**origin, "index": rejection.index},
        **raw,
    )
    try:
        return key, record.encode()
    except TypeError:  # text no encoder takes (a lone surrogate in a header): sanitized
        return key, orjson.dumps(_sanitized(record.to_json()))


def dlq_key(raw: Any) -> bytes | None:
    """The key of a refused event's DLQ record: like the user's events when the event names a
    usable id."""
    if not isinstance(raw, dict):
        return None
    user = client_id(raw.get("userId")) or client_id(raw.get("anonymousId"))
    return user.encode() if user else None


def raw_event_payload(raw: Any, blob: bytes | None) -> dict[str, Any]:
    """The refused event as sent, as :class:`DlqRecord` arguments: its JSON (``raw``) up to
    32 KB, else the start of its text."""
    if blob is None:
        blob = _dlq_json(raw)
    if len(blob) <= RAW_CAP:
        return {"raw_json": blob, "raw_size": len(blob)}
    return {
        "raw_text": fit_text(blob[:RAW_CAP].decode("utf-8", "ignore")),
        "raw_size": len(blob),
        "raw_truncated": True,
    }


def _dlq_json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(_sanitized(value))


def _sanitized(value: Any, most: int = RAW_CAP // 2) -> Any:
    """A copy of ``value`` that any JSON encoder takes: lone surrogates escaped, number markers
    and other non-JSON values as text, nesting cut at the contract's depth. Iterative; only for
    DLQ records of values already refused. At most ``most`` parts are copied (the record keeps
    the first 32 KB of the JSON, which holds fewer): past them, objects and lists are
    ``<cut>``, so a refused value of a million parts costs no more than one of a few thousand."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 1)]
    left = most
    while stack:
        node, parent, slot, depth = stack.pop()
        left -= 1
        out: Any
        if isinstance(node, dict | list) and left < 0:
            out = _CUT
        elif isinstance(node, dict | list) and depth > MAX_NESTING_DEPTH:
            out = _TOO_DEEP
        elif isinstance(node, dict):
            out = {}
            for key, child in itertools.islice(node.items(), max(left, 0)):
                clean = safe_text(str(key), RAW_CAP)
                out[clean] = None
                stack.append((child, out, clean, depth + 1))
        elif isinstance(node, list):
            kept = node[: max(left, 0)]
            out = [None] * len(kept)
            stack.extend((child, out, i, depth + 1) for i, child in enumerate(kept))
        elif isinstance(node, str):
            out = safe_text(node, RAW_CAP)
        elif node is None or isinstance(node, bool | orjson.Fragment):
            out = node
        elif isinstance(node, int):
            out = node if INT_MIN <= node <= INT_MAX else f"<integer of {node.bit_length()} bits>"
        elif isinstance(node, float):
            out = node if math.isfinite(node) else str(node)
        elif isinstance(node, UnrepresentableNumber):
            out = node.text
        else:
            out = f"<{type(node).__name__}>"
        parent[slot] = out
    return root[0]
