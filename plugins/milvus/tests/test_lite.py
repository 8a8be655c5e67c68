"""The milvus backend on embedded milvus-lite: conformance and plugin behaviour."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from rechub_serving_milvus import open_collection

from rechub_serving import (
    BackendError,
    DimensionMismatchError,
    InvalidParameterError,
    UnsupportedOperation,
    builder_factory,
    list_backends,
    open_index,
)
from rechub_serving.testing import BackendConformance, clustered_data


class TestLiteFlat(BackendConformance):
    """Private databases (the default): exact scan."""

    backend = "milvus"
    params = {"index_type": "FLAT"}
    exact = True


class TestLiteHNSW(BackendConformance):
    """The default index; cosine, the two-tower metric (FLAT checks the whole metric table exactly)."""

    backend = "milvus"
    params = {"index_type": "HNSW"}
    recall_floor = 0.9
    metrics = ("cosine",)


@pytest.mark.slow
class TestLiteIVF(BackendConformance):
    """IVF_FLAT: per-call nprobe, concurrent queries with different values (one metric: each build costs)."""

    backend = "milvus"
    params = {"index_type": "IVF_FLAT"}
    recall_floor = 0.9
    metrics = ("l2",)


@pytest.mark.slow
class TestOwnDatabase(BackendConformance):
    """The user's own milvus-lite database (path=): collections are created, dropped and saved in it."""

    backend = "milvus"
    params = {"index_type": "FLAT"}
    exact = True
    metrics = ("cosine",)

    @pytest.fixture(autouse=True)
    def _database(self, lite_db):
        self.db = str(lite_db)

    def make_builder(self, **params):
        return builder_factory(self.backend, path=self.db, **{**self.params, **params})


# -- plugin behaviour ---------------------------------------------------------------------


def _items(n=200, dim=8, seed=0):
    return clustered_data(n, dim, seed=seed)


def test_registered_with_capabilities():
    info = {b.name: b for b in list_backends()}["milvus"]
    assert info.capabilities.add and info.capabilities.remove and info.capabilities.native_filter
    assert builder_factory("milvus", index_type="FLAT").capabilities.exact
    assert not builder_factory("milvus").capabilities.exact


