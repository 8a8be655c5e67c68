"""The serving benchmark runs end to end in --quick mode and writes its report (no timing assertions)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.serve.conftest import ROOT

pytestmark = pytest.mark.slow


def test_bench_serve_quick(tmp_path):
    pytest.importorskip("faiss")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = (tmp_path / "serve.md").read_text()
    for expected in ("## numpy (exact)", "## faiss HNSW", "micro-batching", "one at a time", "in-process Retriever",
                     "## Targets", "## Machine and command", "exited with code [0]"):  # fmt: skip
        assert expected in report, expected
