"""What an embedded run (Onramp's own broker) keeps from earlier runs in ``state_dir``, what it
starts afresh, and the clean start.

The embedded broker keeps its topics in memory, so whatever points into an earlier run's topics
is of no use to a new one: stream checkpoints (partition offsets) and learner states (reward
offsets) of earlier runs are removed when a run starts (a run still going, in another process,
keeps its own). Kept, and said so: the served model file that the last run's learner published
(the new run decides with it, and its learner starts from it; one learned on another feature
schema or catalog, as after an upgrade that changed the features, is named as not served: the
learner and the replicas refuse it and start from the cold-start policy) and the model
registry. A fresh start (``onramp up --fresh``, ``onramp demo --fresh``) also removes the served model file when
it lies in ``state_dir``, so the run starts from the cold-start policy.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> (d / "checkpoints" / "embedded-1700000000").mkdir(parents=True)   # an old run's
>>> notes = prepare(d, d / "models" / "treatment.onramp", fresh=False)
>>> (d / "checkpoints" / "embedded-1700000000").exists(), notes[0]
(False, 'removed 1 earlier embedded run (checkpoints, learner state): their broker is gone')
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LOCK_NAME", "RUN_PREFIX", "claim", "prepare", "release", "run_name"]

#: Names of the per-run folders under ``checkpoints/`` and files under ``learner/``.
RUN_PREFIX = "embedded-"
#: The file in ``state_dir`` naming the process whose embedded run uses it (its pid).
LOCK_NAME = "run.pid"


def claim(state_dir: Path) -> None:
    """Take ``state_dir`` for this process's embedded run, or refuse (:class:`OnrampError`)
    while a run still going in another process holds it: two runs in one folder publish to
    one served model file (each run's replicas would serve the other's, learned from another
    broker's traffic), and a fresh start would remove the one the other run serves. The hold
    is an exclusive ``flock`` on ``run.pid`` (which names the holder), kept until
    :meth:`release` or the end of the process, so a crashed run leaves nothing stale.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> claim(d); (d / LOCK_NAME).read_text() == str(os.getpid())
    True
    >>> release(d); (d / LOCK_NAME).exists()
    False
    """
    import fcntl

    from ray_app.errors import OnrampError

    key = str(state_dir.resolve())
    if key in _HELD:
        return
    lock = state_dir / LOCK_NAME
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise OnrampError(
            f"another Onramp run (pid {holder}) uses the state directory {key}: its served "
            "model, learner state and broker log are there. Stop it, or give this run its own "
            "(ONRAMP_STATE_DIR, or state_dir in the settings file)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[key] = fd


def release(state_dir: Path) -> None:
    """Give ``state_dir`` back (when this process holds it)."""
    fd = _HELD.pop(str(state_dir.resolve()), None)
    if fd is None:
        return
    (state_dir / LOCK_NAME).unlink(missing_ok=True)  # still ours: the lock is held until close
    os.close(fd)


#: State directories this process holds -> the open, locked ``run.pid``.
_HELD: dict[str, int] = {}


def run_name() -> str:
    """This run's name: ``embedded-<start time>-<pid>`` (the pid tells a live run's files)."""
    return f"{RUN_PREFIX}{int(time.time())}-{os.getpid()}"


def prepare(
    state_dir: Path,
    model_path: Path,
    fresh: bool,
    refusal: Callable[[Path], str | None] | None = None,
) -> list[str]:
    """Remove what no embedded run can use (and, with ``fresh``, the served model); returns
    one line per thing kept or removed, for the command to print. ``refusal`` says why the
    served model cannot be served now (another feature schema or catalog), ``None`` if it can.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "m.onramp").write_bytes(b"x")
    1
    >>> note = prepare(d, d / "m.onramp", False, lambda p: "schema_hash: trained on another")[0]
    >>> note.startswith("kept, not served"), "cannot use (schema_hash: trained on another)" in note
    (True, True)
    """
    notes: list[str] = []
    gone = 0
    for sub in ("checkpoints", "learner"):
        for path in sorted((state_dir / sub).glob(f"{RUN_PREFIX}*")):
            if _live(path.name):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            gone += 1
    if gone:
        runs = "run" if gone == 1 else "runs"
        notes.append(
            f"removed {gone} earlier embedded {runs} (checkpoints, learner state): "
            "their broker is gone"
        )
    model_path = model_path.resolve()
    if model_path.exists():
        in_state = model_path.is_relative_to(state_dir.resolve())
        if fresh and in_state:
            model_path.unlink()
            notes.append(f"fresh start: removed the served model {model_path}; cold-start policy")
        else:
            saved = dt.datetime.fromtimestamp(model_path.stat().st_mtime).isoformat(
                sep=" ", timespec="seconds"
            )
            why = refusal(model_path) if refusal is not None else None
            if why is not None:
                notes.append(
                    f"kept, not served: the model file {model_path} (saved {saved}), which an "
                    f"earlier run learned on what this one cannot use ({why}); the learner "
                    "starts from the cold-start policy and replaces it"
                )
            else:
                notes.append(
                    f"kept: the served model {model_path} (saved {saved}), which the last run "
                    "learned; the learner starts from it"
                    + (" (--fresh starts from the cold-start policy)" if in_state else "")
                )
    registry = state_dir / "registry"
    if registry.exists():
        notes.append(f"kept: the model registry {registry}")
    return notes


def _live(name: str) -> bool:
    """Whether the run that named a file ``embedded-<time>-<pid>`` is still running here."""
    parts = name[len(RUN_PREFIX) :].split("-")
    if len(parts) != 2 or not parts[1].isdigit():
        return False  # an older name without the pid: its run is over
    pid = int(parts[1])
    return pid != os.getpid() and _alive(pid)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True
