"""The milvus backend against a real Milvus server (the ``milvus`` 2.3.5 package, or RECHUB_MILVUS_URI).

The server fixture (conftest.py) runs the server in a loopback-only network
namespace; these tests are marked ``server`` and run with plain ``pytest``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from rechub_serving import (
    BackendError,
    BackendUnavailableError,
    DimensionMismatchError,
    builder_factory,
    open_index,
)
from rechub_serving.testing import BackendConformance, clustered_data, true_distances

pytestmark = pytest.mark.server


class TestServerConformance(BackendConformance):
    """The whole suite once (cosine, the usual two-tower metric; each build costs seconds on a server)."""

    backend = "milvus"
    params = {"index_type": "HNSW"}
    recall_floor = 0.9
    metrics = ("cosine",)

    @pytest.fixture(autouse=True)
    def _server(self, milvus_server, monkeypatch):
        self.server = milvus_server
        if milvus_server.token:  # open_index(path) without parameters reads the token from here
            monkeypatch.setenv("RECHUB_MILVUS_TOKEN", milvus_server.token)

    def make_builder(self, **params):
        return builder_factory(self.backend, **self.server.params, **{**self.params, **params})


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_metric_table_on_the_server(milvus_server, metric):
    items, queries = clustered_data(300, 8, seed=0), clustered_data(5, 8, seed=1)
    b = builder_factory("milvus", metric=metric, index_type="FLAT", **milvus_server.params)
    with b.from_embeddings(items) as index:
        res = index.query(queries, 5)
        expected = true_distances(items, queries, res.indices, metric)
        np.testing.assert_allclose(res.distances, expected, rtol=1e-4, atol=1e-3)
        ref = builder_factory("numpy", metric=metric).from_embeddings(items).query(queries, 5)
        np.testing.assert_array_equal(res.indices, ref.indices)


def test_unreachable_server_fails_fast():
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info:
        builder_factory("milvus", uri="http://127.0.0.1:9", connect_timeout=1, retries=2).from_embeddings(
            np.ones((3, 4), np.float32)
        )
    assert time.monotonic() - start < 15
    assert "127.0.0.1:9" in str(info.value) and "3 attempts" in str(info.value)


def test_bad_credentials_are_a_clear_error(milvus_server):
    if not milvus_server.restartable:
        pytest.skip("needs the test server, which runs with authentication on")
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        builder_factory("milvus", uri=milvus_server.uri, token="root:wrong-password", retries=1).from_embeddings(
            np.ones((3, 4), np.float32)
        )
    assert time.monotonic() - start < 20
    assert "wrong-password" not in str(info.value)
    assert milvus_server.uri in str(info.value)


def test_token_from_environment(milvus_server, monkeypatch):
    if not milvus_server.token:
        pytest.skip("the server needs no token")
    monkeypatch.setenv("RECHUB_MILVUS_TOKEN", milvus_server.token)
    with builder_factory("milvus", uri=milvus_server.uri, index_type="FLAT").from_embeddings(
        np.eye(4, dtype=np.float32)
    ) as index:
        assert len(index) == 4


def test_dimension_mismatch_and_missing_collection(milvus_server, tmp_path):
    b = builder_factory("milvus", index_type="FLAT", collection="rechub_dim_check", **milvus_server.params)
    with b.from_embeddings(np.eye(4, dtype=np.float32)) as index:
        index.save(tmp_path / "idx")
    with pytest.raises(DimensionMismatchError) as info:
        builder_factory("milvus", dim=5, **milvus_server.params).open_collection("rechub_dim_check")
    assert "rechub_dim_check" in str(info.value) and milvus_server.uri in str(info.value)
    with builder_factory("milvus", **milvus_server.params).open_collection("rechub_dim_check") as index:
        index._conn.client.drop_collection("rechub_dim_check")
    with pytest.raises(BackendError, match=r"rechub_dim_check.*does not exist"):
        open_index(tmp_path / "idx", **milvus_server.params)


def test_server_stopped_mid_batch_then_restarted_serves_the_saved_index(milvus_server, tmp_path):
    if not milvus_server.restartable:
        pytest.skip("RECHUB_MILVUS_URI points at a server these tests cannot stop")
    from rechub_serving_milvus import _backend

    items, queries = clustered_data(2000, 16, seed=0), clustered_data(300, 16, seed=1)
    b = builder_factory(
        "milvus", index_type="HNSW", metric="ip", timeout=8, connect_timeout=3, retries=1, **milvus_server.params
    )
    index = b.from_embeddings(items)
    expected = index.query(queries, 10)
    index.save(tmp_path / "idx")
    original = index._conn.call
    calls = []

    def stop_after_first_batch(what, fn, *args, **kwargs):
        result = original(what, fn, *args, **kwargs)
        if what == "search":
            calls.append(1)
            if len(calls) == 1:
                milvus_server.stop()
        return result

    index._conn.call = stop_after_first_batch
    start = time.monotonic()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_backend, "MAX_NQ", 100)  # 3 requests: the server dies after the first
            with pytest.raises(BackendUnavailableError) as info:
                index.query(queries, 10)
        elapsed = time.monotonic() - start
        assert elapsed < 60, f"the failure took {elapsed:.0f}s to surface"
        assert milvus_server.uri in str(info.value) and index.collection in str(info.value)
    finally:
        index._conn.call = original
        index.close()
        milvus_server.start()
    with open_index(tmp_path / "idx", **milvus_server.params) as again:
        res = again.query(queries, 10)
        np.testing.assert_array_equal(res.indices, expected.indices)
        np.testing.assert_allclose(res.distances, expected.distances, rtol=1e-4, atol=1e-4)
