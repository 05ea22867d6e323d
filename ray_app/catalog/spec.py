"""The catalog file's contract: YAML text -> a parsed mapping -> a validated :class:`CatalogSpec`.

Parsing refuses duplicate keys; validation (pydantic, strict, no unknown keys) turns the first
error into a :class:`~ray_app.catalog.errors.CatalogError` naming the field path and saying why
in words. Cross-references (a step an action requires, the default flow's actions) are checked
when the spec is built into a catalog (:mod:`ray_app.catalog.build`).

>>> parse_yaml("version: 1\\nversion: 2", source="c.yaml")
Traceback (most recent call last):
...
ray_app.catalog.errors.CatalogError: c.yaml: YAML syntax error at line 2, column 1: duplicate key 'version'
>>> validate_spec({"version": 1, "steps": "a", "slots": {}}, source="c.yaml")
Traceback (most recent call last):
...
ray_app.catalog.errors.CatalogError: c.yaml: steps: expected a list, got a string
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ray_app.catalog.errors import CatalogError
from ray_app.yamlfile import load_yaml

__all__ = [
    "ActionSpec",
    "CatalogSpec",
    "FeaturesSpec",
    "SlotSpec",
    "parse_yaml",
    "validate_spec",
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ActionSpec(_Spec):
    """One action of a slot (a bare string in YAML is its ``id``)."""

    id: str
    requires: list[str] = []
    segments: list[str] | None = None
    unless_done: str | None = None


class SlotSpec(_Spec):
    """One slot: its actions and its ``default`` (the control flow's order)."""

    description: str = ""
    kind: Literal["step", "content"] = "content"
    actions: list[ActionSpec]
    default: list[str]

    @field_validator("actions", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:  # "welcome" == {"id": "welcome"}
        if isinstance(value, list):
            return [{"id": v} if isinstance(v, str) else v for v in value]
        return value


class FeaturesSpec(_Spec):
    """The ``features:`` section (see :class:`ray_app.features.Hashing`)."""

    buckets: int = 2048
    include: list[str] | None = None
    exclude: list[str] = []
    numeric: list[str] = []
    categorical: list[str] = []
    crosses: bool = True
    cross_fields: int = 12
    hash_seed: int = 0
    threshold_weight: float = 1.0
    cross_weight: float = 2.0


class CatalogSpec(_Spec):
    """A whole catalog file as written, before its cross-references are checked."""

    version: Literal[1]
    steps: list[str]
    segments: list[str] | None = None
    negative_events: list[str] = ["Step Abandoned"]
    features: FeaturesSpec | None = None
    slots: dict[str, SlotSpec]


_KEYS = {
    0: list(CatalogSpec.model_fields),
    1: list(FeaturesSpec.model_fields),
    2: list(SlotSpec.model_fields),
    4: list(ActionSpec.model_fields),
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


def parse_yaml(text: str, source: str) -> Any:
    """Parse catalog YAML text (safely); :class:`CatalogError` with the line and column if not."""
    try:
        return load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "invalid"
        raise CatalogError(source, "", f"YAML syntax error{at}: {what}") from None
    except yaml.YAMLError as exc:
        raise CatalogError(source, "", f"YAML syntax error: {exc}") from None


def validate_spec(data: Any, source: str) -> CatalogSpec:
    """Validate a parsed catalog (a mapping as YAML gives it); :class:`CatalogError` if not."""
    if not isinstance(data, Mapping):
        hint = " (empty file?)" if data is None else ""
        raise CatalogError(
            source, "", f"expected a mapping at the top level, got {_type_name(data)}{hint}"
        )
    try:
        return CatalogSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise _explain(exc, source) from None
