"""Tests of the Annoy backend: the shared conformance suite plus Annoy specifics."""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import json
import logging
import pathlib
import shutil

import annoy
import numpy as np
import pytest
from rechub_serving import (
    BackendError,
    Builder,
    IndexFormatError,
    InvalidParameterError,
    Metric,
    NotAnIndexError,
    UnsupportedOperation,
    builder_factory,
    list_backends,
    open_index,
)
from rechub_serving.testing import BackendConformance, clustered_data, ground_truth, recall_at_k, true_distances

from rechub_serving_annoy import AnnoyBackend, AnnoyEngine
from rechub_serving_annoy._backend import build_threads, query_threads
from rechub_serving_annoy._concurrency import QueryPool, usable_cores
from rechub_serving_annoy._params import MAX_C_INT, PARAMS, default_n_trees, default_search_k

DIM = 16
DATA = pathlib.Path(__file__).parent / "data"


class TestAnnoyConformance(BackendConformance):
    """Default configuration (queries fan out over every usable core), handed over as a class."""

    backend = AnnoyBackend
    params = {"seed": 3}
    exact = False
    recall_floor = 0.9


class TestAnnoySerialConformance(BackendConformance):
    """One query thread, explicit trees, through the installed entry point: the serial path meets the same contract."""

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
    return clustered_data(40, DIM, seed=1, centres_seed=0)


def write_bare(path: pathlib.Path, vectors: np.ndarray, metric: str, n_trees: int = 10) -> annoy.AnnoyIndex:
    raw = annoy.AnnoyIndex(vectors.shape[1], metric)
    for i, v in enumerate(vectors.tolist()):
        raw.add_item(i, v)
    raw.build(n_trees, n_jobs=1)
    raw.save(str(path))
    return raw


# -- registration and description -------------------------------------------------
def test_registered_through_the_entry_point():
    info = {b.name: b for b in list_backends()}["annoy"]
    assert info.backend is AnnoyBackend
    assert info.distribution == "rechub-serving-annoy"
    assert info.engine_version == f"annoy {importlib.metadata.version('annoy')}"
    caps = info.capabilities
    assert (caps.exact, caps.add, caps.remove, caps.native_filter, caps.persist, caps.mmap) == (
        False,
        False,
        False,
        False,
        True,
        True,
    )


def test_every_integer_parameter_is_bounded_within_a_c_int():
    """Issue 11 item 7: values past Annoy's C int are refused by the schema, never an OverflowError."""
    for param in PARAMS:
        if param.type is int:
            assert param.maximum is not None and param.maximum <= MAX_C_INT, param.name
    for bad in ({"search_k": 2**31}, {"n_trees": 10**6}, {"threads": 2**31}, {"n_jobs": 2**40}, {"seed": 2**31}):
        with pytest.raises(InvalidParameterError, match="too large"):
            builder_factory("annoy", **bad)


# -- distances ------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_distances_are_the_metric_table_numbers(metric, items, queries):
    """Every returned distance equals the reference number recomputed exactly (float64) for that item."""
    with builder_factory("annoy", metric=metric, seed=1).from_embeddings(items) as index:
        for batch in (queries, queries[0]):  # the pooled batch path and the single-query path
            res = index.query(batch, 10)
            assert np.asarray(res.valid).all()
            expected = true_distances(items, np.atleast_2d(batch), res.indices, metric)
            np.testing.assert_allclose(res.distances, expected, rtol=2e-5, atol=2e-5)
        truth, _ = ground_truth(items, queries, 10, metric)
        assert recall_at_k(index.query(queries, 10).indices, truth) >= 0.95


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
        assert (
            isinstance(index.engine, AnnoyEngine)
            and index.engine.distance.value
            == {
                "l2": "l2",
                "ip": "inner_product",
                "cosine": "angular",
            }[metric]
        )
        res = index.query(queries, 5, search_k=300)
    for row, q in enumerate(queries):
        q = q / np.linalg.norm(q) if metric == "cosine" else q
        ids, dist = raw.get_nns_by_vector(q.tolist(), 5, search_k=300, include_distances=True)
        assert res.indices[row].tolist() == ids
        dist = np.asarray(dist, np.float32)
        expected = {"l2": dist**2, "ip": dist, "cosine": 1 - dist**2 / 2}[metric]
        np.testing.assert_allclose(res.distances[row], expected, rtol=1e-6, atol=1e-6)


