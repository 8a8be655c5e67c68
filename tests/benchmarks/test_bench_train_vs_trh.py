"""Smoke test of benchmarks/bench_train_vs_torch_rechub.py: the quick mode runs end to end.

No timing assertions (speed lives in the benchmark's report). Skipped where
torch-rechub is not installed (it is not a dependency; CI does not install it).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_vs_torch_rechub.py"


@pytest.mark.slow
def test_quick_mode_writes_a_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("torch_rechub")
    spec = importlib.util.spec_from_file_location("bench_train_vs_torch_rechub", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)

    out = bench.main(["--quick", "--out", str(tmp_path / "report.md")])

    text = out.read_text()
    assert out == tmp_path / "report.md"
    for section in ("## 1. Data preparation", "## 2. Training throughput", "## 3. Quality"):
        assert section in text
    assert "torch-rechub `MatchTrainer.fit`" in text
    assert "killed" not in text and "failed" not in text
