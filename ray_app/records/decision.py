"""Decision records (schema ``onramp.decision/2``): every answered decision that served an action,
as ``/v1/decide`` logs it to ``onramp.decisions``; read by the stream's reward join
(:func:`ray_app.state.rewards.decode_decision`), the parity replay and ``onramp report``.

Schema ``/2`` carries the features sparse (:mod:`ray_app.records.features`); records of schema
``/1`` (the dense list) still read back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from ray_app.records._read import _shown
from ray_app.records.errors import DecisionRecordError
from ray_app.records.features import SparseFeatures, parse_features
from ray_app.timefmt import ms_from_iso, utc_ms
from validation.reasons import ReasonCode
from validation.wire import INT_MAX

__all__ = [
    "DECISION_SCHEMA",
    "DECISION_SCHEMAS",
    "DecisionRecord",
    "decision_answer",
    "decision_json",
    "forwarded_copy",
]

DECISION_SCHEMA = "onramp.decision/2"
#: The schemas a decision record may carry (``/1``: the features as a dense list).
DECISION_SCHEMAS = frozenset({"onramp.decision/1", DECISION_SCHEMA})

#: What a logged decision must carry (a decision that served nothing is not logged).
_DECISION_REQUIRED = (
    "decisionId",
    "userKey",
    "slot",
    "chosen",
    "propensity",
    "timestamp",
    "actionIndex",
)


def forwarded_copy(record: Mapping[str, Any]) -> bool:
    """Whether a decision record in ``onramp.decisions`` is the stream's copy of another, made
    for an id merged into another before the record reached its partition, written again for
    the surviving id's reward join (``hops``; ``forwardedFrom`` names the id it was made for).
    The original is on the topic too: readers count it, and read the copy as that merge.

    >>> forwarded_copy({"decisionId": "d1", "hops": 1}), forwarded_copy({"decisionId": "d1"})
    (True, False)
    """
    return bool(record.get("hops"))


def decision_answer(d: Any) -> dict[str, Any]:
    """The keys of a decision that its HTTP answer shows, in the answer's order: one list for
    the answer (:meth:`ray_app.decide.Decision.answer`) and the record that starts with it."""
    return {
        "decisionId": d.decision_id,
        "slot": d.slot,
        "chosen": d.chosen,
        "propensity": d.propensity,
        "ranked": d.ranked,
        "arm": d.arm,
        "experiment": d.experiment,
        "modelVersion": d.model_version,
        "policy": d.policy,
        "coldStart": d.cold_start,
        "coldReason": d.cold_reason,
    }


def decision_json(d: Any, feature_schema: str | None) -> dict[str, Any]:
    """The record of a decision as a JSON-ready dict (schema ``onramp.decision/2``), from any
    object with :class:`DecisionRecord`'s fields (``features`` sparse or dense): the one encoder of
    :meth:`DecisionRecord.to_json` and of :meth:`ray_app.decide.Decision.record`, which logs
    every decision a replica answers and so skips building a frozen 21-field record first."""
    out: dict[str, Any] = {
        "schema": DECISION_SCHEMA,
        **decision_answer(d),
        "userKey": d.user_key,
        "actionIndex": d.action_index,
        "candidates": d.candidates,
        "features": SparseFeatures.of(d.features).to_json(),
        "featureSchema": feature_schema,
        "context": d.context,
        "profileAgeMs": d.profile_age_ms,
        "timestamp": _timestamp(d.at_ms),
    }
    if d.trace_id is not None:
        out["traceId"] = d.trace_id
    if d.merged_from:
        out["mergedFrom"] = d.merged_from
    return out


@lru_cache(maxsize=256)
def _timestamp(at_ms: int) -> str:
    """``at_ms`` on the wire: a batch of decisions shares one decision time, so the text is
    made once per batch, not once per record."""
    return utc_ms(at_ms).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class DecisionRecord:
    """One answered decision as ``onramp.decisions`` receives it (schema ``onramp.decision/2``).

    The answer (``chosen``, its ``propensity``, ``ranked``, ``arm``, ``experiment``,
    ``model_version``, ``policy``, ``cold_start``, ``cold_reason``) and what the reward join,
    the learner and the parity replay need: the ``user_key`` whose partition joins it, the
    served action's ``action_index``, the eligible ``candidates``, the ``features`` with their
    ``feature_schema`` hash, the request's ``context``, the ``profile_age_ms`` of the profile
    decided from, and the decision time ``at_ms`` (``timestamp`` on the wire: ISO-8601 with
    milliseconds and ``+00:00``). ``traceId`` is written only when set, ``mergedFrom`` only when
    not empty.

    Only decisions that served an action are logged, so :meth:`from_json` requires ``chosen``,
    ``propensity`` and ``actionIndex``; the other fields may be missing or null (a record forwarded
    along merged ids carries only what the join needs) and read as their defaults.

    >>> d = DecisionRecord(decision_id="d1", user_key="u1", slot="next_step", chosen="role",
    ...                    propensity=0.5, action_index=1, features=[0.25], at_ms=1767225600000,
    ...                    arm="treatment", model_version=3, ranked=[{"action": "role"}])
    >>> DecisionRecord.from_json(orjson.loads(d.encode())) == d
    True
    >>> d.to_json()["timestamp"], d.to_json()["features"]
    ('2026-01-01T00:00:00.000+00:00', {'size': 1, 'indices': [0], 'values': [0.25]})
    >>> DecisionRecord.from_json({**d.to_json(), "propensity": 0})
    Traceback (most recent call last):
    ...
    ray_app.records.errors.DecisionRecordError: propensity: expected a number in (0, 1], got 0
    """

    decision_id: str
    user_key: str
    slot: str
    chosen: str | None
    propensity: float | None
    action_index: int | None
    features: SparseFeatures
    at_ms: int
    arm: str = ""
    model_version: int = 0
    candidates: list[str] | None = None
    ranked: list[dict[str, Any]] = field(default_factory=list)
    experiment: str | None = None
    policy: str | None = None
    cold_start: bool | None = None
    cold_reason: str | None = None
    feature_schema: str | None = None
    context: dict[str, Any] | None = None
    profile_age_ms: int | None = None
    trace_id: str | None = None
    merged_from: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.features, SparseFeatures):  # a dense vector given
            object.__setattr__(self, "features", SparseFeatures.from_dense(self.features))

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (schema ``onramp.decision/2``): the HTTP answer's
        keys first, in its order, then the rest."""
        return decision_json(self, self.feature_schema)

    def encode(self) -> bytes:
        """:meth:`to_json` as JSON bytes."""
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> DecisionRecord:
        """Read and validate a decision record; :class:`DecisionRecordError` (with the DLQ
        reason code) for a field missing or of the wrong type.

        >>> DecisionRecord.from_json({"decisionId": "d1", "userKey": "u1", "slot": "s"})
        Traceback (most recent call last):
        ...
        ray_app.records.errors.DecisionRecordError: chosen: required in a decision record
        >>> bad = {"decisionId": "d1", "userKey": "u1", "slot": "s", "chosen": "a",
        ...        "propensity": 1, "actionIndex": 0, "timestamp": "soon"}
        >>> try:
        ...     DecisionRecord.from_json(bad)
        ... except DecisionRecordError as e:
        ...     print(e.code.value, e.field, e.reason)
        invalid_timestamp timestamp not an ISO-8601 time: 'soon'
        """
        data = _identified(data)
        at_ms = _decision_ms(data["timestamp"])
        propensity = _propensity(data["propensity"])
        index = _action_index(data.get("actionIndex"))
        features = _features(data.get("features"))
        ranked = _ranked(data.get("ranked"), data["chosen"])
        candidates = _optional_texts(data, "candidates")
        arm = _optional(data, "arm", str, "a string") or ""
        version = _model_version(data.get("modelVersion"))
        _check_schema(data.get("schema"))
        return cls(
            decision_id=data["decisionId"],
            user_key=data["userKey"],
            slot=data["slot"],
            chosen=data["chosen"],
            propensity=propensity,
            action_index=index,
            features=features,
            at_ms=at_ms,
            arm=arm,
            model_version=version,
            candidates=candidates,
            ranked=ranked,
            experiment=_optional(data, "experiment", str, "a string"),
            policy=_optional(data, "policy", str, "a string"),
            cold_start=_optional(data, "coldStart", bool, "true or false"),
            cold_reason=_optional(data, "coldReason", str, "a string"),
            feature_schema=_optional(data, "featureSchema", str, "a string"),
            context=_optional(data, "context", dict, "an object"),
            profile_age_ms=_optional_int(data, "profileAgeMs"),
            trace_id=_optional(data, "traceId", str, "a string"),
            merged_from=_optional_texts(data, "mergedFrom") or None,  # [] is written as absent
        )


