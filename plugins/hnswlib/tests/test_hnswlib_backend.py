"""The hnswlib backend: the conformance suite, then what is specific to hnswlib.

Only the public face of rechub_serving (and rechub_serving.testing) is used,
as a third-party plugin's tests would.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from importlib.metadata import entry_points

import hnswlib
import numpy as np
import pytest
from rechub_serving_hnswlib import HnswlibBuilder

from rechub_serving import (
    DimensionMismatchError,
    InvalidParameterError,
    NotAnIndexError,
    builder_factory,
    list_backends,
    open_index,
)
from rechub_serving.testing import BackendConformance, clustered_data, ground_truth, recall_at_k


class TestHnswlibConformance(BackendConformance):
    backend = "hnswlib"
    params = {"m": 16, "ef_construction": 100, "threads": 2}
    exact = False
    recall_floor = 0.95


def hnsw(**params):
    """A builder with a cheaper default build (these tests need a graph, not the best one)."""
    return builder_factory("hnswlib", **{"ef_construction": 64, **params})


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return clustered_data(1500, 16, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered_data(50, 16, seed=1)


# -- discovery ------------------------------------------------------------------------
def test_found_through_its_entry_point():
    (ep,) = [ep for ep in entry_points(group="rechub_serving") if ep.name == "hnswlib"]
    assert ep.value == "rechub_serving_hnswlib"  # a module, as pluggy needs
    info = {b.name: b for b in list_backends()}["hnswlib"]
    assert info.distribution == "rechub-serving-hnswlib"
    assert info.builder is HnswlibBuilder
    assert info.engine_version and info.capabilities.add and info.capabilities.remove
    assert not info.capabilities.exact and not info.capabilities.native_filter


def test_parameter_schema_and_aliases():
    builder = builder_factory("hnswlib", M=8, efConstruction=40, efSearch=30, num_threads=1, random_seed=7)
    assert builder.config.items() >= {"m": 8, "ef_construction": 40, "ef_search": 30, "threads": 1, "seed": 7}.items()
    assert "threads" not in builder.build_params  # a runtime option, never saved
    assert builder_factory("hnswlib", ef=12).config["ef_search"] == 12
    with pytest.raises(InvalidParameterError, match="ef_construction"):
        builder_factory("hnswlib", m=32, ef_construction=16)
    with pytest.raises(InvalidParameterError):
        builder_factory("hnswlib", m=1)


# -- the metric table ---------------------------------------------------------------------
def test_engine_numbers_are_what_the_conversions_assume(items, queries):
    """hnswlib's l2 is squared; its ip is 1 - <q, x>."""
    for space in ("l2", "ip"):
        raw = hnswlib.Index(space=space, dim=16)
        raw.init_index(len(items))
        raw.add_items(items)
        labels, dist = raw.knn_query(queries, k=5)
        x = items[labels.astype(np.int64)]
        if space == "l2":
            expected = ((x - queries[:, None]) ** 2).sum(-1)
        else:
            expected = 1.0 - np.einsum("qkd,qd->qk", x, queries)
        np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_distances_follow_the_metric_table(items, queries, metric):
    with hnsw(metric=metric).from_embeddings(items) as index:
        res = index.query(queries, 10)
    x = items[res.indices]
    if metric == "l2":
        expected = ((x - queries[:, None]) ** 2).sum(-1)
    elif metric == "ip":
        expected = np.einsum("qkd,qd->qk", x, queries)
    else:
        xn = x / np.linalg.norm(x, axis=-1, keepdims=True)
        qn = queries / np.linalg.norm(queries, axis=-1, keepdims=True)
        expected = np.einsum("qkd,qd->qk", xn, qn)
    np.testing.assert_allclose(res.distances, expected, rtol=1e-4, atol=1e-4)
    step = np.diff(res.distances, axis=1)
    assert (step >= -1e-6).all() if metric == "l2" else (step <= 1e-6).all()


# -- per-call ef_search -------------------------------------------------------------------
def test_per_call_ef_search_equals_hnswlib_set_ef(items, queries, tmp_path):
    """ef_search per call gives exactly hnswlib's set_ef(ef) + knn_query(k) on the same graph."""
    with hnsw(m=8, ef_construction=40, seed=3).from_embeddings(items) as index:
        index.save(tmp_path / "idx")
        ours = {ef: index.query(queries, 10, ef_search=ef).indices for ef in (10, 20, 80)}
    raw = hnswlib.Index(space="l2", dim=16)
    raw.load_index(
        str(
            tmp_path / "idx" / "engine" / json.loads((tmp_path / "idx" / "manifest.json").read_text())["engine"]["file"]
        )
    )
    for ef, found in ours.items():
        raw.set_ef(ef)
        labels, _ = raw.knn_query(queries, k=10)
        np.testing.assert_array_equal(found, labels.astype(np.int64))


def test_concurrent_queries_with_different_ef_search_are_isolated(items):
    queries = clustered_data(200, 16, seed=4)
    with hnsw(m=4, ef_construction=20, seed=1).from_embeddings(items) as index:
        efs = [10, 11, 40, 200]
        serial = {ef: index.query(queries, 10, ef_search=ef).indices for ef in efs}
        truth, _ = ground_truth(items, queries, 10, "l2")
        assert recall_at_k(serial[10], truth) < recall_at_k(serial[200], truth)  # ef really changes the search
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            jobs = [(ef, pool.submit(index.query, queries, 10, ef_search=ef)) for ef in efs * 8]
            for ef, job in jobs:
                np.testing.assert_array_equal(job.result().indices, serial[ef])
        assert index.params["ef_search"] is None  # defaults untouched by per-call values


