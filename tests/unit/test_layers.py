"""The package graph points one way: ``validation`` <- ``ray_app`` <- ``deployments``, ``training``.

Read from the source (every ``import`` statement, at any depth, and ``importlib`` calls), so an
import hidden inside a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ray_app.cli import main

ROOT = Path(__file__).resolve().parents[2]

#: Package -> the packages of this project it must never import.
FORBIDDEN = {
    "validation": ("ray_app", "deployments", "training"),
    "ray_app": ("deployments", "training"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            out.append((node.lineno, str(node.args[0].value)))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_the_scan_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from deployments.app import build_app\n    import training.train\n")
    assert [name for _, name in _imports(f)] == ["deployments.app", "training.train"]


def test_the_engine_cli_without_its_parts_says_how_to_get_them(capsys) -> None:
    assert main(["train", "--help"]) == 1
    err = capsys.readouterr().err
    assert "deployments.onramp:main" in err and "train" in err
