"""The conformance suite every backend runs: one contract, checked the same way everywhere.

A backend author hands the suite a backend, in one of three ways::

    class TestMyEngine(BackendConformance):
        backend = MyBackend            # a Backend subclass: nothing to install or register
        # backend = "myengine"         # or the name of an installed backend
        params = {"m": 16}

        # def make_builder(self, **params):   # or build the Builder yourself (a server uri...)
        #     return Builder(MyBackend, uri=..., **{**self.params, **params})

Every check compares with a reference computed here, independently of the
library (a float64 brute force), and each test's docstring says what to look
at when it fails. Stands only on the public ``rechub_serving`` API.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from rechub_serving import (
    Backend,
    Builder,
    ChecksumMismatchError,
    DimensionMismatchError,
    DuplicateIdError,
    IndexClosedError,
    Indexer,
    IndexFormatError,
    InvalidInputError,
    InvalidParameterError,
    Metric,
    UnknownParameterError,
    UnsupportedOperation,
    builder_factory,
    open_index,
)

from ._data import clustered_data, reference_topk, true_distances

__all__ = ["BackendConformance"]


class BackendConformance:
    """Subclass as ``TestXxx`` and set ``backend`` (a name or a Backend subclass), ``params``, ``exact``...

    ``exact`` None means: take it from the index's capabilities. Approximate
    configurations must reach ``recall_floor`` (recall@10 on clustered data).
    Override :meth:`make_builder` when building needs fixtures (a server).
    """

    backend: ClassVar[str | type[Backend]] = ""
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
    threads: ClassVar[int] = 4

    # -- hooks --------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "metric" in metafunc.fixturenames:
            metafunc.parametrize("metric", list(self.metrics))

    def make_builder(self, **params: Any) -> Builder:
        """The builder under test, configured with the class's ``params`` and ``params``."""
        merged = {**self.params, **params}
        if isinstance(self.backend, str):
            return builder_factory(self.backend, **merged)
        return Builder(self.backend, **merged)

    def open_saved(self, path: Path, **params: Any) -> Indexer:
        """Open a saved index: through ``open_index`` for an installed backend, else through the builder."""
        if isinstance(self.backend, str):
            return open_index(path, **params)
        return self.make_builder(**params).from_index_file(path)

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
        """Query ``index`` and compare with the float64 reference: distances, order, ids or recall."""
        k = k or self.k
        res = index.query(queries, k, exclude=exclude)
        found = np.asarray(res.indices)
        dist = np.asarray(res.distances)
        pos = found if ids is None else _positions(found, ids)
        valid = np.asarray(res.valid)
        assert (pos[valid] >= 0).all(), "a result id is not one of the index's ids"
        expected = true_distances(items, queries, pos, metric)
        np.testing.assert_allclose(dist[valid], expected[valid], rtol=self.rtol, atol=self.atol)
        d = np.where(valid, dist, np.nan)
        diffs = np.diff(d, axis=1)
        order_ok = diffs[~np.isnan(diffs)]
        if Metric(metric).higher_is_better:
            assert (order_ok <= self.atol).all(), "results are not best-first (descending)"
        else:
            assert (order_ok >= -self.atol).all(), "results are not best-first (ascending)"
        banned = _banned_positions(exclude, ids, len(queries))
        truth_pos, truth_dist = reference_topk(items, queries, k, metric, banned=banned)
        if self.is_exact(index):
            np.testing.assert_allclose(dist, truth_dist, rtol=self.rtol, atol=self.atol)
            assert _recall(pos, truth_pos) >= 0.99
        else:
            recall = _recall(pos, truth_pos)
            assert recall >= self.recall_floor, f"recall@{k} = {recall:.3f} < floor {self.recall_floor}"
        return res

    # -- the contract -------------------------------------------------------------
    def test_results_match_reference(self, metric):
        """Top-k equals a float64 brute force (exact) or reaches the recall floor.

        If this fails, check the engine's distance convention (``Engine.distance``) and its ranking.
        """
        items, queries = self.items(), self.queries()
        with self.build(metric, items) as index:
            assert index.metric is Metric(metric)
            assert len(index) == len(items) and index.dim == self.dim
            self.check_against_reference(index, items, queries, metric)
            self.check_against_reference(index, items, queries, metric, k=1)
            self.check_against_reference(index, items, queries[:1], metric, k=3 * self.k)

    def test_padding_when_k_exceeds_count(self, metric):
        """``k > len(index)`` pads with -1 and the worst distance, never raises.

        If this fails, check that ``search`` never asks the engine for more than it holds.
        """
        items = self.items(7)
        with self.build(metric, items) as index:
            res = index.query(self.queries(3), 12)
            ids, dist = np.asarray(res.indices), np.asarray(res.distances)
            assert ids.shape == (3, 12) and dist.dtype == np.float32 and ids.dtype == np.int64
            valid = np.asarray(res.valid)
            assert valid.sum(axis=1).min() >= (7 if self.is_exact(index) else 1)
            _check_padding(ids, dist, valid, metric)
            assert (ids[valid] < 7).all()

    def test_short_results_from_the_engine_are_padded(self, metric):
        """When the engine itself comes back short (exclusions, removals), rows are padded, never an error.

        If this fails, check that ``search`` pads rows it cannot fill with label -1 instead of raising
        (many engines raise when fewer than k items qualify).
        """
        items = self.items(9, seed=4)
        with self.build(metric, items) as index:
            exclude = [[0, 1, 2, 3, 4, 5], [8], None]
            res = index.query(self.queries(3), 9, exclude=exclude)
            ids, dist, valid = np.asarray(res.indices), np.asarray(res.distances), np.asarray(res.valid)
            _check_padding(ids, dist, valid, metric)
            for row, banned in zip(ids, exclude):
                assert not set(row.tolist()) & set(banned or [])
            if self.is_exact(index):
                assert valid.sum(axis=1).tolist() == [3, 8, 9]
            if index.capabilities.remove:
                index.remove([0, 1, 2, 3, 4, 5])
                res = index.query(self.queries(2), 9, exclude=[[6], None])
                ids, dist, valid = np.asarray(res.indices), np.asarray(res.distances), np.asarray(res.valid)
                _check_padding(ids, dist, valid, metric)
                assert set(ids[valid].tolist()) <= {6, 7, 8} and 6 not in ids[0].tolist()

    def test_integer_ids(self, metric):
        """Large int64 ids come back as given. If this fails, check labels vs ids in the engine."""
        items, queries = self.items(), self.queries()
        ids = np.random.default_rng(3).choice(10**12, size=len(items), replace=False).astype(np.int64)
        with self.build(metric, items, ids=ids) as index:
            res = self.check_against_reference(index, items, queries, metric, ids=ids)
            assert set(np.asarray(res.indices)[np.asarray(res.valid)].tolist()) <= set(ids.tolist())

    def test_string_ids(self, metric):
        """String ids come back as str, padding as None. If this fails, check ``native_ids`` engines' id handling."""
        items, queries = self.items(), self.queries()
        ids = np.array([f"item-{i:05d}" for i in range(len(items))], dtype=object)
        with self.build(metric, items, ids=ids) as index:
            res = self.check_against_reference(index, items, queries, metric, ids=ids)
            assert all(isinstance(v, str) for v in np.asarray(res.indices).ravel())
            padded = index.query(queries[:2], len(items) + 3)
            assert all(v is None for v in np.asarray(padded.indices)[:, -3:].ravel())

    def test_exclude(self, metric):
        """Excluded ids never come back, and exact rows stay full.

        If this fails, check the engine's native filter (``can_filter`` / the ``exclude`` labels).
        """
        items, queries = self.items(), self.queries()
        truth_pos, _ = reference_topk(items, queries, 3, metric)
        exclude: list[Any] = [row.tolist() for row in truth_pos]
        exclude[0] = []
        exclude[1] = None
        with self.build(metric, items) as index:
            res = self.check_against_reference(index, items, queries, metric, exclude=exclude)
            for row, banned in zip(np.asarray(res.indices), exclude):
                assert not set(row.tolist()) & set(banned or [])
            if self.is_exact(index):
                assert np.asarray(res.valid).all(), "exclusions must not shorten rows when enough items remain"
            shared = [truth_pos[0].tolist()] * len(queries)  # one list for every row (one request, one user)
            self.check_against_reference(index, items, queries, metric, exclude=shared)
            single = index.query(queries[0], 5, exclude=int(truth_pos[0, 0]))  # one vector, one id
            assert int(truth_pos[0, 0]) not in np.asarray(single.indices).tolist()[0]

    def test_exclude_with_string_ids(self):
        """A string id excluded for a single vector is one id, not its characters."""
        items, queries = self.items(), self.queries()
        ids = [f"sku-{i}" for i in range(len(items))]
        with self.build("l2", items, ids=ids) as index:
            top = np.asarray(index.query(queries[0], 1).indices)[0, 0]
            again = np.asarray(index.query(queries[0], 5, exclude=top).indices)[0]
            assert top not in again.tolist()
            with pytest.raises(InvalidInputError):
                index.query(queries[:1], 5, exclude=[[1, 2]])  # int ids for a string index

    def test_exclude_rows_must_match_queries(self):
        """One exclusion row per query, else the library's error."""
        with self.build() as index:
            with pytest.raises(InvalidInputError):
                index.query(self.queries(3), 5, exclude=[[1], [2]])
            with pytest.raises(InvalidInputError):
                index.query(self.queries(3), 5, exclude=5)
            with pytest.raises(InvalidInputError):
                index.query(self.queries(1), 5, exclude=[["a"]])

    def test_single_vector_and_list_input(self):
        """A (d,) vector is one query; nested lists equal arrays; results unpack as a pair."""
        items, queries = self.items(), self.queries()
        with self.build("l2", items) as index:
            one = index.query(queries[0], 5)
            assert np.asarray(one.indices).shape == (1, 5)
            from_list = index.query(queries[:2].tolist(), 5)
            batch = index.query(queries[:2], 5)
            np.testing.assert_array_equal(np.asarray(from_list.indices), np.asarray(batch.indices))
            ids, dist = batch
            assert ids is batch.indices and dist is batch.distances

    def test_torch_in_torch_out(self):
        """Torch tensors in, torch tensors out (int64 / float32 on the query's device)."""
        torch = pytest.importorskip("torch")
        items, queries = self.items(), self.queries()
        with self.make_builder(metric="ip").from_embeddings(torch.from_numpy(items).double()) as index:
            res = index.query(torch.from_numpy(queries), self.k)
            assert isinstance(res.indices, torch.Tensor) and res.indices.dtype == torch.int64
            assert isinstance(res.distances, torch.Tensor) and res.distances.dtype == torch.float32
            ref = index.query(queries, self.k)
            assert isinstance(ref.indices, np.ndarray) and isinstance(ref.distances, np.ndarray)
            np.testing.assert_array_equal(res.indices.numpy(), ref.indices)
            assert isinstance(res.valid, torch.Tensor) and isinstance(ref.scores, np.ndarray)

    def test_save_and_load_round_trip(self, metric, tmp_path):
        """Saved and loaded, the index answers the same. If this fails, check ``save`` / ``load``."""
        items, queries = self.items(), self.queries()
        ids = [f"s{i}" for i in range(len(items))]
        with self.make_builder(metric=metric).from_embeddings(items, ids=ids) as index:
            if not index.capabilities.persist:
                with pytest.raises(UnsupportedOperation):
                    index.save(tmp_path / "idx")
                return
            before = index.query(queries, self.k)
            index.save(tmp_path / "idx", metadata={"model": "m1"})
        with self.open_saved(tmp_path / "idx") as loaded:
            after = loaded.query(queries, self.k)
            assert loaded.metric is Metric(metric) and len(loaded) == len(items)
            assert loaded.metadata == {"model": "m1"} and loaded.id_kind == "str"
            np.testing.assert_array_equal(np.asarray(after.indices), np.asarray(before.indices))
            np.testing.assert_allclose(after.distances, before.distances, rtol=self.rtol, atol=self.atol)
        with self.make_builder().from_index_file(tmp_path / "idx") as loaded:
            assert loaded.metric is Metric(metric)
            np.testing.assert_array_equal(np.asarray(loaded.query(queries, self.k).indices), np.asarray(before.indices))

    def test_save_writes_only_inside_its_directory(self, tmp_path):
        """A save leaves the saved directory and nothing else (no stray files, no temporary directories).

        If this fails, check that ``Engine.save`` writes only into the directory it is given.
        """
        root = tmp_path / "root"
        (root / "sub").mkdir(parents=True)
        with self.build() as index:
            if not index.capabilities.persist:
                pytest.skip("backend does not persist")
            outside_before = _tree(tmp_path, exclude=root / "sub" / "idx")
            index.save(root / "sub" / "idx")
            index.save(root / "sub" / "idx")  # replacing an index leaves nothing behind either
        assert _tree(tmp_path, exclude=root / "sub" / "idx") == outside_before
        assert sorted(p.name for p in (root / "sub").iterdir()) == ["idx"]

    def test_saving_over_an_index_keeps_readers_working(self, tmp_path):
        """An open reader keeps answering from its version while a save replaces the directory."""
        items, queries = self.items(), self.queries()
        with self.build("l2", items) as first:
            if not first.capabilities.persist:
                pytest.skip("backend does not persist")
            first.save(tmp_path / "idx")
            reader = self.open_saved(tmp_path / "idx")
            expected = reader.query(queries, 5)
            with self.build("l2", items[::-1].copy()) as second:
                second.save(tmp_path / "idx")
            again = reader.query(queries, 5)
            np.testing.assert_array_equal(np.asarray(again.indices), np.asarray(expected.indices))
            reader.close()
            with self.open_saved(tmp_path / "idx") as fresh:
                assert len(fresh) == len(items)

    def test_corrupt_saved_index_is_detected(self, tmp_path):
        """A flipped byte (same size) and a truncated file are both refused, naming the file.

        If this fails, check that the engine's files are written by ``save`` (so the core checksums them).
        """
        with self.build() as index:
            if not index.capabilities.persist:
                pytest.skip("backend does not persist")
            index.save(tmp_path / "idx")
        engine_files = sorted(p for p in (tmp_path / "idx" / "engine").rglob("*") if p.is_file())
        assert engine_files, "the engine saved no file of its own"
        victim = max(engine_files, key=lambda p: p.stat().st_size)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
        with pytest.raises(ChecksumMismatchError, match="checksum") as info:
            self.open_saved(tmp_path / "idx")
        assert victim.name in str(info.value) and "idx" in str(info.value)
        victim.write_bytes(bytes(data[: len(data) // 2]))
        with pytest.raises(ChecksumMismatchError, match="bytes"):
            self.open_saved(tmp_path / "idx")

    def test_edited_manifest_is_cross_checked(self, tmp_path):
        """A manifest whose dim or count was edited is refused: the engine's own numbers are checked.

        If this fails, check ``Engine.dim`` and ``len(engine)`` report what the engine really holds.
        """
        with self.build() as index:
            if not index.capabilities.persist:
                pytest.skip("backend does not persist")
            index.save(tmp_path / "idx")
        manifest_file = tmp_path / "idx" / "manifest.json"
        original = json.loads(manifest_file.read_text())
        for field, value in (("dim", self.dim + 1), ("count", self.n_items + 5), ("dim", "sixteen"), ("files", [])):
            manifest_file.write_text(json.dumps({**original, field: value}))
            with pytest.raises(IndexFormatError):
                self.open_saved(tmp_path / "idx")

    def test_bad_inputs_raise_and_change_nothing(self):
        """Every bad query input raises the library's error and leaves the index as it was."""
        items, queries = self.items(), self.queries()
        with self.build("l2", items) as index:
            before = np.asarray(index.query(queries, 5).indices)
            bad_queries = [
                np.zeros((2, self.dim + 1), np.float32),  # wrong dimension
                np.zeros((2, 2, self.dim), np.float32),  # 3-D
                np.full((1, self.dim), np.nan, np.float32),  # NaN
                np.full((1, self.dim), np.inf, np.float32),  # inf
                np.full((1, self.dim), 1e20, np.float32),  # distances would overflow float32
                np.zeros((2, self.dim), np.complex64),  # complex
                np.array([["a"] * self.dim]),  # strings
                np.zeros((0, self.dim), np.float32),  # empty
            ]
            for q in bad_queries:
                with pytest.raises(InvalidInputError):
                    index.query(q, 5)
            for k in (0, -1, 1.5, "3", True, None, 10**12, 2**63):
                with pytest.raises(InvalidInputError):
                    index.query(queries, k)
            with pytest.raises(UnknownParameterError):
                index.query(queries, 5, no_such_parameter=3)
            with pytest.raises(InvalidParameterError):
                index.query(queries, 5, metric="ip")  # build parameters cannot change per query
            for param in (p for p in index.builder.schema() if p.search and p.type is int):
                with pytest.raises(InvalidParameterError):
                    index.query(queries, 5, **{param.name: 2**63})
                below = int(param.minimum) - 1 if param.minimum is not None else -(2**63)
                with pytest.raises(InvalidParameterError):
                    index.query(queries, 5, **{param.name: below})
            with pytest.raises(DimensionMismatchError):
                index.query(np.zeros(self.dim + 2, np.float32), 5)
            if index.capabilities.add:
                with pytest.raises(InvalidInputError):
                    index.add(np.full((2, self.dim), np.nan, np.float32))
            assert len(index) == len(items)
            np.testing.assert_array_equal(np.asarray(index.query(queries, 5).indices), before)

    def test_bad_build_inputs(self):
        """Bad embeddings, ids and parameters raise the library's errors."""
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
            (items, [-(i + 1) for i in range(20)], InvalidInputError),
        ]
        for embeddings, ids, error in cases:
            with pytest.raises(error):
                builder.from_embeddings(embeddings, ids=ids)
        with pytest.raises(UnknownParameterError) as info:
            self.make_builder(no_such_parameter=1)
        assert "Valid:" in str(info.value)

    def test_use_after_close(self, tmp_path):
        """Every use after ``close()`` raises IndexClosedError; close is idempotent."""
        index = self.build()
        with index:
            pass
        index.close()
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
        """Threads querying with different per-call parameters get the serial answers.

        If this fails, check that the engine keeps per-call parameters out of shared state.
        """
        queries = self.queries(40)
        with self.build("l2", self.items()) as index:
            variants = _param_variants(index)
            serial = {
                i: np.asarray(index.query(queries, self.k, **variants[i % len(variants)]).indices) for i in range(12)
            }
            with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
                futures = {
                    i: pool.submit(index.query, queries, self.k, **variants[i % len(variants)]) for i in range(12)
                }
                for i, fut in futures.items():
                    np.testing.assert_array_equal(np.asarray(fut.result().indices), serial[i])

    def test_per_call_search_parameter_takes_effect(self):
        """The parameter ``tune`` sweeps changes results per call, and equals setting it on the builder.

        If this fails, check that ``search`` reads the value from ``params`` (not from the build config).
        """
        rng = np.random.default_rng(5)
        items = rng.normal(size=(2000, self.dim)).astype(np.float32)  # unclustered: hard for approximate search
        queries = rng.normal(size=(50, self.dim)).astype(np.float32)
        builder = self.make_builder(metric="l2")
        space = builder.tune_space()
        if not space:
            pytest.skip("this configuration declares no search parameter to tune")
        (name, values), *_ = space.items()
        low, high = min(values), max(values)
        truth, _ = reference_topk(items, queries, self.k, "l2")
        with builder.from_embeddings(items) as index:
            at_low = np.asarray(index.query(queries, self.k, **{name: low}).indices)
            at_high = np.asarray(index.query(queries, self.k, **{name: high}).indices)
            assert not np.array_equal(at_low, at_high), f"{name}={low} and {name}={high} give the same results"
            assert _recall(at_high, truth) >= _recall(at_low, truth)
            index.set_search_defaults(**{name: low})
            np.testing.assert_array_equal(np.asarray(index.query(queries, self.k).indices), at_low)

    def test_add_and_remove(self, metric):
        """Added vectors are found under their ids; removed ones never come back; unknown ids are ignored.

        If this fails, check that ``add`` stores the labels it is given (not positions of its own).
        """
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
                if metric != "ip":  # under ip a vector need not be its own best match
                    own = np.asarray(index.query(extra, 1).indices)[:, 0]
                    hit = float(np.mean(own == new_ids))
                    assert hit >= (1.0 if self.is_exact(index) else 0.9), f"added vectors found under their ids: {hit}"
                with pytest.raises(DuplicateIdError):
                    index.add(extra[:1], ids=new_ids[:1])
            top = np.asarray(index.query(queries, 3).indices)[:, 0]
            if not index.capabilities.remove:
                with pytest.raises(UnsupportedOperation):
                    index.remove(top[:2])
                return
            removed = index.remove(np.concatenate([np.unique(top), top[:1]]))  # a repeated id counts once
            assert removed == len(np.unique(top))
            after = np.asarray(index.query(queries, self.k).indices)
            assert not set(after.ravel().tolist()) & set(top.tolist())
            assert index.remove([10**15]) == 0

    def test_remove_then_add_the_same_id(self):
        """An id removed and added back is one item: excluded, removed and re-added like any other."""
        items = np.eye(self.dim, dtype=np.float32)[:4] * 3 + 0.01
        with self.build("l2", items, ids=[10, 20, 30, 40]) as index:
            if not (index.capabilities.add and index.capabilities.remove):
                pytest.skip("backend cannot add and remove")
            assert index.remove([20]) == 1
            index.add(items[1:2], ids=[20])
            got = np.asarray(index.query(items[1], 2, exclude=[20]).indices)[0]
            assert 20 not in got.tolist()
            assert index.remove([20]) == 1 and len(index) == 3
            index.add(items[1:2], ids=[20])
            assert len(index) == 4
            with pytest.raises(DuplicateIdError):
                index.add(items[1:2], ids=[20])
            assert np.asarray(index.query(items[1], 1).indices)[0, 0] == 20

    def test_queries_racing_mutations(self, tmp_path):
        """Queries racing add, remove, save and close: each answer is one of the serial states', then IndexClosedError.

        If this fails, check that the engine keeps no state that a search reads while a mutation writes
        (the core serialises them; per-call parameters must not be stored on the engine).
        """
        items, queries = self.items(), self.queries(8)
        extra = clustered_data(40, self.dim, seed=11)
        extra_ids = np.arange(5000, 5040)
        with self.build("l2", items) as index:
            variants = _param_variants(index)
            victims = np.unique(np.asarray(index.query(queries, 3).indices).ravel())
            exclude = [victims[:2].tolist()] * len(queries)
            states: list[dict[int, np.ndarray]] = []
            states_lock = threading.Lock()

            def snapshot() -> None:
                refs = {
                    i: np.asarray(index.query(queries, self.k, exclude=exclude, **v).indices)
                    for i, v in enumerate(variants)
                }
                with states_lock:
                    states.append(refs)

            snapshot()
            results: list[tuple[int, np.ndarray]] = []
            errors: list[BaseException] = []
            stop = threading.Event()

            def reader(seed: int) -> None:
                i = seed
                while not stop.is_set():
                    v = i % len(variants)
                    i += 1
                    try:
                        found = np.asarray(index.query(queries, self.k, exclude=exclude, **variants[v]).indices)
                    except IndexClosedError:
                        return
                    except BaseException as exc:
                        errors.append(exc)
                        return
                    results.append((v, found))
                    if set(found.ravel().tolist()) & set(victims[:2].tolist()):
                        errors.append(AssertionError("an excluded id came back"))

            threads = [threading.Thread(target=reader, args=(s,)) for s in range(self.threads)]
            for t in threads:
                t.start()
            time.sleep(0.05)
            if index.capabilities.add:
                index.add(extra, ids=extra_ids)
                snapshot()
            if index.capabilities.persist:
                index.save(tmp_path / "racing")
            if index.capabilities.remove:
                index.remove(victims[2:6])
                snapshot()
            time.sleep(0.05)
            index.close()
            stop.set()
            for t in threads:
                t.join(timeout=60)
            assert not errors, errors[:3]
            assert results, "no query ran while the index changed"
            for v, found in results:
                assert any(np.array_equal(found, refs[v]) for refs in states), "a result matches no serial state"
            with pytest.raises(IndexClosedError):
                index.query(queries, self.k)


# -- helpers ----------------------------------------------------------------------------------------------
def _param_variants(index: Indexer) -> list[dict[str, Any]]:
    """Per-call parameter sets to mix: the tuned parameter at a low and a high value, and the defaults."""
    space = index.builder.tune_space()
    if not space:
        return [{}]
    (name, values), *_ = space.items()
    return [{}, {name: min(values)}, {name: max(values)}]


def _check_padding(ids: np.ndarray, dist: np.ndarray, valid: np.ndarray, metric: str) -> None:
    pad = -np.inf if Metric(metric).higher_is_better else np.inf
    assert (dist[~valid] == pad).all(), "padding slots must hold the worst distance"
    if ids.dtype == object:
        assert all(v is None for v in ids[~valid]), "padding ids must be None for string ids"
    else:
        assert (ids[~valid] == -1).all(), "padding ids must be -1"
        assert (ids[valid] >= 0).all()
    for row, ok in zip(ids, valid):
        real = row[ok].tolist()
        assert len(set(real)) == len(real), "an id appears twice in one row"
    assert (valid[:, :-1] >= valid[:, 1:]).all(), "padding must come after every real result"


def _positions(found: np.ndarray, ids: Any) -> np.ndarray:
    lookup = {v: i for i, v in enumerate(np.asarray(ids).tolist())}
    return np.vectorize(lambda v: lookup.get(v, -1), otypes=[np.int64])(found) if found.size else found.astype(np.int64)


def _banned_positions(exclude: Any, ids: Any, n: int) -> list[set[int]] | None:
    if exclude is None:
        return None
    lookup = None if ids is None else {v: i for i, v in enumerate(np.asarray(ids).tolist())}
    out = []
    for row in exclude:
        row = [] if row is None else list(row)
        out.append({int(v) for v in row} if lookup is None else {lookup[v] for v in row if v in lookup})
    return out


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(set(f.tolist()) & set(t.tolist()))
        total += len(t)
    return hits / max(total, 1)


def _tree(root: Path, exclude: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if exclude not in (p, *p.parents))