# The checks of :meth:`DecisionRecord.from_json`, in the order it runs them (the first failing
# check names the record's fault).


def _identified(data: Any) -> Mapping[str, Any]:
    """``data`` if it is an object with every required field, and the ids non-empty strings."""
    if not isinstance(data, Mapping):
        raise DecisionRecordError(
            ReasonCode.NOT_AN_OBJECT, "", f"expected a JSON object, got {type(data).__name__}"
        )
    for key in _DECISION_REQUIRED:
        if data.get(key) is None:
            raise DecisionRecordError(
                ReasonCode.MISSING_FIELD, key, "required in a decision record"
            )
    for key in ("decisionId", "userKey", "slot", "chosen"):
        if not isinstance(data[key], str) or not data[key]:
            raise _bad_decision(key, "a non-empty string", data[key])
    return data


def _propensity(p: Any) -> float:
    if not _is_number(p) or not 0 < p <= 1:
        raise _bad_decision("propensity", "a number in (0, 1]", p)
    return float(p)


def _action_index(index: Any) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise _bad_decision("actionIndex", "an integer >= 0", index)
    return index


def _features(features: Any) -> SparseFeatures:
    try:
        return parse_features(_or(features, []))
    except ValueError as exc:
        raise DecisionRecordError(ReasonCode.INVALID_FIELD, "features", str(exc)) from None


