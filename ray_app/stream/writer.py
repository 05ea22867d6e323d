"""Checkpoint writes off the processing thread.

A stream worker takes its snapshot (or delta) on the loop thread, under its lock, so that it sees
one consistent state; writing it (a local file with ``fsync``, an object-store PUT) takes that
thread's time for nothing: :class:`CheckpointWriter` writes on a thread of its own, in the order
given, and the loop commits the consumer group's offsets of what has been written. Nothing about
exactly-once changes: a restart resumes from the last checkpoint that is whole in the store,
whatever was queued when the process died.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

from ray_app.stream.checkpoint import CheckpointStore

__all__ = ["CheckpointWriter", "Saved", "rebase_partitions"]

log = logging.getLogger(__name__)

#: One partition's checkpoint: (partition, blob, next offset, whether a base (else a delta)).
Saved = tuple[int, bytes, int, bool]


class CheckpointWriter:
    """Writes batches of :data:`Saved` to ``store`` on one thread, in submission order.

    :meth:`written` hands back, to the loop thread, the next offsets that are now durable (for
    the consumer group's commit), and raises the error of a failed write; after a failure
    nothing more is written (a delta must not follow a missing one).
    """

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._queue: queue.Queue[Sequence[Saved] | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._done: dict[int, int] = {}
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._writing_since: float | None = None  # monotonic start of the write in progress

    def submit(self, saved: Sequence[Saved]) -> None:
        """Queue one checkpoint (every changed partition's blob) for writing."""
        with self._lock:
            if self._error is not None:
                raise self._error
            self._pending += 1
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="onramp-checkpoint-writer", daemon=True
            )
            self._thread.start()
        self._queue.put(saved)

    def writing_for(self) -> float:
        """Seconds the file being written has taken so far (0 when none is): a store
        that never answers (a hung mount, a PUT with no deadline) shows here, where nothing
        else would notice it while the loop goes on."""
        started = self._writing_since
        return 0.0 if started is None else time.monotonic() - started

    def busy(self) -> bool:
        """Whether a checkpoint is queued or being written."""
        with self._lock:
            return self._pending > 0

    def written(self) -> dict[int, int]:
        """Partition -> next offset of the checkpoints written since the last call; raises the
        error that stopped the writer, if one did."""
        with self._lock:
            if self._error is not None:
                raise self._error
            done, self._done = self._done, {}
            return done

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until everything queued is written (or the writer failed); False on timeout."""
        with self._idle:
            return self._idle.wait_for(
                lambda: self._pending == 0 or self._error is not None, timeout_s
            )

    def abandon(self) -> None:
        """Drop what is queued and stop (what a killed process leaves: the store keeps what was
        whole)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
        self._queue.put(None)

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self.flush()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            saved = self._queue.get()
            if saved is None:
                return
            try:
                if self._error is None:
                    for p, blob, offset, base in saved:
                        # per file: a checkpoint of many partitions' bases (the first after a
                        # restart) takes long in all, each file a part of it
                        self._writing_since = time.monotonic()
                        if base:
                            self.store.save(p, blob, offset)
                        else:
                            self.store.save_delta(p, blob, offset)
                        with self._lock:
                            self._done[p] = offset
            except BaseException as exc:  # handed to the loop thread by written()
                log.exception("checkpoint write failed; nothing more is written")
                with self._lock:
                    self._error = exc
            finally:
                self._writing_since = None
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


def rebase_partitions(dirty: set[int], deltas: dict[int, int], per_base: int) -> set[int]:
    """The partitions of a checkpoint that get a full snapshot rather than a delta: those with
    none yet, and of those due (``per_base`` deltas since their base) only the one longest due,
    so that a worker's partitions, which come due together, rebase one checkpoint apart (a base
    of every partition at once held the loop, and the freshness of what it was taking, for the
    sum of their snapshots). ``per_base`` 0: every partition, every time.

    >>> sorted(rebase_partitions({0, 1, 2}, {1: 30, 2: 31}, 30))
    [0, 2]
    >>> sorted(rebase_partitions({1, 2}, {1: 5, 2: 0}, 0))
    [1, 2]
    """
    if per_base == 0:
        return set(dirty)
    first = {p for p in dirty if p not in deltas}
    due = [p for p in dirty if p in deltas and deltas[p] >= per_base]
    if due:
        first.add(max(due, key=lambda p: (deltas[p], -p)))
    return first
