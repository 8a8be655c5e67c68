"""Saved indexes: manifest, checksums, atomic replacement, clear loading errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import rechub_serving as rs
from rechub_serving import _storage


def _save(items, path, **params):
    with rs.builder_factory("numpy", **params).from_embeddings(
        items, ids=[f"i{i}" for i in range(len(items))]
    ) as index:
        index.save(path)


def test_manifest_records_what_the_design_lists(items, tmp_path):
    _save(items, tmp_path / "idx", metric="cosine")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    for key in (
        "format_version",
        "backend",
        "plugin_version",
        "engine_version",
        "metric",
        "dim",
        "count",
        "normalized",
        "params",
        "search_params",
        "ids",
        "created",
        "files",
    ):
        assert key in manifest
    assert manifest["normalized"] is True and manifest["ids"]["kind"] == "str"
    assert set(manifest["files"]) == {"engine/vectors.npy", "engine/labels.npy", "ids.npy"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_no_pickle_anywhere(items, tmp_path):
    _save(items, tmp_path / "idx")
    for file in (tmp_path / "idx").rglob("*.npy"):
        np.load(file, allow_pickle=False)  # raises if an object array was pickled


def test_not_an_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(rs.NotAnIndexError, match=r"no manifest\.json"):
        rs.open_index(tmp_path / "empty")
    with pytest.raises(rs.NotAnIndexError, match="does not exist"):
        rs.builder_factory("numpy").from_index_file(tmp_path / "missing")
    (tmp_path / "file.bin").write_bytes(b"abc")
    with pytest.raises(rs.NotAnIndexError, match="cannot adopt"):
        rs.builder_factory("numpy").from_index_file(tmp_path / "file.bin")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(rs.NotAnIndexError, match="not valid JSON"):
        rs.open_index(tmp_path / "bad")


def _edit_manifest(path, **changes):
    file = path / "manifest.json"
    manifest = json.loads(file.read_text())
    manifest.update(changes)
    file.write_text(json.dumps(manifest))


def test_newer_format_version(items, tmp_path):
    _save(items, tmp_path / "idx")
    _edit_manifest(tmp_path / "idx", format_version=99)
    with pytest.raises(rs.UnsupportedFormatVersionError, match="upgrade rechub-serving"):
        rs.open_index(tmp_path / "idx")


def test_missing_plugin_names_distribution(items, tmp_path):
    _save(items, tmp_path / "idx")
    _edit_manifest(tmp_path / "idx", backend="vespa", plugin_distribution="rechub-serving-vespa")
    with pytest.raises(rs.MissingPluginError, match=r"pip install rechub-serving-vespa"):
        rs.open_index(tmp_path / "idx")


def test_wrong_backend(items, tmp_path, fresh_registry):
    from rechub_serving.testing import registered_plugin
    from tests.test_plugins import TinyBackend

    _save(items, tmp_path / "idx")
    with registered_plugin(TinyBackend):
        with pytest.raises(rs.BackendMismatchError, match="numpy"):
            rs.builder_factory("tiny").from_index_file(tmp_path / "idx")


def test_edited_and_truncated_files(items, tmp_path):
    _save(items, tmp_path / "idx")
    ids = tmp_path / "idx" / "ids.npy"
    data = bytearray(ids.read_bytes())
    data[-1] ^= 0xFF
    ids.write_bytes(bytes(data))
    with pytest.raises(rs.ChecksumMismatchError, match="checksum"):
        rs.open_index(tmp_path / "idx")
    ids.write_bytes(bytes(data[:-10]))
    with pytest.raises(rs.ChecksumMismatchError, match="truncated"):
        rs.open_index(tmp_path / "idx")
    ids.unlink()
    with pytest.raises(rs.ChecksumMismatchError, match="missing"):
        rs.open_index(tmp_path / "idx")


def test_metric_mismatch_on_load(items, tmp_path):
    _save(items, tmp_path / "idx", metric="ip")
    with pytest.raises(rs.InvalidParameterError, match="metric"):
        rs.builder_factory("numpy", metric="l2").from_index_file(tmp_path / "idx")
    with rs.builder_factory("numpy", metric="dot").from_index_file(tmp_path / "idx") as index:
        assert index.metric is rs.Metric.IP


def test_search_params_given_at_load_override_saved(items, tmp_path):
    _save(items, tmp_path / "idx", block_bytes=8192)
    with rs.open_index(tmp_path / "idx") as index:
        assert index.params["block_bytes"] == 8192
    with rs.open_index(tmp_path / "idx", block_bytes=16384) as index:
        assert index.params["block_bytes"] == 16384


def test_mmap_load(items, tmp_path):
    _save(items, tmp_path / "idx")
    with rs.open_index(tmp_path / "idx", mmap=True) as index:
        assert isinstance(index.engine.vectors, np.memmap)
        assert np.asarray(index.query(items[:2], 1).indices).tolist() == [["i0"], ["i1"]]


def test_refuses_to_overwrite_something_that_is_not_an_index(items, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    with pytest.raises(rs.IndexFormatError, match="refusing to overwrite"):
        _save(items, precious)
    assert (precious / "thesis.txt").read_text() == "keep me"


def test_failed_save_leaves_the_old_index(items, tmp_path, monkeypatch):
    _save(items, tmp_path / "idx")
    before = (tmp_path / "idx" / "manifest.json").read_text()

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_storage, "_fsync_tree", crash)
    with pytest.raises(OSError, match="No space"):
        _save(items[:10], tmp_path / "idx")
    assert (tmp_path / "idx" / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary left behind
    with rs.open_index(tmp_path / "idx") as index:
        assert len(index) == len(items)


def test_replacement_without_renameat2(items, tmp_path, monkeypatch):
    _save(items, tmp_path / "idx")
    monkeypatch.setattr(_storage, "_exchange", lambda a, b: False)
    _save(items[:5], tmp_path / "idx")
    with rs.open_index(tmp_path / "idx") as index:
        assert len(index) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


READER = """
import json, pathlib, sys
import numpy as np
import rechub_serving as rs
path, stop = sys.argv[1], pathlib.Path(sys.argv[2])
loads = errors = 0
messages = []
while not stop.exists() or loads == 0:
    try:
        with rs.open_index(path) as index:
            index.query(np.zeros((1, 8), np.float32), 3)
        loads += 1
        pathlib.Path(path + ".ready").touch()
    except Exception as exc:
        errors += 1
        messages.append(repr(exc))
