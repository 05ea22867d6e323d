"""Snapshot blobs of the stream state: the version, and loading them as data, not code.

:meth:`~ray_app.state.shard.SessionShard.restore` unpickles with an allowlist of the state's own
classes (the Python docs' "Restricting Globals"): a blob that names anything else
(``os.system``, ``builtins.eval``...) is refused with :class:`SnapshotRefused` before anything it
names is looked up.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

from ray_app.errors import OnrampError

if TYPE_CHECKING:
    from ray_app.state.shard import SessionShard

__all__ = [
    "ALLOWED_CLASSES",
    "READABLE_VERSIONS",
    "SNAPSHOT_VERSION",
    "SnapshotRefused",
    "begin_base",
    "dump_base",
    "dump_delta",
    "load_blob",
    "load_into",
]

#: 8: a base snapshot is pickles one after the other: the state without its profiles and its
#: reward join, the profiles in slices, then the join (see :func:`begin_base`); deltas are as in
#: 7. 7: compact per-user state (issue 18): dedupe remembers 64-bit hashes of the ids, profiles
#: pickle as flat tuples with relative times (:mod:`ray_app.state.packing`), heaps that index
#: other fields are rebuilt on restore. 6: signed checkpoints, restricted unpickling, profile
#: eviction and caps; identity stitching added fields with defaults (a version-6 snapshot from
#: before it restores with no aliases and no merges). 5 and older are refused: they were written
#: unsigned.
SNAPSHOT_VERSION = 8

#: Versions :func:`load_blob` reads: this one, 7, and 6, whose objects restore field by field
#: and are converted as they load (ids hashed, heaps kept); the next snapshot is written as 8. An
#: Onramp that reads only 7 refuses a version-8 blob by its version, with a clear error (it
#: would otherwise load a base without its pending decisions).
READABLE_VERSIONS = frozenset({6, 7, SNAPSHOT_VERSION})


class SnapshotRefused(OnrampError, ValueError):
    """A snapshot blob that :meth:`SessionShard.restore` will not load; ``index`` says which
    (0: the base, n: the n-th delta)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message, index=index)
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.index, self.message))


