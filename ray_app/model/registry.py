"""The model registry: versioned model bundles with their metadata at a filesystem URI, and the
promotion that decides which one the decision replicas serve.

Layout under the registry's URI (a local directory, ``file://...``, or any URI pyarrow's
filesystems read, e.g. ``s3://bucket/onramp/registry``)::

    versions/000001/model.onramp    the bundle (ModelBundle.to_bytes)
    versions/000001/meta.json       ModelVersion.to_json(): created, source, parent, data range,
                                    feature-schema hash, catalog digest, metrics, note
    promotions.json                 every promote and rollback, in order

**Serving the promoted version.** :meth:`ModelRegistry.promote` writes the bundle to the file the
decision replicas watch (``Settings.model_path``) through a temporary file and a rename, so every
replica hot-swaps it without a restart. The served bundle keeps its registry version as
``version`` (what ``/v1/decide`` answers as ``modelVersion``) and carries ``metadata["promotion"]``,
a counter that grows with every promote and rollback: replicas order models by
``(promotion, version)`` (:attr:`ModelBundle.serving_rank`), so a promotion of an older version,
or a rollback, still swaps in, while within one promotion the online learner's versions only go
forward.

**Versions** are integers allocated above every version the registry holds and above the version
currently served (the online learner counts up from the promoted version), so a freshly promoted
model is served under its own registry number.

One writer at a time: promotions and registrations from two processes at once are not
serialized (on object stores a write is atomic, a read-modify-write is not).

>>> import tempfile
>>> from ray_app.catalog import load_catalog
>>> from ray_app.features import FeatureSchema
>>> from ray_app.model import cold_start_bundle
>>> catalog = load_catalog(); schema = FeatureSchema.from_catalog(catalog)
>>> root = Path(tempfile.mkdtemp())
>>> reg = ModelRegistry(root / "registry")
>>> v1 = reg.register(cold_start_bundle(schema, catalog), source="train", metrics={"auc": 0.5})
>>> v2 = reg.register(cold_start_bundle(schema, catalog, seed=1), source="train", parent=1)
>>> [(v.version, v.source, v.parent) for v in reg.list()]
[(1, 'train', None), (2, 'train', 1)]
>>> serve = root / "treatment.onramp"
>>> reg.promote(2, serve, schema, catalog).version, reg.promote(1, serve, schema, catalog).epoch
(2, 2)
>>> served = ModelBundle.from_bytes(serve.read_bytes(), schema, catalog)
>>> served.version, served.metadata["promotion"]
(1, 2)
>>> reg.rollback(serve, schema, catalog).version
2
>>> reg.rollback(serve, schema, catalog)
Traceback (most recent call last):
...
ray_app.model.registry.RegistryError: rollback: no earlier promotion to roll back to (version 2 is the only one promoted)
>>> reg.get(7)
Traceback (most recent call last):
...
ray_app.model.registry.RegistryError: version: no version 7 in the registry (versions: 1, 2)
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import logging
import math
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ray_app.errors import FieldError
from ray_app.model.bundle import MAGIC, ModelBundle
from ray_app.storage import Storage, join_uri, write_file_atomically

log = logging.getLogger("onramp.registry")

if TYPE_CHECKING:
    from ray_app.catalog import Catalog
    from ray_app.config import Settings
    from ray_app.features import FeatureSchema

__all__ = [
    "ModelRegistry",
    "ModelVersion",
    "Promotion",
    "RegistryError",
    "read_header",
    "served_rank",
    "served_version",
    "write_file_atomically",
]

Source = Literal["train", "online"]
_SOURCES = ("train", "online")
_LEN = struct.Struct(">I")


class RegistryError(FieldError):
    """A registry operation that cannot be done: the ``field`` at fault and why. Picklable.

    >>> import pickle
    >>> pickle.loads(pickle.dumps(RegistryError("version", "no version 3"))).field
    'version'
    """

    http_status = 404


@dataclass(frozen=True)
class ModelVersion:
    """One registered model's metadata (the bundle itself is read with
    :meth:`ModelRegistry.load`).

    ``data``: what it was trained on (``uri``, ``records``, ``fromMs``, ``toMs``);
    ``metrics``: its evaluation (loss, AUC, policy value, ...); ``parent``: the version it was
    trained from (``None``: from scratch).
    """

    version: int
    created_at: float
    source: Source
    schema_hash: str
    catalog_digest: str
    parent: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "createdAt": self.created_at,
            "source": self.source,
            "schemaHash": self.schema_hash,
            "catalogDigest": self.catalog_digest,
            "parent": self.parent,
            "data": self.data,
            "metrics": self.metrics,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelVersion:
        """Read back, every field checked: ``meta.json`` can be edited by hand (a time past
        ``datetime``'s range, a list where a text belongs made ``onramp models list`` end in a
        traceback)."""
        try:
            created = float(d["createdAt"])
            dt.datetime.fromtimestamp(created, dt.UTC)  # finite, and a time datetime can hold
            if d["source"] not in _SOURCES:
                raise ValueError(f"source {d['source']!r:.40} is none of {', '.join(_SOURCES)}")
            for name in ("data", "metrics"):
                if not isinstance(d.get(name) or {}, dict):
                    raise ValueError(f"{name} is not an object")
            return cls(
                version=int(d["version"]),
                created_at=created,
                source=d["source"],
                schema_hash=str(d["schemaHash"]),
                catalog_digest=str(d["catalogDigest"]),
                parent=None if d.get("parent") is None else int(d["parent"]),
                data=dict(d.get("data") or {}),
                metrics=dict(d.get("metrics") or {}),
                note=str(d.get("note") or ""),
            )
        except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
            raise RegistryError("meta.json", f"unreadable version metadata: {exc!r}") from None


@dataclass(frozen=True)
class Promotion:
    """One promote or rollback: ``version`` became the served one as promotion ``epoch``."""

    version: int
    epoch: int
    at: float
    action: Literal["promote", "rollback"]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "epoch": self.epoch, "at": self.at, "action": self.action}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Promotion:
        action = d["action"]
        if action not in ("promote", "rollback"):
            raise ValueError(f"action must be promote or rollback, got {action!r}")
        return cls(int(d["version"]), int(d["epoch"]), float(d["at"]), action)


def read_header(data: bytes) -> dict[str, Any] | None:
    """The JSON header of model-bundle bytes without loading the weights (``None`` if they are
    not a readable bundle): enough to read a served file's version and promotion.

    >>> from ray_app.catalog import load_catalog
    >>> from ray_app.features import FeatureSchema
    >>> from ray_app.model import cold_start_bundle
    >>> c = load_catalog()
    >>> read_header(cold_start_bundle(FeatureSchema.from_catalog(c), c).to_bytes())["version"]
    0
    >>> read_header(b"junk") is None
    True
    """
    start = len(MAGIC) + _LEN.size
    if not data.startswith(MAGIC) or len(data) < start:
        return None
    (n,) = _LEN.unpack_from(data, len(MAGIC))
    try:
        head = json.loads(data[start : start + n])
    except ValueError:
        return None
    return head if isinstance(head, dict) else None


class ModelRegistry:
    """Model versions at ``uri`` (see the module docstring)."""

    def __init__(self, uri: str | Path) -> None:
        self._store = Storage(uri, field="registry.uri")
        self.uri = self._store.uri

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry at ``registry.uri`` (default ``<state_dir>/registry``)."""
        return cls(settings.registry_uri)

    # -- versions ------------------------------------------------------------------------------

    def versions(self) -> builtins.list[int]:
        return sorted(int(d) for d in self._store.subdirs("versions") if d.isdigit())

    def list(self) -> builtins.list[ModelVersion]:
        """Every version's metadata, oldest first; a version whose register was interrupted
        (its model file written, not its ``meta.json``) is left out, and logged."""
        out = []
        for v in self.versions():
            raw = self._store.read(f"versions/{v:06d}/meta.json")
            if raw is None:
                log.warning("registry %s: version %d is incomplete (no meta.json)", self.uri, v)
                continue
            out.append(self.get(v))
        return out

    def get(self, version: int) -> ModelVersion:
        """A version's metadata; :class:`RegistryError` naming the versions there are if unknown."""
        raw = self._store.read(f"versions/{version:06d}/meta.json")
        if raw is None:
            have = self.versions()
            if version in have:
                raise RegistryError(
                    "version",
                    f"version {version} is incomplete: its meta.json is missing (a register "
                    "that was interrupted); register the model again",
                )
            listed = ", ".join(map(str, have)) if have else "none: the registry is empty"
            raise RegistryError(
                "version", f"no version {version} in the registry (versions: {listed})"
            )
        try:
            meta = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # a hand-edited or half-written file
            raise RegistryError(f"versions/{version:06d}/meta.json", f"not JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise RegistryError(
                f"versions/{version:06d}/meta.json",
                f"expected a JSON object, got {type(meta).__name__}",
            )
        return ModelVersion.from_json(meta)

    def model_file(self, version: int) -> str:
        """Where a version's model file is: a local path, or a URI under a remote registry."""
        rel = f"versions/{version:06d}/model.onramp"
        local = self._store.local is not None
        return self._store.path(rel) if local else join_uri(self.uri, rel)

    def load(
        self, version: int, schema: FeatureSchema, catalog: Catalog, strict_catalog: bool = False
    ) -> ModelBundle:
        """A version's bundle, checked against ``schema`` and ``catalog``."""
        meta = self.get(version)
        if meta.schema_hash != schema.hash:
            raise RegistryError(
                "schema_hash",
                f"version {version} was trained on feature schema {meta.schema_hash}, the "
                f"current feature schema is {schema.hash}: retrain it on the current features",
            )
        raw = self._store.read(f"versions/{version:06d}/model.onramp")
        if raw is None:
            raise RegistryError("version", f"version {version} has metadata but no model file")
        return ModelBundle.from_bytes(raw, schema, catalog, strict_catalog)

    def register(
        self,
        bundle: ModelBundle,
        source: Source = "train",
        *,
        parent: int | None = None,
        data: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        note: str = "",
        above: int = 0,
    ) -> ModelVersion:
        """Store ``bundle`` as a new version (not promoted) and return its metadata.

        The version is above every registered one, above the promoted serving version and
        above ``above`` (pass the currently served version: see the module docstring).
        """
        if source not in _SOURCES:
            raise RegistryError("source", f"expected one of {_SOURCES}, got {source!r}")
        if parent is not None:
            self.get(parent)  # must exist
        metrics = {k: v for k, v in (metrics or {}).items()}
        for k, v in metrics.items():
            if isinstance(v, float) and not math.isfinite(v):
                metrics[k] = None  # JSON has no NaN
        version = max([0, above, *self.versions()]) + 1
        meta = ModelVersion(
            version=version,
            created_at=time.time(),
            source=source,
            schema_hash=bundle.schema_hash,
            catalog_digest=bundle.catalog_digest,
            parent=parent,
            data=dict(data or {}),
            metrics=metrics,
            note=note,
        )
        stored = ModelBundle(
            scorer=bundle.scorer,
            schema_hash=bundle.schema_hash,
            catalog_digest=bundle.catalog_digest,
            version=version,
            created_at=meta.created_at,
            metadata={**bundle.metadata, "registry": meta.to_json()},
            slot_actions=bundle.slot_actions,
        )
        self._store.write(f"versions/{version:06d}/model.onramp", stored.to_bytes())
        self._store.write(
            f"versions/{version:06d}/meta.json",
            json.dumps(meta.to_json(), indent=2, sort_keys=True).encode(),
        )
        return meta

    # -- promotion ------------------------------------------------------------------------------

    def history(self) -> builtins.list[Promotion]:
        """Every promote and rollback, oldest first."""
        raw = self._store.read("promotions.json")
        if raw is None:
            return []
        try:
            return [Promotion.from_json(d) for d in json.loads(raw)["history"]]
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise RegistryError("promotions.json", f"unreadable: {exc!r}") from None

    def _stack(self, history: builtins.list[Promotion]) -> builtins.list[int]:
        stack: builtins.list[int] = []
        for p in history:
            if p.action == "rollback" and stack:
                stack.pop()
            else:
                stack.append(p.version)
        return stack

    def _last_epoch(self) -> int:
        """The highest epoch a promotion ever took here, undone ones too (0: none)."""
        raw = self._store.read("promotions.json")
        try:
            last = json.loads(raw).get("lastEpoch", 0) if raw is not None else 0
        except (ValueError, AttributeError, RecursionError):
            return 0  # history() says what is wrong with the file
        return last if isinstance(last, int) and not isinstance(last, bool) else 0

    def promoted(self) -> Promotion | None:
        """The promotion in force (``None``: nothing promoted yet)."""
        history = self.history()
        return history[-1] if history else None

    def promote(
        self,
        version: int,
        serve_path: Path | None,
        schema: FeatureSchema,
        catalog: Catalog,
        *,
        _action: Literal["promote", "rollback"] = "promote",
        _history: builtins.list[Promotion] | None = None,
    ) -> Promotion:
        """Make ``version`` the served one: checked against the current feature schema and
        catalog (refused with :class:`RegistryError`, or
        :class:`~ray_app.model.ModelFileError` for a bundle that cannot serve them), then
        written atomically to ``serve_path`` (``None``: only recorded)."""
        bundle = self.load(version, schema, catalog)
        history = self.history() if _history is None else _history
        served = served_rank(serve_path)[0]
        epoch = max([0, served, self._last_epoch(), *(p.epoch for p in history)]) + 1
        promotion = Promotion(version, epoch, time.time(), _action)
        # the record first, then the served file, and the record undone if that fails: the
        # other way round, a failed record left the replicas serving a version the registry
        # did not name (rollback then went back past it)
        before = [p.to_json() for p in history]
        body = {"history": [*before, promotion.to_json()], "lastEpoch": epoch}
        self._store.write("promotions.json", json.dumps(body, indent=2).encode())
        if serve_path is not None:
            bundle.metadata = {**bundle.metadata, "promotion": epoch, "registryVersion": version}
            try:
                write_file_atomically(serve_path, bundle.to_bytes())
            except BaseException:
                # undone, but its epoch stays used: a learner may have adopted it meanwhile,
                # and skips an epoch it has seen (a later promotion must be a higher one)
                undone = {"history": before, "lastEpoch": epoch}
                self._store.write("promotions.json", json.dumps(undone, indent=2).encode())
                raise
        return promotion

    def rollback(
        self, serve_path: Path | None, schema: FeatureSchema, catalog: Catalog
    ) -> Promotion:
        """Serve the previously promoted version again (as a new promotion); repeated rollbacks
        walk further back. :class:`RegistryError` when there is nothing to roll back to."""
        history = self.history()
        stack = self._stack(history)
        if not stack:
            raise RegistryError("rollback", "nothing has been promoted yet")
        if len(stack) < 2:
            raise RegistryError(
                "rollback",
                f"no earlier promotion to roll back to (version {stack[-1]} is the only one "
                "promoted)",
            )
        return self.promote(
            stack[-2], serve_path, schema, catalog, _action="rollback", _history=history
        )

    def promoted_bundle(self, schema: FeatureSchema, catalog: Catalog) -> ModelBundle | None:
        """The promoted version's bundle as served (with ``metadata["promotion"]``), or ``None``."""
        p = self.promoted()
        if p is None:
            return None
        bundle = self.load(p.version, schema, catalog)
        bundle.metadata = {**bundle.metadata, "promotion": p.epoch, "registryVersion": p.version}
        return bundle


def _served_header(path: Path | None) -> dict[str, Any]:
    """The header of the model file at ``path`` ({} when there is none or it is unreadable)."""
    if path is None:
        return {}
    try:
        head = read_header(path.read_bytes())
    except OSError:
        return {}
    return head if isinstance(head, dict) else {}


def _int_or_zero(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def served_version(path: Path | None) -> int:
    """The version of the model file at ``path`` (0 when there is none or it is unreadable)."""
    return served_rank(path)[1]


def served_rank(path: Path | None) -> tuple[int, int]:
    """The :attr:`~ray_app.model.ModelBundle.serving_rank` of the model file at ``path``
    (``(0, 0)`` when there is none or it is unreadable): what running replicas hold."""
    head = _served_header(path)
    meta = head.get("metadata")
    promotion = meta.get("promotion") if isinstance(meta, dict) else None
    return _int_or_zero(promotion), _int_or_zero(head.get("version"))
