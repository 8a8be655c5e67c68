"""The documentation site builds with warnings as errors (``mkdocs build --strict``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDED = {"mkdocs": "mkdocs", "material": "mkdocs-material", "mkdocstrings_handlers.python": "mkdocstrings-python"}


def _missing() -> list[str]:
    missing = []
    for module, dist in NEEDED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(dist)
    return missing


@pytest.mark.skipif(
    bool(_missing()), reason=f"docs tools not installed: {', '.join(_missing())} (pip install -e .[dev])"
)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    site = tmp_path / "site"
    for page in ("index.html", "contract/index.html", "api/index.html", "cli-reference/index.html"):
        assert (site / page).is_file(), f"{page} is missing from the built site"
    api = (site / "api" / "index.html").read_text()
    assert 'id="rechub_serving.Indexer.query"' in api, "the API reference was not generated from the docstrings"
    cli = (site / "cli-reference" / "index.html").read_text()
    assert "<!-- rechub:cli-reference -->" not in cli, "the CLI reference marker was not replaced"


def test_site_fetches_nothing_at_build_time() -> None:
    """No plugin that downloads (Material's social / privacy), no web fonts."""
    config = (ROOT / "mkdocs.yml").read_text()
    assert "font: false" in config
    for plugin in ("- social", "- privacy", "- optimize"):
        assert plugin not in config, f"mkdocs.yml enables {plugin.strip('- ')}, which fetches from the network"


def test_changelog_names_the_current_version() -> None:
    """The version lives in rechub_serving/_version.py only; the changelog's newest entry matches it."""
    import re

    from rechub_serving import __version__

    changelog = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## (\d+\.\d+\.\d+)", changelog, flags=re.MULTILINE)
    assert versions and versions[0] == __version__, f"CHANGELOG.md's newest entry is {versions[:1]}, not {__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "rechub_serving._version.__version__" in pyproject
