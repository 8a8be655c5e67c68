"""Hostile saved indexes: every manifest field, paths, symlinks, pickles, truncation.

A saved index is untrusted input. Each case edits a good index the way an
attacker or a broken copy would, with and without updating the checksums to
match, and expects the library's own error (an ``IndexFormatError``), never a
bare Python error and never data read from outside the directory.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import rechub_serving as rs


@pytest.fixture
def saved(tmp_path, items) -> Path:
    with rs.builder_factory("numpy").from_embeddings(items, ids=[f"i{i}" for i in range(len(items))]) as index:
        index.remove(["i3"])
        return index.save(tmp_path / "idx")


@pytest.fixture
def other(tmp_path, items) -> Path:
    """A second, valid index next to the first: what a path escaping the directory would reach."""
    with rs.builder_factory("numpy").from_embeddings(items[::-1].copy(), ids=list(range(len(items)))) as index:
        return index.save(tmp_path / "other")


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write(path: Path, manifest: dict, *, rechecksum: bool = False) -> None:
    if rechecksum:
        for rel in list(manifest.get("files", {})):
            file = path / rel
            if file.is_file():
                data = file.read_bytes()
                manifest["files"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))


def _refused(path: Path, error: type[Exception] = rs.IndexFormatError) -> str:
    with pytest.raises(error) as info:
        rs.open_index(path)
    return str(info.value)


# -- every field of the manifest ----------------------------------------------------------------
BAD_FIELDS = [
    ("format_version", "1"),
    ("format_version", True),
    ("format_version", 0),
    ("backend", 7),
    ("backend", ""),
    ("metric", "hamming"),
    ("metric", None),
    ("dim", "sixteen"),
    ("dim", 0),
    ("dim", 8.0),
    ("dim", True),
    ("count", -1),
    ("count", "300"),
    ("files", []),
    ("files", {"ids.npy": "abc"}),
    ("files", {"ids.npy": {"size": "12", "sha256": "0" * 64}}),
    ("files", {"ids.npy": {"size": 12, "sha256": "xyz"}}),
    ("ids", []),
    ("ids", {"kind": "float", "file": "ids.npy"}),
    ("ids", {"kind": "str", "file": 3}),
    ("ids", {"kind": "str", "file": "ids.npy", "positional": "yes"}),
    ("ids", {"kind": "str", "file": "ids.npy", "alive": 5}),
    ("params", []),
    ("search_params", {"block_bytes": "big"}),
    ("search_params", {"block_bytes": 1}),
    ("search_params", {"block_bytes": -4}),
    ("engine", "vectors.npy"),
    ("metadata", [1, 2]),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_every_manifest_field_is_type_checked(saved, field, value):
    manifest = _manifest(saved)
    manifest[field] = value
    _write(saved, manifest)
    message = _refused(saved, rs.RechubError)
    assert "Traceback" not in message


@pytest.mark.parametrize("field", ["backend", "metric", "dim", "count", "files"])
def test_missing_fields(saved, field):
    manifest = _manifest(saved)
    del manifest[field]
    _write(saved, manifest)
    assert field in _refused(saved, rs.NotAnIndexError)


def test_edited_dim_and_count_are_cross_checked_with_the_engine(saved):
    manifest = _manifest(saved)
    _write(saved, {**manifest, "dim": manifest["dim"] * 2})
    assert "dimension" in _refused(saved) or "dim" in _refused(saved)
    _write(saved, {**manifest, "count": manifest["count"] + 1})
    assert "vectors" in _refused(saved)
    _write(saved, {**manifest, "metric": "cosine"})
    rs.open_index(saved).close()  # the numpy engine records no metric: cosine over raw vectors is allowed to load


def test_json_that_is_not_an_object(saved):
    (saved / "manifest.json").write_text("[1, 2, 3]")
    _refused(saved, rs.NotAnIndexError)
    (saved / "manifest.json").write_bytes(b"\xff\xfe")
    _refused(saved, rs.NotAnIndexError)


# -- paths that leave the directory ------------------------------------------------------------
@pytest.mark.parametrize("target", ["../other/ids.npy", "/etc/passwd", "./ids.npy", "engine/../ids.npy", "a\\b", ""])
def test_ids_file_outside_the_directory_is_refused(saved, other, target):
    manifest = _manifest(saved)
    manifest["ids"]["file"] = target
    _write(saved, manifest)
    message = _refused(saved)
    assert "outside" in message or "relative" in message or "listed" in message


def test_files_entry_outside_the_directory_is_refused(saved, other):
    manifest = _manifest(saved)
    manifest["files"]["../other/ids.npy"] = manifest["files"]["ids.npy"]
    _write(saved, manifest)
    assert "outside" in _refused(saved)


def test_an_unlisted_file_is_never_read(saved, other):
    """The engine reads through EngineFiles.path(): a name the manifest does not list cannot be verified."""
    manifest = _manifest(saved)
    del manifest["files"]["engine/labels.npy"]
    _write(saved, manifest)
    assert "not listed" in _refused(saved)


def test_symlink_to_another_index_is_refused_even_with_matching_checksums(saved, other):
    victim = saved / "ids.npy"
    victim.unlink()
    victim.symlink_to(other / "ids.npy")
    manifest = _manifest(saved)
    _write(saved, manifest, rechecksum=True)
    assert "symlink" in _refused(saved)


def test_symlinked_engine_directory_is_refused(saved, other):
    engine = saved / "engine"
    for f in engine.iterdir():
        f.unlink()
    engine.rmdir()
    engine.symlink_to(other / "engine")
    _write(saved, _manifest(saved), rechecksum=True)
    assert "symlink" in _refused(saved)


def test_symlinked_manifest_is_refused(saved, other):
    (saved / "manifest.json").unlink()
    (saved / "manifest.json").symlink_to(other / "manifest.json")
    assert "symlink" in _refused(saved)


# -- pickles, truncation, wrong arrays ---------------------------------------------------------
def _replace_array(saved: Path, rel: str, payload: bytes) -> None:
    (saved / rel).write_bytes(payload)
    _write(saved, _manifest(saved), rechecksum=True)


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize("rel", ["engine/vectors.npy", "engine/labels.npy", "ids.npy", "alive.npy"])
def test_pickled_arrays_are_refused(saved, rel):
    evil = np.array([{"__reduce__": "os.system"}, "x"], dtype=object)
    _replace_array(saved, rel, _npy(evil))
    _refused(saved)


@pytest.mark.parametrize("rel", ["engine/vectors.npy", "ids.npy", "engine/labels.npy", "alive.npy"])
def test_truncated_arrays_are_refused_with_or_without_checksums(saved, rel):
    data = (saved / rel).read_bytes()
    (saved / rel).write_bytes(data[: len(data) // 2])
    assert "truncated" in _refused(saved, rs.ChecksumMismatchError)
    _write(saved, _manifest(saved), rechecksum=True)
    _refused(saved)


def test_raw_pickle_file_is_refused(saved):
    _replace_array(saved, "ids.npy", pickle.dumps(["i0", "i1"]))
    _refused(saved)


@pytest.mark.parametrize(
    ("rel", "array"),
    [
        ("ids.npy", np.arange(10, dtype=np.float64)),
        ("ids.npy", np.array(["a"] * 300)),  # duplicates
        ("ids.npy", np.zeros((2, 2), dtype="<U3")),
        ("alive.npy", np.ones(3, dtype=bool)),
        ("alive.npy", np.ones(300, dtype=np.int8)),
        ("engine/labels.npy", np.arange(5, dtype=np.int64)),
        ("engine/labels.npy", np.zeros(299, dtype=np.int64)),
        ("engine/vectors.npy", np.zeros((299, 8), dtype=np.float64)),
        ("engine/vectors.npy", np.zeros((299, 9), dtype=np.float32)),
    ],
)
def test_arrays_of_the_wrong_kind_are_refused(saved, rel, array):
    _replace_array(saved, rel, _npy(array))
    _refused(saved)


def test_good_index_still_loads(saved):
    with rs.open_index(saved) as index:
        assert len(index) == 299 and index.id_kind == "str"
