"""Embedded Milvus that behaves like a file: private databases, self-contained saves, every kind of exit.

Several tests run real processes (``_child.py``): two processes at once,
Ctrl-C, SIGTERM and SIGKILL. Each test has a work root of its own, so "nothing
left behind" means an empty directory.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rechub_serving_milvus._private import list_private, sweep

from rechub_serving import builder_factory, open_index
from rechub_serving.testing import clustered_data

CHILD = Path(__file__).with_name("_child.py")


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    monkeypatch.setenv("RECHUB_MILVUS_WORKDIR", str(work))
    monkeypatch.setenv("RECHUB_SERVING_PLUGINS", "milvus")
    return work


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def wait_until(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


class Child:
    """A ``_child.py`` process with its JSON events read in the background."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue = queue.Queue()
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass

    def wait_for(self, event: str, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no {event!r} event within {timeout}s; stderr: {self.finish(1)[-2000:]}"
                ) from None
            if message.get("event") == event:
                return message

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 120.0) -> str:
        try:
            _, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate()
        return self.stderr


def _expected(tmp_path: Path, n: int = 500, dim: int = 16) -> list:
    items = clustered_data(n, dim, seed=0)
    queries = clustered_data(5, dim, seed=1, centres_seed=0)
    with builder_factory("milvus", index_type="FLAT").from_embeddings(items) as index:
        return index.query(queries, 5).indices.tolist()


# -- in one process -------------------------------------------------------------------------------
def test_private_database_is_removed_on_close_and_on_garbage_collection(root):
    items = clustered_data(50, 8, seed=0)
    index = builder_factory("milvus", index_type="FLAT").from_embeddings(items)
    (entry,) = entries(root)
    owner = json.loads((root / entry / "owner.json").read_text())
    assert owner["pid"] == os.getpid() and owner["created"] and "temporary" in owner["purpose"]
    assert str(root / entry) in index.engine.location
    index.close()
    assert entries(root) == []
    index = builder_factory("milvus", index_type="FLAT").from_embeddings(items)
    assert len(entries(root)) == 1
    del index
    gc.collect()
    assert wait_until(lambda: entries(root) == [], 10)


def test_opened_saved_index_is_a_private_copy_that_survives_replacement(root, tmp_path):
    """After load the saved version may be replaced and deleted by a save: the opener keeps its copy."""
    items = clustered_data(300, 8, seed=0)
    queries = clustered_data(4, 8, seed=1, centres_seed=0)
    with builder_factory("milvus", index_type="HNSW", metric="cosine").from_embeddings(items) as first:
        first.save(tmp_path / "idx")
        expected = first.query(queries, 5).indices
    reader = open_index(tmp_path / "idx")
    old = tmp_path / "idx" / "engine" / "milvus.db" / "collections" / reader.engine.collection
    assert old.is_dir()
    with builder_factory("milvus", index_type="FLAT").from_embeddings(items[::-1].copy()) as second:
        second.save(tmp_path / "idx")  # replaces the version the reader was opened from, and deletes it
    assert not old.exists() and len(list(tmp_path.glob(".idx*"))) == 0
    reader.engine._conn.client.release_collection(reader.engine.collection)  # reload from the private copy
    reader.engine._conn.client.load_collection(reader.engine.collection)
    np.testing.assert_array_equal(reader.query(queries, 5).indices, expected)
    reader.close()
    assert entries(root) == []


def test_sweep_removes_only_databases_whose_owner_is_gone(root):
    index = builder_factory("milvus", index_type="FLAT").from_embeddings(clustered_data(20, 4, seed=0))
    dead = root / "4242-20200101T000000-deadbeef"
    (dead / "milvus.db" / "collections").mkdir(parents=True)
    (dead / "owner.json").write_text(json.dumps({"pid": 4242, "created": "2020-01-01T00:00:00+00:00"}))
    (dead / "owner.lock").touch()
    states = {e.path.name: e.alive for e in list_private(root)}
    assert states[dead.name] is False and sum(states.values()) == 1
    assert sweep(root) == [dead]
    assert len(entries(root)) == 1  # the live one stays
    index.close()


def test_pymilvus_tracebacks_go_to_the_debug_log_not_stderr(root, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="rechub_serving")
    with builder_factory("milvus", index_type="FLAT").from_embeddings(clustered_data(20, 4, seed=0)) as index:
        capfd.readouterr()
        with pytest.raises(Exception, match="nope"):
            index.engine._conn.client.describe_collection("nope")  # pymilvus logs a traceback for this
    assert "pymilvus: RPC error" in caplog.text
    assert capfd.readouterr().err == ""


