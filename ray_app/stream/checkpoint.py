"""Checkpoints: a partition's state and its next offset, written together, atomically.

A partition's checkpoint is a **base** (``partition-0003.ckpt``: the whole state) followed by
zero or more **deltas** (``partition-0003.d00000001``, ...: what changed since the previous one).
Every object carries a small JSON header (partition, next offset, the base it belongs to, its
sequence number) and its payload, and each is written atomically: to a temporary file renamed
into place on a local disk, by one PUT on object stores (``s3://``, ``gs://``). A reader takes
the base and the unbroken run of its deltas, so it sees a state and *the* offset that state was
taken at, never a mix. Writing a new base makes older deltas unreachable (their base id no
longer matches) and then deletes them; a crash between the two leaves files that are ignored.

Deltas keep the cost of a checkpoint proportional to what changed, not to the whole state (the
state of a busy partition is many megabytes; the users who changed in the last second are few).

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> store.save(3, b"state", next_offset=120)
>>> store.save_delta(3, b"+a", next_offset=130)
>>> store.save_delta(3, b"+b", next_offset=135)
>>> store.load(3)
Checkpoint(partition=3, next_offset=135, snapshot=b'state', deltas=(b'+a', b'+b'))
>>> store.save(3, b"state2", next_offset=140)   # a new base: the deltas are gone
>>> store.load(3)
Checkpoint(partition=3, next_offset=140, snapshot=b'state2', deltas=())
>>> store.load(4) is None
True
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Checkpoint", "CheckpointStore"]

_MAGIC = b"ONRAMPCK1\n"


@dataclass(frozen=True)
class Checkpoint:
    partition: int
    next_offset: int
    snapshot: bytes
    deltas: tuple[bytes, ...] = ()


class CheckpointStore:
    """Checkpoints under a local directory or any fsspec URI."""

    def __init__(self, uri: str | os.PathLike[str]) -> None:
        self.uri = str(uri)
        self._local: Path | None = None
        self._base: dict[int, tuple[str, int]] = {}  # partition -> (base id, last delta seq)
        if "://" not in self.uri or self.uri.startswith("file://"):
            self._local = Path(self.uri.removeprefix("file://"))
            self._local.mkdir(parents=True, exist_ok=True)
            self._fs = None
        else:
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(self.uri)
            self._fs.makedirs(self._root, exist_ok=True)

    # -- names and raw objects -------------------------------------------------------------

    def _name(self, partition: int) -> str:
        return f"partition-{partition:04d}.ckpt"

    def _delta_prefix(self, partition: int) -> str:
        return f"partition-{partition:04d}.d"

    def _write(self, name: str, data: bytes) -> None:
        if self._local is not None:
            fd, tmp = tempfile.mkstemp(dir=self._local, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._local / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:
            assert self._fs is not None
            self._fs.pipe_file(f"{self._root}/{name}", data)

    def _read(self, name: str) -> bytes:
        if self._local is not None:
            return (self._local / name).read_bytes()
        assert self._fs is not None
        data: bytes = self._fs.cat_file(f"{self._root}/{name}")
        return data

    def _list(self, prefix: str) -> list[str]:
        if self._local is not None:
            return sorted(p.name for p in self._local.glob(prefix + "*"))
        assert self._fs is not None
        return sorted(Path(p).name for p in self._fs.glob(f"{self._root}/{prefix}*"))

    def _delete(self, name: str) -> None:
        if self._local is not None:
            (self._local / name).unlink(missing_ok=True)
        else:
            assert self._fs is not None
            try:
                self._fs.rm_file(f"{self._root}/{name}")
            except FileNotFoundError:
                pass

    @staticmethod
    def _pack(header: dict[str, Any], payload: bytes) -> bytes:
        h = json.dumps({**header, "savedAt": time.time(), "bytes": len(payload)}).encode()
        return _MAGIC + len(h).to_bytes(4, "big") + h + payload

    def _unpack(self, name: str, data: bytes) -> tuple[dict[str, Any], bytes]:
        if not data.startswith(_MAGIC):
            raise ValueError(f"{self.uri}/{name} is not an Onramp checkpoint")
        n = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "big")
        start = len(_MAGIC) + 4
        return json.loads(data[start : start + n]), data[start + n :]

    # -- the API -----------------------------------------------------------------------------

    def save(self, partition: int, snapshot: bytes, next_offset: int) -> None:
        """Write a new base (the whole state); older deltas of the partition stop counting."""
        base_id = uuid.uuid4().hex
        self._write(
            self._name(partition),
            self._pack(
                {"partition": partition, "nextOffset": next_offset, "baseId": base_id}, snapshot
            ),
        )
        self._base[partition] = (base_id, 0)
        for name in self._list(self._delta_prefix(partition)):
            self._delete(name)

    def save_delta(self, partition: int, delta: bytes, next_offset: int) -> None:
        """Write what changed since the previous base or delta this store wrote."""
        if partition not in self._base:
            raise RuntimeError(f"partition {partition}: save a base before its deltas")
        base_id, seq = self._base[partition]
        seq += 1
        self._write(
            f"{self._delta_prefix(partition)}{seq:08d}",
            self._pack(
                {
                    "partition": partition,
                    "nextOffset": next_offset,
                    "baseId": base_id,
                    "seq": seq,
                },
                delta,
            ),
        )
        self._base[partition] = (base_id, seq)

    def has_base(self, partition: int) -> bool:
        """True once this store wrote a base for the partition (deltas may follow)."""
        return partition in self._base

    def load(self, partition: int) -> Checkpoint | None:
        """The base and the unbroken run of its deltas, or None if there is no checkpoint."""
        name = self._name(partition)
        try:
            header, snapshot = self._unpack(name, self._read(name))
        except FileNotFoundError:
            return None
        base_id, next_offset = header.get("baseId"), int(header["nextOffset"])
        deltas: list[bytes] = []
        for dname in self._list(self._delta_prefix(partition)):
            try:
                dheader, payload = self._unpack(dname, self._read(dname))
            except FileNotFoundError:  # deleted by a writer meanwhile
                continue
            if dheader.get("baseId") != base_id:
                continue  # left over from an older base
            if dheader["seq"] != len(deltas) + 1:
                break
            deltas.append(payload)
            next_offset = int(dheader["nextOffset"])
        return Checkpoint(partition, next_offset, snapshot, tuple(deltas))
