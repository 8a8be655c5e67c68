"""The usearch backend: the conformance suite per metric and storage, and what USearch itself does differently."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from rechub_serving_usearch import UsearchBackend
from usearch.index import Index

from rechub_serving import Builder, InvalidInputError, InvalidParameterError, NotAnIndexError, UnsupportedOperation
from rechub_serving.graph import search_width
from rechub_serving.testing import BackendConformance, clustered_data, reference_topk


class TestUsearchF32(BackendConformance):
    backend = UsearchBackend  # the class itself: no entry point needed


class TestUsearchInstalled(BackendConformance):
    """The same backend through its entry point, as users get it."""

    backend = "usearch"
    metrics = ("cosine",)


class TestUsearchMmap(BackendConformance):
    """Saved indexes served from their file (read-only after loading)."""

    backend = UsearchBackend
    params = {"mmap": True}


class TestUsearchF16(BackendConformance):
    backend = UsearchBackend
    params = {"dtype": "f16"}
    rtol = 1e-2
    atol = 2e-2


class TestUsearchBf16(BackendConformance):
    backend = UsearchBackend
    params = {"dtype": "bf16"}
    rtol = 5e-2
    atol = 2e-1


class TestUsearchI8(BackendConformance):
    """i8 quantises unit vectors: cosine only, so every test of the suite runs under cosine."""

    backend = UsearchBackend
    params = {"dtype": "i8"}
    metrics = ("cosine",)
    rtol = 5e-2
    atol = 5e-2

    def make_builder(self, **params):
        return super().make_builder(**{**params, "metric": "cosine"})


# -- what the suite cannot know about USearch ------------------------------------------------------------------
def _data(n=500, dim=16, seed=0):
    return clustered_data(n, dim, seed=seed), clustered_data(8, dim, seed=seed + 1, centres_seed=seed)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("metric", "raw"),
    [
        ("l2", lambda x, q: ((q[:, None] - x[None]) ** 2).sum(-1)),
        ("ip", lambda x, q: 1 - q @ x.T),
        ("cosine", lambda x, q: 1 - _unit(q) @ _unit(x).T),
    ],
)
def test_the_engine_returns_usearchs_own_distance(metric, raw):
    """Squared l2, 1 - ip and 1 - cos, as ``Engine.distance`` declares; computed here in float64."""
    items, queries = _data()
    with Builder(UsearchBackend, metric=metric).from_embeddings(items) as index:
        q = _unit(queries) if metric == "cosine" else queries
        labels, dist = index.engine.search(q.astype(np.float32), 5, {"ef_search": 200}, None)
        expected = np.take_along_axis(raw(items.astype(np.float64), queries.astype(np.float64)), labels, axis=1)
        np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-4)
        assert index.engine.distance.value == ("squared_l2" if metric == "l2" else "one_minus_ip")


@pytest.mark.parametrize("ef", [10, 24, 64, 200])
def test_per_call_ef_is_the_search_usearch_runs_with_that_expansion(ef):
    """Asking max(ef, k) results with expansion 1 is the very search of expansion_search = ef."""
    rng = np.random.default_rng(0)
    items = rng.normal(size=(3000, 16)).astype(np.float32)  # unclustered: the width matters
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    with Builder(UsearchBackend).from_embeddings(items) as index:
        raw, kept = index.engine.index, index.engine.index.expansion_search
        raw.expansion_search = ef
        expected = raw.search(queries, 10, threads=1).keys.astype(np.int64)
        raw.expansion_search = kept
        np.testing.assert_array_equal(index.query(queries, 10, ef_search=ef).indices, expected)


def test_short_results_are_padded_in_batches_and_single_rows():
    """USearch pads a batch with junk (its counts say how much is real) and trims a single row."""
    items, queries = _data(7)
    with Builder(UsearchBackend).from_embeddings(items) as index:
        labels, _ = index.engine.search(queries[:2], 9, {"ef_search": None}, None)
        assert labels.shape == (2, 9) and (labels[:, 7:] == -1).all() and sorted(labels[0, :7]) == list(range(7))
        labels, _ = index.engine.search(queries[:1], 9, {"ef_search": None}, None)
        assert labels.shape[1] <= 9 and sorted(labels[0][labels[0] >= 0]) == list(range(7))


def test_mmap_serves_the_file_read_only(tmp_path):
    """``mmap=True`` views the saved file: same answers, add and remove refused, the file can be replaced."""
    items, queries = _data()
    with Builder(UsearchBackend, metric="cosine", dtype="f16").from_embeddings(items) as index:
        expected = index.query(queries, 10)
        index.save(tmp_path / "idx")
    with Builder(UsearchBackend, mmap=True).from_index_file(tmp_path / "idx") as viewed:
        assert viewed.engine.viewed and not viewed.capabilities.add and not viewed.capabilities.remove
        np.testing.assert_array_equal(viewed.query(queries, 10).indices, expected.indices)
        with pytest.raises(UnsupportedOperation):
            viewed.add(items[:1])
        with pytest.raises(UnsupportedOperation):
            viewed.remove([0])
        viewed.save(tmp_path / "again")
    with Builder(UsearchBackend).from_index_file(tmp_path / "again") as copy:
        assert copy.capabilities.add and copy.params["dtype"] == "f16"
        np.testing.assert_array_equal(copy.query(queries, 10).indices, expected.indices)


def test_storage_limits_are_clear_errors():
    items, _ = _data()
    with pytest.raises(InvalidParameterError, match="cosine"):
        Builder(UsearchBackend, dtype="i8", metric="l2")
    with pytest.raises(InvalidInputError, match="f16"):
        Builder(UsearchBackend, dtype="f16").from_embeddings(items * 1e5)


def _native_file(tmp_path, items, keys, metric="ip", dtype="f32", removed=()):
    raw = Index(ndim=items.shape[1], metric=metric, dtype=dtype)
    raw.add(np.asarray(keys, dtype=np.uint64), items)
    if len(removed):
        raw.remove(np.asarray(removed, dtype=np.uint64))
    raw.save(str(tmp_path / "native.usearch"))
    return raw


@pytest.mark.parametrize("mmap", [False, True])
def test_adopting_a_bare_file_keeps_its_keys_and_metric(tmp_path, mmap):
    """A file written by USearch itself: its keys become the index's ids, its metric and dtype are read."""
    items, queries = _data()
    keys = [10**9 + 7 * i for i in range(len(items))]
    raw = _native_file(tmp_path, items, keys, removed=keys[:2])
    with Builder(UsearchBackend, mmap=mmap).from_index_file(tmp_path / "native.usearch") as index:
        assert index.metric.value == "ip" and len(index) == len(items) - 2 and index.params["dtype"] == "f32"
        raw.expansion_search = 64
        expected = raw.search(queries, 5)
        found = index.query(queries, 5, ef_search=64)
        np.testing.assert_array_equal(found.indices, expected.keys.astype(np.int64))
        np.testing.assert_allclose(found.distances, 1 - expected.distances, rtol=1e-5, atol=1e-5)
        if mmap:
            return
        extra = np.zeros((2, items.shape[1]), np.float32)
        extra[:, 0] = [50, -50]  # under ip, each its own best match
        index.add(extra, ids=[5, 6])
        assert index.query(extra, 1).indices.ravel().tolist() == [5, 6]
        assert np.sort(np.asarray(index.engine.index.keys))[-2:].tolist() == [keys[-1] + 1, keys[-1] + 2]
        assert index.remove([keys[3], 5]) == 2
        before = index.query(queries, 10)
        index.save(tmp_path / "adopted")
    with Builder(UsearchBackend).from_index_file(tmp_path / "adopted") as loaded:
        np.testing.assert_array_equal(loaded.query(queries, 10).indices, before.indices)
        assert not {keys[0], keys[3], 5} & set(loaded.query(queries, 50).indices.ravel().tolist())


