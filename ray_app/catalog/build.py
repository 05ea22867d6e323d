"""A validated :class:`~ray_app.catalog.spec.CatalogSpec` -> a :class:`~ray_app.catalog.model.Catalog`.

Here the cross-references are checked, in file order, and the first problem is refused with its
field path: ids are ``[a-z0-9_]+`` and unique, actions require known steps and name known
segments, an action never requires the step that makes it moot, the ``default`` flow names the
slot's own actions, and the ``features:`` section builds a :class:`ray_app.features.Hashing`.

>>> from ray_app.catalog.spec import validate_spec
>>> spec = validate_spec({"version": 1, "steps": ["a"], "slots": {"s": {"kind": "step",
...                       "actions": ["a", "b"], "default": ["a"]}}}, source="inline")
>>> build_catalog(spec, source="inline")
Traceback (most recent call last):
...
ray_app.catalog.errors.CatalogError: inline: slots.s.actions[1].id: 'b' is not a known step, and actions of a step slot are steps (steps: a)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from ray_app.catalog.control import control_order
from ray_app.catalog.errors import CatalogError
from ray_app.catalog.model import Action, Catalog, Slot
from ray_app.catalog.spec import ActionSpec, CatalogSpec, FeaturesSpec, SlotSpec

__all__ = ["build_catalog"]

_ID = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class _Scope:
    """What the checks of one catalog file need to know: where it came from, its vocabularies."""

    source: str
    steps: frozenset[str]
    known_steps: str  # the steps, listed for messages
    segments: tuple[str, ...] | None

    def error(self, field: str, message: str) -> CatalogError:
        return CatalogError(self.source, field, message)


def build_catalog(spec: CatalogSpec, source: str) -> Catalog:
    """Check a validated spec's cross-references and build its catalog (with its ``digest``)."""
    if not spec.steps:
        raise CatalogError(source, "steps", "at least one step required")
    _check_ids(spec.steps, source, "steps", "step id")
    _check_segments(spec.segments, source)
    _check_negative_events(spec.negative_events, source)
    if not spec.slots:
        raise CatalogError(source, "slots", "at least one slot required")
    scope = _Scope(
        source=source,
        steps=frozenset(spec.steps),
        known_steps=", ".join(spec.steps),
        segments=None if spec.segments is None else tuple(spec.segments),
    )
    slots: dict[str, Slot] = {}
    for si, (name, sspec) in enumerate(spec.slots.items()):
        slots[name] = _slot(scope, si, name, sspec)
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


# ------------------------------------------------------------------------------ top-level lists


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


def _check_segments(segments: list[str] | None, source: str) -> None:
    if segments is None:
        return
    if not segments:
        raise CatalogError(source, "segments", "empty: omit the key to allow any segment")
    for i, seg in enumerate(segments):
        if not seg.strip():
            raise CatalogError(source, f"segments[{i}]", "empty segment name")
        if seg in segments[:i]:
            raise CatalogError(source, f"segments[{i}]", f"duplicate segment {seg!r}")


def _check_negative_events(names: list[str], source: str) -> None:
    for i, name in enumerate(names):
        if not name.strip():
            raise CatalogError(source, f"negative_events[{i}]", "empty event name")
        if name in ("Step Completed", "Onboarding Completed"):
            raise CatalogError(
                source,
                f"negative_events[{i}]",
                f"{name!r} is a positive outcome, not a negative one",
            )


def _features(spec: FeaturesSpec | None, source: str) -> dict[str, Any] | None:
    """The ``features:`` section, checked by building the hashing it describes."""
    if spec is None:
        return None
    from ray_app.features import Hashing

    data = spec.model_dump()
    if not data["hash_seed"]:  # the catalog digests of seed 0 are those from before it existed
        del data["hash_seed"]
    if data["threshold_weight"] == FeaturesSpec.model_fields["threshold_weight"].default:
        del data["threshold_weight"]  # and so are those of the default weight
    if data["cross_weight"] == FeaturesSpec.model_fields["cross_weight"].default:
        del data["cross_weight"]  # (the schema hash does tell the cross weight, see Hashing)
    try:
        Hashing.from_spec(data)
    except ValueError as exc:
        raise CatalogError(source, "features", str(exc)) from None
    return data


# ------------------------------------------------------------------------------ slots, actions


def _slot(scope: _Scope, si: int, name: str, sspec: SlotSpec) -> Slot:
    at = f"slots.{name}"
    if not _ID.match(name):
        raise scope.error(at, f"slot name {name!r} must match [a-z0-9_]+")
    if not sspec.actions:
        raise scope.error(f"{at}.actions", "at least one action required")
    actions: list[Action] = []
    index: dict[str, int] = {}
    for ai, aspec in enumerate(sspec.actions):
        actions.append(_action(scope, f"{at}.actions", ai, aspec, sspec.kind, index))
        index[aspec.id] = ai
    if sspec.kind == "step":
        _check_no_requires_cycle(scope, f"{at}.actions", actions)
    _check_default(scope, at, name, sspec.default, index)
    order, rank = control_order([index[a] for a in sspec.default], len(actions))
    return Slot(
        name=name,
        index=si,
        description=sspec.description,
        kind=sspec.kind,
        actions=tuple(actions),
        default=tuple(sspec.default),
        action_index=index,
        control_order=order,
        control_rank=rank,
    )


