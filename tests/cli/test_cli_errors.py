"""Error messages a user acts on (issue 13, item 2): the user's path, "does not exist", adoption, "did you mean", Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rechub_serving.evaluation import clustered_data
from tests.cli._support import toy_results

ROOT = Path(__file__).resolve().parents[2]


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("rechub-index: error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture()
def index(cli, tmp_path):
    items = clustered_data(200, 8, seed=0)
    np.save(tmp_path / "items.npy", items)
    np.save(tmp_path / "q.npy", items[:3])
    assert cli("build", tmp_path / "items.npy", "-o", tmp_path / "items.index", "-b", "numpy", "-q").exit_code == 0
    return tmp_path, items


def test_corrupted_file_names_the_users_index_and_what_to_do(cli, index):
    tmp, _ = index
    vectors = tmp / "items.index" / "engine" / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF  # same size: only the checksum can tell
    vectors.write_bytes(bytes(data))
    for args in (["query", tmp / "items.index", tmp / "q.npy"], ["info", tmp / "items.index"]):
        result = cli(*args)
        assert result.exit_code == 1
        line = error_line(result)
        assert str(tmp / "items.index") in line and "/proc/self/fd" not in line
        assert "vectors.npy" in line and "checksum" in line and "save it again or restore a copy" in line


def test_missing_path_does_not_exist(cli, index):
    tmp, _ = index
    for args in (["query", tmp / "nowhere.index", tmp / "q.npy"], ["info", tmp / "nowhere.index"]):
        result = cli(*args)
        assert result.exit_code == 1
        assert "nowhere.index does not exist" in error_line(result)


def test_a_bare_file_mentions_adoption(cli, index):
    tmp, _ = index
    for args in (["query", tmp / "items.npy", tmp / "q.npy"], ["info", tmp / "items.npy"]):
        result = cli(*args)
        assert result.exit_code == 1
        line = error_line(result)
        assert "is a file" in line and "--backend" in line and "from_index_file" in line


def test_backend_option_adopts_a_native_file(cli, toy_backend, index):
    tmp, items = index
    result = cli("query", tmp / "items.npy", tmp / "q.npy", "--backend", "approx", "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    found = [r["ids"] for r in json.loads(result.stdout)["results"]]
    assert found == toy_results(items, items[:3], 5, probe=1).tolist()
    result = cli("info", tmp / "items.npy", "--backend", "approx", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["adopted"] and payload["count"] == 200 and payload["dim"] == 8
    assert payload["params"]["n_lists"] == 16
    result = cli("info", tmp / "items.npy", "--backend", "approx")
    assert "adopted" in result.stdout and "n_lists=16" in result.stdout
    # a backend that cannot adopt files says so
    result = cli("query", tmp / "items.npy", tmp / "q.npy", "--backend", "numpy")
    assert result.exit_code == 1 and "cannot adopt native files" in error_line(result)


def test_query_refuses_build_parameters_for_a_saved_index(cli, toy_backend, index):
    tmp, _ = index
    assert cli("build", tmp / "items.npy", "-o", tmp / "a.index", "-b", "approx", "-q").exit_code == 0
    result = cli("query", tmp / "a.index", tmp / "q.npy", "-p", "n_lists=4")
    assert result.exit_code == 2 and "n_lists" in error_line(result) and "rebuild" in error_line(result)


@pytest.mark.parametrize(
    "args",
    [
        ["build", "{tmp}/items.npy", "-o", "{tmp}/x", "-b", "nupmy"],
        ["tune", "{tmp}/items.npy", "-b", "nupmy"],
        ["bench", "{tmp}/items.npy", "-c", "nupmy"],
        ["backends", "nupmy"],
        ["quickstart", "--synthetic", "-b", "nupmy"],
        ["query", "{tmp}/items.npy", "{tmp}/q.npy", "--backend", "nupmy"],
    ],
)
def test_a_misspelt_backend_gets_did_you_mean(cli, index, args):
    tmp, _ = index
    result = cli(*[a.format(tmp=tmp) for a in args])
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert "no backend named 'nupmy'" in line and "Did you mean 'numpy'?" in line


# -- Ctrl-C ------------------------------------------------------------------------------------------
def test_interrupt_before_anything_is_written(cli, index, monkeypatch):
    tmp, _ = index
    from rechub_serving.cli import _index_cmds

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_index_cmds, "write_results", interrupted)
    result = cli("query", tmp / "items.index", tmp / "q.npy", "-o", tmp / "out.csv")
    assert result.exit_code == 130
    assert error_line(result) == "rechub-index: error: interrupted; nothing was written"
    assert not (tmp / "out.csv").exists()


def test_interrupt_after_the_index_was_saved_says_so(cli, index, monkeypatch):
    tmp, _ = index
    from rechub_serving.cli import _index_cmds

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_index_cmds, "dir_size", interrupted)  # runs just after the save
    result = cli("build", tmp / "items.npy", "-o", tmp / "b.index", "-b", "numpy")
    assert result.exit_code == 130
    assert error_line(result) == f"rechub-index: error: interrupted; already written: {tmp / 'b.index'}"


def test_ctrl_c_in_the_installed_script(tmp_path):
    """A real SIGINT while `query -o` runs: exit 130, one line, no output file and no temporary file."""
    items = clustered_data(2000, 16, seed=0)
    np.save(tmp_path / "items.npy", items)
    # 100,000 queries, one per call: a minute of work, so the signal always lands inside the loop
    np.save(tmp_path / "q.npy", np.repeat(items[:50], 2000, axis=0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECHUB_SERVING_PLUGINS": ""}
    cli = [sys.executable, "-m", "rechub_serving.cli"]
    subprocess.run(
        [*cli, "build", tmp_path / "items.npy", "-o", tmp_path / "i", "-b", "numpy", "-q"], env=env, check=True
    )
    proc = subprocess.Popen(
        [*cli, "query", tmp_path / "i", tmp_path / "q.npy", "--batch-size", "1", "-o", tmp_path / "out.parquet"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the status line: the query loop starts right after it
    assert first.startswith("querying"), first
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert rest.strip() == "rechub-index: error: interrupted; nothing was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i", "items.npy", "q.npy"]
