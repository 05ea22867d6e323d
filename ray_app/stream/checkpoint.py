"""Checkpoints: a partition's state snapshot and its next offset, written together, atomically.

One object per partition (``partition-0003.ckpt``) holding a small JSON header (partition, next
offset, record count, time) and the snapshot bytes. Because offset and state are one object, a
reader sees either the old pair or the new pair, never a mix: on a local disk the object is
written to a temporary file and renamed over the old one; on object stores (``s3://``, ``gs://``)
a single PUT is atomic already.

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> store.save(3, b"state", next_offset=120)
>>> store.load(3)
Checkpoint(partition=3, next_offset=120, snapshot=b'state')
>>> store.load(4) is None
True
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Checkpoint", "CheckpointStore"]

_MAGIC = b"ONRAMPCK1\n"


@dataclass(frozen=True)
class Checkpoint:
    partition: int
    next_offset: int
    snapshot: bytes


class CheckpointStore:
    """Checkpoints under a local directory or any fsspec URI."""

    def __init__(self, uri: str | os.PathLike[str]) -> None:
        self.uri = str(uri)
        self._local: Path | None = None
        if "://" not in self.uri or self.uri.startswith("file://"):
            self._local = Path(self.uri.removeprefix("file://"))
            self._local.mkdir(parents=True, exist_ok=True)
            self._fs = None
        else:
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(self.uri)
            self._fs.makedirs(self._root, exist_ok=True)

    def _name(self, partition: int) -> str:
        return f"partition-{partition:04d}.ckpt"

    def save(self, partition: int, snapshot: bytes, next_offset: int) -> None:
        header = json.dumps(
            {
                "partition": partition,
                "nextOffset": next_offset,
                "savedAt": time.time(),
                "bytes": len(snapshot),
            }
        ).encode()
        data = _MAGIC + len(header).to_bytes(4, "big") + header + snapshot
        if self._local is not None:
            fd, tmp = tempfile.mkstemp(dir=self._local, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._local / self._name(partition))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:
            assert self._fs is not None
            self._fs.pipe_file(f"{self._root}/{self._name(partition)}", data)

    def load(self, partition: int) -> Checkpoint | None:
        try:
            if self._local is not None:
                data = (self._local / self._name(partition)).read_bytes()
            else:
                assert self._fs is not None
                data = self._fs.cat_file(f"{self._root}/{self._name(partition)}")
        except FileNotFoundError:
            return None
        if not data.startswith(_MAGIC):
            raise ValueError(f"{self.uri}/{self._name(partition)} is not an Onramp checkpoint")
        n = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "big")
        start = len(_MAGIC) + 4
        header = json.loads(data[start : start + n])
        return Checkpoint(partition, int(header["nextOffset"]), data[start + n :])