@pytest.mark.parametrize(
    "params",
    [
        {"index_type": "IVF_PQ"},
        {"index_type": "HNSW", "nlist": 8},
        {"index_type": "IVF_FLAT", "m": 8},
        {"index_type": "FLAT", "ef_search": 8},
        {"m": 1},
        {"nprobe": 2**40},
        {"batch_size": 2**40},
        {"path": "no-suffix"},
        {"db_name": "x"},
        {"uri": "ftp://x"},
        {"uri": "http://x:1", "path": "x.db"},
        {"collection": "bad-name"},
        {"name": "bad-name"},
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
    assert builder_factory("milvus", name="catalog").config["collection"] == "catalog"  # torch-rechub's name=
    with builder_factory("milvus", name="catalog", index_type="FLAT").from_embeddings(_items(20)) as index:
        assert index.engine.collection == "catalog" and index.engine.temporary  # a private database goes on close


def test_tune_space_per_index_type():
    assert list(builder_factory("milvus", index_type="HNSW").tune_space()) == ["ef_search"]
    assert list(builder_factory("milvus", index_type="IVF_FLAT").tune_space()) == ["nprobe"]
    assert builder_factory("milvus", index_type="IVF_FLAT", nlist=8).tune_space() == {"nprobe": [1, 2, 4, 8]}
    assert builder_factory("milvus", index_type="FLAT").tune_space() == {}


def test_nprobe_above_nlist_is_clamped_like_faiss():
    """One rule for both plugins: nprobe > nlist visits every list (torch-rechub's nlist=1, nprobe=5)."""
    items, queries = _items(300), _items(5, seed=3)
    b = builder_factory("milvus", index_type="IVF_FLAT", nlist=4, nprobe=50, metric="ip")
    with b.from_embeddings(items) as index:
        assert index.engine.index_spec["params"] == {"nlist": 4}
        above = index.query(queries, 5)
        at = index.query(queries, 5, nprobe=4)
        np.testing.assert_array_equal(above.indices, at.indices)
        ref = builder_factory("numpy", metric="ip").from_embeddings(items).query(queries, 5)
        np.testing.assert_array_equal(above.indices, ref.indices)  # every list: exact


def test_ivf_parameters_reach_the_engine():
    items = _items(300)
    with builder_factory("milvus", index_type="IVF_FLAT", nlist=5, metric="ip").from_embeddings(items) as index:
        assert index.engine.index_spec["params"] == {"nlist": 5}
        assert index.params["nlist"] == 5 and index.search_params["nprobe"] == 5
        full = index.query(items[:5], 5, nprobe=5)  # all lists: exact
        ref = builder_factory("numpy", metric="ip").from_embeddings(items).query(items[:5], 5)
        np.testing.assert_array_equal(full.indices, ref.indices)


def test_temporary_collection_in_own_database_dropped_on_close(lite_db):
    b = builder_factory("milvus", path=str(lite_db), index_type="FLAT")
    index = b.from_embeddings(_items(30))
    name = index.engine.collection
    assert index.engine.temporary and str(lite_db) in index.engine.location
    index.close()
    kept = b.from_embeddings(_items(30))
    kept.engine.keep()
    kept_name = kept.engine.collection
    kept.close()
    with open_collection(kept_name, path=str(lite_db)) as again:
        client = again.engine._conn.client
        assert client.has_collection(kept_name) and not client.has_collection(name)
        assert len(again) == 30
        assert client.describe_collection(kept_name)["properties"]["rechub.temporary"] == "false"


def test_keep_is_refused_for_a_private_database():
    with builder_factory("milvus", index_type="FLAT").from_embeddings(_items(20)) as index:
        with pytest.raises(UnsupportedOperation, match="save"):
            index.engine.keep()


def test_named_collection_is_kept_and_can_be_attached(lite_db):
    items = _items(50)
    b = builder_factory("milvus", path=str(lite_db), index_type="HNSW", metric="cosine", collection="catalog_v1")
    with b.from_embeddings(items, ids=[f"i{i}" for i in range(50)]) as index:
        assert not index.engine.temporary
        expected = index.query(items[:3], 4)
    with pytest.raises(BackendError, match="already exists"):
        b.from_embeddings(items)
    with open_collection("catalog_v1", path=str(lite_db)) as index:  # metric and index from the collection
        assert index.metric.value == "cosine" and len(index) == 50 and index.params["m"] == 16
        np.testing.assert_array_equal(index.query(items[:3], 4).indices, expected.indices)
    with open_collection(builder=builder_factory("milvus", path=str(lite_db), collection="catalog_v1")) as index:
        assert len(index) == 50
    with pytest.raises(InvalidParameterError, match="metric"):
        open_collection("catalog_v1", path=str(lite_db), metric="l2")
    with pytest.raises(DimensionMismatchError):
        open_collection("catalog_v1", path=str(lite_db), dim=3)
    with pytest.raises(InvalidParameterError, match=r"uri=.*path="):
        open_collection("catalog_v1")  # no database to attach to


def test_missing_collection_is_a_clear_error(lite_db):
    with pytest.raises(BackendError, match="'nope' does not exist"):
        open_collection("nope", path=str(lite_db))


def test_exclude_with_one_list_uses_a_filter_and_string_ids(monkeypatch):
    items = _items(100)
    ids = [f'it"em/{i}' for i in range(100)]  # quotes must be escaped in the filter expression
    with builder_factory("milvus", index_type="FLAT").from_embeddings(items, ids=ids) as index:
        top = index.query(items[:1], 3).indices[0].tolist()
        filters = []
        conn = index.engine._conn
        original = conn.call

        def spy(what, fn, *args, **kwargs):
            if what == "search":
                filters.append(kwargs["filter"])
            return original(what, fn, *args, **kwargs)

        monkeypatch.setattr(conn, "call", spy)
        res = index.query(items[0], 3, exclude=top[:2])
        assert filters and filters[-1].startswith("pk not in")
        assert res.indices[0].tolist()[0] == top[2] and not set(res.indices[0]) & set(top[:2])
        assert not index.engine.can_filter([np.array([i]) for i in range(8)])  # many lists: over-fetch


def test_add_without_ids_continues_after_largest_and_upsert():
    items = _items(40)
    with builder_factory("milvus", index_type="FLAT").from_embeddings(items, ids=np.arange(100, 140)) as index:
        index.add(items[:2])
        assert len(index) == 42
        assert index.query(items[0], 3).indices[0].tolist()[:2] in ([100, 140], [140, 100])
        index.upsert(items[5:6] * 0 + 9.0, ids=[140])
        assert len(index) == 42
        assert index.query(np.full(8, 9.0, np.float32), 1).indices[0, 0] == 140


def test_token_never_saved_or_shown(tmp_path):
    b = builder_factory("milvus", index_type="FLAT", token="s3cret-token")
    assert "s3cret" not in repr(b)
    with b.from_embeddings(_items(10)) as index:
        assert "s3cret" not in repr(index.params)
        index.save(tmp_path / "idx")
    for file in (tmp_path / "idx").rglob("*"):
        if file.is_file():
            assert b"s3cret" not in file.read_bytes()


def test_password_inside_uri_is_redacted_in_repr_errors_and_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="rechub_serving")
    b = builder_factory("milvus", uri="http://alice:PW-s3cret@127.0.0.1:9", connect_timeout=0.5, retries=1)
    assert "PW-s3cret" not in repr(b) and "alice" in repr(b)
    with pytest.raises(BackendError) as info:
        b.from_embeddings(_items(5))
    assert "PW-s3cret" not in str(info.value) and "127.0.0.1:9" in str(info.value)
    logging.getLogger("pymilvus").error("connecting to http://alice:PW-s3cret@db:19530 failed")  # pymilvus's own log
    ours = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("rechub_serving"))
    assert "alice:***@db:19530" in ours and "PW-s3cret" not in ours
    assert not [h for h in logging.getLogger("pymilvus").handlers if type(h) is logging.StreamHandler]


