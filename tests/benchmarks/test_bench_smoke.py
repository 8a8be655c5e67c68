"""Smoke tests: the side-by-side and scale benchmarks run in --quick mode and write their reports.

No timing assertions (speed goals live in the reports, not in tests).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.slow


def _run(script: str, out: Path, *extra: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_vs_torch_rechub_quick(tmp_path: Path) -> None:
    pytest.importorskip("torch_rechub")
    pytest.importorskip("faiss")
    pytest.importorskip("annoy")
    _run("bench_vs_torch_rechub.py", tmp_path)
    report = (tmp_path / "vs-torch-rechub.md").read_text()
    for expected in (
        "faiss Flat",
        "faiss HNSW",
        "faiss IVF",
        "annoy",
        "recall@10",
        "What the distances mean",
        "Milvus",
    ):
        assert expected in report
    assert "Error" not in report


def test_scale_quick(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    pytest.importorskip("psutil")
    _run("bench_scale.py", tmp_path)
    report = (tmp_path / "scale.md").read_text()
    for expected in ("| Flat |", "| HNSW |", "peak RSS", "SDK overhead"):
        assert expected in report
