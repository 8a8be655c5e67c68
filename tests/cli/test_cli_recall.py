"""The recall that ``bench``, ``tune`` and ``query`` report, checked against an independent float64 brute force.

The approximate configurations are the toy ``approx`` backend of conftest.py,
whose results the tests recompute on their own; so a wrong ground truth in
the CLI (for example an exact search that returns the k worst items) changes
the reported recall and fails these tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rechub_serving import list_backends, open_index
from rechub_serving.evaluation import clustered_data
from tests.cli._support import brute_force, reference_recall, toy_results

K = 10


@pytest.fixture()
def files(tmp_path):
    items = clustered_data(800, 8, n_clusters=8, seed=11)
    queries = clustered_data(30, 8, n_clusters=8, seed=12, centres_seed=11)
    np.save(tmp_path / "items.npy", items)
    np.save(tmp_path / "q.npy", queries)
    return tmp_path, items, queries


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_bench_recall_is_measured_against_the_exact_top_k(cli, toy_backend, files, metric):
    tmp, items, queries = files
    result = cli(
        "bench", tmp / "items.npy", "-c", "approx:probe=4", "-c", "approx:probe=16", "-c", "numpy",
        "-m", metric, "--queries", tmp / "q.npy", "-k", K, "--repeats", "1", "--latency-queries", "2", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = {r["label"]: r["recall"] for r in json.loads(result.stdout)["results"]}
    truth, _ = brute_force(items, queries, K, metric)
    expected = reference_recall(toy_results(items, queries, K, probe=4, metric=metric), truth)
    assert 0.1 < expected < 0.9  # a configuration that really misses some
    assert got["approx:probe=4"] == pytest.approx(expected)
    assert got["approx:probe=16"] == 1.0 and got["numpy"] == 1.0


def test_tune_reports_true_recall_and_keeps_the_first_setting_that_reaches_the_target(cli, toy_backend, files):
    tmp, items, queries = files
    truth, _ = brute_force(items, queries, K, "l2")
    recall = {p: reference_recall(toy_results(items, queries, K, probe=p), truth) for p in (1, 2, 4, 8, 16)}
    target = 0.4  # reached at probe=8 of 16: the sweep must stop there, before 16
    first = next(p for p in (1, 2, 4, 8, 16) if recall[p] >= target)
    assert 1 < first < 16  # the sweep has something to do, and something to skip
    result = cli(
        "tune", tmp / "items.npy", "-b", "approx", "-t", target, "--queries", tmp / "q.npy",
        "-k", K, "--repeats", "1", "-o", tmp / "tuned", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["tune_space"] == {"probe": [1, 2, 4, 8, 16]}
    assert payload["swept"] == {"probe": [p for p in (1, 2, 4, 8, 16) if p <= first]}  # only what tune_space declares
    for point in payload["points"]:
        probe = point["params"].get("probe", 1)
        assert point["recall"] == pytest.approx(recall[probe]), point
    assert payload["best"]["params"] == {"probe": first}
    manifest = json.loads((tmp / "tuned" / "manifest.json").read_text())
    assert manifest["search_params"]["probe"] == first and manifest["count"] == len(items)
    with open_index(tmp / "tuned") as index:  # the saved defaults really serve that recall
        found = np.asarray(index.query(queries, k=K).indices)
    assert reference_recall(found, truth) == pytest.approx(recall[first])


def test_tune_held_out_saves_every_vector(cli, toy_backend, files):
    tmp, items, _ = files
    result = cli(
        "tune", tmp / "items.npy", "-b", "approx", "-t", "0.5", "--n-queries", "40",
        "--repeats", "1", "-o", tmp / "tuned", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["queries"] == 40 and payload["best"]["recall"] >= 0.5
    with open_index(tmp / "tuned") as index:
        assert len(index) == len(items) and index.search_params["probe"] == payload["best"]["params"]["probe"]


def test_tune_exact_index_has_nothing_to_tune(cli, files):
    tmp, *_ = files
    result = cli("tune", tmp / "items.npy", "-b", "numpy", "--queries", tmp / "q.npy", "--repeats", "1", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["tune_space"] == {} and payload["swept"] == {}
    assert [p["params"] for p in payload["points"]] == [{}] and payload["points"][0]["recall"] == 1.0
    result = cli("tune", tmp / "items.npy", "-b", "numpy", "--queries", tmp / "q.npy", "--repeats", "1")
    assert "nothing to tune" in result.stderr and "searches exactly" in result.stderr
    assert "block_bytes" not in result.stdout  # a block size is never swept


def test_tune_target_not_reached_saves_nothing(cli, toy_backend, files):
    tmp, *_ = files
    result = cli(
        "tune", tmp / "items.npy", "-b", "approx", "-p", "n_lists=64", "-t", "1.0", "--queries", tmp / "q.npy",
        "--repeats", "1", "-o", tmp / "tuned",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "not reached" in result.stderr and "nothing was saved" in result.stderr
    assert not (tmp / "tuned").exists()


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_query_returns_the_exact_top_k(cli, files, metric):
    tmp, items, queries = files
    assert cli("build", tmp / "items.npy", "-o", tmp / "idx", "-b", "numpy", "-m", metric, "-q").exit_code == 0
    result = cli("query", tmp / "idx", tmp / "q.npy", "-k", K, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    pos, dist = brute_force(items, queries, K, metric)
    assert [r["ids"] for r in rows] == pos.tolist()
    assert np.allclose([r["distances"] for r in rows], dist, rtol=1e-4, atol=1e-4)


def test_query_search_parameters_reach_the_engine(cli, toy_backend, files):
    tmp, items, queries = files
    assert cli("build", tmp / "items.npy", "-o", tmp / "idx", "-b", "approx", "-q").exit_code == 0
    for probe in (1, 4):
        result = cli("query", tmp / "idx", tmp / "q.npy", "-k", K, "-p", f"probe={probe}", "--json")
        assert result.exit_code == 0, result.output
        found = [r["ids"] for r in json.loads(result.stdout)["results"]]
        assert found == toy_results(items, queries, K, probe=probe).tolist()


# -- real approximate backends (run once their plugins are installed) -------------------------------------
@pytest.mark.skipif("faiss" not in {b.name for b in list_backends()}, reason="needs the faiss plugin")
@pytest.mark.parametrize(
    ("params", "swept"),
    [(["index_type=Flat"], None), (["index_type=HNSW"], "ef_search"), (["index_type=IVF", "nlist=16"], "nprobe")],
)
def test_tune_faiss_sweeps_what_the_index_type_declares(cli, files, params, swept):
    tmp, *_ = files
    args = ["tune", tmp / "items.npy", "-b", "faiss", "-t", "0.9", "--queries", tmp / "q.npy", "--repeats", "1"]
    for p in params:
        args += ["-p", p]
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    if swept is None:  # an exact index: nothing to tune, and it says so
        assert payload["tune_space"] == {} and payload["swept"] == {} and len(payload["points"]) == 1
        result = cli(*args)
        assert "nothing to tune" in result.stderr and "nprobe" not in result.stdout
    else:
        assert list(payload["tune_space"]) == [swept] and list(payload["swept"]) == [swept]
