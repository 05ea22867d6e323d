"""The model-file watcher: keeps the model each arm serves in step with its published file.

Each arm (``treatment``, ``treatment_b``) may have a model file; the watcher loads it at start,
then polls its modification time and hot-swaps a newer version into the decider. A file that is
missing, broken or not newer leaves the current model serving. No Serve here: the ingress starts
and stops it, and :meth:`ModelWatcher.load` is also called directly (on ``reconfigure``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ray_app.model.bundle import ModelBundle, ModelFileError

__all__ = ["ModelWatcher", "Swappable"]

log = logging.getLogger("onramp.model")


class Swappable(Protocol):
    """What the watcher swaps models into (:class:`ray_app.decide.Decider`)."""

    schema: Any
    catalog: Any
    bundles: Mapping[str, ModelBundle]

    def swap(self, arm: str, bundle: ModelBundle | None, force: bool = False) -> bool: ...


def _ignore(arm: str, version: int) -> None:
    return None


class ModelWatcher:
    """Loads ``paths`` (arm -> model file, ``None`` for the built-in model) into ``target``, now
    and every ``poll_s`` seconds once :meth:`start` ed; ``on_version(arm, version)`` hears the
    version each arm serves after every load."""

    def __init__(
        self,
        target: Swappable,
        paths: Mapping[str, Path | None],
        poll_s: float,
        on_version: Callable[[str, int], None] = _ignore,
    ) -> None:
        self.target = target
        self.paths: dict[str, Path | None] = dict(paths)
        self.poll_s = poll_s
        self.on_version = on_version
        self.stopped = threading.Event()
        self._mtimes: dict[str, tuple[int, int, int]] = {}
        self._thread: threading.Thread | None = None
        #: Arms an operator pointed at another file: its next load serves it whatever its
        #: version (a file of an older version is how to go back to one), ``None`` the cold start.
        self._named: set[str] = set()
        self._missing: set[str] = set()
        self._lock = threading.RLock()

    def set_path(self, arm: str, path: Path | None, named: bool = False) -> None:
        """Serve ``arm`` from ``path`` from the next :meth:`load` on, even if unchanged since;
        ``named`` (``user_config`` changed it): whatever that file's version."""
        with self._lock:  # the path and its flag together, never half seen by a load
            self.paths[arm] = path
            self._mtimes.pop(arm, None)
            self._missing.discard(arm)
            if named:
                self._named.add(arm)

    def load(self) -> None:
        """Swap in every model file that changed since the last load and is newer."""
        with self._lock:  # the polling thread and reconfigure's load, one at a time
            self._load()

    def _load(self) -> None:
        for arm, path in self.paths.items():
            if path is None:
                if arm in self._named:  # the built-in model named: the cold start again
                    self._named.discard(arm)
                    self.target.swap(arm, None, force=True)
                    log.info("arm %s now serves the cold start", arm)
                self.on_version(arm, self.target.bundles[arm].version)
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # not published yet, or this replica cannot see it:
                if arm in self._named and arm not in self._missing:
                    self._missing.add(arm)  # said once; served once it appears
                    log.error("%s (arm %s): no such file; kept the current model", path, arm)
                # keep serving what we have, and say which version that is (a replica that
                # never reports one is invisible to the alert on replicas left behind)
                self.on_version(arm, self.target.bundles[arm].version)
                continue
            # the inode too: two files written by an atomic replace within one tick of the
            # file system's clock (a promote and a publish; coarse on network file systems)
            # have the same mtime, never the same inode
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
            if self._mtimes.get(arm) == seen:
                continue
            if self._load_file(arm, path):
                self._mtimes[arm] = seen
            self.on_version(arm, self.target.bundles[arm].version)

    def _load_file(self, arm: str, path: Path) -> bool:
        """Whether this file is settled: read (served, or refused for what it holds), not a
        read that failed (tried again at the next poll)."""
        target = self.target
        named = arm in self._named
        try:
            bundle = ModelBundle.from_bytes(path.read_bytes(), target.schema, target.catalog, False)
            swapped = target.swap(arm, bundle, force=named)
            # forced once, when it served: later loads follow the file's versions (a read that
            # failed, a half-written copy, leaves the next one forced)
            self._named.discard(arm)
            if swapped:
                log.info("arm %s now serves model version %d", arm, bundle.version)
            else:
                log.warning(
                    "%s: version %d is not newer than %d; kept the current model",
                    path,
                    bundle.version,
                    target.bundles[arm].version,
                )
        except ModelFileError as exc:
            log.error("%s: not loaded, kept the current model: %s", path, exc)
        except OSError as exc:
            log.error("%s: not read, kept the current model (tried again): %s", path, exc)
            return False
        return True

    def start(self) -> None:
        """Poll in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _watch(self) -> None:
        while not self.stopped.wait(self.poll_s):
            try:
                self.load()
            except Exception:  # a broken file must never stop the watcher
                log.exception("model watcher")
