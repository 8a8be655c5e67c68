"""The milvus backend against a real Milvus server (the ``milvus`` 2.3.5 package, or RECHUB_MILVUS_URI).

The server fixture (conftest.py) runs the server in a loopback-only network
namespace; these tests are marked ``server`` and run with plain ``pytest``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rechub_serving_milvus import open_collection

from rechub_serving import (
    BackendError,
    BackendUnavailableError,
    DimensionMismatchError,
    builder_factory,
    open_index,
)
from rechub_serving.testing import BackendConformance, clustered_data, true_distances

HERE = Path(__file__).parent

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

    def test_per_call_search_parameter_takes_effect(self):
        """The suite's check, after the server settles: Milvus 2.3.5 answers the first searches after a
        load from a transient state (slightly different top-k at a low ef), then the same ever after."""
        rng = np.random.default_rng(5)
        items = rng.normal(size=(2000, self.dim)).astype(np.float32)
        queries = rng.normal(size=(50, self.dim)).astype(np.float32)
        with self.make_builder(metric="l2").from_embeddings(items) as index:
            previous = None
            for _ in range(10):
                current = np.asarray(index.query(queries, self.k, ef_search=16).indices)
                if previous is not None and np.array_equal(previous, current):
                    break
                previous = current
                time.sleep(0.5)
            at_low = np.asarray(index.query(queries, self.k, ef_search=16).indices)
            at_high = np.asarray(index.query(queries, self.k, ef_search=512).indices)
            assert not np.array_equal(at_low, at_high)
            index.set_search_defaults(ef_search=16)
            np.testing.assert_array_equal(np.asarray(index.query(queries, self.k).indices), at_low)


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
        open_collection("rechub_dim_check", dim=5, **milvus_server.params)
    assert "rechub_dim_check" in str(info.value) and milvus_server.uri in str(info.value)
    with open_collection("rechub_dim_check", **milvus_server.params) as index:
        index.engine._conn.client.drop_collection("rechub_dim_check")
    with pytest.raises(BackendError, match=r"rechub_dim_check.*does not exist"):
        builder_factory("milvus", **milvus_server.params).from_index_file(tmp_path / "idx")


def test_server_stopped_mid_batch_then_restarted_serves_the_saved_index(milvus_server, tmp_path):
    if not milvus_server.restartable:
        pytest.skip("RECHUB_MILVUS_URI points at a server these tests cannot stop")
    from rechub_serving_milvus import _engine

    items, queries = clustered_data(2000, 16, seed=0), clustered_data(300, 16, seed=1)
    b = builder_factory(
        "milvus", index_type="HNSW", metric="ip", timeout=8, connect_timeout=3, retries=1, **milvus_server.params
    )
    index = b.from_embeddings(items)
    expected = index.query(queries, 10)
    index.save(tmp_path / "idx")
    conn = index.engine._conn
    original = conn.call
    calls = []

    def stop_after_first_batch(what, fn, *args, **kwargs):
        result = original(what, fn, *args, **kwargs)
        if what == "search":
            calls.append(1)
            if len(calls) == 1:
                milvus_server.stop()
        return result

    conn.call = stop_after_first_batch
    start = time.monotonic()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_engine, "MAX_NQ", 100)  # 3 requests: the server dies after the first
            with pytest.raises(BackendUnavailableError) as info:
                index.query(queries, 10)
        elapsed = time.monotonic() - start
        assert elapsed < 60, f"the failure took {elapsed:.0f}s to surface"
        assert milvus_server.uri in str(info.value) and index.engine.collection in str(info.value)
    finally:
        conn.call = original
        index.close()
        milvus_server.start()
    with builder_factory("milvus", **milvus_server.params).from_index_file(tmp_path / "idx") as again:
        res = again.query(queries, 10)
        np.testing.assert_array_equal(res.indices, expected.indices)
        np.testing.assert_allclose(res.distances, expected.distances, rtol=1e-4, atol=1e-4)


# -- the SDK's collections on a server: marks, list/drop, --overwrite --------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rechub_serving.cli", *args], capture_output=True, text=True, timeout=300
    )


def _states(server, saved: Path) -> dict[str, str]:
    result = _cli("milvus", "list", "--uri", server.uri, "--search", str(saved), "--json")
    assert result.returncode == 0, result.stderr
    return {c["name"]: c["state"] for c in json.loads(result.stdout)["collections"]}


@pytest.mark.slow
def test_collections_are_marked_and_listed_and_only_the_sdks_are_dropped(milvus_server, tmp_path, monkeypatch):
    if milvus_server.token:
        monkeypatch.setenv("RECHUB_MILVUS_TOKEN", milvus_server.token)
    uri, saved = milvus_server.uri, tmp_path / "saved"
    subprocess.run(
        [sys.executable, str(HERE / "_handmade.py"), "hand_made", "--uri", uri, "--token", milvus_server.token],
        check=True,
    )
    items = clustered_data(50, 8, seed=0)
    with builder_factory("milvus", index_type="FLAT", uri=uri).from_embeddings(items) as index:
        index.save(saved / "idx")  # the collection is kept and referenced
        kept = index.engine.collection
        props = index.engine._conn.client.describe_collection(kept)["properties"]
        assert props["rechub.sdk"] == "rechub-serving-milvus" and props["rechub.temporary"] == "false"
        assert kept.startswith("rechub_") and props["rechub.owner"].startswith(f"{os.getpid()}@")
    child = subprocess.Popen(
        [sys.executable, str(HERE / "_child.py"), "build", "--uri", uri, "--n", "50", "--hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and '"built"' in child.stdout.readline() + child.stdout.readline()
    child.kill()  # SIGKILL: nobody drops its temporary collection
    child.wait()
    states = _states(milvus_server, saved)
    dead = [name for name, state in states.items() if state == "dead owner"]
    assert len(dead) == 1 and states[kept] == "referenced" and states["hand_made"] == "not the SDK's"
    refused = _cli("milvus", "drop", "hand_made", "--uri", uri, "--force")
    assert refused.returncode == 1 and "not created by rechub-serving" in refused.stderr
    assert _cli("milvus", "drop", "--dead", "--unreferenced", "--uri", uri, "--search", str(saved)).returncode == 0
    states = _states(milvus_server, saved)
    assert dead[0] not in states and states[kept] == "referenced" and "hand_made" in states
    with open_index(saved / "idx") as again:
        assert len(again) == 50


@pytest.mark.slow
def test_overwrite_drops_the_collection_it_replaces(milvus_server, tmp_path, monkeypatch):
    if milvus_server.token:
        monkeypatch.setenv("RECHUB_MILVUS_TOKEN", milvus_server.token)
    np.save(tmp_path / "items.npy", clustered_data(60, 8, seed=0))
    build = ["build", str(tmp_path / "items.npy"), "-o", str(tmp_path / "idx"), "-b", "milvus"]
    build += ["-p", f"uri={milvus_server.uri}", "-p", "index_type=FLAT"]
    assert _cli(*build).returncode == 0
    first = json.loads((tmp_path / "idx" / "manifest.json").read_text())["engine"]["collection"]
    result = _cli(*build, "--overwrite")
    assert result.returncode == 0, result.stderr
    second = json.loads((tmp_path / "idx" / "manifest.json").read_text())["engine"]["collection"]
    assert first != second
    from rechub_serving_milvus.inventory import list_collections

    states = {c.name: c.state for c in list_collections(uri=milvus_server.uri, search=[tmp_path])}
    assert first not in states and states[second] == "referenced"


def test_nprobe_above_nlist_is_clamped_on_the_server(milvus_server):
    """Milvus refuses nprobe > nlist; the plugin clamps, as on milvus-lite and in the faiss plugin."""
    items, queries = clustered_data(300, 8, seed=0), clustered_data(5, 8, seed=1)
    b = builder_factory("milvus", index_type="IVF_FLAT", nlist=4, nprobe=50, metric="ip", **milvus_server.params)
    with b.from_embeddings(items) as index:
        np.testing.assert_array_equal(index.query(queries, 5).indices, index.query(queries, 5, nprobe=4).indices)
        ref = builder_factory("numpy", metric="ip").from_embeddings(items).query(queries, 5)
        np.testing.assert_array_equal(index.query(queries, 5).indices, ref.indices)
