"""The plugin surface is public: nothing outside the core reaches into its private parts.

Scans the plugins, the CLI, the Retriever, the trainer, the server and
``rechub_serving.testing`` (the suite an outsider runs) and fails on:

* a subclass of ``Indexer`` or ``Builder`` in a plugin (plugins implement ``Backend`` and ``Engine``);
* an override of a private method of a core class;
* a read of a private attribute of a core object (``index._ids``, ``builder._given``...);
* an import of a private core module (``rechub_serving._storage``...) from a plugin, the
  conformance suite or the other scanned code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rechub_serving as rs

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "rechub_serving"


def _scanned() -> list[Path]:
    files = sorted(ROOT.glob("plugins/*/rechub_serving_*/**/*.py"))
    for part in ("cli", "train", "testing", "serve"):
        files += sorted((CORE / part).glob("**/*.py"))
    files.append(CORE / "retriever.py")
    return [f for f in files if f.is_file()]


def _core_private_names() -> set[str]:
    """Every ``self._name`` the core's own modules assign or define: the private state of core objects."""
    names: set[str] = set()
    for file in CORE.glob("_*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                if node.attr.startswith("_") and not node.attr.startswith("__"):
                    names.add(node.attr)
            if isinstance(node, ast.FunctionDef) and node.name.startswith("_") and not node.name.startswith("__"):
                names.add(node.name)
    return names


CORE_CLASSES = {"Indexer", "Builder"}
PROTOCOL_CLASSES = {"Backend", "Engine", "Indexer", "Builder"}


def _violations(file: Path, private: set[str]) -> list[str]:
    tree = ast.parse(file.read_text())
    rel = file.relative_to(ROOT)
    in_plugin = rel.parts[0] == "plugins"
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level and rel.parts[:1] == ("rechub_serving",):
                base = rel.parts[: len(rel.parts) - node.level]  # the package the relative import starts from
                module = ".".join(base + tuple(module.split(".")) if module else base)
            parts = module.split(".")
            if parts[0] == "rechub_serving" and len(parts) > 1 and parts[1].startswith("_"):
                out.append(f"{rel}:{node.lineno}: imports the private module {module}")
            if module == "rechub_serving":
                out += [
                    f"{rel}:{node.lineno}: imports {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "rechub_serving" and len(parts) > 1 and parts[1].startswith("_"):
                    out.append(f"{rel}:{node.lineno}: imports the private module {alias.name}")
        elif isinstance(node, ast.ClassDef):
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
            if in_plugin and bases & CORE_CLASSES:
                out.append(f"{rel}:{node.lineno}: {node.name} subclasses a core class ({bases & CORE_CLASSES})")
            if bases & PROTOCOL_CLASSES:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name in private:
                        out.append(f"{rel}:{item.lineno}: {node.name}.{item.name} overrides a private core method")
        elif isinstance(node, ast.Attribute) and node.attr in private:
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                if not (isinstance(owner, ast.Call) and getattr(owner.func, "id", "") == "super"):
                    out.append(f"{rel}:{node.lineno}: reads .{node.attr} of {ast.unparse(owner)}")
    return out


def test_nothing_outside_the_core_reaches_into_it():
    private = _core_private_names()
    assert {"_ids", "_engine", "_search_defaults", "_lock"} <= private  # the scan knows the core's state
    problems = [v for f in _scanned() for v in _violations(f, private)]
    assert not problems, "\n".join(problems)


def test_the_scan_catches_what_it_is_for(tmp_path):
    """Plant each forbidden pattern once in a fake plugin file: the scan must flag all of them."""
    plugin = ROOT / "plugins" / "_scan_probe" / "rechub_serving_probe"
    source = (
        "from rechub_serving import Indexer, Engine\n"
        "from rechub_serving._storage import write_index\n"
        "import rechub_serving._ids\n"
        "class Bad(Indexer):\n    pass\n"
        "class E(Engine):\n    def _check_open(self):\n        pass\n"
        "def peek(index):\n    return index._ids\n"
    )
    plugin.mkdir(parents=True, exist_ok=True)
    try:
        (plugin / "probe.py").write_text(source)
        found = _violations(plugin / "probe.py", _core_private_names())
    finally:
        (plugin / "probe.py").unlink()
        plugin.rmdir()
        plugin.parent.rmdir()
    assert len(found) == 5, found


def test_public_names_are_exported():
    for name in ("Backend", "Engine", "EngineFiles", "Adopted", "RawDistance", "BackendConfig", "Builder", "Indexer"):
        assert name in rs.__all__ and hasattr(rs, name)
    assert not [n for n in rs.__all__ if n.startswith("_") and n != "__version__"]


@pytest.mark.parametrize("module", ["rechub_serving", "rechub_serving.testing"])
def test_py_typed_is_shipped(module):
    package = Path(__import__(module, fromlist=["x"]).__file__).parent
    root = package if module == "rechub_serving" else package.parent
    assert (root / "py.typed").is_file()