# -- add / remove -------------------------------------------------------------------------
def test_add_grows_capacity_and_remove_hides_items(items, tmp_path):
    first, more = items[:100], items[100:400]
    with hnsw(metric="l2", threads=1).from_embeddings(first, ids=np.arange(100) + 5000) as index:
        for start in range(0, 300, 60):  # several resizes
            index.add(more[start : start + 60], ids=np.arange(start, start + 60) + 9000)
        assert len(index) == 400
        np.testing.assert_array_equal(index.query(more[:20], 1).indices[:, 0], np.arange(20) + 9000)
        assert index.remove(np.arange(20) + 9000) == 20
        assert len(index) == 380
        res = index.query(more[:20], 5)
        assert not set(res.indices.ravel().tolist()) & set(range(9000, 9020))
        index.add(more[:5], ids=[1, 2, 3, 4, 5])  # removed vectors come back under new ids
        np.testing.assert_array_equal(index.query(more[:5], 1).indices[:, 0], [1, 2, 3, 4, 5])
        index.save(tmp_path / "idx")
        expected = index.query(items[:50], 10).indices
    with open_index(tmp_path / "idx") as loaded:
        assert len(loaded) == 385
        np.testing.assert_array_equal(loaded.query(items[:50], 10).indices, expected)
        assert not set(loaded.query(more[5:20], 5).indices.ravel().tolist()) & set(range(9005, 9020))
        loaded.add(items[400:410], ids=np.arange(10) + 7000)  # a loaded graph grows too
        assert len(loaded) == 395


def test_removing_almost_everything_pads_instead_of_raising(items):
    with hnsw(m=2, ef_construction=4, threads=1).from_embeddings(items[:300]) as index:
        index.remove(np.arange(5, 300))
        res = index.query(items[:40], 5, ef_search=5)
        assert res.indices.shape == (40, 5)
        found = res.indices[res.valid]
        assert set(found.tolist()) <= set(range(5))


def test_short_rows_are_padded_with_minus_one(items):
    """The fallback for hnswlib's 'cannot return the results in a contiguous 2D array'."""
    with hnsw(threads=1).from_embeddings(items[:200]) as index:
        keep = {3, 7, 11}
        labels, _ = index._knn(items[:4], 10, lambda label: label in keep)  # hnswlib raises on this
        assert labels.shape == (4, 10)
        assert all(set(row[:3].tolist()) == keep for row in labels) and (labels[:, 3:] == -1).all()


def test_native_filter_path_matches_over_fetch(items, queries):
    """The native filter path (off by default: over-fetch measured faster) stays correct."""

    class NativeFilter(HnswlibBuilder):
        capabilities = dataclasses.replace(HnswlibBuilder.capabilities, native_filter=True)

    truth, _ = ground_truth(items, queries, 5, "l2")
    exclude = [row.tolist() for row in truth]
    exclude[0] = []
    with (
        NativeFilter(ef_search=200).from_embeddings(items) as native,
        hnsw(ef_search=200).from_embeddings(items) as over,
    ):
        a = native.query(queries, 10, exclude=exclude).indices
        b = over.query(queries, 10, exclude=exclude).indices
    for row, banned in zip(a, exclude):
        assert not set(row.tolist()) & set(banned)
    assert recall_at_k(a, b) >= 0.95


# -- saving and adopting -------------------------------------------------------------------
def test_saved_layout_and_search_overrides(items, queries, tmp_path):
    with hnsw(metric="cosine", ef_search=20, threads=1).from_embeddings(items) as index:
        index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["engine"]["file"] in {p.name for p in (tmp_path / "idx" / "engine").iterdir()}
    assert manifest["engine"]["space"] == "ip" and manifest["search_params"] == {"ef_search": 20}
    assert "threads" not in manifest["params"]
    with open_index(tmp_path / "idx", ef_search=300) as loaded:
        assert loaded.params["ef_search"] == 300
        truth, _ = ground_truth(items, queries, 10, "cosine")
        assert recall_at_k(loaded.query(queries, 10).indices, truth) >= 0.99


def test_adopts_a_bare_hnswlib_file(items, queries, tmp_path):
    raw = hnswlib.Index(space="cosine", dim=16)
    raw.init_index(len(items) + 10, M=8)
    raw.add_items(items)
    raw.mark_deleted(len(items) - 1)
    raw.save_index(str(tmp_path / "items.bin"))
    with hnsw(metric="cosine").from_index_file(tmp_path / "items.bin") as index:
        assert (len(index), index.dim) == (len(items) - 1, 16)
        truth, _ = ground_truth(items[:-1], queries, 10, "cosine")
        assert recall_at_k(index.query(queries, 10).indices, truth) >= 0.95
    with pytest.raises(DimensionMismatchError):
        hnsw(dim=8).from_index_file(tmp_path / "items.bin")


def test_refuses_files_it_cannot_adopt(items, tmp_path):
    raw = hnswlib.Index(space="l2", dim=16)
    raw.init_index(10)
    raw.add_items(items[:10], np.arange(10) * 2)  # labels are not 0..n-1
    raw.save_index(str(tmp_path / "sparse.bin"))
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 50 + b"not hnswlib" * 20)
    for name in ("sparse.bin", "junk.bin"):
        with pytest.raises(NotAnIndexError):
            hnsw().from_index_file(tmp_path / name)
