"""Files: loading 0.1 saved directories, adopting bare faiss files, memory-mapped loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from rechub_serving import (
    IndexFormatError,
    InvalidParameterError,
    Metric,
    NotAnIndexError,
    UnsupportedOperation,
    builder_factory,
    open_index,
)
from rechub_serving.testing import clustered_data

V0_1 = Path(__file__).parent / "data" / "v0_1"


def _data(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return clustered_data(n, dim, seed=seed)


# -- saved by rechub-serving 0.1 ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["flat-l2-str", "ivf-ip-int", "hnsw-cosine"])
def test_directories_saved_by_0_1_load_and_answer_as_they_did(tmp_path, name):
    """data/v0_1 was written by the 0.1 plugin (make_v01.py); 0.2 reads the same format."""
    expected = json.loads((V0_1 / "expected.json").read_text())[name]
    shutil.copytree(V0_1 / name, tmp_path / name)
    queries = clustered_data(5, 8, seed=1, centres_seed=0)
    with open_index(tmp_path / name) as index:
        assert index.metadata == {"made_by": "rechub-serving 0.1"}
        assert len(index) == expected["n"] - (name == "flat-l2-str")
        res = index.query(queries, 5)
        assert np.asarray(res.indices).tolist() == expected["ids"]
        np.testing.assert_allclose(np.asarray(res.distances), expected["distances"], rtol=1e-5, atol=1e-5)
        for key in (
            "nlist",
            "nprobe",
            "m",
            "ef_construction",
            "ef_search",
        ):  # ef_construction: only the manifest has it
            assert index.params[key] == expected["params"][key], key
        index.save(tmp_path / "again")  # and saved again by 0.2, in the same format
    manifest = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert manifest["engine"]["file"] == "index.faiss" and (tmp_path / "again" / "engine" / "index.faiss").is_file()
    with open_index(tmp_path / "again") as again:
        assert np.asarray(again.query(queries, 5).indices).tolist() == expected["ids"]


def test_an_edited_engine_entry_is_refused(tmp_path):
    shutil.copytree(V0_1 / "ivf-ip-int", tmp_path / "idx")
    manifest_file = tmp_path / "idx" / "manifest.json"
    original = json.loads(manifest_file.read_text())
    for engine in ({**original["engine"], "resolved": {"nprobe": 2**40}}, {**original["engine"], "file": 7}):
        manifest_file.write_text(json.dumps({**original, "engine": engine}))
        with pytest.raises(IndexFormatError):
            open_index(tmp_path / "idx")


# -- adopting bare files, mmap ---------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_adopt_a_bare_faiss_file(tmp_path, metric):
    items, queries = _data(500), _data(5, seed=1)
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    raw = faiss.index_factory(16, "HNSW16,Flat", faiss_metric)
    raw.add(items)
    faiss.write_index(raw, str(tmp_path / "raw.index"))
    with builder_factory("faiss").from_index_file(tmp_path / "raw.index") as index:
        assert index.metric is Metric(metric) and len(index) == 500 and index.dim == 16
        assert not index.capabilities.remove  # read from the file's structure
        expected_d, expected_i = raw.search(queries, 5)
        res = index.query(queries, 5)
        np.testing.assert_array_equal(np.asarray(res.indices), expected_i)
        np.testing.assert_allclose(np.asarray(res.distances), expected_d, rtol=1e-5)
        index.save(tmp_path / "adopted")
    with open_index(tmp_path / "adopted") as again:
        assert again.metric is Metric(metric)
        np.testing.assert_array_equal(np.asarray(again.query(queries, 5).indices), expected_i)


def test_adopt_keeps_the_ids_of_an_idmap_file(tmp_path):
    items = _data(300)
    raw = faiss.IndexIDMap2(faiss.IndexFlatL2(16))
    ids = np.arange(300, dtype=np.int64) * 10 + 5
    raw.add_with_ids(items, ids)
    faiss.write_index(raw, str(tmp_path / "idmap.index"))
    with builder_factory("faiss").from_index_file(tmp_path / "idmap.index") as index:
        res = index.query(items[:3], 1)
        assert np.asarray(res.indices)[:, 0].tolist() == [5, 15, 25]
        assert index.remove([5]) == 1
        assert 5 not in np.asarray(index.query(items[:1], 3).indices)[0].tolist()


def test_adopt_as_cosine_only_for_inner_product(tmp_path):
    raw = faiss.IndexFlatL2(16)
    raw.add(_data(20))
    faiss.write_index(raw, str(tmp_path / "l2.index"))
    with pytest.raises(InvalidParameterError, match="metric"):
        builder_factory("faiss", metric="cosine").from_index_file(tmp_path / "l2.index")
    (tmp_path / "junk.index").write_bytes(b"not a faiss index")
    with pytest.raises(NotAnIndexError):
        builder_factory("faiss").from_index_file(tmp_path / "junk.index")


@pytest.mark.parametrize("index_type", ["Flat", "IVF", "HNSW"])
def test_mmap_load(tmp_path, index_type):
    items, queries = _data(800), _data(5, seed=1)
    with builder_factory("faiss", index_type=index_type).from_embeddings(items) as index:
        expected = np.asarray(index.query(queries, 5).indices)
        index.save(tmp_path / "idx")
    with builder_factory("faiss", mmap=True).from_index_file(tmp_path / "idx") as loaded:
        np.testing.assert_array_equal(np.asarray(loaded.query(queries, 5).indices), expected)
        assert not loaded.capabilities.add
        with pytest.raises(UnsupportedOperation):
            loaded.add(items[:1])


def test_loading_with_other_search_params_overrides_saved(tmp_path):
    with builder_factory("faiss", index_type="IVF", nprobe=3).from_embeddings(_data(2000)) as index:
        index.save(tmp_path / "idx")
    with open_index(tmp_path / "idx") as loaded:
        assert loaded.params["nprobe"] == 3
    with builder_factory("faiss", nprobe=7).from_index_file(tmp_path / "idx") as loaded:
        assert loaded.params["nprobe"] == 7 and loaded.params["index_type"] == "IVF"
