"""Wire records that cross processes, one definition each: a typed, frozen struct with its schema
id, one encoder (``to_json``, ``encode``) and one decoder (``from_json``).

=================  ======================  ==========================================================
record             schema                  written by -> read by
=================  ======================  ==========================================================
DecisionRecord     ``onramp.decision/2``   ``/v1/decide`` (``Decision.record``) -> the stream's reward
                                           join, the parity replay, ``onramp report``
RewardRecord       ``onramp.reward/2``     the stream's reward join -> the online learner, training,
                                           ``onramp evaluate`` and ``onramp report``
DlqRecord          ``onramp.dlq/1``        the collector (refused requests and events) and the stream
                                           (records it cannot apply) -> operators, ``onramp archive``
LateRecord         ``onramp.late/1``       the stream (events behind the watermark) -> operators
=================  ======================  ==========================================================

Times inside records are converted with :mod:`ray_app.timefmt`, the one ISO-8601 <-> milliseconds
conversion. A decoder names the ``field`` at fault and why (:class:`RecordError`); the decision
decoder also carries the DLQ reason code (:class:`DecisionRecordError`). Decisions and rewards
carry their feature vectors sparse (:class:`SparseFeatures`, :mod:`~ray_app.records.features`);
their decoders also read the ``/1`` records before it, whose vectors are dense lists.

One module per record (:mod:`~ray_app.records.decision`, :mod:`~ray_app.records.reward`,
:mod:`~ray_app.records.dlq`, :mod:`~ray_app.records.late`) documents it; import them from here.
"""

from ray_app.records.decision import DECISION_SCHEMA, DECISION_SCHEMAS, DecisionRecord
from ray_app.records.dlq import DLQ_SCHEMA, DlqRecord, raw_payload, stream_origin
from ray_app.records.errors import (
    DecisionRecordError,
    DlqRecordError,
    LateRecordError,
    RecordError,
    RewardRecordError,
)
from ray_app.records.features import SparseFeatures
from ray_app.records.late import LATE_SCHEMA, LateRecord
from ray_app.records.reward import (
    OUTCOMES,
    REWARD_SCHEMA,
    REWARD_SCHEMAS,
    Outcome,
    RewardRecord,
    reward_of,
)

__all__ = [
    "DECISION_SCHEMA",
    "DECISION_SCHEMAS",
    "DLQ_SCHEMA",
    "LATE_SCHEMA",
    "OUTCOMES",
    "REWARD_SCHEMA",
    "REWARD_SCHEMAS",
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
    "SparseFeatures",
    "raw_payload",
    "reward_of",
    "stream_origin",
]
