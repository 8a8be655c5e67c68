"""Tests of the Annoy backend: the shared conformance suite plus Annoy specifics."""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import json
import pathlib

import annoy
import numpy as np
import pytest
from rechub_serving import (
    IndexClosedError,
    InvalidParameterError,
    Metric,
    NotAnIndexError,
    UnsupportedOperation,
    builder_factory,
    list_backends,
    open_index,
)
from rechub_serving.testing import BackendConformance, clustered_data, ground_truth, recall_at_k, true_distances

from rechub_serving_annoy import AnnoyBuilder, AnnoyIndexer
from rechub_serving_annoy._concurrency import QueryPool
from rechub_serving_annoy._metrics import ANNOY_METRIC, to_table
from rechub_serving_annoy._params import auto_search_k, default_n_trees

DIM = 16


class TestAnnoyConformance(BackendConformance):
    """Default configuration (queries fan out over every usable core)."""

    backend = "annoy"
    params = {"seed": 3}
    exact = False
    recall_floor = 0.9


class TestAnnoySerialConformance(BackendConformance):
    """One query thread, explicit trees: the serial path meets the same contract."""

    backend = "annoy"
    params = {"seed": 3, "threads": 1, "n_trees": 20}
    exact = False
    recall_floor = 0.9
    metrics = ("cosine",)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return clustered_data(2000, DIM, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered_data(40, DIM, seed=1)


# -- registration and description -------------------------------------------------
def test_registered_through_the_entry_point():
    info = {b.name: b for b in list_backends()}["annoy"]
    assert info.builder is AnnoyBuilder
    assert info.distribution == "rechub-serving-annoy"
    assert info.engine_version == importlib.metadata.version("annoy")
    caps = info.capabilities
    assert (caps.exact, caps.add, caps.remove, caps.native_filter, caps.persist, caps.mmap) == (
        False,
        False,
        False,
        False,
        True,
        True,
    )


# -- metric conversion -----------------------------------------------------------------
def test_to_table_by_hand():
    raw = np.array([[3.0, 0.0]], np.float32)
    np.testing.assert_allclose(to_table(Metric.L2, raw), [[9.0, 0.0]])
    np.testing.assert_allclose(to_table(Metric.IP, raw), [[3.0, 0.0]])
    # angular distance sqrt(2 - 2 cos): cos 0.5 -> 1, cos 1 -> 0, cos -1 -> 2
    np.testing.assert_allclose(to_table(Metric.COSINE, np.array([1.0, 0.0, 2.0], np.float32)), [0.5, 1.0, -1.0])
    assert ANNOY_METRIC == {Metric.L2: "euclidean", Metric.IP: "dot", Metric.COSINE: "angular"}


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_distances_are_the_metric_table_numbers(metric, items, queries):
    """Every returned distance equals the reference number recomputed exactly (float64) for that item."""
    with builder_factory("annoy", metric=metric, seed=1).from_embeddings(items) as index:
        res = index.query(queries, 10)
        assert np.asarray(res.valid).all()
        expected = true_distances(items, queries, res.indices, metric)
        np.testing.assert_allclose(res.distances, expected, rtol=2e-5, atol=2e-5)
        truth, _ = ground_truth(items, queries, 10, metric)
        assert recall_at_k(res.indices, truth) >= 0.95


@pytest.mark.parametrize(("metric", "annoy_metric"), [("l2", "euclidean"), ("ip", "dot"), ("cosine", "angular")])
def test_same_items_as_raw_annoy_with_converted_numbers(metric, annoy_metric, items, queries):
    """Side by side with the raw library: same forest (same seed, one build thread), same answers."""
    vectors = items / np.linalg.norm(items, axis=1, keepdims=True) if metric == "cosine" else items
    raw = annoy.AnnoyIndex(DIM, annoy_metric)
    raw.set_seed(11)
    for i, v in enumerate(vectors.tolist()):
        raw.add_item(i, v)
    raw.build(12, n_jobs=1)
    with builder_factory("annoy", metric=metric, seed=11, n_trees=12, n_jobs=1).from_embeddings(items) as index:
        res = index.query(queries, 5, search_k=300)
    for row, q in enumerate(queries):
        q = q / np.linalg.norm(q) if metric == "cosine" else q
        ids, dist = raw.get_nns_by_vector(q.tolist(), 5, search_k=300, include_distances=True)
        assert res.indices[row].tolist() == ids
        dist = np.asarray(dist, np.float32)
        expected = {"l2": dist**2, "ip": dist, "cosine": 1 - dist**2 / 2}[metric]
        np.testing.assert_allclose(res.distances[row], expected, rtol=1e-6, atol=1e-6)


# -- parameters and defaults -------------------------------------------------------------
def test_defaults_scale_with_the_catalogue():
    assert default_n_trees(100) == 10 and default_n_trees(100_000) == 50 and default_n_trees(10**7) == 50
    assert auto_search_k(10, 100, 10) == 600  # 6 * k * sqrt(n)
    assert auto_search_k(10, 100, 10, Metric.IP) == 1600  # 16 * k * sqrt(n): Annoy's dot forest is weaker
    assert auto_search_k(50, 4, 10) == 500  # never below Annoy's own n_trees * k
    assert auto_search_k(50, 100_000, 10) > auto_search_k(50, 10_000, 10)


def test_default_recall_is_decent_where_annoys_own_default_is_not(items, queries):
    truth, _ = ground_truth(items, queries, 10, "l2")
    with builder_factory("annoy", seed=2).from_embeddings(items) as index:
        ours = recall_at_k(index.query(queries, 10).indices, truth)
        annoys = recall_at_k(index.query(queries, 10, search_k=-1).indices, truth)
        assert index.n_trees == default_n_trees(len(items))
    assert ours >= 0.95
    assert annoys < ours


def test_search_k_per_call_alias_and_bounds(items, queries):
    with builder_factory("annoy", seed=2, searchk=40).from_embeddings(items) as index:
        assert index.params["search_k"] == 40
        low = index.query(queries, 10)
        np.testing.assert_array_equal(index.query(queries, 10, searchk=40).indices, low.indices)
        high = index.query(queries, 10, search_k=20_000)
        truth, _ = ground_truth(items, queries, 10, "l2")
        assert recall_at_k(high.indices, truth) > recall_at_k(low.indices, truth)
        with pytest.raises(InvalidParameterError):
            index.query(queries, 10, search_k=0)
        with pytest.raises(InvalidParameterError):
            index.query(queries, 10, n_trees=5)  # a build parameter
    for bad in ({"search_k": -2}, {"n_trees": 0}, {"threads": 0}, {"n_jobs": 0}, {"seed": -1}, {"seed": 2**31}):
        with pytest.raises(InvalidParameterError):
            builder_factory("annoy", **bad)


def test_seed_makes_builds_reproducible(items, queries):
    def run(**params):
        with builder_factory("annoy", **params).from_embeddings(items) as index:
            res = index.query(queries, 10, search_k=-1)  # few candidates: results depend on the forest
            return res.indices.copy(), res.distances.copy()

    for n_jobs in (1, 2):
        a, b = run(seed=7, n_jobs=n_jobs), run(seed=7, n_jobs=n_jobs)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert (run(seed=7, n_jobs=1)[0] != run(seed=8, n_jobs=1)[0]).any()


# -- add / remove --------------------------------------------------------------------------
def test_add_and_remove_are_unsupported(items):
    with builder_factory("annoy").from_embeddings(items[:100]) as index:
        assert isinstance(index, AnnoyIndexer)
        with pytest.raises(UnsupportedOperation, match="annoy"):
            index.add(items[:2], ids=[500, 501])
        with pytest.raises(UnsupportedOperation, match="annoy"):
            index.remove([0])
        assert len(index) == 100


# -- threads ---------------------------------------------------------------------------------
def test_threaded_fan_out_equals_serial(items, queries, tmp_path):
    many = np.concatenate([queries] * 5)
    with builder_factory("annoy", seed=4, threads=2).from_embeddings(items) as index:
        fanned = index.query(many, 10)
        index.save(tmp_path / "idx")
    with builder_factory("annoy", threads=1).from_index_file(tmp_path / "idx") as serial:
        one = serial.query(many, 10)
    np.testing.assert_array_equal(fanned.indices, one.indices)
    np.testing.assert_array_equal(fanned.distances, one.distances)


def test_query_pool_covers_every_row_once():
    seen = np.zeros(103, np.int64)
    pool = QueryPool(3)

    def work(start, stop):
        seen[start:stop] += 1

    pool.run(103, work)
    pool.run(1, work)
    assert seen[0] == 2 and (seen[1:] == 1).all()
    pool.shutdown()

    def fail(start, stop):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        QueryPool(2).run(10, fail)


def test_short_engine_rows_are_padded(items, queries):
    class ShortAnnoy:
        """An engine that finds only 3 items whatever k is asked for."""

        def __init__(self, inner):
            self._inner = inner

        def get_nns_by_vector(self, vector, n, search_k, include_distances):
            ids, dist = self._inner.get_nns_by_vector(vector, n, search_k, include_distances)
            return ids[:3], dist[:3]

    with builder_factory("annoy", metric="ip", seed=1).from_embeddings(items) as index:
        real = index._index
        index._index = ShortAnnoy(real)
        try:
            res = index.query(queries, 10)
        finally:
            index._index = real
        assert res.indices.shape == (len(queries), 10)
        assert (res.indices[:, 3:] == -1).all() and (res.distances[:, 3:] == -np.inf).all()
        assert np.asarray(res.valid).sum() == 3 * len(queries)


# -- persistence -------------------------------------------------------------------------------
def test_save_records_engine_and_loads_memory_mapped(items, queries, tmp_path):
    with builder_factory("annoy", metric="cosine", seed=1).from_embeddings(items) as index:
        before = index.query(queries, 10)
        index.save(tmp_path / "idx")
        after_save = index.query(queries, 10)  # save remaps the engine onto the saved file
        np.testing.assert_array_equal(after_save.indices, before.indices)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["engine_version"] == importlib.metadata.version("annoy")
    assert manifest["engine"] == {"file": "index.ann", "annoy_metric": "angular", "n_trees": 10, "n_items": len(items)}
    assert "threads" not in manifest["params"] and "on_disk_build" not in manifest["params"]
    with builder_factory("annoy", prefault=True, search_k=-1).from_index_file(tmp_path / "idx") as loaded:
        assert loaded.params["search_k"] == -1  # the builder's search parameters override the saved ones
        np.testing.assert_array_equal(loaded.query(queries, 10, search_k=None).indices, before.indices)


def test_adopts_a_bare_annoy_file(items, queries, tmp_path):
    raw = annoy.AnnoyIndex(DIM, "angular")
    for i, v in enumerate(items.tolist()):
        raw.add_item(i, v)  # unnormalised: angular is scale-invariant
    raw.build(10, n_jobs=1)
    path = tmp_path / "bare.ann"
    raw.save(str(path))
    with builder_factory("annoy", d=DIM, metric="angular").from_index_file(path) as index:
        assert len(index) == len(items) and index.dim == DIM and index.metric is Metric.COSINE
        res = index.query(queries, 10, search_k=5000)
        np.testing.assert_allclose(res.distances, true_distances(items, queries, res.indices, "cosine"), atol=2e-5)
        ids, _dist = raw.get_nns_by_vector(queries[0].tolist(), 10, search_k=5000, include_distances=True)
        assert res.indices[0].tolist() == ids
        index.save(tmp_path / "adopted")  # an adopted file becomes a regular saved index
    with open_index(tmp_path / "adopted") as again:
        np.testing.assert_array_equal(again.query(queries, 10, search_k=5000).indices, res.indices)
    for params in ({"metric": "angular"}, {"dim": DIM}, {}):
        with pytest.raises(InvalidParameterError, match="bare Annoy file"):
            builder_factory("annoy", **params).from_index_file(path)
    with pytest.raises(NotAnIndexError):
        builder_factory("annoy", dim=DIM, metric="l2").from_index_file(path)  # node size differs: caught
    (tmp_path / "junk.ann").write_bytes(b"\x01" * 13)
    with pytest.raises(NotAnIndexError):
        builder_factory("annoy", dim=DIM, metric="angular").from_index_file(tmp_path / "junk.ann")


def test_on_disk_build(items, queries, tmp_path):
    scratch = tmp_path / "build.ann"
    params = {"metric": "l2", "seed": 9, "n_jobs": 1}
    with builder_factory("annoy", **params).from_embeddings(items) as in_memory:
        expected = in_memory.query(queries, 10)
    builder = builder_factory("annoy", on_disk_build=str(scratch), **params)
    with builder.from_embeddings(items) as on_disk:
        assert scratch.is_file() and scratch.stat().st_size > items.nbytes
        np.testing.assert_array_equal(on_disk.query(queries, 10).indices, expected.indices)
        with pytest.raises(InvalidParameterError, match="open index"):
            builder.from_embeddings(items)  # would truncate the file under the open index
        on_disk.save(tmp_path / "idx")
    with open_index(tmp_path / "idx") as loaded:
        np.testing.assert_array_equal(loaded.query(queries, 10).indices, expected.indices)
    with builder_factory("annoy", dim=DIM, metric="l2").from_index_file(scratch) as adopted:
        np.testing.assert_array_equal(adopted.query(queries, 10).indices, expected.indices)
    builder.from_embeddings(items[:50]).close()  # the file is free again once the index is closed
    with pytest.raises(InvalidParameterError, match="directory"):
        builder_factory("annoy", on_disk_build=str(tmp_path))


# -- torch-rechub compatibility ----------------------------------------------------------------
@pytest.mark.parametrize(("name", "metric"), [("angular", "cosine"), ("euclidean", "l2"), ("dot", "ip"), ("IP", "ip")])
def test_torch_rechub_keywords(name, metric, items, queries, tmp_path):
    torch = pytest.importorskip("torch")
    builder = builder_factory("annoy", d=DIM, metric=name, n_trees=10, threads=2, searchk=-1)
    assert builder.config["n_trees"] == 10 and builder.config["threads"] == 2 and builder.config["search_k"] == -1
    with builder.from_embeddings(torch.from_numpy(items)) as indexer:
        assert indexer.metric is Metric(metric)
        ids, distances = indexer.query(torch.from_numpy(queries), 10)
        assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64 and ids.shape == (len(queries), 10)
        assert distances.dtype == torch.float32
        indexer.save(pathlib.Path(tmp_path / "items.index"))
    with builder.from_index_file(pathlib.Path(tmp_path / "items.index")) as loaded:
        again, _ = loaded.query(torch.from_numpy(queries), 10)
        assert torch.equal(again, ids)


def test_save_and_close_wait_for_running_queries(items, queries, tmp_path):
    """save() remaps and close() unmaps the engine: both must wait for searches in flight."""
    many = np.concatenate([queries] * 5)
    index = builder_factory("annoy", seed=5, threads=2).from_embeddings(items)
    expected = index.query(many, 10, search_k=4000).indices
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = [pool.submit(index.query, many, 10, search_k=4000) for _ in range(4)]
        index.save(tmp_path / "idx")
        for future in running:
            np.testing.assert_array_equal(future.result().indices, expected)
        running = [pool.submit(index.query, many, 10, search_k=4000) for _ in range(4)]
        index.close()
        for future in running:
            try:
                np.testing.assert_array_equal(future.result().indices, expected)
            except IndexClosedError:
                pass  # started after close: a clean error, never a crash