#: (module, name) of every class a snapshot may name: the state's own classes. Containers (dict,
#: list, tuple, set, frozenset) and scalars are pickle opcodes and need no entry.
ALLOWED_CLASSES = frozenset(
    {
        ("ray_app.records.features", "PackedFeatures"),
        ("ray_app.records.features", "SparseFeatures"),
        ("ray_app.state.dedupe", "Deduplicator"),
        ("ray_app.state.event", "Event"),
        ("ray_app.state.ordering", "Reorderer"),
        ("ray_app.state.ordering", "SessionCursor"),
        ("ray_app.state.profile", "Profile"),
        ("ray_app.state.profile", "ProfileConfig"),
        ("ray_app.state.profile", "StepStats"),
        ("ray_app.state.rewards", "LoggedOutcome"),
        ("ray_app.state.rewards", "PendingDecision"),
        ("ray_app.state.rewards", "_pending"),
        ("ray_app.state.rewards", "RewardJoin"),
        ("ray_app.state.config", "ShardStats"),
        ("ray_app.state.config", "StateConfig"),
        ("ray_app.state.shard", "ShardStats"),  # snapshots written before they moved
        ("ray_app.state.shard", "StateConfig"),
        ("ray_app.state.windows", "SessionWindows"),
        ("ray_app.state.windows", "TumblingCounts"),
        ("validation.batch", "DataQuality"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
)


class _StateUnpickler(pickle.Unpickler):
    """Unpickles only :data:`ALLOWED_CLASSES` ("Restricting Globals", in the pickle docs)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_CLASSES:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which is not a class of the stream state "
                "(refused without loading it)"
            )
        return super().find_class(module, name)


def load_blob(data: bytes | io.BytesIO, index: int) -> tuple[int, str, Any]:
    """The (version, kind, body) a blob starts with (a stream: read from where it stands)."""
    what = "the base snapshot" if index == 0 else f"delta {index}"
    stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    try:
        loaded = _StateUnpickler(stream).load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError...: bytes we do not load
        raise SnapshotRefused(index, f"{what} does not load: {exc}") from None
    if not isinstance(loaded, tuple) or len(loaded) != 3 or loaded[0] not in READABLE_VERSIONS:
        version = loaded[0] if isinstance(loaded, tuple) and loaded else "?"
        readable = " and ".join(str(v) for v in sorted(READABLE_VERSIONS))
        raise SnapshotRefused(
            index, f"{what} is snapshot version {version}; this Onramp reads {readable}"
        )
    return loaded


_NOT_PICKLED = frozenset(
    {"checks", "_touched", "_expiry", "_alias_expiry", "_aliases_touched", "_stamps"}
)
_NOT_IN_DELTA = _NOT_PICKLED | {"profiles", "dedupe", "rewards", "aliases"}


def dump_base(shard: SessionShard, rebase: bool) -> bytes:
    """:meth:`SessionShard.snapshot <ray_app.state.shard.SessionShard.snapshot>`."""
    return begin_base(shard, rebase)()


_PROTOCOL = pickle.HIGHEST_PROTOCOL

#: Profiles in each pickle of a base snapshot's profiles: a worker holds its state lock for one
#: slice at a time (about 20 us a profile: 5 ms a slice), not for every profile of a partition.
PROFILE_SLICE = 256


def _nothing() -> None:
    return None


def begin_base(shard: SessionShard, rebase: bool) -> Finish:
    """A base snapshot in two steps: this call marks the moment (the deltas after the base start
    here), and the call it returns pickles the state: its profiles :data:`PROFILE_SLICE` at a
    time, each slice inside ``hold()`` and followed by ``between()``, everything else outside
    it; it gives the blob.

    A partition holds tens of thousands of profiles, ids and pending decisions; pickled at once
    under the lock that profile reads wait on, they held ``/v1/decide`` for hundreds of
    milliseconds a base. Only the thread that applies records changes the state, and it applies
    nothing until the blob is done, so a worker takes the first step under its lock and the
    second with the lock taken for each slice of profiles only: a read advances a profile's
    windows as of the watermark, which does not move meanwhile (a profile pickled before or
    after such a read restores to the same reads), and touches nothing else; pickling changes
    nothing. The blob is one moment of the state.

    >>> from ray_app.state import SessionShard
    >>> shard = SessionShard(0)
    >>> finish = begin_base(shard, rebase=True)
    >>> SessionShard.restore(finish()).rewards.stats() == shard.rewards.stats()
    True
    """
    profiles = shard.profiles
    users = list(profiles)  # which users has no reason to change until records apply again
    slices = [users[i : i + PROFILE_SLICE] for i in range(0, len(users), PROFILE_SLICE)]
    if rebase:  # later deltas start here
        shard.dedupe.added = []
        shard._touched = set()
        shard._aliases_touched = set()
        shard.rewards.reset_changes()

    def finish(
        hold: Callable[[], AbstractContextManager[Any]] = nullcontext,
        between: Callable[[], None] = _nothing,
    ) -> bytes:
        skipped = _NOT_PICKLED | {"rewards", "profiles"}
        state = {k: v for k, v in shard.__dict__.items() if k not in skipped}
        state["aliases"] = _pack_aliases(shard.aliases)
        state["profiles"] = len(slices)  # the pickles of profiles that follow this one
        if shard.dedupe.added:  # a measure (rebase=False): without the ids a delta owes
            state["dedupe"] = _without_added(shard.dedupe)
        parts = [pickle.dumps((SNAPSHOT_VERSION, "base", state), protocol=_PROTOCOL)]
        for some in slices:
            with hold():
                parts.append(pickle.dumps({u: profiles[u] for u in some}, protocol=_PROTOCOL))
            between()
        parts.append(pickle.dumps(shard.rewards, protocol=_PROTOCOL))
        return b"".join(parts)

    return finish


def _without_added(dedupe: Any) -> Any:
    """A shallow copy of ``dedupe`` with no ids owed to a delta (the original is untouched: a
    measure runs beside the thread that owns it)."""
    clone = object.__new__(type(dedupe))
    clone.__dict__.update(dedupe.__dict__)
    clone.added = []
    return clone


class Finish(Protocol):
    """The second step of :func:`begin_base`."""

    def __call__(
        self,
        hold: Callable[[], AbstractContextManager[Any]] = ...,
        between: Callable[[], None] = ...,
    ) -> bytes: ...


def dump_delta(shard: SessionShard) -> bytes:
    """:meth:`SessionShard.snapshot_delta <ray_app.state.shard.SessionShard.snapshot_delta>`."""
    touched, shard._touched = shard._touched, set()
    meta = {k: v for k, v in shard.__dict__.items() if k not in _NOT_IN_DELTA}
    aliases, shard._aliases_touched = shard._aliases_touched, set()
    delta = (
        meta,
        {u: shard.profiles.get(u) for u in touched},  # None: evicted
        shard.dedupe.take_added(),
        shard.dedupe.evicted_early,
        shard.rewards.take_delta(),
        {a: shard.aliases.get(a) for a in aliases},  # None: expired
    )
    return pickle.dumps((SNAPSHOT_VERSION, "delta", delta), protocol=pickle.HIGHEST_PROTOCOL)


def load_into(shard: SessionShard, data: bytes, deltas: Iterable[bytes]) -> None:
    """Fill a bare shard from a base snapshot and its deltas (see ``SessionShard.restore``)."""
    stream = io.BytesIO(data)
    version, kind, state = load_blob(stream, 0)
    if kind != "base":
        raise SnapshotRefused(0, "restore() needs a base snapshot first, then its deltas")
    if not isinstance(state, dict):
        raise SnapshotRefused(0, f"the base snapshot's state is a {type(state).__name__}")
    if version >= 8:  # the profiles, then the reward join, follow the state (begin_base)
        state["profiles"], state["rewards"] = _load_rest(stream, state.get("profiles"))
    shard.aliases, shard.identity = {}, {}  # snapshots from before identity stitching
    shard.__dict__.update(state)
    if isinstance(shard.aliases, tuple):  # version 7 and 8 (6 has the dict itself)
        shard.aliases = _unpack_aliases(shard.aliases)
    shard._touched = set()
    shard._aliases_touched = set()
    for i, d in enumerate(deltas, start=1):
        _, kind, body = load_blob(d, i)
        if kind != "delta":
            raise SnapshotRefused(i, "a base snapshot where a delta was expected")
        meta, profiles, added, evicted, join, *more = body
        for old, alias in (more[0] if more else {}).items():
            if alias is None:
                shard.aliases.pop(old, None)
            else:
                shard.aliases[old] = alias
        shard.__dict__.update(meta)
        for user, profile in profiles.items():
            if profile is None:
                shard.profiles.pop(user, None)
            else:
                shard.profiles[user] = profile
        shard.dedupe.replay(added, shard.watermark, evicted)
        shard.rewards.apply_delta(join)
    shard.rebuild_alias_expiry()


def _load_rest(stream: io.BytesIO, slices: Any) -> tuple[dict[str, Any], Any]:
    """The profiles and the reward join a version-8 base holds after its state."""
    from ray_app.state.profile import Profile
    from ray_app.state.rewards import RewardJoin

    if isinstance(slices, bool) or not isinstance(slices, int) or slices < 0:
        raise SnapshotRefused(0, f"the base snapshot names {slices!r} slices of profiles")
    profiles: dict[str, Any] = {}
    try:
        for _ in range(slices):
            part = _StateUnpickler(stream).load()
            if not isinstance(part, dict) or not all(type(p) is Profile for p in part.values()):
                raise ValueError("a slice of profiles is not a dict of profiles")
            profiles.update(part)
        join = _StateUnpickler(stream).load()
    except Exception as exc:
        raise SnapshotRefused(
            0, f"the base snapshot's profiles or reward join do not load: {exc}"
        ) from None
    if not isinstance(join, RewardJoin) or stream.read(1):
        raise SnapshotRefused(0, "the base snapshot does not end with its reward join")
    return profiles, join


def _pack_aliases(aliases: dict[str, tuple[str, int]]) -> tuple[Any, ...]:
    """Merged id -> (the id it went to, last time) as one flat tuple, each time as the difference
    from the previous one's (aliases are made in event-time order: small numbers)."""
    flat: list[Any] = []
    last = 0
    for old, (new, t) in aliases.items():
        flat += (old, new, t - last)
        last = t
    return tuple(flat)


def _unpack_aliases(flat: tuple[Any, ...]) -> dict[str, tuple[str, int]]:
    out = {}
    last = 0
    for i in range(0, len(flat), 3):
        last += flat[i + 2]
        out[flat[i]] = (flat[i + 1], last)
    return out
