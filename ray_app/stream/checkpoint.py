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

**Signed.** A snapshot is a pickle, and unpickling runs code: whoever can write the checkpoint
location must not be able to run code in the workers. So every object (base and delta) carries an
HMAC-SHA256 over its name, header and payload, under a key kept apart from the store
(``stream.checkpoint_key``, else a key file outside it: :func:`checkpoint_key`, resolved once by
the supervisor and handed to every worker). :meth:`CheckpointStore.load` verifies each object
before it reads its header, and raises :class:`CheckpointRefused` (partition, file, reason) for
one that does not verify, was written by an older Onramp without a signature (format 1), or is
not a checkpoint at all; nothing of it is unpickled. (The state core unpickles with an allowlist
of its own classes besides: :class:`~ray_app.state.shard.SnapshotRefused`.) What the signature
does not stop: someone with the store *and* the key, or putting back an older, validly signed
checkpoint of the same partition (a rollback; its offsets come with it, so the state stays
consistent and the replay redoes the rest).

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp(), key=b"k" * 32)
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

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_app.errors import ConfigError, OnrampError
from ray_app.storage import local_path

if TYPE_CHECKING:
    from ray_app.config import StreamSettings

__all__ = [
    "DEFAULT_KEY_FILE",
    "Checkpoint",
    "CheckpointRefused",
    "CheckpointStore",
    "checkpoint_key",
]

log = logging.getLogger(__name__)

#: Age past which a temporary file of a local store's write is taken as left by a killed writer.
STALE_TEMP_S = 3600.0

_MAGIC = b"ONRAMPCK2\n"
"""Format 2: magic, HMAC-SHA256 (32 bytes), header length (4 bytes), JSON header, payload."""
_UNSIGNED_MAGIC = b"ONRAMPCK1\n"
_MAC = 32
_DOMAIN = b"onramp.checkpoint/2\0"
_MIN_KEY = 16

#: Where the checkpoint key is kept when ``stream.checkpoint_key`` and ``checkpoint_key_file``
#: are both empty.
DEFAULT_KEY_FILE = Path("~/.onramp/checkpoint.key")


class CheckpointRefused(OnrampError, ValueError):
    """A checkpoint that will not be loaded (bad signature, unsigned, foreign, or a snapshot the
    state core refuses); ``context`` holds ``partition``, ``file`` and ``reason``."""

    def __init__(self, message: str, **context: Any) -> None:
        OnrampError.__init__(self, message, **context)


@dataclass(frozen=True)
class Checkpoint:
    partition: int
    next_offset: int
    snapshot: bytes
    deltas: tuple[bytes, ...] = ()
    files: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """Where the snapshot and each delta were read from (to name one that is refused)."""


def checkpoint_key(settings: StreamSettings, checkpoint_uri: str | None = None) -> bytes:
    """The key that signs checkpoints: ``stream.checkpoint_key``, else the key file
    (``stream.checkpoint_key_file``, else ``~/.onramp/checkpoint.key``), created with 32 random
    bytes (mode 0600) on first use. Call it once per deployment (the supervisor does) and hand the
    bytes to every worker. Raises :class:`ConfigError` for a key under 16 bytes, or a key file
    inside the (local) checkpoint store: the key must not be writable by whoever writes the
    checkpoints.

    >>> from pydantic import SecretStr
    >>> from ray_app.config import StreamSettings
    >>> checkpoint_key(StreamSettings(checkpoint_key=SecretStr("a-long-enough-secret")))
    b'a-long-enough-secret'
    """
    if settings.checkpoint_key is not None:
        key = settings.checkpoint_key.get_secret_value().encode()
        if len(key) < _MIN_KEY:
            raise ConfigError(
                f"stream.checkpoint_key: {len(key)} bytes; use at least {_MIN_KEY}",
                key="stream.checkpoint_key",
            )
        return key
    path = Path(settings.checkpoint_key_file or DEFAULT_KEY_FILE).expanduser().resolve()
    if checkpoint_uri is not None and (
        "://" not in checkpoint_uri or checkpoint_uri.startswith("file://")
    ):
        store = local_path(checkpoint_uri)
        if path.is_relative_to(store):
            raise ConfigError(
                f"stream.checkpoint_key_file {path} lies inside the checkpoint store {store}: "
                "whoever can write checkpoints could then sign them; keep it elsewhere",
                key="stream.checkpoint_key_file",
            )
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(32)
        try:  # O_EXCL: two processes racing to create it end with one key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes()
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(key)
            log.warning("created the checkpoint signing key %s (keep it; keep it private)", path)
    if len(key) < _MIN_KEY:
        raise ConfigError(
            f"checkpoint key file {path}: {len(key)} bytes; use at least {_MIN_KEY}",
            key="stream.checkpoint_key_file",
        )
    return key


