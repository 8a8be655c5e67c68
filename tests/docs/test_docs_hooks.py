"""The MkDocs hooks that generate pages from the code (docs/hooks.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _hooks():
    spec = importlib.util.spec_from_file_location("rechub_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_capabilities_table_lists_every_installed_backend() -> None:
    from rechub_serving import list_backends

    table = _hooks().capabilities_table()
    for info in list_backends():
        assert f"| `{info.name}` |" in table


def test_params_table_comes_from_the_schema() -> None:
    table = _hooks().params_table("numpy")
    assert "`block_bytes`" in table and "search (per query)" in table and "`d`" in table
    assert "not installed" in _hooks().params_table("no-such-backend")


def test_cli_reference_is_generated_or_explained() -> None:
    text = _hooks().cli_reference()
    assert "rechub-index" in text


def test_repository_links_outside_docs_become_paths() -> None:
    hooks = _hooks()
    docs = ROOT / "docs"
    text = "[ok](contract.md) [repo](../README.md) [gone](../no-such-file.md)\n```\n[code](../README.md)\n```"
    out = hooks.repository_links(text, "plugins.md", docs)
    assert "[ok](contract.md)" in out  # inside docs/: left to MkDocs
    assert "repo (`README.md`)" in out  # an existing repository file: its path
    assert "[gone](../no-such-file.md)" in out  # missing: left for the strict build to report
    assert "[code](../README.md)" in out  # code blocks are untouched