def _check_default(
    scope: _Scope, at: str, name: str, default: list[str], index: dict[str, int]
) -> None:
    if not default:
        raise scope.error(f"{at}.default", "at least one action required (the control flow)")
    for di, act in enumerate(default):
        if act not in index:
            raise scope.error(
                f"{at}.default[{di}]",
                f"unknown action {act!r} (actions of slot {name!r}: {', '.join(index)})",
            )
        if act in default[:di]:
            raise scope.error(f"{at}.default[{di}]", f"duplicate action {act!r}")


def _action(
    scope: _Scope, where: str, ai: int, aspec: ActionSpec, kind: str, index: dict[str, int]
) -> Action:
    """Check action ``ai`` of a slot (``index``: the ids of the actions before it) and build it."""
    aat = f"{where}[{ai}]"
    if not _ID.match(aspec.id):
        raise scope.error(f"{aat}.id", f"action id {aspec.id!r} must match [a-z0-9_]+")
    if aspec.id in index:
        raise scope.error(
            f"{aat}.id", f"duplicate action id {aspec.id!r} (also at {where}[{index[aspec.id]}])"
        )
    if kind == "step" and aspec.id not in scope.steps:
        raise scope.error(
            f"{aat}.id",
            f"{aspec.id!r} is not a known step, and actions of a step slot are steps "
            f"(steps: {scope.known_steps})",
        )
    _check_requires(scope, aat, aspec.requires)
    _check_action_segments(scope, aat, aspec.segments)
    unless = aspec.unless_done
    if "unless_done" not in aspec.model_fields_set and kind == "step":
        unless = aspec.id
    if unless is not None:
        _check_unless_done(scope, aat, unless, aspec.requires)
    return Action(
        id=aspec.id,
        index=ai,
        requires=tuple(aspec.requires),
        segments=None if aspec.segments is None else tuple(aspec.segments),
        unless_done=unless,
    )


def _check_requires(scope: _Scope, aat: str, requires: list[str]) -> None:
    for ri, req in enumerate(requires):
        if req not in scope.steps:
            raise scope.error(
                f"{aat}.requires[{ri}]", f"unknown step {req!r} (steps: {scope.known_steps})"
            )
        if req in requires[:ri]:
            raise scope.error(f"{aat}.requires[{ri}]", f"duplicate step {req!r}")


def _check_no_requires_cycle(scope: _Scope, where: str, actions: list[Action]) -> None:
    """A step slot whose actions require each other in a cycle (a requires b, b requires a):
    a user who has completed none of them can be shown none of them."""
    requires = {a.id: [r for r in a.requires if r != a.id] for a in actions}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(step: str, path: list[str]) -> list[str] | None:
        state[step] = 1
        for req in requires.get(step, ()):
            if state.get(req) == 1:
                return [*path[path.index(req) :], req] if req in path else [step, req]
            if req in requires and state.get(req) is None:
                cycle = visit(req, [*path, req])
                if cycle:
                    return cycle
        state[step] = 2
        return None

    for a in actions:
        if state.get(a.id) is None:
            cycle = visit(a.id, [a.id])
            if cycle:
                first = next(x for x in actions if x.id == cycle[0])
                raise scope.error(
                    f"{where}[{first.index}].requires",
                    f"steps that require each other: {' -> '.join(cycle)}; a user who has "
                    "completed none of them can be shown none of them",
                )


def _check_action_segments(scope: _Scope, aat: str, segments: list[str] | None) -> None:
    if segments is None:
        return
    if not segments:
        raise scope.error(f"{aat}.segments", "empty: omit the key to allow every segment")
    for gi, seg in enumerate(segments):
        if scope.segments is not None and seg not in scope.segments:
            raise scope.error(
                f"{aat}.segments[{gi}]",
                f"unknown segment {seg!r} (segments: {', '.join(scope.segments)})",
            )


def _check_unless_done(scope: _Scope, aat: str, unless: str, requires: list[str]) -> None:
    if unless not in scope.steps:
        raise scope.error(
            f"{aat}.unless_done", f"unknown step {unless!r} (steps: {scope.known_steps})"
        )
    if unless in requires:
        raise scope.error(
            f"{aat}.requires[{requires.index(unless)}]",
            f"requires {unless!r}, whose completion also makes it ineligible "
            "(unless_done): it could never be chosen",
        )
