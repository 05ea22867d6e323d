"""A model bundle: a scorer plus what it was trained for (feature schema, catalog) and its version.

On disk or on the wire a bundle is ``MAGIC``, a 4-byte big-endian header length, a JSON header and
the scorer's ``state_dict`` written by ``torch.save`` (read back with ``weights_only=True``: no
pickled code runs). Reading checks everything before trusting anything, and every problem is a
:class:`ModelFileError` naming the field at fault, never a torch exception.

>>> from ray_app.catalog import load_catalog
>>> from ray_app.features import FeatureSchema
>>> catalog = load_catalog()
>>> schema = FeatureSchema.from_catalog(catalog)
>>> bundle = cold_start_bundle(schema, catalog, seed=0)
>>> again = ModelBundle.from_bytes(bundle.to_bytes(), schema, catalog)
>>> again.version, again.schema_hash == schema.hash
(0, True)
>>> ModelBundle.from_bytes(b"PK\\x03\\x04 a zip file", schema, catalog)
Traceback (most recent call last):
...
ray_app.model.bundle.ModelFileError: magic: not an Onramp model file (it starts with b'PK\\x03\\x04 a zip f')
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ray_app.errors import FieldError
from ray_app.model.scorer import Scorer

if TYPE_CHECKING:
    from ray_app.catalog import Catalog
    from ray_app.features import FeatureSchema

__all__ = ["FORMAT", "MAGIC", "ModelBundle", "ModelFileError", "cold_start_bundle"]

MAGIC = b"ONRAMPMB"
FORMAT = 1
_LEN = struct.Struct(">I")


class ModelFileError(FieldError):
    """Model bytes that cannot be served: which ``field`` and why.

    >>> import pickle
    >>> err = pickle.loads(pickle.dumps(ModelFileError("schema_hash", "model was trained on ...")))
    >>> err.field, str(err)
    ('schema_hash', 'schema_hash: model was trained on ...')
    """

    http_status = 422


def _slot_actions(catalog: Catalog) -> dict[str, list[str]]:
    return {name: list(s.action_ids) for name, s in catalog.slots.items()}


@dataclass
class ModelBundle:
    """A scorer with its provenance. ``version`` increases with every model a learner publishes.

    ``slot_actions`` (slot -> action ids, in head order) is what the heads were trained for;
    ``metadata`` is free JSON (metrics, training data range, ...).
    """

    scorer: Scorer
    schema_hash: str
    catalog_digest: str
    version: int
    created_at: float = field(default_factory=time.time)
    metadata: dict[str, Any] = field(default_factory=dict)
    slot_actions: dict[str, list[str]] = field(default_factory=dict)

    @property
    def serving_rank(self) -> tuple[int, int]:
        """``(promotion, version)``: replicas swap in a bundle only if its rank is higher.

        ``metadata["promotion"]`` grows with every registry promote or rollback (0 without one),
        so a promoted older version still replaces what the online learner published.

        >>> from ray_app.catalog import load_catalog
        >>> from ray_app.features import FeatureSchema
        >>> c = load_catalog()
        >>> b = cold_start_bundle(FeatureSchema.from_catalog(c), c)
        >>> b.serving_rank, ModelBundle(b.scorer, "h", "d", 3, metadata={"promotion": 2}).serving_rank
        ((0, 0), (2, 3))
        """
        p = self.metadata.get("promotion", 0)
        return (p if isinstance(p, int) and not isinstance(p, bool) else 0, self.version)

    def header(self) -> dict[str, Any]:
        """The JSON header of :meth:`to_bytes` (without the weights' size and checksum)."""
        return {
            "format": FORMAT,
            "schema_hash": self.schema_hash,
            "catalog_digest": self.catalog_digest,
            "version": self.version,
            "created_at": self.created_at,
            "metadata": self.metadata,
            "architecture": self.scorer.architecture,
            "slot_actions": self.slot_actions,
            # the heads' slots in order (the JSON writes slot_actions sorted by name); None
            # for a bundle that names no actions (its heads go by the catalog's order)
            "slot_order": list(self.slot_actions) or None,
        }

    def to_bytes(self) -> bytes:
        """The bundle as bytes (see the module docstring for the layout)."""
        buf = io.BytesIO()
        torch.save(self.scorer.state_dict(), buf)
        weights = buf.getvalue()
        head = self.header()
        head["weights_bytes"] = len(weights)
        head["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        try:
            text = json.dumps(head, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ModelFileError("metadata", f"not JSON-serializable: {exc}") from None
        return MAGIC + _LEN.pack(len(text)) + text + weights

    def check(self, schema: FeatureSchema, catalog: Catalog, strict_catalog: bool = True) -> None:
        """Raise :class:`ModelFileError` unless this bundle can serve ``schema`` and ``catalog``.

        With ``strict_catalog=False`` a different catalog digest is accepted as long as every
        slot has the same actions in the same order (e.g. only descriptions or rules changed).
        """
        _check_compatible(
            self.schema_hash,
            self.catalog_digest,
            self.scorer.architecture,
            self.slot_actions,
            schema,
            catalog,
            strict_catalog,
            list(self.slot_actions) or None,
        )

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        schema: FeatureSchema,
        catalog: Catalog,
        strict_catalog: bool = True,
    ) -> ModelBundle:
        """Read a bundle written by :meth:`to_bytes` for serving ``schema`` and ``catalog``.

        Raises :class:`ModelFileError` for anything but a complete, intact bundle trained on this
        feature schema and catalog (see :meth:`check` for ``strict_catalog``).
        """
        data, head, weights = _split(data)
        version, created, metadata, arch, slot_actions = _read_header(head)
        slot_order = head.get("slot_order")
        if slot_order is not None and not (
            isinstance(slot_order, list) and all(isinstance(n, str) for n in slot_order)
        ):
            raise ModelFileError("slot_order", "expected a list of slot names")
        _check_compatible(
            head["schema_hash"],
            head["catalog_digest"],
            arch,
            slot_actions,
            schema,
            catalog,
            strict_catalog,
            slot_order,
        )
        scorer = _load_weights(weights, head, arch)
        return cls(
            scorer=scorer,
            schema_hash=head["schema_hash"],
            catalog_digest=head["catalog_digest"],
            version=version,
            created_at=created,
            metadata=metadata,
            # in the catalog's (= the heads') order: the JSON header stores them sorted by name
            slot_actions={
                name: list(slot_actions[name]) for name in catalog.slots if name in slot_actions
            },
        )


def _split(data: Any) -> tuple[bytes, dict[str, Any], bytes]:
    """(the bytes, the JSON header, the weights) of a model file; checks the framing."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ModelFileError("data", f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise ModelFileError("magic", f"truncated: {len(data)} bytes")
        raise ModelFileError("magic", f"not an Onramp model file (it starts with {data[:12]!r})")
    start = len(MAGIC) + _LEN.size
    if len(data) < start:
        raise ModelFileError("header", f"truncated: {len(data)} bytes")
    (n,) = _LEN.unpack_from(data, len(MAGIC))
    if len(data) < start + n:
        raise ModelFileError(
            "header", f"truncated: the header needs {n} bytes, {len(data) - start} are left"
        )
    try:
        head = json.loads(data[start : start + n])
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError("header", f"not JSON: {exc}") from None
    except RecursionError:
        raise ModelFileError("header", "not JSON Onramp writes: nested too deeply") from None
    if not isinstance(head, dict):
        raise ModelFileError("header", f"expected a JSON object, got {type(head).__name__}")
    fmt = head.get("format")
    if fmt != FORMAT:
        raise ModelFileError(
            "format", f"format {fmt!r} is not the one this Onramp reads ({FORMAT})"
        )
    return data, head, data[start + n :]


def _read_header(head: dict[str, Any]) -> tuple[int, float, dict[str, Any], dict[str, Any], Any]:
    """(version, created at, metadata, architecture, slot actions), each checked."""
    _want(head, "schema_hash", str)
    _want(head, "catalog_digest", str)
    version = _want(head, "version", int)
    if version < 0:
        raise ModelFileError("version", f"must be >= 0, got {version}")
    created = _want(head, "created_at", int | float)
    if not math.isfinite(created):
        raise ModelFileError("created_at", f"must be a finite time, got {created}")
    metadata = _want(head, "metadata", dict)
    arch = _want(head, "architecture", dict)
    slot_actions = _want(head, "slot_actions", dict)
    _want(head, "weights_bytes", int)
    _want(head, "weights_sha256", str)
    for key, least in (("dim", 1), ("hidden", 0)):
        v = arch.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < least:
            raise ModelFileError(
                f"architecture.{key}", f"expected an integer >= {least}, got {v!r}"
            )
    sizes = arch.get("slot_sizes")
    if not (
        isinstance(sizes, list)
        and sizes
        and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in sizes)
    ):
        raise ModelFileError(
            "architecture.slot_sizes", f"expected a list of positive integers, got {sizes!r}"
        )
    return version, float(created), metadata, arch, slot_actions


def _load_weights(weights: bytes, head: dict[str, Any], arch: dict[str, Any]) -> Scorer:
    """The scorer the weights describe: size and checksum as the header says, a state_dict of
    finite tensors that fits the architecture."""
    size, digest = head["weights_bytes"], head["weights_sha256"]
    if len(weights) != size:
        what = "truncated" if len(weights) < size else "trailing bytes"
        raise ModelFileError(
            "weights", f"{what}: the header says {size} bytes, the file holds {len(weights)}"
        )
    if hashlib.sha256(weights).hexdigest() != digest:
        raise ModelFileError("weights", "checksum mismatch: the file is corrupted")
    try:
        state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many kinds on bad input; none may escape
        raise ModelFileError("weights", f"cannot load: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFileError("weights", "not a state_dict of tensors")
    # the trunk's shape before a scorer of that shape is built: a header's hidden units are
    # allocated as dim x hidden floats (10**12 of them: torch's out-of-memory error, not ours)
    trunk = state.get("trunk.weight")
    want = (arch["hidden"], arch["dim"])
    if trunk is None or tuple(trunk.shape) != want:
        got = None if trunk is None else tuple(trunk.shape)
        raise ModelFileError(
            "architecture.hidden",
            f"the weights do not fit the architecture: trunk.weight is {got}, the header's "
            f"hidden and dim make it {want}",
        )
    scorer = Scorer(arch["dim"], arch["slot_sizes"], arch["hidden"])
    try:
        scorer.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelFileError("weights", f"do not fit the architecture {arch}: {exc}") from None
    for name, tensor in scorer.state_dict().items():
        if not bool(torch.isfinite(tensor).all()):
            raise ModelFileError("weights", f"{name} holds NaN or inf")
        if name.startswith("evidence_") and bool((tensor < 0).any()):
            raise ModelFileError("weights", f"{name} holds negative counts")
    return scorer


def _want(head: dict[str, Any], key: str, kind: Any) -> Any:
    v = head.get(key)
    if key not in head:
        raise ModelFileError(key, "missing from the header")
    if isinstance(v, bool) or not isinstance(v, kind):
        raise ModelFileError(key, f"unexpected type {type(v).__name__}")
    return v


def _check_compatible(
    schema_hash: str,
    catalog_digest: str,
    arch: dict[str, Any],
    slot_actions: dict[str, Any],
    schema: FeatureSchema,
    catalog: Catalog,
    strict_catalog: bool,
    slot_order: list[str] | None = None,
) -> None:
    if schema_hash != schema.hash:
        raise ModelFileError(
            "schema_hash",
            f"model was trained on feature schema {schema_hash}, serving uses {schema.hash}",
        )
    if arch.get("dim") != schema.dim:
        raise ModelFileError(
            "architecture.dim",
            f"model takes {arch.get('dim')} features, the schema has {schema.dim}",
        )
    want_sizes = [s.size for s in catalog.slots.values()]
    if list(arch.get("slot_sizes") or ()) != want_sizes:
        raise ModelFileError(
            "architecture.slot_sizes",
            f"model heads have {arch.get('slot_sizes')} actions, the catalog's slots {want_sizes}",
        )
    if slot_actions:
        want = _slot_actions(catalog)
        for name, ids in want.items():
            got = slot_actions.get(name)
            if got != ids:
                raise ModelFileError(
                    f"slot_actions.{name}",
                    f"model was trained on actions {got}, the catalog has {ids}",
                )
        extra = sorted(set(slot_actions) - set(want))
        if extra:
            raise ModelFileError(
                f"slot_actions.{extra[0]}", "model has a slot the catalog does not"
            )
    # heads are taken by the slot's position: two slots of the same size listed in another
    # order would each be scored by the other's head (files before slot_order cannot tell)
    if slot_order is not None and list(slot_order) != list(catalog.slots):
        raise ModelFileError(
            "slot_order",
            f"model's heads are for the slots {list(slot_order)} in this order, the catalog "
            f"lists {list(catalog.slots)}",
        )
    if catalog_digest != catalog.digest and strict_catalog:
        raise ModelFileError(
            "catalog_digest",
            f"model was trained on catalog {catalog_digest[:12]}, serving uses "
            f"{catalog.digest[:12]} ({catalog.source})",
        )


def cold_start_bundle(
    schema: FeatureSchema,
    catalog: Catalog,
    seed: int = 0,
    hidden: int = 0,
    gap: float = 0.5,
    created_at: float = 0.0,
) -> ModelBundle:
    """Version 0: a scorer whose greedy choice is the control's, for every user.

    Each head's weights are zero and its bias is ``-gap * position in the control order``
    (``default`` first, then the rest in catalog order), so the scores ignore the features and
    rank the eligible actions exactly as the static flow does: treatment starts as good as
    control and learns from there. ``hidden`` units give it a deep part (see
    :class:`~ray_app.model.scorer.Scorer`; 0, the default, is the wide part alone), whose trunk
    is seeded and random, so gradients flow at once.
    ``created_at`` is fixed so that the same arguments give the same bytes.

    >>> from ray_app.catalog import load_catalog
    >>> from ray_app.features import FeatureSchema
    >>> catalog = load_catalog()
    >>> b = cold_start_bundle(FeatureSchema.from_catalog(catalog), catalog)
    >>> b.scorer.heads[0].bias.tolist()
    [0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0]
    """
    if not gap > 0 or not math.isfinite(gap):
        raise ValueError(f"gap must be a positive number, got {gap}")
    sizes = [s.size for s in catalog.slots.values()]
    scorer = Scorer(schema.dim, sizes, hidden=hidden, seed=seed)
    with torch.no_grad():
        for head, slot in zip(scorer.heads, catalog.slots.values(), strict=True):
            assert isinstance(head, torch.nn.Linear)
            head.weight.zero_()
            head.bias.copy_(torch.tensor([0.0 - gap * r for r in slot.control_rank]))
    return ModelBundle(
        scorer=scorer,
        schema_hash=schema.hash,
        catalog_digest=catalog.digest,
        version=0,
        created_at=created_at,
        metadata={"kind": "cold_start", "seed": seed, "gap": gap},
        slot_actions=_slot_actions(catalog),
    )
