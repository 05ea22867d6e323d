"""Bytes at paths under a filesystem URI: the local disk for plain paths and ``file://``, pyarrow's
filesystems (``s3://``, ``gs://``, ``hdfs://``, ...) for the rest. Used by the model registry, the
topic archiver and the readers of its archives (``onramp report``, ``onramp audit``).

Local writes go through a temporary file and a rename (a reader never sees half a file); on
object stores a write is one PUT, which is atomic too.

>>> import tempfile
>>> store = Storage(tempfile.mkdtemp())
>>> store.write("a/b.txt", b"hi"); store.read("a/b.txt"), store.read("a/nope.txt")
(b'hi', None)
>>> store.subdirs(""), store.files("a"), store.is_file(), Storage(store.path("a/b.txt")).is_file()
(['a'], ['b.txt'], False, True)
>>> Storage("nope://x")
Traceback (most recent call last):
...
ray_app.errors.FieldError: uri: cannot open 'nope://x': ...
"""

from __future__ import annotations

import os
import select
import stat
import tempfile
from pathlib import Path
from typing import Any

from ray_app.errors import FieldError

__all__ = ["Storage", "read_stream", "write_file_atomically"]


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to the local ``path`` through a temporary file in its directory + rename,
    so a reader (a replica's model watcher) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other readers
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_stream(path: Path, wait_s: float = 0.25) -> bytes:
    """All bytes of a local file that is not a regular file (a FIFO, ``/dev/stdin``) up to its
    end, in a loop that never blocks in ``read`` for longer than ``wait_s``.

    Why: a Ctrl-C whose signal lands after the file is opened but before the blocking ``read``
    starts is only flagged by the C handler; the ``read`` then blocks with the
    ``KeyboardInterrupt`` pending until a writer closes, which for a FIFO may be never
    (``onramp evaluate --logs`` on a FIFO once outlived its Ctrl-C). Waiting in ``select``
    returns to Python at least every ``wait_s``, where the pending signal is raised.

    >>> r, w = os.pipe(); os.write(w, b"ab"); os.close(w)
    2
    >>> read_stream(Path(f"/dev/fd/{r}"))
    b'ab'
    """
    fd = os.open(path, os.O_RDONLY)  # a directory opens; reading it raises IsADirectoryError
    try:
        chunks: list[bytes] = []
        while True:
            ready, _, _ = select.select([fd], [], [], wait_s)
            if not ready:
                continue  # back in Python: a pending Ctrl-C is raised here
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def join_uri(uri: str, rel: str) -> str:
    """``uri`` with ``rel`` added to its path, its query (``?endpoint_override=...``) kept
    after it.

    >>> join_uri("s3://bucket/arch?endpoint_override=localhost:9000", "onramp.rewards/a.jsonl")
    's3://bucket/arch/onramp.rewards/a.jsonl?endpoint_override=localhost:9000'
    >>> join_uri("s3://bucket/arch/", "")
    's3://bucket/arch'
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    path = parts.path.rstrip("/") + (f"/{rel}" if rel else "")
    return urlunsplit(parts._replace(path=path))


def local_path(uri: str | Path) -> Path:
    """A plain path or a ``file://`` URI as an absolute local path, ``~`` expanded; a
    ``file://`` URI's path is percent-decoded, and its host must be this machine (empty, as in
    ``file:///data``, or ``localhost``). ``ValueError`` says why not.

    >>> str(local_path("file:///tmp/my%20dir")), str(local_path("file://localhost/tmp/x"))
    ('/tmp/my dir', '/tmp/x')
    >>> local_path("file://other-host/x")
    Traceback (most recent call last):
    ...
    ValueError: a file:// URI names a path on this machine (file:///path), not on host 'other-host'
    """
    text = str(uri)
    if text.startswith("file://"):
        from urllib.parse import urlsplit
        from urllib.request import url2pathname

        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                "a file:// URI names a path on this machine (file:///path), not on host "
                f"{parts.netloc!r}"
            )
        text = url2pathname(parts.path)
    return Path(text).expanduser().resolve()


class Storage:
    """Bytes under the root ``uri`` (see the module docstring). ``field`` names the setting or
    argument the URI came from, for errors."""

    def __init__(self, uri: str | Path, field: str = "uri") -> None:
        text = str(uri)
        self.uri = text
        self._fs: Any = None
        self.local: Path | None = None
        if "://" in text and not text.startswith("file://"):
            try:
                from pyarrow import fs as pafs

                self._fs, root = pafs.FileSystem.from_uri(text)
            except Exception as exc:
                raise FieldError(field, f"cannot open {text!r}: {exc}") from None
            self.root = root.rstrip("/")
        else:
            try:
                self.local = local_path(text)
            except ValueError as exc:
                raise FieldError(field, str(exc)) from None
            self.root = str(self.local)

    def exists(self) -> bool:
        """Whether the root exists."""
        if self.local is not None:
            return self.local.exists()
        from pyarrow import fs as pafs

        return bool(self._fs.get_file_info(self.root).type != pafs.FileType.NotFound)

    def is_file(self) -> bool:
        """Whether the root is a file: anything but a directory (a pipe, ``/dev/stdin`` too)."""
        if self.local is not None:
            return self.local.exists() and not self.local.is_dir()
        from pyarrow import fs as pafs

        return bool(self._fs.get_file_info(self.root).type == pafs.FileType.File)

    def path(self, rel: str) -> str:
        """The full path of ``rel`` on the filesystem (for readers such as Ray Data)."""
        return f"{self.root}/{rel}" if rel else self.root

    def read(self, rel: str) -> bytes | None:
        """The bytes at ``rel``, or ``None`` if there is no such file."""
        if self.local is not None:
            path = self.local / rel
            try:
                if stat.S_ISREG(path.stat().st_mode):
                    return path.read_bytes()
                return read_stream(path)
            except (FileNotFoundError, IsADirectoryError):
                return None
        try:
            with self._fs.open_input_stream(self.path(rel)) as f:
                return bytes(f.read())
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        """Write ``rel`` whole (atomically, see the module docstring)."""
        if self.local is not None:
            write_file_atomically(self.local / rel, data)
            return
        path = self.path(rel)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self._fs.open_output_stream(path) as f:
            f.write(data)

    def _entries(self, rel: str, dirs: bool) -> list[str]:
        if self.local is not None:
            d = self.local / rel
            if not d.is_dir():
                return []
            return sorted(p.name for p in d.iterdir() if p.is_dir() == dirs)
        from pyarrow import fs as pafs

        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        kind = pafs.FileType.Directory if dirs else pafs.FileType.File
        return sorted(i.base_name for i in self._fs.get_file_info(sel) if i.type == kind)

    def subdirs(self, rel: str) -> list[str]:
        """Names of the directories directly under ``rel`` (none if it does not exist)."""
        return self._entries(rel, True)

    def files(self, rel: str) -> list[str]:
        """Names of the files directly under ``rel`` (none if it does not exist)."""
        return self._entries(rel, False)
