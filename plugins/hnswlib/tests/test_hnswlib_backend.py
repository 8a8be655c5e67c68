"""The hnswlib backend: the conformance suite, then what is specific to hnswlib.

Only the public face of rechub_serving (and rechub_serving.testing) is used,
as a third-party plugin's tests would.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import hnswlib
import numpy as np
import pytest
from rechub_serving_hnswlib import DEFAULT_EF_SEARCH, HnswlibBackend, backend

from rechub_serving import Builder, InvalidParameterError, NotAnIndexError, get_backend, open_index
from rechub_serving.testing import BackendConformance, clustered_data, ground_truth, recall_at_k


# -- the conformance suite: a Backend class, nothing installed ... ---------------------------
class TestHnswlib(BackendConformance):
    backend = HnswlibBackend
    params = {"m": 16, "ef_construction": 100, "threads": 2}
    recall_floor = 0.95


# -- ... and the installed backend, found by name through its entry point ----------------------
class TestHnswlibInstalled(BackendConformance):
    backend = "hnswlib"
    params = {"m": 8, "ef_construction": 50, "threads": 1}
    recall_floor = 0.95
    metrics = ("cosine",)


def hnsw(**params):
    """A builder with a cheaper default build (these tests need a graph, not the best one)."""
    return Builder(HnswlibBackend, **{"ef_construction": 64, **params})


def raw_graph(saved: Path, space: str = "l2", dim: int = 16) -> hnswlib.Index:
    """The graph a saved index holds, opened with hnswlib itself."""
    raw = hnswlib.Index(space=space, dim=dim)
    raw.load_index(str(saved / "engine" / "index.hnsw"))
    return raw


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return clustered_data(1500, 16, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered_data(50, 16, seed=1, centres_seed=0)


# -- discovery and parameters ---------------------------------------------------------------
def test_found_through_its_entry_point():
    (ep,) = [ep for ep in entry_points(group="rechub_serving") if ep.name == "hnswlib"]
    assert ep.value == "rechub_serving_hnswlib"  # a module, as pluggy needs
    info = get_backend("hnswlib")
    assert info.backend is HnswlibBackend and info.distribution == "rechub-serving-hnswlib"
    assert info.engine_version and info.engine_version.startswith("hnswlib ")


def test_parameter_schema_aliases_and_bounds():
    builder = Builder(HnswlibBackend, M=8, efConstruction=40, efSearch=30, num_threads=1, random_seed=7)
    assert builder.config.items() >= {"m": 8, "ef_construction": 40, "ef_search": 30, "threads": 1, "seed": 7}.items()
    assert "threads" not in builder.build_params  # a runtime option, never saved
    assert hnsw().search_params == {"ef_search": DEFAULT_EF_SEARCH}
    with pytest.raises(InvalidParameterError, match="ef_construction"):
        hnsw(m=32, ef_construction=16)
    for param in HnswlibBackend.params:
        assert param.type is not int or param.maximum is not None, f"{param.name} has no upper bound"
        if param.type is int:
            with pytest.raises(InvalidParameterError, match="too large"):
                Builder(HnswlibBackend, **{param.name: 2**63})


# -- distances and per-call ef_search -------------------------------------------------------
def test_engine_numbers_are_what_the_protocol_is_told(items, queries):
    """hnswlib's l2 is squared (RawDistance.SQUARED_L2); its ip is 1 - <q, x> (RawDistance.ONE_MINUS_IP)."""
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


def test_per_call_ef_search_equals_hnswlib_set_ef(items, queries, tmp_path):
    """ef_search per call gives exactly hnswlib's set_ef(ef) + knn_query(k) on the same graph."""
    with hnsw(m=8, ef_construction=40, seed=3).from_embeddings(items) as index:
        index.save(tmp_path / "idx")
        ours = {ef: index.query(queries, 10, ef_search=ef).indices for ef in (10, 20, 80)}
        assert index.params["ef_search"] == DEFAULT_EF_SEARCH  # defaults untouched by per-call values
    raw = raw_graph(tmp_path / "idx")
    for ef, found in ours.items():
        raw.set_ef(ef)
        labels, _ = raw.knn_query(queries, k=10)
        np.testing.assert_array_equal(found, labels.astype(np.int64))
    truth, _ = ground_truth(items, queries, 10, "l2")
    assert recall_at_k(ours[10], truth) < recall_at_k(ours[80], truth)


