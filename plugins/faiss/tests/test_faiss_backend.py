"""The faiss backend: the core's conformance suite per index type, plus faiss-specific behaviour."""

from __future__ import annotations

import concurrent.futures
import tomllib
from pathlib import Path

import faiss
import numpy as np
import pytest
import rechub_serving_faiss
from rechub_serving_faiss import FaissBackend
from rechub_serving_faiss._defaults import default_nlist, default_nprobe

from rechub_serving import (
    InvalidParameterError,
    Metric,
    UnknownParameterError,
    UnsupportedOperation,
    builder_factory,
    list_backends,
)
from rechub_serving.testing import BackendConformance, clustered_data, ground_truth, recall_at_k

# -- the conformance suite, one class per index type -------------------------------------------


class TestFaissFlat(BackendConformance):
    backend = "faiss"
    params = {"index_type": "Flat"}
    exact = True


class TestFaissIVF(BackendConformance):
    backend = "faiss"
    params = {"index_type": "IVF"}
    exact = False
    recall_floor = 0.9


class TestFaissHNSW(BackendConformance):
    backend = "faiss"
    params = {"index_type": "HNSW"}
    exact = False
    recall_floor = 0.9


class TestFaissSQ8(BackendConformance):
    backend = "faiss"
    params = {"index_type": "SQ8"}
    exact = False
    recall_floor = 0.85
    rtol, atol = 0.05, 0.05  # 8-bit codes: distances are approximations
    metrics = ("l2", "cosine")


class TestFaissIVFPQ(BackendConformance):
    backend = "faiss"
    params = {"index_type": "IVFPQ", "pq_m": 16}  # 16 x 4 bits: the default pq_m=8 halves the code
    exact = False
    recall_floor = 0.55  # product quantization trades recall for memory (here recall@1 0.60 on ip, @10 0.81)
    rtol, atol = 0.5, 1.0  # distances are computed from the PQ codes
    metrics = ("l2", "ip")


# -- helpers ------------------------------------------------------------------------------------


def _data(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return clustered_data(n, dim, seed=seed)


def _recall(index, items, queries, metric="l2", k=10) -> float:
    truth, _ = ground_truth(items, queries, k, metric)
    return recall_at_k(np.asarray(index.query(queries, k).indices), truth)


# -- registration and schema -------------------------------------------------------------------


def test_registered_through_the_entry_point():
    info = {b.name: b for b in list_backends()}["faiss"]
    assert info.distribution == "rechub-serving-faiss"
    assert info.engine_version == f"faiss-cpu {faiss.__version__}"
    assert info.backend is FaissBackend


def test_one_version_and_a_compatible_core_range():
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert project["version"] == rechub_serving_faiss.__version__ == "0.2.0"
    assert "rechub-serving>=0.2,<0.3" in project["dependencies"]
    assert (Path(rechub_serving_faiss.__file__).parent / "py.typed").is_file()


def test_torch_rechub_keyword_aliases():
    builder = builder_factory("faiss", d=16, index_type="IVF", nlists=8, metric="IP")
    assert builder.config["nlist"] == 8 and builder.config["dim"] == 16 and builder.metric is Metric.IP
    hnsw = builder_factory("faiss", index_type="HNSW", m=16, efSearch=40, metric="L2")
    assert hnsw.config["ef_search"] == 40 and hnsw.metric is Metric.L2
    assert builder_factory("faiss", index_type="hnsw", ef=50).config["ef_search"] == 50
    with hnsw.from_embeddings(_data(300)) as index:
        ids, distances = index.query(_data(3, seed=1), 5)  # torch-rechub's unpacking
        assert ids.shape == (3, 5) and distances.shape == (3, 5)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"nlist": 0}, InvalidParameterError),
        ({"nprobe": -1}, InvalidParameterError),
        ({"m": "32"}, InvalidParameterError),
        ({"device": "tpu"}, InvalidParameterError),
        ({"index_type": ""}, InvalidParameterError),
        ({"nlists": 4, "nlist": 4}, InvalidParameterError),
        ({"n_list": 4}, UnknownParameterError),
    ],
)
def test_bad_params_are_rejected_at_the_builder(params, error):
    with pytest.raises(error):
        builder_factory("faiss", **params)