def test_adopting_refuses_what_it_cannot_serve(tmp_path):
    items, _ = _data()
    garbage = tmp_path / "garbage.usearch"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(NotAnIndexError, match="not a USearch index"):
        Builder(UsearchBackend).from_index_file(garbage)
    _native_file(tmp_path, _unit(items), range(len(items)), metric="l2sq", dtype="i8")
    with pytest.raises(NotAnIndexError, match="i8 units"):
        Builder(UsearchBackend).from_index_file(tmp_path / "native.usearch")
    _native_file(tmp_path, items, [2**63 + i for i in range(len(items))])
    with pytest.raises(NotAnIndexError, match="2\\*\\*63"):
        Builder(UsearchBackend).from_index_file(tmp_path / "native.usearch")


def test_concurrent_queries_with_different_ef_equal_serial():
    """USearch releases the GIL while searching: many threads, each its own ef, get the serial answers."""
    rng = np.random.default_rng(1)
    items = rng.normal(size=(5000, 16)).astype(np.float32)
    queries = rng.normal(size=(64, 16)).astype(np.float32)
    with Builder(UsearchBackend, threads=1).from_embeddings(items) as index:
        efs = [10, 40, 160]
        serial = {ef: index.query(queries, 10, ef_search=ef).indices for ef in efs}
        assert not np.array_equal(serial[10], serial[160])
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: (efs[i % 3], index.query(queries, 10, ef_search=efs[i % 3])), range(96)))
        for ef, res in results:
            np.testing.assert_array_equal(res.indices, serial[ef])