def test_wide_searches_are_split_into_bounded_calls(items, queries, monkeypatch):
    """ef_search results per query cost memory: a batch is searched in slices of RESULT_SLOTS // ef rows."""
    with hnsw(threads=1).from_embeddings(items) as index:
        whole = index.query(queries, 10, ef_search=40)
        monkeypatch.setattr(backend, "RESULT_SLOTS", 3 * 40 + 1)  # three queries per call
        sliced = index.query(queries, 10, ef_search=40)
    np.testing.assert_array_equal(sliced.indices, whole.indices)
    np.testing.assert_array_equal(sliced.distances, whole.distances)


# -- add / remove / short results -------------------------------------------------------------
def test_add_grows_capacity_and_remove_hides_items(items, tmp_path):
    first, more = items[:100], items[100:400]
    with hnsw(threads=1).from_embeddings(first, ids=np.arange(100) + 5000) as index:
        for start in range(0, 300, 60):  # several resizes
            index.add(more[start : start + 60], ids=np.arange(start, start + 60) + 9000)
        assert len(index) == 400
        np.testing.assert_array_equal(index.query(more[:20], 1).indices[:, 0], np.arange(20) + 9000)
        assert index.remove(np.arange(20) + 9000) == 20
        assert not set(index.query(more[:20], 5).indices.ravel().tolist()) & set(range(9000, 9020))
        index.add(more[:5], ids=[1, 2, 3, 4, 5])  # removed vectors come back under new ids
        np.testing.assert_array_equal(index.query(more[:5], 1).indices[:, 0], [1, 2, 3, 4, 5])
        index.save(tmp_path / "idx")
        expected = index.query(items[:50], 10).indices
    with open_index(tmp_path / "idx") as loaded:
        assert len(loaded) == 385  # counted from the file's deleted marks, not taken from the manifest
        np.testing.assert_array_equal(loaded.query(items[:50], 10).indices, expected)
        loaded.add(items[400:410], ids=np.arange(10) + 7000)  # a loaded graph grows too
        assert len(loaded) == 395


def test_short_results_are_every_reachable_item_padded(items, tmp_path):
    """A graph cut off by removals: each row holds all the live items its search reaches, then -1.

    hnswlib raises for such rows; the reference is the largest k hnswlib itself accepts, row by row.
    """
    with hnsw(m=2, ef_construction=2, seed=5, threads=1).from_embeddings(items[:300]) as index:
        index.remove(np.random.default_rng(1).permutation(300)[:240])
        res = index.query(items[:60], 6, ef_search=1)
        index.save(tmp_path / "idx")
    raw = raw_graph(tmp_path / "idx")
    raw.set_ef(1)
    reached = []
    for query, row, valid in zip(items[:60], res.indices, res.valid):
        reachable = max(k for k in range(7) if k == 0 or _answers(raw, query, k))
        assert valid.sum() == reachable and (row[reachable:] == -1).all()
        if reachable:
            np.testing.assert_array_equal(row[:reachable], raw.knn_query(query, k=reachable)[0][0])
        reached.append(reachable)
    assert {0 < r < 6 for r in reached} == {True, False}, "the test must mix short and full rows"


def _answers(raw: hnswlib.Index, query: np.ndarray, k: int) -> bool:
    try:
        raw.knn_query(query, k=k)
        return True
    except RuntimeError:
        return False


# -- native files ----------------------------------------------------------------------------------
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
        index.add(items[-1:], ids=[len(items) - 1])  # the deleted slot's label comes back to life
        assert index.query(items[-1], 1).indices[0, 0] == len(items) - 1


def test_refuses_files_it_cannot_adopt(items, tmp_path):
    raw = hnswlib.Index(space="l2", dim=16)
    raw.init_index(10)
    raw.add_items(items[:10], np.arange(10) * 2)  # labels are not 0..n-1
    raw.save_index(str(tmp_path / "sparse.bin"))
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 50 + b"not hnswlib" * 20)
    for name in ("sparse.bin", "junk.bin"):
        with pytest.raises(NotAnIndexError):
            hnsw().from_index_file(tmp_path / name)