def _ranked(ranked: Any, chosen: str) -> list[dict[str, Any]]:
    """The ranked actions (missing: none), which must include ``chosen`` if there are any."""
    ranked = _or(ranked, [])
    if not isinstance(ranked, list) or not all(
        isinstance(r, dict) and isinstance(r.get("action"), str) for r in ranked
    ):
        raise _bad_decision("ranked", 'a list of {"action": id, ...} objects', ranked)
    if ranked and chosen not in [r["action"] for r in ranked]:
        raise DecisionRecordError(
            ReasonCode.INVALID_FIELD, "chosen", f"{chosen!r} is not among the ranked actions"
        )
    return list(ranked)


def _model_version(version: Any) -> int:
    version = _or(version, 0)
    integral = isinstance(version, int) or (isinstance(version, float) and version.is_integer())
    if isinstance(version, bool) or not integral or not 0 <= version <= INT_MAX:
        raise _bad_decision("modelVersion", "an integer from 0 to 2**63 - 1", version)
    return int(version)


def _check_schema(schema: Any) -> None:
    if schema is not None and schema not in DECISION_SCHEMAS:
        raise _bad_decision("schema", " or ".join(map(repr, sorted(DECISION_SCHEMAS))), schema)


#: The times a decision record can be written back with (years 1-9999 in UTC): a time whose
#: offset takes it past them reads, but could not be written again (a merge re-encodes it).
_MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def _decision_ms(stamp: Any) -> int:
    try:
        ms = ms_from_iso(stamp)
        if not _MIN_MS <= ms <= _MAX_MS:
            raise ValueError(stamp)
        return ms
    except TypeError:
        raise DecisionRecordError(
            ReasonCode.INVALID_TIMESTAMP, "timestamp", f"expected ISO-8601 text, got {stamp!r}"
        ) from None
    except (ValueError, OverflowError):
        raise DecisionRecordError(
            ReasonCode.INVALID_TIMESTAMP, "timestamp", f"not an ISO-8601 time: {stamp!r}"
        ) from None


def _bad_decision(key: str, expected: str, got: Any) -> DecisionRecordError:
    return DecisionRecordError(
        ReasonCode.INVALID_FIELD, key, f"expected {expected}, got {_shown(got)}"
    )


def _optional(data: Mapping[str, Any], key: str, kind: type, expected: str) -> Any:
    v = data.get(key)
    if v is not None and not isinstance(v, kind):
        raise _bad_decision(key, expected, v)
    return v


def _optional_int(data: Mapping[str, Any], key: str) -> int | None:
    v = data.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise _bad_decision(key, "an integer", v)
    return v


def _optional_texts(data: Mapping[str, Any], key: str) -> list[str] | None:
    v = data.get(key)
    if v is not None and not _is_texts(v):
        raise _bad_decision(key, "a list of ids", v)
    return None if v is None else list(v)


def _or(v: Any, default: Any) -> Any:
    return default if v is None else v


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_texts(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(c, str) for c in v)
