"""The CLI stands on the public API: no private core module imported, no private attribute of another object read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parents[2] / "rechub_serving" / "cli"


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module.startswith("rechub_serving._"):
                found.append(f"line {node.lineno}: from {module} import ...")
            if node.level >= 2:  # from .._x: a private core module, seen from the CLI package
                found.append(f"line {node.lineno}: from {'.' * node.level}{module} import ...")
        elif isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {a.name}" for a in node.names if a.name.startswith("rechub_serving._")
            ]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"line {node.lineno}: reads .{node.attr} of {ast.unparse(owner)}")
    return found


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_cli_module_uses_only_public_api(path):
    assert _violations(path) == []


def test_the_scan_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from rechub_serving._plugins import get_backend\nimport rechub_serving._storage\n"
        "from .._exact import exact_search\nx = index._ids\n"
    )
    assert len(_violations(bad)) == 4
