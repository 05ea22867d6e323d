"""The catalog's types (:class:`Catalog`, :class:`Slot`, :class:`Action`) and loading one.

A :class:`Catalog` is frozen and has everything the per-request path needs precomputed; build it
with :func:`load_catalog`, :meth:`Catalog.from_yaml` or :meth:`Catalog.from_dict`, which parse
(:mod:`~ray_app.catalog.spec`), check (:mod:`~ray_app.catalog.build`) and refuse garbage with a
:class:`~ray_app.catalog.errors.CatalogError`.

>>> catalog = load_catalog()
>>> slot = catalog.slot("next_step")
>>> slot.index, slot.size == len(slot.action_ids), catalog.slot_index("welcome_content")
(0, True, 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ray_app.catalog.control import control_choice
from ray_app.catalog.eligibility import eligible_actions, why_ineligible
from ray_app.catalog.errors import CatalogError, UnknownSlot
from ray_app.catalog.spec import parse_yaml, validate_spec

__all__ = ["DEFAULT_SOURCE", "Action", "Catalog", "Slot", "load_catalog"]

#: The ``source`` of the packaged default catalog.
DEFAULT_SOURCE = "ray_app/catalog/default.yaml"


@dataclass(frozen=True)
class Action:
    """One answer of a slot; ``index`` is its position in the slot (the model's output column)."""

    id: str
    index: int
    requires: tuple[str, ...] = ()
    segments: tuple[str, ...] | None = None
    unless_done: str | None = None

    def why_ineligible(
        self, completed: frozenset[str] | set[str], segments: set[str]
    ) -> str | None:
        """Why this action cannot be shown to a user (``None``: it can)."""
        return why_ineligible(self, completed, segments)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "requires": list(self.requires),
            "segments": None if self.segments is None else list(self.segments),
            "unless_done": self.unless_done,
        }


@dataclass(frozen=True, eq=False)
class Slot:
    """One question of the frontend: its actions in catalog order and its control flow."""

    name: str
    index: int
    description: str
    kind: str
    actions: tuple[Action, ...]
    default: tuple[str, ...]
    #: action id -> index
    action_index: dict[str, int] = field(repr=False)
    #: action indices in the control's order: ``default`` first, then the rest in catalog order
    control_order: tuple[int, ...] = field(repr=False)
    #: per action index, its position in :attr:`control_order`
    control_rank: tuple[int, ...] = field(repr=False)

    @property
    def action_ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.actions)

    @property
    def size(self) -> int:
        """Number of actions (the width of the model's head for this slot)."""
        return len(self.actions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "kind": self.kind,
            "actions": [a.as_dict() for a in self.actions],
            "default": list(self.default),
        }


@dataclass(frozen=True, eq=False)
class Catalog:
    """A validated, immutable catalog with everything per-request precomputed.

    Equal catalogs have equal :attr:`digest` (a sha256 of the canonical content, whatever the
    file's formatting or key order); ``source`` says where it came from and is not part of it.
    """

    version: int
    known_steps: tuple[str, ...]
    segments: tuple[str, ...] | None
    slots: dict[str, Slot]
    source: str = "<dict>"
    negative_events: tuple[str, ...] = ("Step Abandoned",)
    """``track`` events that reward a decision 0 at once (see :mod:`ray_app.state.rewards`)."""
    features: dict[str, Any] | None = None
    """The ``features:`` section (how attributes are hashed; see :class:`ray_app.features.Hashing`)."""
    digest: str = ""

    # -------------------------------------------------------------------------- construction

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Catalog:
        """Validate a parsed catalog (a mapping as YAML gives it); :class:`CatalogError` if not."""
        from ray_app.catalog.build import build_catalog  # it builds this class

        return build_catalog(validate_spec(data, source), source)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<yaml>") -> Catalog:
        """Parse and validate catalog YAML text."""
        return cls.from_dict(parse_yaml(text, source), source=source)

    def as_dict(self) -> dict[str, Any]:
        """The canonical content (what :attr:`digest` hashes); ``from_dict`` accepts it back."""
        out: dict[str, Any] = {"version": self.version, "steps": list(self.known_steps)}
        if self.segments is not None:
            out["segments"] = list(self.segments)
        if self.negative_events != ("Step Abandoned",):
            out["negative_events"] = list(self.negative_events)
        if self.features is not None:
            out["features"] = dict(self.features)
        out["slots"] = {name: s.as_dict() for name, s in self.slots.items()}
        return out

    # ---------------------------------------------------------------------------- accessors

    @property
    def slot_names(self) -> tuple[str, ...]:
        return tuple(self.slots)

    def slot(self, name: str) -> Slot:
        """The slot called ``name``; :class:`UnknownSlot` (listing the known ones) if none."""
        try:
            return self.slots[name]
        except (KeyError, TypeError):
            raise UnknownSlot(name, tuple(self.slots)) from None

    def slot_index(self, name: str) -> int:
        """The slot's position (the model's head index)."""
        return self.slot(name).index

    # ---------------------------------------------------------------------------- decisions

    def eligible(
        self,
        slot: str,
        profile: Mapping[str, Any] | None = None,
        enrichment: Mapping[str, Any] | None = None,
        candidates: Sequence[str] | None = None,
        unread: bool = False,
    ) -> list[int]:
        """Indices of the slot's actions this user may get, in catalog order.

        ``profile`` is a ``Profile.as_dict()`` (``None``: an unknown user), ``enrichment`` the CRM
        row of ``CrmTable.enrich``. Without ``candidates`` every action is considered and the
        ineligible ones are left out (``[]`` when none is left: the caller decides). With
        ``candidates`` (action ids; repeats are ignored) each must be an action of the slot
        (:class:`UnknownAction`) and eligible (:class:`IneligibleCandidates` says which and why).
        ``unread``: the user's profile could not be read (its deadline passed, the stream is
        down), so which candidates they may get is not known: the candidates are taken as the
        client sent them, checked against the catalog only (a server-side outage is not the
        client's error).
        """
        return eligible_actions(self.slot(slot), profile, enrichment, candidates, unread)

    def control_choice(self, slot: str, eligible: Sequence[int]) -> int:
        """The control's (static flow's) choice: the first of ``eligible`` in ``default`` order.

        Actions missing from ``default`` come after it, in catalog order. ``ValueError`` if
        ``eligible`` is empty.
        """
        return control_choice(self.slot(slot), eligible)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file (``None``: the packaged default catalog).

    >>> load_catalog("/nonexistent/catalog.yaml")
    Traceback (most recent call last):
    ...
    ray_app.catalog.errors.CatalogError: /nonexistent/catalog.yaml: no such file
    """
    if path is None:
        package = resources.files("ray_app.catalog")
        text = package.joinpath("default.yaml").read_text(encoding="utf-8")
        return Catalog.from_yaml(text, source=DEFAULT_SOURCE)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(source, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(source, "", f"cannot read: {exc}") from None
    return Catalog.from_yaml(text, source=source)
