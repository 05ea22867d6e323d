"""``onramp schema``: the JSON Schema of the wire contract, or (``--reasons``) the reason codes."""

from __future__ import annotations

import argparse
import functools
import itertools
from typing import Any

from ray_app.cli.output import dumps
from ray_app.config import Settings

__all__ = ["add_parser", "reason_docs", "run"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    schema = sub.add_parser(
        "schema", parents=[common], help="print the JSON Schema of the wire contract"
    )
    schema.add_argument("--reasons", action="store_true", help="print the reason codes instead")


@functools.cache
def reason_docs() -> dict[str, str]:
    """Reason code -> its one-line description, read from the enum's source docstrings.

    >>> from validation.reasons import ReasonCode
    >>> set(reason_docs()) <= {code.value for code in ReasonCode}
    True
    """
    import ast
    import inspect

    from validation import reasons

    tree = ast.parse(inspect.getsource(reasons))
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "ReasonCode":
            body = node.body
            for a, b in itertools.pairwise(body):
                if (
                    isinstance(a, ast.Assign)
                    and isinstance(a.value, ast.Constant)
                    and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant)
                ):
                    out[str(a.value.value)] = " ".join(str(b.value.value).split())
    return out


def run(args: argparse.Namespace, settings: Settings) -> int:
    from validation.reasons import ReasonCode
    from validation.wire import json_schema

    if args.reasons:
        docs = reason_docs()
        for code in ReasonCode:
            print(f"{code.value:<24} {code.http_status}  {docs.get(code.value, '')}")
        return 0
    print(dumps(json_schema(), indent=2))
    return 0