# -- parameters and defaults -------------------------------------------------------------
def test_default_formulas():
    """The defaults documented in docs/backends/annoy.md (measured there on the benchmark data)."""
    assert (default_n_trees(Metric.L2), default_n_trees(Metric.COSINE), default_n_trees(Metric.IP)) == (20, 20, 5)
    at_100k = {m: default_search_k(default_n_trees(m), 100_000, 10, m) for m in Metric}
    assert at_100k == {Metric.L2: 3400, Metric.COSINE: 3200, Metric.IP: 7800}
    assert default_search_k(20, 1000, 10, Metric.L2) == 20 * 10  # never below Annoy's own n_trees * k
    assert default_search_k(20, 100_000, 1, Metric.L2) == 3400  # below k = 10, as for k = 10
    assert 1.4 < default_search_k(20, 100_000, 100, Metric.L2) / 3400 < 1.5  # k ** 0.16
    assert default_search_k(5, 1_000_000, 10, Metric.IP) == 10 * 7800  # ip: in proportion to n
    assert 6.1 < default_search_k(20, 1_000_000, 10, Metric.L2) / 3400 < 6.2  # l2: n ** 0.79
    assert default_search_k(MAX_C_INT, 10**9, 10**6, Metric.IP) == MAX_C_INT  # never past Annoy's C int


def test_resolved_defaults_are_shown_in_params(items, queries):
    """Issue 13 item 8: index.params shows the trees and the search_k queries really use (at k = 10)."""
    with builder_factory("annoy", seed=2).from_embeddings(items) as index:
        params = index.params
        engine = index.engine
        assert isinstance(engine, AnnoyEngine)
        assert params["n_trees"] == engine.n_trees == default_n_trees(Metric.L2)
        assert params["search_k"] == default_search_k(engine.n_trees, len(items), 10, Metric.L2)
        np.testing.assert_array_equal(
            index.query(queries, 10).indices, index.query(queries, 10, search_k=params["search_k"]).indices
        )
    with builder_factory("annoy", seed=2, n_trees=7, search_k=123).from_embeddings(items) as index:
        assert index.params["n_trees"] == 7 and index.params["search_k"] == 123


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_default_recall_is_decent_where_annoys_own_default_is_not(metric):
    """On 20,000 x 32 clustered items (queries drawn like them) the defaults reach 0.95; Annoy's own does not."""
    items = clustered_data(20_000, 32, seed=0)
    queries = clustered_data(200, 32, seed=1, centres_seed=0)
    truth, _ = ground_truth(items, queries, 10, metric)
    with builder_factory("annoy", metric=metric, seed=2).from_embeddings(items) as index:
        ours = recall_at_k(index.query(queries, 10).indices, truth)
        annoys = recall_at_k(index.query(queries, 10, search_k=-1).indices, truth)
    assert ours >= 0.95
    assert annoys < 0.9