class CheckpointStore:
    """Checkpoints under a local directory or any fsspec URI, signed with ``key``."""

    def __init__(
        self,
        uri: str | os.PathLike[str],
        key: bytes,
        partitions: int | None = None,
        stale_temp_s: float = STALE_TEMP_S,
    ) -> None:
        if len(key) < _MIN_KEY:
            raise ValueError(f"a checkpoint key needs at least {_MIN_KEY} bytes")
        self._key = key
        self.uri = str(uri)
        #: The topic's partition count this run hashes keys with (``kafka.partitions``): written
        #: into every checkpoint, and a checkpoint written under another count is refused.
        self.partitions = partitions
        #: Age past which a local write's temporary file is taken as left by a killed writer.
        self.stale_temp_s = stale_temp_s
        self._local: Path | None = None
        self._base: dict[int, tuple[str, int]] = {}  # partition -> (base id, last delta seq)
        if "://" not in self.uri or self.uri.startswith("file://"):
            self._local = local_path(self.uri)  # ~ expanded, as the key check above does
            self._local.mkdir(parents=True, exist_ok=True)
            self._fs = None
            self._remove_stale_temporaries()
        else:
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(self.uri)
            self._fs.makedirs(self._root, exist_ok=True)

    def _remove_stale_temporaries(self) -> None:
        """Delete what writes killed midway left (``.tmp-*``, up to a whole base snapshot each,
        never read): those older than ``stale_temp_s``, so that no write in progress in
        another worker sharing the directory loses its file."""
        assert self._local is not None
        cutoff = time.time() - self.stale_temp_s
        for tmp in self._local.glob(".tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    log.info("removed %s, left by a checkpoint write that was killed", tmp)
            except OSError:
                continue  # gone already, or not ours to remove

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

    def _mac(self, name: str, body: bytes) -> bytes:
        """The signature binds the object's name too: a base or delta copied under another
        partition's (or sequence number's) name does not verify."""
        return hmac.new(self._key, _DOMAIN + name.encode() + b"\0" + body, hashlib.sha256).digest()

    def _pack(self, name: str, header: dict[str, Any], payload: bytes) -> bytes:
        h = json.dumps({**header, "savedAt": time.time(), "bytes": len(payload)}).encode()
        body = len(h).to_bytes(4, "big") + h + payload
        return _MAGIC + self._mac(name, body) + body

    def _unpack(self, partition: int, name: str, data: bytes) -> tuple[dict[str, Any], bytes]:
        """Verify, then split into header and payload; raises :class:`CheckpointRefused`."""

        def refuse(reason: str, why: str) -> CheckpointRefused:
            return CheckpointRefused(
                f"partition {partition}: refused checkpoint {self.uri}/{name}: {why}",
                partition=partition,
                file=f"{self.uri}/{name}",
                reason=reason,
            )

        if data.startswith(_UNSIGNED_MAGIC):
            raise refuse(
                "unsigned",
                "written unsigned by an older Onramp (checkpoint format 1, snapshot version 5 or "
                "older), so it cannot be told from a forged one and is not loaded. Drain the "
                "stream with the older version, or delete this partition's checkpoint files to "
                "start it empty from the earliest offset Kafka still holds",
            )
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _MAC + 4:
            raise refuse("foreign", "not an Onramp checkpoint")
        mac = data[len(_MAGIC) : len(_MAGIC) + _MAC]
        body = data[len(_MAGIC) + _MAC :]
        if not hmac.compare_digest(mac, self._mac(name, body)):
            raise refuse(
                "signature",
                "its signature does not verify: it was signed with another key "
                "(stream.checkpoint_key or the key file) or altered since it was written",
            )
        n = int.from_bytes(body[:4], "big")
        header: dict[str, Any] = json.loads(body[4 : 4 + n])
        if header.get("partition") != partition:
            raise refuse("partition", f"it is a checkpoint of partition {header.get('partition')}")
        written = header.get("partitions")
        if written is not None and self.partitions is not None and written != self.partitions:
            raise refuse(
                "partitions",
                f"it was written when keys were hashed over {written} partitions and this run "
                f"hashes them over {self.partitions} (kafka.partitions): a user's events now "
                "land on another partition than their state. Set kafka.partitions back to "
                f"{written}, or start on new topics (kafka.topic_prefix) with a new checkpoint "
                "store",
            )
        return header, body[4 + n :]

    def _count(self) -> dict[str, int]:
        return {} if self.partitions is None else {"partitions": self.partitions}

    # -- the API -----------------------------------------------------------------------------

    def save(self, partition: int, snapshot: bytes, next_offset: int) -> None:
        """Write a new base (the whole state); older deltas of the partition stop counting."""
        base_id = uuid.uuid4().hex
        name = self._name(partition)
        self._write(
            name,
            self._pack(
                name,
                {
                    "partition": partition,
                    "nextOffset": next_offset,
                    "baseId": base_id,
                    **self._count(),
                },
                snapshot,
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
        name = f"{self._delta_prefix(partition)}{seq:08d}"
        self._write(
            name,
            self._pack(
                name,
                {
                    "partition": partition,
                    "nextOffset": next_offset,
                    "baseId": base_id,
                    "seq": seq,
                    **self._count(),
                },
                delta,
            ),
        )
        self._base[partition] = (base_id, seq)

    def load(self, partition: int) -> Checkpoint | None:
        """The base and the unbroken run of its deltas, or None if there is no checkpoint.
        Every object is verified first; raises :class:`CheckpointRefused` for one that does not
        verify (a partition is loaded whole or not at all)."""
        name = self._name(partition)
        try:
            header, snapshot = self._unpack(partition, name, self._read(name))
        except FileNotFoundError:
            return None
        base_id, next_offset = header.get("baseId"), int(header["nextOffset"])
        deltas: list[bytes] = []
        files = [name]
        for dname in self._list(self._delta_prefix(partition)):
            try:
                dheader, payload = self._unpack(partition, dname, self._read(dname))
            except FileNotFoundError:  # deleted by a writer meanwhile
                continue
            if dheader.get("baseId") != base_id:
                continue  # left over from an older base
            if dheader["seq"] != len(deltas) + 1:
                break
            deltas.append(payload)
            files.append(dname)
            next_offset = int(dheader["nextOffset"])
        return Checkpoint(partition, next_offset, snapshot, tuple(deltas), tuple(files))
