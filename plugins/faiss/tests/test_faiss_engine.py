"""The engine's own behaviour: search paths, per-call parameter objects, schema bounds, threads, faiss's stderr."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from rechub_serving_faiss import FaissBackend, FaissEngine, _engine
from rechub_serving_faiss._defaults import EF_SEARCH_SWEEP, NPROBE_SWEEP

from rechub_serving import Builder, InvalidParameterError, builder_factory
from rechub_serving.testing import clustered_data, reference_topk


def _data(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return clustered_data(n, dim, seed=seed)


# -- what tune sweeps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index_type", "expected"),
    [
        ("Flat", {}),
        ("SQ8", {}),
        ("PQ8np", {}),
        ("IVF", {"nprobe": list(NPROBE_SWEEP)}),
        ("IVFPQ", {"nprobe": list(NPROBE_SWEEP)}),
        ("OPQ8,IVF64,PQ8", {"nprobe": list(NPROBE_SWEEP)}),
        ("HNSW", {"ef_search": list(EF_SEARCH_SWEEP)}),
        ("HNSW16,Flat", {"ef_search": list(EF_SEARCH_SWEEP)}),
    ],
)
def test_tune_space_follows_the_index_type(index_type, expected):
    assert builder_factory("faiss", index_type=index_type).tune_space() == expected


def test_tune_space_stops_at_a_given_nlist():
    assert builder_factory("faiss", index_type="IVF", nlist=10).tune_space() == {"nprobe": [1, 2, 4, 8]}


# -- schema bounds ------------------------------------------------------------------------------------------


def test_every_int_parameter_is_bounded_by_the_schema():
    ints = [p for p in FaissBackend.params if p.type is int]
    assert ints and all(p.maximum is not None for p in ints), [p.name for p in ints if p.maximum is None]
    for param in ints:
        with pytest.raises(InvalidParameterError, match=param.name):
            builder_factory("faiss", **{param.name: 2**63})


def test_huge_search_values_are_refused_per_call_and_at_load(tmp_path):
    with builder_factory("faiss", index_type="HNSW").from_embeddings(_data(200)) as index:
        for name in ("ef_search", "nprobe"):
            with pytest.raises(InvalidParameterError, match=name):
                index.query(_data(1, seed=1), 5, **{name: 2**31})
        index.save(tmp_path / "idx")
    with pytest.raises(InvalidParameterError, match="ef_search"):
        builder_factory("faiss", ef_search=2**31).from_index_file(tmp_path / "idx")


# -- per-call parameter objects --------------------------------------------------------------------------------


@pytest.mark.parametrize(("index_type", "name"), [("IVF", "nprobe"), ("HNSW", "ef_search")])
def test_parameter_objects_are_built_once_per_distinct_value(monkeypatch, index_type, name):
    built = []
    real = _engine.search_parameters

    def counting(*args, **kwargs):
        built.append(args[1:3])
        return real(*args, **kwargs)

    monkeypatch.setattr(_engine, "search_parameters", counting)
    items, queries = _data(2000), _data(4, seed=1)
    with builder_factory("faiss", index_type=index_type).from_embeddings(items) as index:
        for _ in range(3):
            for q in queries:
                index.query(q, 5)  # the index's own setting: no object at all
        assert built == []
        for _ in range(3):
            for q in queries:
                index.query(q, 5, **{name: 40})
                index.query(q, 5, **{name: 41})
        assert len(built) == 2, built
        first = np.asarray(index.query(queries, 5, **{name: 40}).indices)
        index.set_search_defaults(**{name: 40})
        np.testing.assert_array_equal(np.asarray(index.query(queries, 5).indices), first)


def test_an_overridden_nprobe_keeps_the_index_setting_for_the_other_parameter():
    """A per-call ef_search on an IVF index must not reset nprobe to faiss's default of 1."""
    items, queries = _data(3000), _data(30, seed=1)
    with builder_factory("faiss", index_type="IVF", nprobe=8).from_embeddings(items) as index:
        expected = np.asarray(index.query(queries, 10).indices)
        np.testing.assert_array_equal(np.asarray(index.query(queries, 10, ef_search=99).indices), expected)
        absent = int(np.setdiff1d(np.arange(3000), expected)[0])  # excluding it changes nothing
        with_selector = np.asarray(index.query(queries, 10, exclude=[[absent]] * 30).indices)
        np.testing.assert_array_equal(with_selector, expected)


# -- the IDMap wrapper stays off the hot path -------------------------------------------------------------------