def test_search_k_per_call_alias_and_bounds(items, queries):
    with builder_factory("annoy", seed=2, searchk=40).from_embeddings(items) as index:
        assert index.params["search_k"] == 40
        low = index.query(queries, 10)
        np.testing.assert_array_equal(index.query(queries, 10, searchk=40).indices, low.indices)
        high = index.query(queries, 10, search_k=20_000)
        truth, _ = ground_truth(items, queries, 10, "l2")
        assert recall_at_k(high.indices, truth) > recall_at_k(low.indices, truth)
        top = index.query(queries, 10, search_k=MAX_C_INT)  # the largest value works (Annoy stops at the forest's end)
        np.testing.assert_array_equal(top.indices, truth)
        for bad in (0, -2, 2**31, 2**63):
            with pytest.raises(InvalidParameterError, match="search_k"):
                index.query(queries, 10, search_k=bad)
        with pytest.raises(InvalidParameterError):
            index.query(queries, 10, n_trees=5)  # a build parameter
    for bad in ({"search_k": -2}, {"n_trees": 0}, {"threads": 0}, {"n_jobs": 0}, {"seed": -1}, {"seed": 2**31}):
        with pytest.raises(InvalidParameterError):
            builder_factory("annoy", **bad)


def test_tune_space_is_search_k():
    assert list(Builder(AnnoyBackend).tune_space()) == ["search_k"]
    values = Builder(AnnoyBackend).tune_space()["search_k"]
    assert values == sorted(values) and min(values) > 0 and max(values) <= MAX_C_INT


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
        with pytest.raises(UnsupportedOperation, match="annoy"):
            index.add(items[:2], ids=[500, 501])
        with pytest.raises(UnsupportedOperation, match="annoy"):
            index.remove([0])
        assert len(index) == 100


# -- threads ---------------------------------------------------------------------------------
class _RecordingAnnoy(annoy.AnnoyIndex):
    """The real AnnoyIndex, recording the n_jobs of each build."""

    n_jobs: list[int] = []

    def build(self, n_trees, n_jobs=-1):
        _RecordingAnnoy.n_jobs.append(n_jobs)
        return super().build(n_trees, n_jobs)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"threads": 1}, 1),
        ({"threads": 2}, 2),
        ({"threads": 2, "n_jobs": 1}, 1),
        ({"threads": 1, "n_jobs": 2}, 2),
        ({}, None),  # every usable core, counted (Annoy's -1 counts the machine's, ignoring affinity)
        ({"threads": -1}, None),
        ({"threads": 1, "n_jobs": -1}, None),
    ],
)
def test_build_threads(params, expected, items, monkeypatch):
    """Issue 13 item 4: threads=1 builds on one thread, as documented; Annoy never gets -1."""
    monkeypatch.setattr(annoy, "AnnoyIndex", _RecordingAnnoy)
    monkeypatch.setattr(_RecordingAnnoy, "n_jobs", [])
    with builder_factory("annoy", seed=1, **params).from_embeddings(items[:300]) as index:
        engine = index.engine
        assert isinstance(engine, AnnoyEngine)
        assert engine.threads == (usable_cores() if params.get("threads", -1) == -1 else params["threads"])
    assert _RecordingAnnoy.n_jobs == [usable_cores() if expected is None else expected]


def test_thread_counts_resolve():
    config = Builder(AnnoyBackend, threads=1).config
    assert (query_threads(config), build_threads(config)) == (1, 1)
    config = Builder(AnnoyBackend).config
    assert (query_threads(config), build_threads(config)) == (usable_cores(), usable_cores())


