"""The conformance suite every backend runs: one contract, checked the same way everywhere."""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, ClassVar

import numpy as np
import pytest

from .._base import Builder, Indexer
from .._errors import (
    ChecksumMismatchError,
    DimensionMismatchError,
    DuplicateIdError,
    IndexClosedError,
    InvalidInputError,
    InvalidParameterError,
    RechubError,
    UnknownParameterError,
    UnsupportedOperation,
)
from .._factory import builder_factory, open_index
from .._metrics import Metric
from ..evaluation import clustered_data, ground_truth, recall_at_k, true_distances

__all__ = ["BackendConformance"]


class BackendConformance:
    """Subclass as ``TestXxx`` and set ``backend`` (and ``params``, ``exact``...).

    ``exact`` None means: take it from the index's capabilities. Approximate
    configurations must reach ``recall_floor`` (recall@10 on clustered data).
    Override :meth:`make_builder` when building needs fixtures (a server).
    """

    backend: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    exact: ClassVar[bool | None] = None
    recall_floor: ClassVar[float] = 0.9
    metrics: ClassVar[tuple[str, ...]] = ("l2", "ip", "cosine")
    n_items: ClassVar[int] = 1000
    dim: ClassVar[int] = 16
    n_queries: ClassVar[int] = 25
    k: ClassVar[int] = 10
    rtol: ClassVar[float] = 1e-4
    atol: ClassVar[float] = 1e-3

    # -- hooks --------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "metric" in metafunc.fixturenames:
            metafunc.parametrize("metric", list(self.metrics))

    def make_builder(self, **params: Any) -> Builder:
        return builder_factory(self.backend, **{**self.params, **params})

    # -- data -----------------------------------------------------------------------
    def items(self, n: int | None = None, seed: int = 0) -> np.ndarray:
        return clustered_data(n or self.n_items, self.dim, seed=seed)

    def queries(self, n: int | None = None) -> np.ndarray:
        """Queries around the catalogue's centres (as user vectors are), with their own noise."""
        return clustered_data(n or self.n_queries, self.dim, seed=1, centres_seed=0)

    def build(self, metric: str = "l2", items: np.ndarray | None = None, ids: Any = None, **params: Any) -> Indexer:
        items = self.items() if items is None else items
        return self.make_builder(metric=metric, **params).from_embeddings(items, ids=ids)

    def is_exact(self, index: Indexer) -> bool:
        return index.capabilities.exact if self.exact is None else self.exact

    def check_against_reference(self, index: Indexer, items, queries, metric, ids=None, k=None, exclude=None):
        k = k or self.k
        res = index.query(queries, k, exclude=exclude)
        found = np.asarray(res.indices)
        dist = np.asarray(res.distances)
        pos = found if ids is None else _positions(found, ids)
        # The metric table: every returned distance is the true number for that item.
        valid = pos >= 0
        expected = true_distances(items, queries, pos, metric)
        np.testing.assert_allclose(dist[valid], expected[valid], rtol=self.rtol, atol=self.atol)
        # Best first.
        d = np.where(valid, dist, np.nan)
        diffs = np.diff(d, axis=1)
        order_ok = diffs[~np.isnan(diffs)]
        if Metric(metric).higher_is_better:
            assert (order_ok <= self.atol).all(), "results are not best-first (descending)"
        else:
            assert (order_ok >= -self.atol).all(), "results are not best-first (ascending)"
        truth_pos, truth_dist = ground_truth(items, queries, len(items), metric)
        if exclude is not None:
            truth_pos, truth_dist = _apply_exclude(truth_pos, truth_dist, exclude, ids)
        truth_pos, truth_dist = truth_pos[:, :k], truth_dist[:, :k]
        if self.is_exact(index):
            # Equal distances (ties may swap ids), same id sets up to ties.
            np.testing.assert_allclose(dist, truth_dist, rtol=self.rtol, atol=self.atol)
            assert recall_at_k(pos, truth_pos) >= 0.99
        else:
            recall = recall_at_k(pos, truth_pos)
            assert recall >= self.recall_floor, f"recall@{k} = {recall:.3f} < floor {self.recall_floor}"
        return res

    # -- the contract -------------------------------------------------------------
    def test_results_match_reference(self, metric):
        items, queries = self.items(), self.queries()
        with self.build(metric, items) as index:
            assert index.metric is Metric(metric)
            assert len(index) == len(items) and index.dim == self.dim
            assert index.backend == self.backend
            self.check_against_reference(index, items, queries, metric)

    def test_padding_when_k_exceeds_count(self, metric):
        items = self.items(7)
        with self.build(metric, items) as index:
            res = index.query(self.queries(3), 12)
            ids, dist = np.asarray(res.indices), np.asarray(res.distances)
            assert ids.shape == (3, 12) and dist.dtype == np.float32 and ids.dtype == np.int64
            valid = np.asarray(res.valid)
            assert valid.sum(axis=1).min() >= (7 if self.is_exact(index) else 1)
            assert (ids[~valid] == -1).all()
            pad = -np.inf if Metric(metric).higher_is_better else np.inf
            assert (dist[~valid] == pad).all()
            assert (ids[valid] >= 0).all() and (ids[valid] < 7).all()
            for row in ids:  # no duplicates within a row
                real = row[row >= 0]
                assert len(set(real.tolist())) == len(real)

    def test_integer_ids(self, metric):
        items, queries = self.items(), self.queries()
        ids = np.random.default_rng(3).choice(10**12, size=len(items), replace=False).astype(np.int64)
        with self.build(metric, items, ids=ids) as index:
            res = self.check_against_reference(index, items, queries, metric, ids=ids)
            assert set(np.asarray(res.indices)[np.asarray(res.valid)].tolist()) <= set(ids.tolist())

    def test_string_ids(self, metric):
        items, queries = self.items(), self.queries()
        ids = np.array([f"item-{i:05d}" for i in range(len(items))], dtype=object)
        with self.build(metric, items, ids=ids) as index:
            res = self.check_against_reference(index, items, queries, metric, ids=ids)
            assert all(isinstance(v, str) for v in np.asarray(res.indices).ravel())

    def test_exclude(self, metric):
        items, queries = self.items(), self.queries()
        truth_pos, _ = ground_truth(items, queries, 3, metric)
        exclude = [row.tolist() for row in truth_pos]
        exclude[0] = []
        exclude[1] = None
        with self.build(metric, items) as index:
            res = self.check_against_reference(index, items, queries, metric, exclude=exclude)
            found = np.asarray(res.indices)
            for row, banned in zip(found, exclude):
                assert not set(row.tolist()) & set(banned or [])
            if self.is_exact(index):
                assert np.asarray(res.valid).all(), "exclusions must not shorten rows when enough items remain"

    def test_exclude_rows_must_match_queries(self):
        with self.build() as index:
            with pytest.raises(InvalidInputError):
                index.query(self.queries(3), 5, exclude=[[1], [2]])

    def test_single_vector_and_list_input(self):
        items, queries = self.items(), self.queries()
        with self.build("l2", items) as index:
            one = index.query(queries[0], 5)
            assert np.asarray(one.indices).shape == (1, 5)
            from_list = index.query(queries[:2].tolist(), 5)
            batch = index.query(queries[:2], 5)
            np.testing.assert_array_equal(np.asarray(from_list.indices), np.asarray(batch.indices))
            ids, dist = batch  # unpacks as a pair
            assert ids is batch.indices and dist is batch.distances

    def test_torch_in_torch_out(self):
        torch = pytest.importorskip("torch")
        items, queries = self.items(), self.queries()
        with self.make_builder(metric="ip").from_embeddings(torch.from_numpy(items).double()) as index:
            res = index.query(torch.from_numpy(queries), self.k)
            assert isinstance(res.indices, torch.Tensor) and res.indices.dtype == torch.int64
            assert isinstance(res.distances, torch.Tensor) and res.distances.dtype == torch.float32
            assert res.distances.device == torch.from_numpy(queries).device
            ref = index.query(queries, self.k)
            assert isinstance(ref.indices, np.ndarray) and isinstance(ref.distances, np.ndarray)
            np.testing.assert_array_equal(res.indices.numpy(), ref.indices)
            assert isinstance(res.valid, torch.Tensor) and isinstance(ref.scores, np.ndarray)

    def test_save_and_load_round_trip(self, metric, tmp_path):
        items, queries = self.items(), self.queries()
        ids = [f"s{i}" for i in range(len(items))]
        builder = self.make_builder(metric=metric)
        with builder.from_embeddings(items, ids=ids) as index:
            if not index.capabilities.persist:
                with pytest.raises(UnsupportedOperation):
                    index.save(tmp_path / "idx")
                return
            before = index.query(queries, self.k)
            index.save(tmp_path / "idx")
        with open_index(tmp_path / "idx") as loaded:
            after = loaded.query(queries, self.k)
            assert loaded.metric is Metric(metric) and len(loaded) == len(items)
            np.testing.assert_array_equal(np.asarray(after.indices), np.asarray(before.indices))
            np.testing.assert_allclose(after.distances, before.distances, rtol=self.rtol, atol=self.atol)
        with self.make_builder().from_index_file(tmp_path / "idx") as loaded:
            assert loaded.metric is Metric(metric)
            np.testing.assert_array_equal(np.asarray(loaded.query(queries, self.k).indices), np.asarray(before.indices))

    def test_saving_over_an_index_keeps_readers_working(self, tmp_path):
        items, queries = self.items(), self.queries()
        with self.build("l2", items) as first:
            if not first.capabilities.persist:
                pytest.skip("backend does not persist")
            first.save(tmp_path / "idx")
            reader = open_index(tmp_path / "idx")
            expected = reader.query(queries, 5)
            with self.build("l2", items[::-1].copy()) as second:
                second.save(tmp_path / "idx")
            again = reader.query(queries, 5)
            np.testing.assert_array_equal(np.asarray(again.indices), np.asarray(expected.indices))
            reader.close()
            with open_index(tmp_path / "idx") as fresh:
                assert len(fresh) == len(items)

    def test_corrupt_saved_index_is_detected(self, tmp_path):
        with self.build() as index:
            if not index.capabilities.persist:
                pytest.skip("backend does not persist")
            index.save(tmp_path / "idx")
        files = sorted(p for p in (tmp_path / "idx").rglob("*") if p.is_file() and p.name != "manifest.json")
        victim = max(files, key=lambda p: p.stat().st_size)
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
        with pytest.raises(ChecksumMismatchError):
            open_index(tmp_path / "idx")

    def test_bad_inputs_raise_and_change_nothing(self):
        items, queries = self.items(), self.queries()
        with self.build("l2", items) as index:
            before = np.asarray(index.query(queries, 5).indices)
            bad_queries = [
                np.zeros((2, self.dim + 1), np.float32),  # wrong dimension
                np.zeros((2, 2, self.dim), np.float32),  # 3-D
                np.full((1, self.dim), np.nan, np.float32),  # NaN
                np.full((1, self.dim), np.inf, np.float32),  # inf
                np.zeros((2, self.dim), np.complex64),  # complex
                np.array([["a"] * self.dim]),  # strings
                np.zeros((0, self.dim), np.float32),  # empty
            ]
            for q in bad_queries:
                with pytest.raises(InvalidInputError):
                    index.query(q, 5)
            for k in (0, -1, 1.5, "3", True, None):
                with pytest.raises(InvalidInputError):
                    index.query(queries, k)
            with pytest.raises(UnknownParameterError):
                index.query(queries, 5, no_such_parameter=3)
            with pytest.raises(InvalidParameterError):
                index.query(queries, 5, metric="ip")  # build parameters cannot change per query
            with pytest.raises(DimensionMismatchError):
                index.query(np.zeros(self.dim + 2, np.float32), 5)
            if index.capabilities.add:
                with pytest.raises(InvalidInputError):
                    index.add(np.full((2, self.dim), np.nan, np.float32))
            assert len(index) == len(items)
            np.testing.assert_array_equal(np.asarray(index.query(queries, 5).indices), before)

    def test_bad_build_inputs(self):
        builder = self.make_builder()
        items = self.items(20)
        cases = [
            (np.zeros((0, self.dim), np.float32), None, InvalidInputError),
            (items[0], None, InvalidInputError),
            (np.where(np.eye(20, self.dim) > 0, np.nan, items), None, InvalidInputError),
            (items.astype(np.complex64), None, InvalidInputError),
            (items, list(range(19)), InvalidInputError),
            (items, [1] * 20, DuplicateIdError),
            (items, [1.5] * 20, InvalidInputError),
        ]
        for embeddings, ids, error in cases:
            with pytest.raises(error):
                builder.from_embeddings(embeddings, ids=ids)
        with pytest.raises(UnknownParameterError) as info:
            self.make_builder(no_such_parameter=1)
        assert "Valid:" in str(info.value)
        with pytest.raises(InvalidParameterError):
            self.make_builder(metric="hamming")
        with pytest.raises(DimensionMismatchError):
            self.make_builder(dim=self.dim + 1).from_embeddings(items)
        if "metric" in self.params:
            return
        with pytest.raises(InvalidInputError):
            self.make_builder(metric="cosine").from_embeddings(np.zeros((3, self.dim), np.float32))

    def test_use_after_close(self, tmp_path):
        index = self.build()
        with index as same:
            assert same is index
        assert index.closed
        index.close()  # idempotent
        for call in (
            lambda: index.query(self.queries(), 5),
            lambda: index.save(tmp_path / "x"),
            lambda: len(index),
            lambda: index.add(self.items(2)),
            lambda: index.remove([0]),
        ):
            with pytest.raises(IndexClosedError):
                call()

    def test_concurrent_queries_equal_serial(self):
        items = self.items()
        queries = self.queries(40)
        with self.build("l2", items) as index:
            search = [p for p in index._builder.schema() if p.search and p.type is int and p.name != "block_bytes"]
            variants: list[dict[str, Any]] = [{}]
            for p in search[:1]:
                base = index._search_defaults.get(p.name) or 16
                variants = [{}, {p.name: max(1, int(base) // 2)}, {p.name: int(base) * 2}]
            serial = {
                i: np.asarray(index.query(queries, self.k, **variants[i % len(variants)]).indices) for i in range(12)
            }
            workers = min(8, (os.cpu_count() or 2) * 2)
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                futures = {
                    i: pool.submit(index.query, queries, self.k, **variants[i % len(variants)]) for i in range(12)
                }
                for i, fut in futures.items():
                    np.testing.assert_array_equal(np.asarray(fut.result().indices), serial[i])

    def test_add_and_remove(self, metric):
        items, queries = self.items(), self.queries()
        extra = clustered_data(50, self.dim, seed=7)
        new_ids = np.arange(10**6, 10**6 + 50)
        with self.build(metric, items) as index:
            if not index.capabilities.add:
                with pytest.raises(UnsupportedOperation):
                    index.add(extra, ids=new_ids)
            else:
                index.add(extra, ids=new_ids)
                assert len(index) == len(items) + 50
                res = index.query(extra[:5], 1)
                if self.is_exact(index) and metric != "ip":  # under ip a vector need not be its own best match
                    assert np.asarray(res.indices)[:, 0].tolist() == new_ids[:5].tolist()
                with pytest.raises(DuplicateIdError):
                    index.add(extra[:1], ids=new_ids[:1])
            top = np.asarray(index.query(queries, 3).indices)[:, 0]
            if not index.capabilities.remove:
                with pytest.raises(UnsupportedOperation):
                    index.remove(top[:2])
                return
            removed = index.remove(np.unique(top))
            assert removed == len(np.unique(top))
            after = np.asarray(index.query(queries, self.k).indices)
            assert not set(after.ravel().tolist()) & set(top.tolist())
            assert index.remove([10**15]) == 0  # unknown ids are ignored


def _positions(found: np.ndarray, ids: Any) -> np.ndarray:
    lookup = {v: i for i, v in enumerate(np.asarray(ids).tolist())}
    return np.vectorize(lambda v: lookup.get(v, -1), otypes=[np.int64])(found) if found.size else found.astype(np.int64)


def _apply_exclude(pos: np.ndarray, dist: np.ndarray, exclude: list, ids: Any):
    rows_p, rows_d = [], []
    for p, d, banned in zip(pos, dist, exclude):
        banned_pos = set(banned or []) if ids is None else {i for i, v in enumerate(ids) if v in set(banned or [])}
        keep = np.array([x not in banned_pos for x in p.tolist()])
        rows_p.append(p[keep][: pos.shape[1] - len(banned or [])])
        rows_d.append(d[keep][: pos.shape[1] - len(banned or [])])
    width = min(len(r) for r in rows_p)
    return np.stack([r[:width] for r in rows_p]), np.stack([r[:width] for r in rows_d])


_ = RechubError  # re-exported for plugin tests that catch any SDK error
