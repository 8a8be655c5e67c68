"""Every script in examples/ runs to completion as ``python examples/<name>.py``.

Each runs in a subprocess, in a temporary working directory, as a newcomer would
run it. An example whose optional dependency is missing prints a message and
exits 0 by itself, so this test passes on a minimal install too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLOW = {"seed_recipe.py", "serve_with_retriever.py"}  # they train a small model first
EXAMPLES = [
    pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW else p for p in sorted((ROOT / "examples").glob("*.py"))
]
TIMEOUT_S = 300  # each example aims at < 20 s; the margin is for loaded CI machines


def test_there_are_examples() -> None:
    names = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert {
        "01_quickstart_numpy.py",
        "seed_recipe.py",
        "adopt_faiss_index.py",
        "third_party_plugin.py",
        "serve_with_retriever.py",
    } <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    output = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, f"{script.name} exited with {proc.returncode}\n{output}"
    assert proc.stdout.strip(), f"{script.name} printed nothing\n{output}"
    assert not list(tmp_path.iterdir()), (
        f"{script.name} left files in the working directory: {list(tmp_path.iterdir())}"
    )
