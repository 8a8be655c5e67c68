"""Saves racing loads across processes, and saves killed at random moments.

What a reader sees during a save: one complete version, old or new, never an
error. What killed saves leave: nothing that grows, because the next save
sweeps what no live process holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import rechub_serving as rs
from rechub_serving._storage import leftovers

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import rechub_serving as rs

    path, saves, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rng = np.random.default_rng(0)
    for version in range(saves):
        n = 200 + (version % 7) * 50  # versions differ in size, so a mixed read would not add up
        vectors = rng.normal(size=(n, 16)).astype("float32")
        ids = [version * 100_000 + i for i in range(n)]
        with rs.builder_factory("numpy").from_embeddings(vectors, ids=ids) as index:
            index.save(path, metadata={"version": version, "n": n})
        time.sleep(pause * (version % 3))
    """
)

READER = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    import rechub_serving as rs

    path, stop = sys.argv[1], sys.argv[2]
    loads = errors = 0
    seen = set()
    problems = []
    while not os.path.exists(stop):
        try:
            with rs.open_index(path) as index:
                version, n = index.metadata["version"], index.metadata["n"]
                ids = index.query(np.ones(16, np.float32), n + 5).indices[0]
                real = ids[ids >= 0]
                # one complete version: every id belongs to it, and all of them are there
                if len(index) != n or len(real) != n or not ((real // 100_000) == version).all():
                    problems.append(f"version {version}: {len(index)} items, {len(real)} real ids")
                seen.add(version)
                loads += 1
        except Exception as exc:
            errors += 1
            problems.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"loads": loads, "errors": errors, "versions": len(seen), "problems": problems[:5]}))
    """
)


def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "RECHUB_SERVING_PLUGINS": ""}
    return subprocess.Popen([sys.executable, *args], env=env, text=True, **kwargs)


@pytest.mark.slow
def test_readers_never_fail_while_a_writer_saves(tmp_path):
    path = tmp_path / "idx"
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "reader.py").write_text(READER)
    first = _python(str(tmp_path / "writer.py"), str(path), "1", "0")
    assert first.wait(timeout=120) == 0
    stop = tmp_path / "stop"
    readers = [_python(str(tmp_path / "reader.py"), str(path), str(stop), stdout=subprocess.PIPE) for _ in range(2)]
    writer = _python(str(tmp_path / "writer.py"), str(path), "40", "0.01")
    try:
        assert writer.wait(timeout=300) == 0
    finally:
        stop.touch()
    reports = [json.loads(r.communicate(timeout=120)[0]) for r in readers]
    for report in reports:
        assert report["errors"] == 0 and not report["problems"], report
        assert report["loads"] > 5, report
    assert sum(r["versions"] for r in reports) > 2, reports
    # Replaced versions are deleted by the writer or by the last reader that held them.
    assert leftovers(path) == []


KILLED = textwrap.dedent(
    """
    import sys
    import numpy as np
    import rechub_serving as rs

    path = sys.argv[1]
    vectors = np.random.default_rng(1).normal(size=(60_000, 64)).astype("float32")
    with rs.builder_factory("numpy").from_embeddings(vectors) as index:
        print("ready", flush=True)
        while True:
            index.save(path)
    """
)


@pytest.mark.slow
def test_killed_saves_leave_nothing_that_grows(tmp_path, items):
    path = tmp_path / "idx"
    (tmp_path / "killed.py").write_text(KILLED)
    kills = 0
    for delay in (0.05, 0.13, 0.21, 0.34, 0.08, 0.55):
        proc = _python(str(tmp_path / "killed.py"), str(path), stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        assert len(leftovers(path)) <= 1  # at most the one save each kill interrupted...
        if path.exists():
            with rs.open_index(path) as index:  # ...and what is at the path is always whole
                assert index.dim == 64
    with rs.builder_factory("numpy").from_embeddings(items) as index:
        index.save(path)  # the next save sweeps what the killed ones left
    assert leftovers(path) == [] and kills == 6
    with rs.open_index(path) as index:
        assert len(index) == len(items)


def test_a_reader_holding_an_old_version_keeps_it_until_done(tmp_path, items):
    """In-process: a replaced version stays readable while a reader holds it, then goes away."""
    from rechub_serving._storage import open_saved

    path = tmp_path / "idx"
    with rs.builder_factory("numpy").from_embeddings(items) as index:
        index.save(path)
        with open_saved(path) as saved:
            index.save(path)  # replaces the version `saved` holds
            assert (saved.directory / "manifest.json").is_file()  # still whole
            assert len(leftovers(path)) == 1
        assert leftovers(path) == []  # the reader deleted it on the way out
