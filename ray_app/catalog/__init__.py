"""The onboarding catalog: the slots ``/v1/decide`` answers, their actions and who may get them.

A catalog is a YAML file (the packaged ``default.yaml`` unless another is given) validated with
pydantic into a frozen :class:`Catalog`. Each slot is one question the frontend asks
(``next_step``, ``welcome_content``, ...); its actions are the possible answers, each with
eligibility rules (steps it ``requires``, ``segments`` it is limited to, a step whose completion
makes it moot: ``unless_done``), and its ``default`` is the static flow that the control arm
serves. Everything the per-request path needs is precomputed here, once per catalog.

>>> catalog = load_catalog()
>>> catalog.slot_names
('next_step', 'welcome_content', 'checklist_order')
>>> profile = {"stepsCompleted": ["welcome", "role"], "traits": {"segment": "developer"}}
>>> [catalog.slot("next_step").actions[i].id for i in catalog.eligible("next_step", profile)]
['team_size', 'goals', 'integrations', 'invite_teammates', 'first_project']
>>> catalog.slot("next_step").actions[catalog.control_choice("next_step", [2, 3, 4])].id
'team_size'
>>> catalog.eligible("next_step", profile, candidates=["role", "goals"])
Traceback (most recent call last):
...
ray_app.catalog.IneligibleCandidates: ineligible candidates for slot 'next_step': role: already completed

Garbage is refused with the field path and the reason:

>>> Catalog.from_dict({"version": 1, "steps": ["a"], "slots": {"s": {"actions": ["x"],
...                    "default": ["y"]}}}, source="inline")
Traceback (most recent call last):
...
ray_app.catalog.CatalogError: inline: slots.s.default[0]: unknown action 'y' (actions of slot 's': x)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ray_app.errors import ConfigError, OnrampError

__all__ = [
    "Action",
    "Catalog",
    "CatalogError",
    "DecisionRequestError",
    "IneligibleCandidates",
    "Slot",
    "UnknownAction",
    "UnknownSlot",
    "load_catalog",
    "user_segments",
]

_ID = re.compile(r"^[a-z0-9_]+$")
DEFAULT_SOURCE = "ray_app/catalog/default.yaml"


# ---------------------------------------------------------------------------------------- errors


class CatalogError(ConfigError):
    """A catalog file is not a valid catalog: where (``source``, ``field`` path) and why.

    >>> err = CatalogError("c.yaml", "slots.next_step.actions[2].requires[0]", "unknown step 'x'")
    >>> str(err)
    "c.yaml: slots.next_step.actions[2].requires[0]: unknown step 'x'"
    >>> import pickle; pickle.loads(pickle.dumps(err)).field
    'slots.next_step.actions[2].requires[0]'
    """

    def __init__(self, source: str, field: str, message: str) -> None:
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(where + message, source=source, field=field)
        self.source = source
        self.field = field
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.field, self.reason))


class DecisionRequestError(OnrampError):
    """A decision request names a slot or candidates the catalog cannot serve (an HTTP 4xx).

    ``field`` is the request field at fault (``slot``, ``candidates[1]``).
    """

    http_status = 422
    field: str = ""

    _args: tuple[Any, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._args:
            return (type(self), self._args)
        return super().__reduce__()


class UnknownSlot(DecisionRequestError):
    """The catalog has no such slot.

    >>> str(UnknownSlot("nxt", ("next_step", "welcome_content")))
    "unknown slot 'nxt'; known slots: next_step, welcome_content"
    """

    def __init__(self, slot: Any, known: Sequence[str]) -> None:
        super().__init__(
            f"unknown slot {slot!r}; known slots: {', '.join(known)}", slot=slot, known=list(known)
        )
        self._args = (slot, tuple(known))
        self.slot, self.known, self.field = slot, tuple(known), "slot"


class UnknownAction(DecisionRequestError):
    """A candidate is not an action of the slot (``index``: its position in ``candidates``)."""

    def __init__(self, slot: str, action: Any, index: int, known: Sequence[str]) -> None:
        super().__init__(
            f"candidates[{index}]: unknown action {action!r} in slot {slot!r}; "
            f"actions: {', '.join(known)}",
            slot=slot,
            action=action,
            index=index,
        )
        self._args = (slot, action, index, tuple(known))
        self.slot, self.action, self.index, self.known = slot, action, index, tuple(known)
        self.field = f"candidates[{index}]"


class IneligibleCandidates(DecisionRequestError):
    """Some candidates are not eligible for this user: ``reasons`` maps each to why.

    >>> err = IneligibleCandidates("next_step", {"role": "already completed"}, {"role": 0})
    >>> str(err), err.field
    ("ineligible candidates for slot 'next_step': role: already completed", 'candidates[0]')
    """

    def __init__(self, slot: str, reasons: Mapping[str, str], indices: Mapping[str, int]) -> None:
        text = "; ".join(f"{a}: {r}" for a, r in reasons.items())
        super().__init__(
            f"ineligible candidates for slot {slot!r}: {text}", slot=slot, reasons=dict(reasons)
        )
        self._args = (slot, dict(reasons), dict(indices))
        self.slot, self.reasons, self.indices = slot, dict(reasons), dict(indices)
        first = next(iter(reasons), "")
        self.field = f"candidates[{indices[first]}]" if first in indices else "candidates"


# ---------------------------------------------------------------------------- the YAML contract


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _ActionSpec(_Spec):
    id: str
    requires: list[str] = []
    segments: list[str] | None = None
    unless_done: str | None = None


class _SlotSpec(_Spec):
    description: str = ""
    kind: Literal["step", "content"] = "content"
    actions: list[_ActionSpec]
    default: list[str]

    @field_validator("actions", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:  # "welcome" == {"id": "welcome"}
        if isinstance(value, list):
            return [{"id": v} if isinstance(v, str) else v for v in value]
        return value


class _FeaturesSpec(_Spec):
    buckets: int = 512
    include: list[str] | None = None
    exclude: list[str] = []
    numeric: list[str] = []
    categorical: list[str] = []
    crosses: bool = True
    cross_fields: int = 12


class _CatalogSpec(_Spec):
    version: Literal[1]
    steps: list[str]
    segments: list[str] | None = None
    negative_events: list[str] = ["Step Abandoned"]
    features: _FeaturesSpec | None = None
    slots: dict[str, _SlotSpec]


_KEYS = {
    0: list(_CatalogSpec.model_fields),
    1: list(_FeaturesSpec.model_fields),
    2: list(_SlotSpec.model_fields),
    4: list(_ActionSpec.model_fields),
}


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _explain(exc: ValidationError, source: str) -> CatalogError:
    errors = exc.errors()
    err = errors[0]
    loc, kind, got = tuple(err["loc"]), err["type"], err.get("input")
    if kind == "missing":
        msg = "required"
    elif kind == "extra_forbidden":
        known = _KEYS.get(len(loc) - 1, [])
        msg = "unknown key" + (f"; expected one of: {', '.join(known)}" if known else "")
    elif kind in ("string_type", "str_type"):
        msg = f"expected a string, got {_type_name(got)}"
    elif kind == "list_type":
        msg = f"expected a list, got {_type_name(got)}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        what = "an action id or a mapping" if len(loc) == 4 and loc[2] == "actions" else "a mapping"
        msg = f"expected {what}, got {_type_name(got)}"
    elif kind == "literal_error":
        msg = f"{err['msg'].replace('Input should be', 'expected')}, got {got!r}"
    else:
        msg = f"{err['msg']} (got {got!r})"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return CatalogError(source, _path(loc), msg)


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys instead of keeping the last one silently."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:
            continue  # an unhashable key: SafeLoader reports it
        if dup:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


# ------------------------------------------------------------------------------- runtime objects


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
        if self.unless_done is not None and self.unless_done in completed:
            if self.unless_done == self.id:
                return "already completed"
            return f"{self.unless_done} already completed"
        if self.requires:
            missing = [r for r in self.requires if r not in completed]
            if missing:
                return f"requires {', '.join(missing)}"
        if self.segments is not None and segments.isdisjoint(self.segments):
            have = ", ".join(sorted(segments)) or "none"
            return f"only for segments {', '.join(self.segments)} (user's: {have})"
        return None

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


def _completed(profile: Mapping[str, Any] | None) -> frozenset[str]:
    if not isinstance(profile, Mapping):
        return frozenset()
    done = profile.get("stepsCompleted")
    if isinstance(done, list | tuple | set | frozenset):
        return frozenset(s for s in done if isinstance(s, str))
    steps = profile.get("steps")
    if done is None and isinstance(steps, Mapping):  # a profile without the derived list
        return frozenset(
            k
            for k, v in steps.items()
            if isinstance(v, Mapping)
            and isinstance(v.get("completions"), int | float)
            and v["completions"] > 0
        )
    return frozenset()


def user_segments(
    profile: Mapping[str, Any] | None, enrichment: Mapping[str, Any] | None
) -> set[str]:
    """The audience names of a user: the ``segment`` and ``plan`` of its traits and CRM row.

    >>> sorted(user_segments({"traits": {"segment": "developer"}}, {"plan": "free"}))
    ['developer', 'free']
    """
    out: set[str] = set()
    traits = profile.get("traits") if isinstance(profile, Mapping) else None
    for src in (traits, enrichment):
        if isinstance(src, Mapping):
            for key in ("segment", "plan"):
                v = src.get(key)
                if isinstance(v, str) and v:
                    out.add(v)
    return out


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
        if not isinstance(data, Mapping):
            hint = " (empty file?)" if data is None else ""
            raise CatalogError(
                source, "", f"expected a mapping at the top level, got {_type_name(data)}{hint}"
            )
        try:
            spec = _CatalogSpec.model_validate(dict(data))
        except ValidationError as exc:
            raise _explain(exc, source) from None
        return _build(spec, source)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<yaml>") -> Catalog:
        """Parse and validate catalog YAML text."""
        try:
            data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = exc.problem or exc.context or "invalid"
            raise CatalogError(source, "", f"YAML syntax error{at}: {what}") from None
        except yaml.YAMLError as exc:
            raise CatalogError(source, "", f"YAML syntax error: {exc}") from None
        return cls.from_dict(data, source=source)

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
    ) -> list[int]:
        """Indices of the slot's actions this user may get, in catalog order.

        ``profile`` is a ``Profile.as_dict()`` (``None``: an unknown user), ``enrichment`` the CRM
        row of ``CrmTable.enrich``. Without ``candidates`` every action is considered and the
        ineligible ones are left out (``[]`` when none is left: the caller decides). With
        ``candidates`` (action ids; repeats are ignored) each must be an action of the slot
        (:class:`UnknownAction`) and eligible (:class:`IneligibleCandidates` says which and why).
        """
        s = self.slot(slot)
        done = _completed(profile)
        segs = user_segments(profile, enrichment)
        if candidates is None:
            return [a.index for a in s.actions if a.why_ineligible(done, segs) is None]
        if isinstance(candidates, str | bytes) or not isinstance(candidates, Sequence):
            raise UnknownAction(s.name, candidates, 0, s.action_ids)
        chosen: set[int] = set()
        reasons: dict[str, str] = {}
        where: dict[str, int] = {}
        for i, cand in enumerate(candidates):
            j = s.action_index.get(cand) if isinstance(cand, str) else None
            if j is None:
                raise UnknownAction(s.name, cand, i, s.action_ids)
            why = s.actions[j].why_ineligible(done, segs)
            if why is None:
                chosen.add(j)
            elif cand not in reasons:
                reasons[cand], where[cand] = why, i
        if reasons:
            raise IneligibleCandidates(s.name, reasons, where)
        return sorted(chosen)

    def control_choice(self, slot: str, eligible: Sequence[int]) -> int:
        """The control's (static flow's) choice: the first of ``eligible`` in ``default`` order.

        Actions missing from ``default`` come after it, in catalog order. ``ValueError`` if
        ``eligible`` is empty.
        """
        rank = self.slot(slot).control_rank
        if not eligible:
            raise ValueError(f"slot {slot!r}: no eligible action to choose from")
        return min(eligible, key=rank.__getitem__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


def _check_ids(values: list[str], source: str, where: str, what: str) -> None:
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if not _ID.match(v):
            raise CatalogError(source, f"{where}[{i}]", f"{what} {v!r} must match [a-z0-9_]+")
        if v in seen:
            raise CatalogError(
                source, f"{where}[{i}]", f"duplicate {what} {v!r} (also at {where}[{seen[v]}])"
            )
        seen[v] = i


def _build(spec: _CatalogSpec, source: str) -> Catalog:
    if not spec.steps:
        raise CatalogError(source, "steps", "at least one step required")
    _check_ids(spec.steps, source, "steps", "step id")
    steps = set(spec.steps)
    known_steps = ", ".join(spec.steps)
    vocab: set[str] | None = None
    if spec.segments is not None:
        if not spec.segments:
            raise CatalogError(source, "segments", "empty: omit the key to allow any segment")
        for i, seg in enumerate(spec.segments):
            if not seg.strip():
                raise CatalogError(source, f"segments[{i}]", "empty segment name")
            if seg in spec.segments[:i]:
                raise CatalogError(source, f"segments[{i}]", f"duplicate segment {seg!r}")
        vocab = set(spec.segments)
    for i, name in enumerate(spec.negative_events):
        if not name.strip():
            raise CatalogError(source, f"negative_events[{i}]", "empty event name")
        if name in ("Step Completed", "Onboarding Completed"):
            raise CatalogError(
                source,
                f"negative_events[{i}]",
                f"{name!r} is a positive outcome, not a negative one",
            )
    if not spec.slots:
        raise CatalogError(source, "slots", "at least one slot required")
    slots: dict[str, Slot] = {}
    for si, (name, sspec) in enumerate(spec.slots.items()):
        at = f"slots.{name}"
        if not _ID.match(name):
            raise CatalogError(source, at, f"slot name {name!r} must match [a-z0-9_]+")
        if not sspec.actions:
            raise CatalogError(source, f"{at}.actions", "at least one action required")
        actions: list[Action] = []
        index: dict[str, int] = {}
        for ai, aspec in enumerate(sspec.actions):
            aat = f"{at}.actions[{ai}]"
            if not _ID.match(aspec.id):
                raise CatalogError(
                    source, f"{aat}.id", f"action id {aspec.id!r} must match [a-z0-9_]+"
                )
            if aspec.id in index:
                raise CatalogError(
                    source,
                    f"{aat}.id",
                    f"duplicate action id {aspec.id!r} (also at {at}.actions[{index[aspec.id]}])",
                )
            if sspec.kind == "step" and aspec.id not in steps:
                raise CatalogError(
                    source,
                    f"{aat}.id",
                    f"{aspec.id!r} is not a known step, and actions of a step slot are steps "
                    f"(steps: {known_steps})",
                )
            for ri, req in enumerate(aspec.requires):
                if req not in steps:
                    raise CatalogError(
                        source,
                        f"{aat}.requires[{ri}]",
                        f"unknown step {req!r} (steps: {known_steps})",
                    )
                if req in aspec.requires[:ri]:
                    raise CatalogError(source, f"{aat}.requires[{ri}]", f"duplicate step {req!r}")
            if aspec.segments is not None:
                if not aspec.segments:
                    raise CatalogError(
                        source, f"{aat}.segments", "empty: omit the key to allow every segment"
                    )
                for gi, seg in enumerate(aspec.segments):
                    if vocab is not None and seg not in vocab:
                        raise CatalogError(
                            source,
                            f"{aat}.segments[{gi}]",
                            f"unknown segment {seg!r} (segments: {', '.join(spec.segments or ())})",
                        )
            unless = aspec.unless_done
            if "unless_done" not in aspec.model_fields_set and sspec.kind == "step":
                unless = aspec.id
            if unless is not None:
                if unless not in steps:
                    raise CatalogError(
                        source,
                        f"{aat}.unless_done",
                        f"unknown step {unless!r} (steps: {known_steps})",
                    )
                if unless in aspec.requires:
                    raise CatalogError(
                        source,
                        f"{aat}.requires[{aspec.requires.index(unless)}]",
                        f"requires {unless!r}, whose completion also makes it ineligible "
                        "(unless_done): it could never be chosen",
                    )
            index[aspec.id] = ai
            actions.append(
                Action(
                    id=aspec.id,
                    index=ai,
                    requires=tuple(aspec.requires),
                    segments=None if aspec.segments is None else tuple(aspec.segments),
                    unless_done=unless,
                )
            )
        if not sspec.default:
            raise CatalogError(
                source, f"{at}.default", "at least one action required (the control flow)"
            )
        for di, act in enumerate(sspec.default):
            if act not in index:
                raise CatalogError(
                    source,
                    f"{at}.default[{di}]",
                    f"unknown action {act!r} (actions of slot {name!r}: {', '.join(index)})",
                )
            if act in sspec.default[:di]:
                raise CatalogError(source, f"{at}.default[{di}]", f"duplicate action {act!r}")
        order = [index[a] for a in sspec.default]
        order += [i for i in range(len(actions)) if i not in order]
        rank = [0] * len(actions)
        for pos, i in enumerate(order):
            rank[i] = pos
        slots[name] = Slot(
            name=name,
            index=si,
            description=sspec.description,
            kind=sspec.kind,
            actions=tuple(actions),
            default=tuple(sspec.default),
            action_index=index,
            control_order=tuple(order),
            control_rank=tuple(rank),
        )
    catalog = Catalog(
        version=spec.version,
        known_steps=tuple(spec.steps),
        segments=None if spec.segments is None else tuple(spec.segments),
        slots=slots,
        source=source,
        negative_events=tuple(dict.fromkeys(spec.negative_events)),
        features=_features(spec.features, source),
    )
    canonical = json.dumps(catalog.as_dict(), sort_keys=True, separators=(",", ":"))
    object.__setattr__(catalog, "digest", hashlib.sha256(canonical.encode()).hexdigest())
    return catalog


def _features(spec: _FeaturesSpec | None, source: str) -> dict[str, Any] | None:
    """The ``features:`` section, checked by building the hashing it describes."""
    if spec is None:
        return None
    from ray_app.features import Hashing

    data = spec.model_dump()
    try:
        Hashing.from_spec(data)
    except ValueError as exc:
        raise CatalogError(source, "features", str(exc)) from None
    return data


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file (``None``: the packaged default catalog).

    >>> load_catalog("/nonexistent/catalog.yaml")
    Traceback (most recent call last):
    ...
    ray_app.catalog.CatalogError: /nonexistent/catalog.yaml: no such file
    """
    if path is None:
        text = resources.files(__name__).joinpath("default.yaml").read_text(encoding="utf-8")
        return Catalog.from_yaml(text, source=DEFAULT_SOURCE)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(source, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(source, "", f"cannot read: {exc}") from None
    return Catalog.from_yaml(text, source=source)