def test_large_build_is_batched_under_the_message_limit(monkeypatch):
    from rechub_serving_milvus import _defaults
    from rechub_serving_milvus._connection import Connection

    monkeypatch.setattr(_defaults, "MESSAGE_BYTES", 4096)  # 4 KiB requests: many batches
    sizes = []
    original = Connection.call

    def spy(self, what, fn, *args, **kwargs):
        if what == "insert":
            sizes.append(len(args[1]))
        return original(self, what, fn, *args, **kwargs)

    monkeypatch.setattr(Connection, "call", spy)
    with builder_factory("milvus", index_type="FLAT").from_embeddings(_items(500)) as index:
        assert len(index) == 500
    assert len(sizes) > 1 and max(sizes) * (8 * 4 + 16) <= 4096


def test_saved_embedded_index_records_its_database(tmp_path):
    with builder_factory("milvus", index_type="HNSW", metric="ip").from_embeddings(_items(60)) as index:
        index.save(tmp_path / "idx")
        name = index.engine.collection
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["engine"]["layout"] == "embedded" and manifest["engine"]["collection"] == name
    files = manifest["files"]
    assert any(f.startswith(f"engine/milvus.db/collections/{name}/") and f.endswith(".parquet") for f in files)
    assert any(f.endswith(".hnsw.idx") for f in files)  # the index is saved, not rebuilt by openers
    with builder_factory("milvus", path=str(tmp_path / "other.db")).from_index_file(tmp_path / "idx") as again:
        assert len(again) == 60 and "private" in again.engine.location  # its own database, not path=
    assert not (tmp_path / "other.db").exists()


def test_changes_after_the_build_are_saved(tmp_path):
    """add/remove write new segments and tombstones after the build: a save copies them too."""
    items, extra = _items(300), _items(40, seed=5)
    with builder_factory("milvus", index_type="HNSW", metric="cosine").from_embeddings(items) as index:
        index.add(extra, ids=np.arange(1000, 1040))
        assert index.remove(np.arange(0, 20)) == 20
        expected = index.query(extra[:5], 5).indices
        index.save(tmp_path / "idx")
        index.add(_items(30, seed=9), ids=np.arange(2000, 2030))  # later writes must not reach the saved files
        index.remove(np.arange(1000, 1010))
        index.engine._conn.client.flush(index.engine.collection)
    with open_index(tmp_path / "idx") as again:
        assert len(again) == 320
        np.testing.assert_array_equal(again.query(extra[:5], 5).indices, expected)
        assert not set(again.query(items[:20], 5).indices.ravel().tolist()) & set(range(20))
