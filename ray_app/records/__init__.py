"""Wire records that cross processes, one definition each: a typed, frozen struct with its schema
id, one encoder (``to_json``, ``encode``) and one decoder (``from_json``).

=================  ======================  ==========================================================
record             schema                  written by -> read by
=================  ======================  ==========================================================
DecisionRecord     ``onramp.decision/1``   ``/v1/decide`` (``Decision.record``) -> the stream's reward
                                           join, the parity replay, ``onramp report``
RewardRecord       ``onramp.reward/1``     the stream's reward join -> the online learner, training,
                                           ``onramp evaluate`` and ``onramp report``
DlqRecord          ``onramp.dlq/1``        the collector (refused requests and events) and the stream
                                           (records it cannot apply) -> operators, ``onramp archive``
LateRecord         ``onramp.late/1``       the stream (events behind the watermark) -> operators
=================  ======================  ==========================================================

Times inside records are converted with :mod:`ray_app.timefmt`, the one ISO-8601 <-> milliseconds
conversion. A decoder names the ``field`` at fault and why (:class:`RecordError`); the decision
decoder also carries the DLQ reason code (:class:`DecisionRecordError`).

One module per record (:mod:`~ray_app.records.decision`, :mod:`~ray_app.records.reward`,
:mod:`~ray_app.records.dlq`, :mod:`~ray_app.records.late`) documents it; import them from here.
"""

from ray_app.records.decision import DECISION_SCHEMA, DecisionRecord
from ray_app.records.dlq import DLQ_SCHEMA, DlqRecord, raw_payload, stream_origin
from ray_app.records.errors import (
    DecisionRecordError,
    DlqRecordError,
    LateRecordError,
    RecordError,
    RewardRecordError,
)
from ray_app.records.late import LATE_SCHEMA, LateRecord
from ray_app.records.reward import OUTCOMES, REWARD_SCHEMA, Outcome, RewardRecord, reward_of

__all__ = [
    "DECISION_SCHEMA",
    "DLQ_SCHEMA",
    "LATE_SCHEMA",
    "OUTCOMES",
    "REWARD_SCHEMA",
    "DecisionRecord",
    "DecisionRecordError",
    "DlqRecord",
    "DlqRecordError",
    "LateRecord",
    "LateRecordError",
    "Outcome",
    "RecordError",
    "RewardRecord",
    "RewardRecordError",
    "raw_payload",
    "reward_of",
    "stream_origin",
]