def test_flat_queries_search_inside_the_idmap_and_translate_labels(monkeypatch):
    """Faiss's IDMap search opens an OpenMP region per call (issue 13 item 9): only exclusions use it."""
    calls = []
    real = faiss.IndexIDMap2.search

    def spy(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(faiss.IndexIDMap2, "search", spy)
    items, queries = _data(500), _data(20, seed=1)
    ids = np.arange(500) * 3 + 1
    with builder_factory("faiss", index_type="Flat").from_embeddings(items, ids=ids) as index:
        assert isinstance(index.engine.index, faiss.IndexIDMap2)
        truth, _ = reference_topk(items, queries, 5, "l2")
        np.testing.assert_array_equal(np.asarray(index.query(queries, 5).indices), ids[truth])
        assert calls == []
        gone = np.unique(ids[truth[:, 0]])
        index.remove(gone)  # positions shift: labels now differ from positions
        keep = np.setdiff1d(np.arange(500), (gone - 1) // 3)
        truth, _ = reference_topk(items[keep], queries, 5, "l2")
        np.testing.assert_array_equal(np.asarray(index.query(queries, 5).indices), ids[keep][truth])
        assert calls == []
        index.query(queries, 5, exclude=[[ids[0]]] * 20)
        assert calls == [1]


def test_short_rows_under_an_idmap_stay_padding():
    """Translated labels of an IDMap-wrapped index keep faiss's -1 for slots it could not fill."""
    items = _data(400)
    inner = faiss.index_factory(16, "IVF8,Flat")
    inner.train(items)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(items, np.arange(400, dtype=np.int64)[::-1].copy())  # labels are not positions
    engine = FaissEngine(index)
    labels, _ = engine.search(_data(3, seed=1), 300, {"nprobe": 1}, None)
    assert (labels == -1).any() and (labels >= -1).all()
    assert set(labels[labels >= 0].tolist()) <= set(range(400))
    _, raw = index.search(_data(3, seed=1), 300)
    np.testing.assert_array_equal(labels, raw)
    engine.close()


# -- threads -------------------------------------------------------------------------------------------------


def test_threads_option_sets_faiss_threads(tmp_path):
    """``threads`` must change faiss's thread count: start from another value than the one asked."""
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(3)
        with builder_factory("faiss", threads=2).from_embeddings(_data(50)) as index:
            assert faiss.omp_get_max_threads() == 2
            index.save(tmp_path / "idx")
        faiss.omp_set_num_threads(3)
        with builder_factory("faiss", threads=1).from_index_file(tmp_path / "idx"):
            assert faiss.omp_get_max_threads() == 1
        faiss.omp_set_num_threads(3)
        with builder_factory("faiss").from_index_file(tmp_path / "idx"):
            assert faiss.omp_get_max_threads() == 3  # not given: faiss's setting is left alone
    finally:
        faiss.omp_set_num_threads(before)


# -- faiss's own stderr --------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{"index_type": "IVF", "nlist": 20}, {"index_type": "IVF4,PQ4np"}])
def test_faiss_clustering_warnings_go_to_the_debug_log(capfd, caplog, params):
    caplog.set_level(logging.DEBUG, logger="rechub_serving.faiss")
    with builder_factory("faiss", **params).from_embeddings(_data(300)) as index:
        assert len(index) == 300
    err = capfd.readouterr().err
    assert "WARNING clustering" not in err, err
    assert any("WARNING clustering 300 points" in r.getMessage() for r in caplog.records)


def test_building_prints_nothing_on_stderr():
    """Named types with their defaults, and a factory string whose PQ training warns: a user's terminal sees nothing."""
    code = (
        "from rechub_serving import builder_factory\n"
        "from rechub_serving.testing import clustered_data\n"
        "x = clustered_data(3000, 32)\n"
        "for t in ('IVF', 'IVFPQ', 'SQ8', 'HNSW', 'IVF8,PQ8np'):\n"
        "    builder_factory('faiss', index_type=t).from_embeddings(x).close()\n"
    )
    root = Path(__file__).resolve().parents[3]
    paths = [str(root), str(root / "plugins" / "faiss"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "RECHUB_SERVING_PLUGINS": "faiss"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "WARNING" not in done.stderr, done.stderr[-2000:]


def test_a_backend_class_works_without_an_entry_point():
    with Builder(FaissBackend, index_type="HNSW").from_embeddings(_data(100)) as index:
        assert index.backend == "faiss" and index.params["ef_search"] is not None


@pytest.mark.slow
def test_the_benchmark_runs(tmp_path):
    """benchmarks/bench_faiss.py --quick writes its page (no timing assertions: numbers live in the page)."""
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "RECHUB_SERVING_PLUGINS": "faiss"}
    cmd = [sys.executable, str(root / "benchmarks" / "bench_faiss.py"), "--quick", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    page = (tmp_path / "faiss.md").read_text()
    for expected in ("Flat (IndexIDMap2)", "nprobe=56 per call", "ef_search", "recall@10", "Machine and command"):
        assert expected in page