def test_threaded_fan_out_equals_serial(items, queries, tmp_path):
    many = np.concatenate([queries] * 5)
    with builder_factory("annoy", seed=4, threads=2).from_embeddings(items) as index:
        fanned = index.query(many, 10)
        index.save(tmp_path / "idx")
    with builder_factory("annoy", threads=1).from_index_file(tmp_path / "idx") as serial:
        one = serial.query(many, 10)
        single = [serial.query(q, 10).indices[0] for q in many[:5]]  # the single-query path agrees too
    np.testing.assert_array_equal(fanned.indices, one.indices)
    np.testing.assert_array_equal(fanned.distances, one.distances)
    np.testing.assert_array_equal(np.stack(single), one.indices[:5])


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
    """With one tree and search_k=1 Annoy finds one leaf's items, fewer than k: rows are padded, not an error."""
    with builder_factory("annoy", metric="ip", seed=1, n_trees=1).from_embeddings(items) as index:
        engine = index.engine
        labels, _ = engine.search(np.ascontiguousarray(queries[:3]), 50, {"search_k": 1}, None)
        assert labels.shape == (3, 50) and (labels == -1).any()  # the engine pads its batch rows itself
        one, _ = engine.search(np.ascontiguousarray(queries[:1]), 50, {"search_k": 1}, None)
        assert one.shape[0] == 1 and one.shape[1] < 50  # a single query comes back short: the core pads
        for batch in (queries, queries[0]):
            res = index.query(batch, 50, search_k=1)
            ids, dist, valid = np.asarray(res.indices), np.asarray(res.distances), np.asarray(res.valid)
            assert ids.shape == (np.atleast_2d(batch).shape[0], 50)
            assert 0 < valid.sum(axis=1).min() and valid.sum(axis=1).max() < 50
            assert (ids[~valid] == -1).all() and (dist[~valid] == -np.inf).all()
            assert (valid[:, :-1] >= valid[:, 1:]).all()


# -- persistence -------------------------------------------------------------------------------
def test_save_records_engine_and_loads_memory_mapped(items, queries, tmp_path):
    with builder_factory("annoy", metric="cosine", seed=1).from_embeddings(items) as index:
        before = index.query(queries, 10)
        index.save(tmp_path / "idx")
        after_save = index.query(queries, 10)  # save remaps the engine onto the saved file
        np.testing.assert_array_equal(after_save.indices, before.indices)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["engine_version"] == f"annoy {importlib.metadata.version('annoy')}"
    n_trees = default_n_trees(Metric.COSINE)
    assert manifest["engine"] == {"file": "index.ann", "annoy_metric": "angular", "n_trees": n_trees, "n_items": 2000}
    assert manifest["params"] == {"n_trees": None, "seed": 1} and manifest["search_params"] == {"search_k": None}
    with builder_factory("annoy", prefault=True, search_k=-1).from_index_file(tmp_path / "idx") as loaded:
        assert loaded.params["search_k"] == -1  # the builder's search parameters override the saved ones
        assert loaded.params["n_trees"] == n_trees
        np.testing.assert_array_equal(loaded.query(queries, 10, search_k=None).indices, before.indices)


def test_loads_an_index_saved_by_version_0_1():
    """A directory written by rechub-serving 0.1 (see the fixture's expected.json) loads and answers the same."""
    expected = json.loads((DATA / "annoy-0.1-cosine.expected.json").read_text())
    with open_index(DATA / "annoy-0.1-cosine") as index:
        assert (index.backend, index.metric, index.dim, len(index)) == ("annoy", Metric.COSINE, 8, 300)
        assert index.params == {"metric": "cosine", "n_trees": 4, "seed": 5, "search_k": 400}
        assert index.metadata == {"written_by": "rechub-serving 0.1"}
        res = index.query(np.asarray(expected["queries"], np.float32), expected["k"])
        assert np.asarray(res.indices).tolist() == expected["ids"]
        np.testing.assert_allclose(res.distances, expected["distances"], rtol=1e-6, atol=1e-6)


def _saved_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "copy"
    shutil.copytree(DATA / "annoy-0.1-cosine", target)
    return target


def _edit_manifest(path: pathlib.Path, **engine) -> None:
    manifest_file = path / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["engine"].update(engine)
    manifest_file.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"annoy_metric": "euclidean"}, "not an Annoy index of dimension 8 and metric 'euclidean'"),
        ({"annoy_metric": "manhattan"}, "names no Annoy file and metric"),
        ({"file": 3}, "names no Annoy file and metric"),
        ({"n_items": 299}, "holds 300 items but the manifest's engine entry says 299"),
    ],
)
def test_edited_engine_entry_is_refused(edit, match, tmp_path, capfd):
    path = _saved_copy(tmp_path)
    _edit_manifest(path, **edit)
    with pytest.raises(IndexFormatError, match=match):
        open_index(path)
    assert capfd.readouterr().err == ""


