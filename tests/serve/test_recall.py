"""Live recall: the exported recall@k equals the recall measured offline on the same requests."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rechub_serving import Retriever, builder_factory
from tests.serve.conftest import user


def hnsw_builder(**params):
    pytest.importorskip("faiss")
    try:
        return builder_factory("faiss", index_type="HNSW", **params)
    except Exception as exc:  # the faiss plugin is not installed
        pytest.skip(f"faiss backend unavailable: {exc}")


def counts(served: list, exact: list) -> tuple[int, int]:
    """Independent of the server's code: served ids found in the exact top-k, and the exact top-k's size."""
    want = {i for i in exact if i is not None and i != -1}
    return len(want & set(served)), len(want)


def wait_checked(server, users: int) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        recall = server.client.get("/v1/info").json()["recall"]
        if recall["checked_users"] >= users:
            return recall
        time.sleep(0.1)
    raise AssertionError(f"only {recall['checked_users']} of {users} users checked: {recall}")


def scraped(server) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(server.client.get("/metrics").text):
        for sample in family.samples:
            out[sample.name] = sample.value
    return out


def test_live_recall_of_vector_search_equals_offline_recall(start_server, tmp_path):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(4000, 16)).astype(np.float32)
    ids = np.arange(10_000, 14_000)
    with hnsw_builder(metric="l2", m=4, ef_construction=16, ef_search=8).from_embeddings(items, ids=ids) as index:
        index.save(tmp_path / "hnsw.index")
    np.save(tmp_path / "items.npy", items)
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    server = start_server(
        "--index", tmp_path / "hnsw.index", "--reference-vectors", tmp_path / "items.npy",
        "--reference-ids", tmp_path / "ids.json", "--recall-sample", "1", "--recall-queue", "1000",
        "--recall-window", "100000", "--max-wait-ms", "10",
    )  # fmt: skip
    bodies = []
    for i in range(60):
        n = int(rng.integers(1, 4))
        body = {"vectors": rng.normal(size=(n, 16)).tolist(), "k": int(rng.choice([5, 10]))}
        if i % 4 == 0:
            body["exclude"] = [rng.choice(ids, 20).tolist() for _ in range(n)]
        bodies.append(body)
    # one user with only 6 items left after its exclusions: short rows (padding) count as nothing
    bodies.append({"vectors": [items[0].tolist()], "k": 10, "exclude": [ids[6:].tolist()]})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: httpx.post(server.url + "/v1/search", json=b, timeout=30).json(), bodies))
    hits = relevant = 0
    with builder_factory("numpy", metric="l2").from_embeddings(items, ids=ids) as exact:
        for body, answer in zip(bodies, answers):
            want = exact.query(np.asarray(body["vectors"]), body["k"], exclude=body.get("exclude")).indices
            for row, exact_row in zip(answer["results"], want.tolist()):
                h, r = counts(row["ids"], exact_row)
                hits, relevant = hits + h, relevant + r
    offline = hits / relevant
    assert offline < 0.98, "the index must be approximate for this test to mean something"
    recall = wait_checked(server, sum(len(b["vectors"]) for b in bodies))
    assert recall["enabled"] and recall["reference"] == "--reference-vectors" and recall["dropped"] == 0
    assert recall["recall_at_k"] == pytest.approx(offline, abs=1e-12)
    assert recall["recall_at_k_generation"] == pytest.approx(offline, abs=1e-12)
    metrics = scraped(server)
    assert metrics["rechub_serve_live_recall"] == pytest.approx(offline, abs=1e-12)
    assert (metrics["rechub_serve_recall_hits_total"], metrics["rechub_serve_recall_relevant_total"]) == (
        hits,
        relevant,
    )
    assert server.stop() == 0


@pytest.mark.slow
def test_live_recall_of_recommendations_uses_the_model_dirs_embeddings(start_server, model_copy):
    vectors = np.load(model_copy / "item_embeddings.npy")
    item_ids = np.asarray(json.loads((model_copy / "item_ids.json").read_text()))
    digest = json.loads((model_copy / "items.index" / "manifest.json").read_text())["metadata"]["model_hash"]
    shutil.rmtree(model_copy / "items.index")
    with hnsw_builder(metric="cosine", m=4, ef_construction=8, ef_search=4).from_embeddings(
        vectors, ids=item_ids
    ) as index:
        index.save(model_copy / "items.index", metadata={"model_hash": digest, "normalized": True})
    server = start_server(model_copy, "--recall-sample", "1", "--recall-window", "100000", "--recall-queue", "1000")
    rng = np.random.default_rng(3)
    bodies = [{"users": [user(int(rng.integers(1, 220)), rng.integers(1, 121, 5).tolist())], "k": 20}
              for _ in range(40)]  # fmt: skip
    answers = [server.post("/v1/recommend", b).json() for b in bodies]
    hits = relevant = 0
    with builder_factory("numpy", metric="cosine").from_embeddings(vectors, ids=item_ids) as exact_index:
        with Retriever(model_copy / "user_tower.onnx", exact_index) as exact:
            for body, answer in zip(bodies, answers):
                want = exact.recommend(body["users"], k=20).item_ids[0].tolist()
                h, r = counts(answer["results"][0]["ids"], want)
                hits, relevant = hits + h, relevant + r
    recall = wait_checked(server, len(bodies))
    assert recall["reference"] == "item_embeddings.npy of the model directory"
    assert recall["recall_at_k"] == pytest.approx(hits / relevant, abs=1e-12)
    assert server.stop() == 0


@pytest.mark.slow
def test_no_reference_is_reported(start_server, tmp_path):
    rng = np.random.default_rng(0)
    with hnsw_builder(metric="l2", m=8).from_embeddings(rng.normal(size=(500, 8))) as index:
        index.save(tmp_path / "hnsw.index")
    server = start_server("--index", tmp_path / "hnsw.index", "--recall-sample", "1")
    assert server.post("/v1/search", {"vectors": [[0.5] * 8]}).status_code == 200
    recall = server.client.get("/v1/info").json()["recall"]
    assert not recall["enabled"] and "--reference-vectors" in recall["note"] and recall["recall_at_k"] is None
    assert np.isnan(scraped(server)["rechub_serve_live_recall"])
    assert server.stop() == 0


@pytest.mark.slow
def test_a_reference_of_other_vectors_is_refused(start_server, tmp_path):
    rng = np.random.default_rng(0)
    with hnsw_builder(metric="l2", m=8).from_embeddings(rng.normal(size=(500, 8))) as index:
        index.save(tmp_path / "hnsw.index")
    np.save(tmp_path / "other.npy", rng.normal(size=(500, 8)).astype(np.float32))
    server = start_server("--index", tmp_path / "hnsw.index", "--reference-vectors", tmp_path / "other.npy")
    recall = server.client.get("/v1/info").json()["recall"]
    assert not recall["enabled"] and "does not match the index" in recall["note"]
    assert server.stop() == 0
