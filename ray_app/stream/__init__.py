"""Stream workers (Ray actors) that own partitions and their state, their supervisor, and
checkpoints of state + offsets."""

from ray_app.stream.checkpoint import Checkpoint, CheckpointStore
from ray_app.stream.supervisor import (
    SUPERVISOR_NAME,
    ProfileReader,
    StreamSupervisor,
    StreamUnavailable,
    assign_partitions,
    start_supervisor_actor,
)
from ray_app.stream.worker import StreamWorker, state_config

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "SUPERVISOR_NAME",
    "ProfileReader",
    "StreamSupervisor",
    "StreamUnavailable",
    "start_supervisor_actor",
    "StreamWorker",
    "assign_partitions",
    "state_config",
]