def test_edited_dim_that_fits_the_file_size_is_refused(tmp_path, capfd):
    """A dim whose node size happens to divide the file is caught by the layout check, not mapped as garbage."""
    path = _saved_copy(tmp_path)
    size = (path / "engine" / "index.ann").stat().st_size  # 30316 = 709 nodes of 12 + 4 * 8 ... and of other dims
    other = next(d for d in range(1, 200) if d != 8 and size % (12 + 4 * d) == 0)
    manifest_file = path / "manifest.json"
    manifest_file.write_text(json.dumps({**json.loads(manifest_file.read_text()), "dim": other}))
    with pytest.raises(IndexFormatError, match=f"dimension {other}"):
        open_index(path)
    assert capfd.readouterr().err == ""


# -- adopting bare Annoy files -------------------------------------------------------------
def test_adopts_a_bare_annoy_file(items, queries, tmp_path):
    path = tmp_path / "bare.ann"
    raw = write_bare(path, items, "angular")  # unnormalised: angular is scale-invariant
    with builder_factory("annoy", d=DIM, metric="angular").from_index_file(path) as index:
        assert len(index) == len(items) and index.dim == DIM and index.metric is Metric.COSINE
        res = index.query(queries, 10, search_k=5000)
        np.testing.assert_allclose(res.distances, true_distances(items, queries, res.indices, "cosine"), atol=2e-5)
        ids, _dist = raw.get_nns_by_vector(queries[0].tolist(), 10, search_k=5000, include_distances=True)
        assert res.indices[0].tolist() == ids
        index.save(tmp_path / "adopted")  # an adopted file becomes a regular saved index
    with open_index(tmp_path / "adopted") as again:
        np.testing.assert_array_equal(again.query(queries, 10, search_k=5000).indices, res.indices)


def test_adopting_needs_dim_and_metric(items, tmp_path):
    path = tmp_path / "bare.ann"
    write_bare(path, items, "angular")
    for params, missing in (
        ({"metric": "angular"}, "give dim "),
        ({"dim": DIM}, "give metric "),
        ({}, "dim and metric"),
    ):
        with pytest.raises(InvalidParameterError, match="bare Annoy file") as info:
            builder_factory("annoy", **params).from_index_file(path)
        assert missing in str(info.value) and f"fits dim={DIM} with metric 'angular'" in str(info.value)
    for params, what in (({"metric": "dot"}, "metric 'dot'"), ({"dim": DIM + 1}, f"dimension {DIM + 1}")):
        with pytest.raises(NotAnIndexError, match=f"not an Annoy file of {what}: its layout fits dim={DIM}"):
            builder_factory("annoy", **params).from_index_file(path)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"dim": DIM, "metric": "l2"}, f"not an Annoy file of dimension {DIM} and metric 'euclidean'"),
        ({"dim": DIM, "metric": "ip"}, f"not an Annoy file of dimension {DIM} and metric 'dot'"),
        ({"dim": 8, "metric": "angular"}, "not an Annoy file of dimension 8"),
        ({"dim": 17, "metric": "angular"}, "not an Annoy file of dimension 17"),
    ],
)
def test_adopting_with_the_wrong_dim_or_metric_says_so_quietly(params, match, items, tmp_path, capfd):
    """Issue 12 item 4: Annoy's own complaint never reaches stderr; our error says what the file fits."""
    path = tmp_path / "bare.ann"
    write_bare(path, items, "angular")
    capfd.readouterr()
    with pytest.raises(NotAnIndexError, match=match) as info:
        builder_factory("annoy", **params).from_index_file(path)
    assert f"fits dim={DIM} with metric 'angular'" in str(info.value)
    assert capfd.readouterr().err == ""


