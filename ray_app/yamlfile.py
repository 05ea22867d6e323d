"""Safe YAML for Onramp's own files (settings, catalog): duplicate keys refused, depth bounded.

``yaml.safe_load`` keeps the last of two equal keys without a word (two ``kafka:`` blocks: the
first one's settings vanish) and recurses once per level of nesting (a file of a few thousand
``[`` is a ``RecursionError``). :func:`load_yaml` refuses both with a ``yaml.YAMLError`` that
says where, which each caller turns into its own error naming the file.

>>> load_yaml("a: 1\\nb: [1, 2]")
{'a': 1, 'b': [1, 2]}
>>> load_yaml("a: 1\\na: 2")
Traceback (most recent call last):
...
yaml.constructor.ConstructorError: duplicate key 'a'
  in "<unicode string>", line 2, column 1:
    a: 2
    ^
>>> load_yaml("base: &b {x: 1, y: 2}\\nmine: {<<: *b, y: 3}")["mine"]  # merges as safe_load
{'x': 1, 'y': 3}
>>> load_yaml("[" * 5000)
Traceback (most recent call last):
...
yaml.error.YAMLError: nested too deeply
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["UniqueKeyLoader", "load_yaml", "yaml_problem"]


class UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys instead of keeping the last one silently."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:  # ``<<: *defaults``: merged below, its keys overridable
            continue
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


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(text: str) -> Any:
    """``text`` parsed as safe YAML with duplicate keys refused; ``yaml.YAMLError`` if not."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, in one line: ``line 3, column 1: duplicate key 'kafka'``."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return f"{at}{exc.problem or exc.context or 'invalid'}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