print(json.dumps({"loads": loads, "errors": errors, "messages": messages[:3]}))
"""


def test_concurrent_reader_process_survives_repeated_saves(items, tmp_path):
    path = tmp_path / "idx"
    _save(items, path)
    (tmp_path / "reader.py").write_text(READER)
    stop = tmp_path / "stop"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "reader.py"), str(path), str(stop)], stdout=subprocess.PIPE, text=True
    )
    ready = tmp_path / "idx.ready"
    try:
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.05)
        for i in range(30):
            _save(items[: 50 + i], path)
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=60)
    report = json.loads(out)
    assert report["errors"] == 0 and report["loads"] > 1, report
    assert sorted(os.listdir(tmp_path)) == ["idx", "idx.ready", "reader.py", "stop"]


def test_metadata_is_saved_in_the_manifest_and_kept_on_resave(items, tmp_path):
    with rs.builder_factory("numpy").from_embeddings(items) as index:
        assert index.metadata == {}
        index.save(tmp_path / "idx", metadata={"model_hash": "abc", "epochs": 3})
    with rs.open_index(tmp_path / "idx") as loaded:
        assert loaded.metadata == {"model_hash": "abc", "epochs": 3}
        loaded.save(tmp_path / "copy")
    with rs.open_index(tmp_path / "copy") as copy:
        assert copy.metadata["model_hash"] == "abc"