@pytest.mark.parametrize(
    "params",
    [
        {"index_type": "NoSuchIndex42"},
        {"index_type": "IVF", "nlist": 500},  # more lists than vectors
        {"index_type": "IVFPQ", "pq_m": 5},  # does not divide 16
        {"index_type": "IVFPQ", "nbits": 12},  # 4096 centroids from 200 vectors
    ],
)
def test_impossible_configurations_fail_at_build_with_a_clear_error(params):
    with pytest.raises(InvalidParameterError) as info:
        builder_factory("faiss", **params).from_embeddings(_data(200))
    assert "faiss" in str(info.value)


def test_cuda_without_a_gpu_build_is_a_clear_error():
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("this faiss has a GPU")
    with pytest.raises(UnsupportedOperation) as info:
        builder_factory("faiss", device="cuda")
    assert "faiss-gpu" in str(info.value) and "device='cpu'" in str(info.value)


# -- defaults that scale with the catalogue -------------------------------------------------------


def test_default_rules():
    assert default_nlist(50, 50) == 1  # never lists the data cannot train
    assert default_nlist(100_000, 100_000) == 1265
    assert default_nlist(100_000, 2_000) == 2_000 // 39
    assert default_nprobe(1) == 1 and default_nprobe(16) == 16 and default_nprobe(100) == 16
    assert default_nprobe(1265) == 28  # measured: the fewest lists with recall@10 >= 0.95 at 100,000 x 64


def test_the_defaults_are_the_measured_ones_and_shown_in_params():
    """docs/backends/faiss.md: ef_search=36 and nprobe=nlist/45 are the fastest settings with recall >= 0.95."""
    with builder_factory("faiss", index_type="HNSW").from_embeddings(_data(300)) as index:
        assert index.params["ef_search"] == 36 and index.params["m"] == 32
        assert index.search_params["ef_search"] == 36
    with builder_factory("faiss", index_type="IVF").from_embeddings(_data(20_000)) as index:
        assert index.params["nlist"] == 512 and index.params["nprobe"] == default_nprobe(512) == 16


@pytest.mark.parametrize("index_type", ["IVF", "HNSW", "IVFPQ", "SQ8"])
def test_defaults_on_a_tiny_catalogue_give_full_rows_and_recall(index_type):
    items, queries = _data(50), _data(10, seed=1)
    with builder_factory("faiss", index_type=index_type).from_embeddings(items) as index:
        res = index.query(queries, 10)
        assert np.asarray(res.valid).all(), "no -1 rows on a small catalogue"
        assert _recall(index, items, queries) >= (0.6 if index_type == "IVFPQ" else 0.9)


@pytest.mark.parametrize("index_type", ["IVF", "HNSW"])
def test_defaults_on_a_mid_catalogue_reach_recall(index_type):
    items, queries = _data(5000, 32), _data(50, 32, seed=1)
    with builder_factory("faiss", index_type=index_type).from_embeddings(items) as index:
        assert _recall(index, items, queries) >= 0.9
        if index_type == "IVF":
            assert index.params["nlist"] == default_nlist(5000, 5000) and index.params["nprobe"] > 1


def test_train_size_samples_the_training_set():
    with builder_factory("faiss", index_type="IVF", train_size=400).from_embeddings(_data(2000)) as index:
        assert index.params["nlist"] == 400 // 39
        assert index.params["train_size"] == 400


# -- per-call search parameters --------------------------------------------------------------------


def test_per_call_search_params_do_not_mutate_the_index():
    items, queries = _data(3000), _data(30, seed=1)
    with builder_factory("faiss", index_type="IVF", nprobe=2).from_embeddings(items) as index:
        ivf = faiss.extract_index_ivf(index.engine.index)
        low = np.asarray(index.query(queries, 10).indices)
        high = np.asarray(index.query(queries, 10, nprobe=ivf.nlist).indices)
        assert ivf.nprobe == 2
        np.testing.assert_array_equal(np.asarray(index.query(queries, 10).indices), low)
        assert _recall(index, items, queries) <= recall_at_k(high, ground_truth(items, queries, 10, "l2")[0])
    with builder_factory("faiss", index_type="HNSW", ef_search=16).from_embeddings(items) as index:
        index.query(queries, 10, ef_search=200)
        assert index.engine.index.hnsw.efSearch == 16


