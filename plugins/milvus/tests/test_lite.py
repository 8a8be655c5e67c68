"""The milvus backend on an embedded milvus-lite database: conformance and plugin behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rechub_serving import (
    BackendError,
    DimensionMismatchError,
    InvalidParameterError,
    builder_factory,
    list_backends,
    open_index,
)
from rechub_serving.testing import BackendConformance, clustered_data


class _Lite:
    @pytest.fixture(autouse=True)
    def _database(self, lite_db):
        self.db = str(lite_db)

    def make_builder(self, **params):
        return builder_factory(self.backend, path=self.db, **{**self.params, **params})


class TestLiteFlat(_Lite, BackendConformance):
    backend = "milvus"
    params = {"index_type": "FLAT"}
    exact = True


class TestLiteHNSW(_Lite, BackendConformance):
    backend = "milvus"
    params = {"index_type": "HNSW"}
    recall_floor = 0.9


# -- plugin behaviour ---------------------------------------------------------------------


def _items(n=200, dim=8, seed=0):
    return clustered_data(n, dim, seed=seed)


def test_registered_with_capabilities():
    info = {b.name: b for b in list_backends()}["milvus"]
    assert info.capabilities.add and info.capabilities.remove and info.capabilities.native_filter


def test_default_database_path_comes_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RECHUB_MILVUS_PATH", str(tmp_path / "env.db"))
    with builder_factory("milvus", index_type="FLAT").from_embeddings(_items(20)) as index:
        assert str(tmp_path / "env.db") in index.location
    assert (tmp_path / "env.db").exists()


@pytest.mark.parametrize(
    "params",
    [
        {"index_type": "IVF_PQ"},
        {"index_type": "HNSW", "nlist": 8},
        {"index_type": "IVF_FLAT", "m": 8},
        {"index_type": "FLAT", "ef_search": 8},
        {"index_type": "IVF_FLAT", "nlist": 4, "nprobe": 8},
        {"m": 1},
        {"path": "no-suffix"},
        {"db_name": "x"},
        {"uri": "ftp://x"},
        {"collection": "bad-name"},
    ],
)
def test_invalid_parameters_rejected_before_anything_is_sent(params):
    with pytest.raises(InvalidParameterError):
        builder_factory("milvus", **params)


def test_aliases_of_torch_rechub():
    b = builder_factory("milvus", index_type="HNSW", M=8, efConstruction=40, efSearch=30, metric="COSINE")
    assert (b.config["m"], b.config["ef_construction"], b.config["ef_search"], b.config["metric"]) == (
        8,
        40,
        30,
        "cosine",
    )
    assert builder_factory("milvus", index_type="IVF_FLAT", nlists=4).config["nlist"] == 4


def test_ivf_parameters_reach_the_engine(lite_db):
    items = _items(300)
    b = builder_factory("milvus", path=str(lite_db), index_type="IVF_FLAT", nlist=5, metric="ip")
    with b.from_embeddings(items) as index:
        spec = index._spec
        assert spec.params == {"nlist": 5}
        desc = index._conn.client.describe_index(index.collection, "vector")
        assert "nlist" in json.dumps(desc)
        full = index.query(items[:5], 5, nprobe=5)  # all lists: exact
        ref = builder_factory("numpy", metric="ip").from_embeddings(items).query(items[:5], 5)
        np.testing.assert_array_equal(full.indices, ref.indices)


def test_temporary_collection_dropped_on_close_unless_saved(lite_db, tmp_path):
    b = builder_factory("milvus", path=str(lite_db), index_type="FLAT")
    index = b.from_embeddings(_items(30))
    name, client = index.collection, None
    assert index.temporary
    index.close()
    keep = b.from_embeddings(_items(30))
    keep.save(tmp_path / "saved")
    kept = keep.collection
    keep.close()
    with b.open_collection(kept) as again:
        client = again._conn.client
        assert client.has_collection(kept)
        assert not client.has_collection(name)
        assert len(again) == 30


def test_named_collection_is_kept_and_can_be_attached(lite_db):
    items = _items(50)
    b = builder_factory("milvus", path=str(lite_db), index_type="HNSW", metric="cosine", collection="catalog_v1")
    with b.from_embeddings(items, ids=[f"i{i}" for i in range(50)]) as index:
        assert not index.temporary
        expected = index.query(items[:3], 4)
    with pytest.raises(BackendError, match="already exists"):
        b.from_embeddings(items)
    attach = builder_factory("milvus", path=str(lite_db))  # metric and index come from the collection
    with attach.open_collection("catalog_v1") as index:
        assert index.metric.value == "cosine" and len(index) == 50
        got = index.query(items[:3], 4)
        np.testing.assert_array_equal(got.indices, expected.indices)
    with pytest.raises(InvalidParameterError, match="metric"):
        builder_factory("milvus", path=str(lite_db), metric="l2").open_collection("catalog_v1")
    with pytest.raises(DimensionMismatchError):
        builder_factory("milvus", path=str(lite_db), dim=3).open_collection("catalog_v1")


def test_missing_collection_is_a_clear_error(lite_db, tmp_path):
    b = builder_factory("milvus", path=str(lite_db), index_type="FLAT")
    with pytest.raises(BackendError, match="'nope' does not exist"):
        b.open_collection("nope")
    index = b.from_embeddings(_items(20))
    index.save(tmp_path / "idx")
    index._conn.client.drop_collection(index.collection)
    index.close()
    with pytest.raises(BackendError, match="does not exist") as info:
        open_index(tmp_path / "idx")
    assert str(lite_db) in str(info.value)


def test_exclude_with_one_list_uses_a_filter_and_string_ids(lite_db):
    items = _items(100)
    ids = [f'it"em/{i}' for i in range(100)]  # quotes must be escaped in the filter expression
    with builder_factory("milvus", path=str(lite_db), index_type="FLAT").from_embeddings(items, ids=ids) as index:
        top = index.query(items[:1], 3).indices[0].tolist()
        plan = index._plan([np.array(top[:2], dtype=object)], 3, 1)
        assert plan[0][2].startswith("pk not in")
        res = index.query(items[0], 3, exclude=top[:2])
        assert res.indices[0].tolist()[0] == top[2] and not set(res.indices[0]) & set(top[:2])


def test_add_without_ids_continues_after_largest_and_upsert(lite_db):
    items = _items(40)
    with builder_factory("milvus", path=str(lite_db), index_type="FLAT").from_embeddings(
        items, ids=np.arange(100, 140)
    ) as index:
        index.add(items[:2])
        assert len(index) == 42
        assert index.query(items[0], 3).indices[0].tolist()[:2] in ([0 + 100, 140], [140, 100])
        index.upsert(items[5:6] * 0 + 9.0, ids=[140])
        assert len(index) == 42
        far = index.query(np.full(8, 9.0, np.float32), 1).indices[0, 0]
        assert far == 140


def test_token_never_saved_or_shown(lite_db, tmp_path):
    b = builder_factory("milvus", path=str(lite_db), index_type="FLAT", token="s3cret-token")
    assert "s3cret" not in repr(b)
    with b.from_embeddings(_items(10)) as index:
        assert "s3cret" not in repr(index.params)
        index.save(tmp_path / "idx")
    for file in (tmp_path / "idx").rglob("*"):
        if file.is_file():
            assert b"s3cret" not in file.read_bytes()


def test_large_build_is_batched_under_the_message_limit(lite_db, monkeypatch):
    from rechub_serving_milvus import _backend

    monkeypatch.setattr(_backend, "MESSAGE_BYTES", 4096)  # 4 KiB requests: many batches
    sizes = []
    from rechub_serving_milvus._connection import Connection

    original = Connection.call

    def spy(self, what, fn, *args, **kwargs):
        if what == "insert":
            sizes.append(len(args[1]))
        return original(self, what, fn, *args, **kwargs)

    monkeypatch.setattr(Connection, "call", spy)
    with builder_factory("milvus", path=str(lite_db), index_type="FLAT").from_embeddings(_items(500)) as index:
        assert len(index) == 500
    assert len(sizes) > 1 and max(sizes) * (8 * 4 + 16) <= 4096