# -- several processes -------------------------------------------------------------------------------
@pytest.mark.slow
def test_saved_index_copied_elsewhere_opens_in_two_processes_at_once(root, tmp_path):
    expected = _expected(tmp_path)
    builder = Child("build", "--n", "500", "--save", str(tmp_path / "a" / "idx"))
    built = builder.wait_for("built")
    builder.finish()
    assert built["ids"] == expected
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")  # the original is gone: the copy holds everything
    ready = tmp_path / "ready"
    ready.mkdir()
    readers = [Child("open", str(tmp_path / "b" / "idx"), "--ready-dir", str(ready), "--peers", "2") for _ in range(2)]
    for reader in readers:
        assert reader.wait_for("queried")["ids"] == expected
    for reader in readers:
        assert "Traceback" not in reader.finish()
        assert reader.proc.returncode == 0
    assert wait_until(lambda: entries(root) == [])


@pytest.mark.slow
def test_two_processes_build_and_query_at_the_same_time_with_the_defaults(root, tmp_path):
    expected = _expected(tmp_path, n=2000)
    children = [Child("build", "--n", "2000", "--hold") for _ in range(2)]
    results = [child.wait_for("built") for child in children]  # both hold an index open now
    assert len({r["location"] for r in results}) == 2
    for child, result in zip(children, results):
        child.release()
        child.wait_for("closed")
        assert child.finish() == "" and child.proc.returncode == 0
        assert result["ids"] == expected or np.mean(np.isin(result["ids"], expected)) > 0.9  # HNSW
    assert wait_until(lambda: entries(root) == [])


@pytest.mark.slow
def test_ctrl_c_during_a_cli_build_stops_fast_and_leaves_nothing(root, tmp_path):
    np.save(tmp_path / "items.npy", clustered_data(400_000, 32, seed=0))  # far longer than the wait below
    cmd = [sys.executable, "-m", "rechub_serving.cli", "build", str(tmp_path / "items.npy")]
    proc = subprocess.Popen(
        [*cmd, "-o", str(tmp_path / "idx"), "-b", "milvus"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert wait_until(lambda: len(entries(root)) == 1, 60)
    time.sleep(6)  # inserting, flushing or indexing by now
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - start < 10 and proc.returncode != 0
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx*"))
    noise = [line for line in stderr.splitlines() if line and not line.startswith(("rechub-index", "building"))]
    assert noise == [], noise  # no traceback, no milvus-lite, pymilvus or gRPC output
    assert wait_until(lambda: entries(root) == [], 10), entries(root)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_build_stops_fast_and_leaves_nothing(root, signum):
    child = Child("build", "--n", "400000", "--dim", "32")  # far longer than the wait below
    child.wait_for("building")
    assert wait_until(lambda: len(entries(root)) == 1, 60)
    time.sleep(6)  # inserting, flushing or indexing by now
    start = time.monotonic()
    child.proc.send_signal(signum)
    stderr = child.finish(60)
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"took {elapsed:.1f}s to stop"
    assert "built" not in [m.get("event") for m in list(child.events.queue)]
    assert stderr.strip() == ("interrupted" if signum == signal.SIGINT else "")  # no engine noise
    assert wait_until(lambda: entries(root) == [], 10), entries(root)


@pytest.mark.slow
def test_sigkill_leaves_a_recognisable_database_that_the_next_process_removes(root, tmp_path):
    # The SDK's process killed alone: its host process notices and deletes the private database.
    child = Child("build", "--n", "300", "--hold")
    child.wait_for("built")
    child.proc.kill()
    child.finish()
    assert wait_until(lambda: entries(root) == [], 10)
    # Both killed at once (the host too): what is left names its owner, and the next process removes it.
    child = Child("build", "--n", "300", "--hold")
    built = child.wait_for("built")
    os.kill(built["host_pid"], signal.SIGKILL)
    child.proc.kill()
    child.finish()
    (left,) = entries(root)
    owner = json.loads((root / left / "owner.json").read_text())
    assert owner["pid"] == child.proc.pid and owner["created"]
    assert wait_until(lambda: [e.alive for e in list_private(root)] == [False], 10)
    nxt = Child("build", "--n", "50")
    nxt.wait_for("built")
    nxt.finish()
    assert wait_until(lambda: entries(root) == [], 10)
