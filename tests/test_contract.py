"""The contract details the conformance suite does not reach: conversions, ids, results, metrics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import rechub_serving as rs
from rechub_serving import Metric, parse_metric
from rechub_serving._arrays import as_matrix
from rechub_serving._ids import IdMap


@pytest.mark.parametrize(
    ("alias", "metric"),
    [
        ("L2", "l2"),
        ("euclidean", "l2"),
        ("IP", "ip"),
        ("dot", "ip"),
        ("inner_product", "ip"),
        ("COSINE", "cosine"),
        ("angular", "cosine"),
        (" Cosine ", "cosine"),
    ],
)
def test_metric_aliases(alias, metric):
    assert parse_metric(alias) is Metric(metric)
    assert rs.builder_factory("numpy", metric=alias).metric is Metric(metric)


def test_unknown_metric_lists_choices():
    with pytest.raises(rs.UnknownMetricError, match="cosine"):
        parse_metric("hamming")
    with pytest.raises(rs.InvalidParameterError, match="l2"):
        rs.builder_factory("numpy", metric="jaccard")


def test_any_real_dtype_becomes_contiguous_float32():
    for dtype in (np.float16, np.float64, np.int32, np.uint8):
        out, _, _ = as_matrix(np.ones((3, 4), dtype=dtype))
        assert out.dtype == np.float32 and out.flags.c_contiguous
    fortran = np.asfortranarray(np.ones((3, 4)))
    assert as_matrix(fortran)[0].flags.c_contiguous
    with pytest.raises(rs.InvalidInputError, match="not a real number"):
        as_matrix(np.ones((3, 4), dtype=bool))
    with pytest.raises(rs.InvalidInputError, match="could not be read"):
        as_matrix([[1.0, 2.0], [3.0]])
    with pytest.raises(rs.InvalidInputError, match="row 1"):
        as_matrix([[1.0, 2.0], [np.nan, 3.0]])


def test_torch_inputs_of_any_dtype_and_results_on_the_query_device(items):
    torch = pytest.importorskip("torch")
    with rs.builder_factory("numpy", metric="cosine").from_embeddings(torch.from_numpy(items).bfloat16()) as index:
        res = index.query(torch.from_numpy(items[:3]).half(), 2)
        assert res.indices.dtype == torch.int64 and res.distances.dtype == torch.float32
        assert res.indices[:, 0].tolist() == [0, 1, 2]
        assert res.valid.all() and torch.equal(res.scores, res.distances)
    with pytest.raises(rs.InvalidInputError, match="complex"):
        rs.builder_factory("numpy").from_embeddings(torch.ones(3, 2, dtype=torch.complex64))


def test_torch_string_ids_give_numpy_ids_and_torch_distances(items):
    torch = pytest.importorskip("torch")
    ids = [f"x{i}" for i in range(len(items))]
    with rs.builder_factory("numpy").from_embeddings(items, ids=ids) as index:
        res = index.query(torch.from_numpy(items[:2]), 3)
        assert isinstance(res.indices, np.ndarray) and res.indices[0, 0] == "x0"
        assert isinstance(res.distances, torch.Tensor)


def test_string_id_padding_is_none(items):
    with rs.builder_factory("numpy").from_embeddings(items[:3], ids=["a", "b", "c"]) as index:
        res = index.query(items[0], 5)
        assert set(res.indices[0, :3].tolist()) == {"a", "b", "c"} and res.indices[0, 0] == "a"
        assert res.indices[0, 3:].tolist() == [None, None]
        assert res.valid.tolist() == [[True, True, True, False, False]]
        assert res.to_lists()[0][0][0] == "a" and len(res.to_lists()[0]) == 3


def test_scores_are_higher_is_better(items):
    with rs.builder_factory("numpy", metric="l2").from_embeddings(items) as index:
        res = index.query(items[:2], 4)
        assert (np.diff(res.scores, axis=1) <= 0).all()
        assert res.metric is Metric.L2 and "l2" in repr(res) and len(res) == 2


def test_exclude_for_a_single_vector_may_be_flat(items):
    with rs.builder_factory("numpy").from_embeddings(items) as index:
        first = index.query(items[0], 3).indices[0].tolist()
        again = index.query(items[0], 3, exclude=first[:2]).indices[0].tolist()
        assert first[0] not in again and first[1] not in again and again[0] == first[2]
        with pytest.raises(rs.InvalidInputError, match="one collection of ids per query"):
            index.query(items[:2], 3, exclude=5)


def test_exclude_with_ids_not_in_the_index_is_harmless(items):
    with rs.builder_factory("numpy").from_embeddings(items) as index:
        res = index.query(items[:1], 3, exclude=[[10**9, 5]])
        assert 10**9 not in res.indices and res.valid.all()


def test_ids_are_validated():
    with pytest.raises(rs.InvalidInputError, match="negative"):
        IdMap.create([0, -1], 2)
    with pytest.raises(rs.InvalidInputError, match="all integers or all strings"):
        IdMap.create([1, "a"], 2)
    with pytest.raises(rs.DuplicateIdError, match="'a'"):
        IdMap.create(["a", "b", "a"], 3)
    with pytest.raises(rs.InvalidInputError, match="one id per row"):
        IdMap.create([1, 2], 3)
    with pytest.raises(rs.InvalidInputError, match="one-dimensional"):
        IdMap.create(np.zeros((2, 2), dtype=int), 2)


def test_id_map_round_trip_and_growth():
    ids = IdMap.create([50, 10, 30], 3)
    assert ids.to_labels([10, 30, 99]).tolist() == [1, 2, -1]
    assert ids.to_external(np.array([[2, -1]])).tolist() == [[30, -1]]
    grown, labels = ids.extend(None, 2)
    assert labels.tolist() == [3, 4] and grown.ids.tolist() == [50, 10, 30, 51, 52]
    with pytest.raises(rs.DuplicateIdError):
        grown.extend([10], 1)
    with pytest.raises(rs.InvalidInputError, match="int ids"):
        grown.extend(["s"], 1)
    smaller = grown.without(np.array([0]))
    assert len(smaller) == 4 and smaller.to_labels([50]).tolist() == [-1]


def test_add_without_ids_continues_positions(items):
    with rs.builder_factory("numpy").from_embeddings(items[:10]) as index:
        index.add(items[10:12])
        assert len(index) == 12
        assert index.query(items[11], 1).indices.tolist() == [[11]]


def test_params_are_coerced_and_checked():
    assert rs.builder_factory("numpy", block_bytes=np.int64(8192)).config["block_bytes"] == 8192
    with pytest.raises(rs.InvalidParameterError, match="expected an integer"):
        rs.builder_factory("numpy", block_bytes=8192.0)
    with pytest.raises(rs.InvalidParameterError, match="true or false"):
        rs.builder_factory("numpy", mmap="yes")
    with pytest.raises(rs.InvalidParameterError):
        rs.builder_factory("numpy", dim=0)
    assert rs.builder_factory("numpy", d=8).config["dim"] == 8  # torch-rechub's spelling


def test_search_params_per_call_do_not_change_defaults(items):
    with rs.builder_factory("numpy").from_embeddings(items) as index:
        index.query(items[:2], 3, block_bytes=4096)
        assert index.params["block_bytes"] == 64 << 20


def test_per_call_parameters_reach_the_engine_for_that_call_only(items):
    from rechub_serving.testing import MockEngine, mock_backend

    backend = mock_backend(lambda q, k, p: (np.zeros((len(q), k), np.int64), np.zeros((len(q), k), np.float32)))
    backend.params = (
        rs.Param("ef_search", int, 64, "per call", aliases=("ef",), minimum=1, maximum=4096, search=True),
    )
    with rs.Builder(backend).from_embeddings(items) as index:
        engine = index.engine
        assert isinstance(engine, MockEngine)
        index.query(items[0], 3, ef=200)  # an alias
        index.query(items[0], 3)
        index.query(items[0], 3, ef_search=7)
        assert [call[2]["ef_search"] for call in engine.calls] == [200, 64, 7]
        with pytest.raises(rs.InvalidParameterError):
            index.query(items[0], 3, ef_search=5000)
        assert len(engine.calls) == 3  # a refused value never reaches the engine


def test_empty_index_after_removing_everything(items):
    with rs.builder_factory("numpy").from_embeddings(items[:3]) as index:
        assert index.remove([0, 1, 2]) == 3 and len(index) == 0
        res = index.query(items[0], 2)
        assert res.indices.tolist() == [[-1, -1]] and np.isinf(res.distances).all()


def test_repr_does_not_leak_and_describes(items):
    builder = rs.builder_factory("numpy", metric="ip")
    assert "ip" in repr(builder)
    index = builder.from_embeddings(items)
    assert "numpy" in repr(index) and "n=300" in repr(index)
    index.close()
    assert "closed" in repr(index)


def test_import_is_cheap_and_pulls_no_engine():
    code = "import sys, rechub_serving; print(sorted(m for m in ('torch','faiss','annoy','pymilvus','onnxruntime','typer','rich','hnswlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_face_is_explicit():
    assert sorted(rs.__all__) == rs.__all__
    for name in rs.__all__:
        assert hasattr(rs, name), name


def test_set_search_defaults_is_validated_and_saved(items, tmp_path):
    with rs.builder_factory("numpy").from_embeddings(items) as index:
        index.set_search_defaults(block_bytes=8192)
        assert index.params["block_bytes"] == 8192
        with pytest.raises(rs.InvalidParameterError):
            index.set_search_defaults(metric="ip")
        index.save(tmp_path / "idx")
    with rs.open_index(tmp_path / "idx") as loaded:
        assert loaded.params["block_bytes"] == 8192


def test_query_result_indexes_like_a_pair(items):
    with rs.builder_factory("numpy").from_embeddings(items) as index:
        res = index.query(items[:2], 3)
        assert res[0] is res.indices and res[1] is res.distances
        with pytest.raises(IndexError):
            res[2]