def test_a_file_of_another_engine_is_not_called_an_annoy_file(tmp_path, capfd):
    """Issue 13 item 2: a faiss file (or junk) gets 'not an Annoy file', whatever was given."""
    faiss_like = tmp_path / "items.faiss"
    header = b"IxF2" + np.int32(DIM).tobytes() + np.int64(100).tobytes() + np.int64(100).tobytes()
    faiss_like.write_bytes(header + np.random.default_rng(0).normal(size=100 * DIM).astype("<f4").tobytes())
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x01" * 13)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    capfd.readouterr()
    for params in ({}, {"dim": DIM}, {"dim": DIM, "metric": "l2"}):
        with pytest.raises(NotAnIndexError, match="not an Annoy file") as info:
            builder_factory("annoy", **params).from_index_file(faiss_like)
        assert "faiss" in str(info.value) and "bare Annoy file" not in str(info.value)
        for path in (junk, empty):
            with pytest.raises(NotAnIndexError, match="not an Annoy file"):
                builder_factory("annoy", **params).from_index_file(path)
    assert capfd.readouterr().err == ""


def test_annoy_stays_quiet_on_stderr_at_default_logging(items, tmp_path, capfd, caplog):
    """Building on a bad path and adopting bad files: the library's errors only, nothing from Annoy."""
    caplog.set_level(logging.INFO)
    with pytest.raises(InvalidParameterError, match="cannot build in"):
        builder_factory("annoy", on_disk_build=str(tmp_path / "missing" / "x.ann")).from_embeddings(items[:50])
    write_bare(tmp_path / "bare.ann", items, "euclidean")
    with pytest.raises(NotAnIndexError):
        builder_factory("annoy", dim=DIM + 1, metric="l2").from_index_file(tmp_path / "bare.ann")
    assert capfd.readouterr().err == ""


# -- on_disk_build --------------------------------------------------------------------------
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


def test_a_failed_on_disk_build_frees_its_file(items, tmp_path, monkeypatch):
    class FailingAnnoy(annoy.AnnoyIndex):
        def build(self, n_trees, n_jobs=-1):
            raise RuntimeError("no space left")

    scratch = tmp_path / "build.ann"
    builder = builder_factory("annoy", on_disk_build=str(scratch))
    with monkeypatch.context() as patch:
        patch.setattr(annoy, "AnnoyIndex", FailingAnnoy)
        with pytest.raises(BackendError, match="no space left"):
            builder.from_embeddings(items[:50])
    builder.from_embeddings(items[:50]).close()  # not refused as "belongs to an open index"


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


@pytest.mark.parametrize("metric", ["angular", "euclidean", "dot"])
@pytest.mark.parametrize("n_trees", [1, 10])
@pytest.mark.parametrize("threads", [-1, 2])
@pytest.mark.parametrize("searchk", [-1, 100])
def test_torch_rechub_serving_matrix(metric, n_trees, threads, searchk, tmp_path):
    """torch-rechub's own test_annoy_indexing matrix (100 x 5, top 5), with numpy instead of torch."""
    rng = np.random.default_rng(0)
    items, users = rng.normal(size=(100, 5)).astype(np.float32), rng.normal(size=(100, 5)).astype(np.float32)
    builder = builder_factory("annoy", d=5, metric=metric, n_trees=n_trees, threads=threads, searchk=searchk)
    with builder.from_embeddings(items) as indexer:
        ids, distances = indexer.query(users, 5)
        indexer.save(tmp_path / "annoy.index")
    assert ids.shape == distances.shape == (100, 5) and ids.dtype == np.int64 and distances.dtype == np.float32
    with builder.from_index_file(tmp_path / "annoy.index") as indexer:
        again, _ = indexer.query(users, 5)
    np.testing.assert_array_equal(again, ids)


# -- concurrency ---------------------------------------------------------------------------------
def test_save_and_close_wait_for_running_queries(items, queries, tmp_path):
    """save() remaps and close() unmaps the Annoy file: the core's lock keeps searches off both."""
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
            except Exception as exc:  # started after close: the core's clean error, never a crash
                assert type(exc).__name__ == "IndexClosedError", exc
