"""torch-rechub's own serving tests, run against this project while another process holds Milvus open.

Its test file is not part of this repository: point ``RECHUB_TORCH_RECHUB_TESTS``
at a checkout's ``tests/test_serving.py`` to run it
(``scripts/run_torch_rechub_serving_tests.py`` does the import change and holds the index).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "run_torch_rechub_serving_tests.py"
TESTS = os.environ.get("RECHUB_TORCH_RECHUB_TESTS")


@pytest.mark.slow
@pytest.mark.skipif(
    not TESTS, reason="set RECHUB_TORCH_RECHUB_TESTS to torch-rechub's tests/test_serving.py to run its tests here"
)
def test_torch_rechub_serving_tests_pass_while_another_process_holds_milvus():
    done = subprocess.run([sys.executable, str(SCRIPT), str(TESTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-2000:]