def test_concurrent_queries_with_different_nprobe_equal_serial():
    items, queries = _data(3000), _data(40, seed=1)
    with builder_factory("faiss", index_type="IVF").from_embeddings(items) as index:
        settings = [1, 2, 4, 8, 16, 32] * 3
        serial = [np.asarray(index.query(queries, 10, nprobe=p).indices) for p in settings]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda p: np.asarray(index.query(queries, 10, nprobe=p).indices), settings))
        for a, b in zip(serial, results):
            np.testing.assert_array_equal(a, b)


def test_search_params_on_other_index_types_are_accepted_and_ignored():
    with builder_factory("faiss", index_type="Flat", nlists=100, m=32).from_embeddings(_data(100)) as index:
        assert np.asarray(index.query(_data(2, seed=1), 3, nprobe=5, ef_search=10).valid).all()


# -- exclusion --------------------------------------------------------------------------------------


@pytest.mark.parametrize("index_type", ["Flat", "IVF", "HNSW"])
def test_exclude_through_a_selector_and_through_over_fetching(index_type):
    items = _data(1000)
    queries = items[:4]
    with builder_factory("faiss", index_type=index_type).from_embeddings(items, ids=np.arange(1000) + 7) as index:
        assert index.capabilities.native_filter
        same = index.query(queries, 5, exclude=[[7, 8, 9, 10]] * 4)  # one set: one selector search
        assert not set(np.asarray(same.indices).ravel().tolist()) & {7, 8, 9, 10}
        assert np.asarray(same.valid).all()
        rows = [[7], [8], [], [10, 11]]  # differing rows: over-fetch and drop
        res = index.query(queries, 5, exclude=rows)
        for found, banned in zip(np.asarray(res.indices), rows):
            assert not set(found.tolist()) & set(banned)
        assert np.asarray(res.valid).all()


def test_exclude_everything_pads():
    items = _data(6)
    with builder_factory("faiss").from_embeddings(items) as index:
        res = index.query(items[0], 4, exclude=[0, 1, 2, 3])
        assert np.asarray(res.indices).tolist() == [sorted(np.asarray(res.indices)[0].tolist(), key=lambda v: v < 0)]
        assert np.asarray(res.valid).sum() == 2


# -- add / remove --------------------------------------------------------------------------------------


def test_hnsw_cannot_remove_but_flat_and_ivf_can():
    items = _data(500)
    with builder_factory("faiss", index_type="HNSW").from_embeddings(items) as index:
        assert not index.capabilities.remove and index.capabilities.add
        with pytest.raises(UnsupportedOperation, match="faiss"):
            index.remove([0])
        index.add(_data(10, seed=3))
        assert len(index) == 510
    for index_type in ("Flat", "IVF", "SQ8", "IVFPQ"):
        with builder_factory("faiss", index_type=index_type).from_embeddings(items) as index:
            assert index.remove([0, 1, 2]) == 3 and len(index) == 497
            assert not {0, 1, 2} & set(np.asarray(index.query(items[:3], 5).indices).ravel().tolist())


# -- factory strings ----------------------------------------------------------------------------------


def test_factory_string_passthrough():
    items, queries = _data(2000), _data(20, seed=1)
    with builder_factory("faiss", index_type="IVF16,SQ8", nprobe=16).from_embeddings(items) as index:
        assert isinstance(faiss.downcast_index(index.engine.index), faiss.IndexIVFScalarQuantizer)
        assert index.params["nprobe"] == 16 and index.capabilities.remove
        assert _recall(index, items, queries) >= 0.85
    with builder_factory("faiss", index_type="PQ8np", metric="ip").from_embeddings(items) as index:
        assert not index.capabilities.native_filter  # IndexPQ ignores selectors: the core over-fetches
        res = index.query(queries, 5, exclude=[[0, 1]] * len(queries))
        assert not {0, 1} & set(np.asarray(res.indices).ravel().tolist())
    with builder_factory("faiss", index_type="HNSW8", ef_construction=20, ef_search=30).from_embeddings(items) as index:
        assert not index.capabilities.remove and index.engine.index.hnsw.efSearch == 30