def test_an_adopted_file_keeps_its_own_graph_and_dtype_through_a_save(tmp_path):
    """The file's M and dtype are the index's (shown in ``params``, saved, loaded back)."""
    items, queries = _data()
    raw = Index(ndim=items.shape[1], metric="l2sq", dtype="bf16", connectivity=8)
    raw.add(np.arange(len(items)), items)
    raw.save(str(tmp_path / "native.usearch"))
    with Builder(UsearchBackend).from_index_file(tmp_path / "native.usearch") as index:
        assert (index.metric.value, index.params["m"], index.params["dtype"]) == ("l2", 8, "bf16")
        before = index.query(queries, 10)
        index.save(tmp_path / "idx")
    with Builder(UsearchBackend).from_index_file(tmp_path / "idx") as loaded:
        assert (loaded.params["m"], loaded.params["dtype"]) == (8, "bf16")
        np.testing.assert_array_equal(loaded.query(queries, 10).indices, before.indices)


@pytest.mark.parametrize(("dtype", "kind"), [(None, "IP"), ("f16", "Cos"), ("bf16", "Cos"), ("i8", "Cos")])
def test_cosine_runs_as_inner_product_on_f32_unit_vectors(dtype, kind):
    """The core normalises for cosine, so f32 needs only USearch's IP; rounded storage keeps Cos."""
    items, queries = _data()
    with Builder(UsearchBackend, metric="cosine", dtype=dtype).from_embeddings(items) as index:
        assert index.engine.index.metric_kind.name == kind and index.metric.value == "cosine"
        truth, _ = reference_topk(items, queries, 10, "cosine")
        found = index.query(queries, 10).indices
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]) >= 0.9


def test_each_search_takes_its_width_from_the_shared_graph_rule(monkeypatch):
    """The width comes from rechub_serving.graph.search_width, with the call's ef_search and the count."""
    from rechub_serving_usearch import _backend

    seen = []
    monkeypatch.setattr(_backend, "search_width", lambda *a: seen.append(a) or search_width(*a))
    with Builder(UsearchBackend).from_embeddings(np.random.default_rng(0).normal(size=(50, 8))) as index:
        index.query(np.zeros((1, 8)), 5)
        index.query(np.zeros((1, 8)), 5, ef_search=7)
    assert seen == [(None, 5, 50), (7, 5, 50)]
