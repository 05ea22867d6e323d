"""Stream workers (Ray actors) that own partitions and their state, their supervisor, and
checkpoints of state + offsets."""

from ray_app.stream.checkpoint import Checkpoint, CheckpointStore
from ray_app.stream.supervisor import StreamSupervisor, assign_partitions
from ray_app.stream.worker import StreamWorker, state_config

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "StreamSupervisor",
    "StreamWorker",
    "assign_partitions",
    "state_config",
]
