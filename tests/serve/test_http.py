"""A real server on 127.0.0.1 answers like the in-process Retriever, refuses every bad request with a 4xx, and reports."""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rechub_serving import Retriever, builder_factory, open_index
from tests.serve.conftest import ROOT, Server, user


@pytest.fixture(scope="module")
def shared(model_a, tmp_path_factory):
    """One server for the read-only tests of this module (batches up to 64 users, waiting up to 20 ms)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    server = Server([str(model_a), "--max-wait-ms", "20", "--max-users", "8", "--max-k", "50",
                     "--max-body-bytes", "20000", "--recall-sample", "1"], log)  # fmt: skip
    yield server
    assert server.stop() == 0, server.output()


def requests_for(rng: np.random.Generator, n: int) -> list[dict]:
    """Varied recommend requests: 1-3 users, different k, seen ids, exclude_seen on and off."""
    out = []
    for i in range(n):
        users = [user(int(rng.integers(1, 220)), rng.integers(1, 121, rng.integers(0, 12)).tolist())
                 for _ in range(int(rng.integers(1, 4)))]  # fmt: skip
        body: dict = {"users": users, "k": int(rng.choice([3, 5, 10]))}
        if i % 3 == 0:
            body["seen"] = [rng.integers(1, 121, 4).tolist() for _ in users]
        if i % 5 == 0:
            body["exclude_seen"] = False
        out.append(body)
    return out


def assert_same_ranking(got_ids, got_scores, want_ids, want_scores, tol=1e-5):
    """Equal ids and scores; two ids may only trade places when their scores tie within ``tol``."""
    assert len(got_ids) == len(want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=tol)
    for pos, (g, w) in enumerate(zip(got_ids, want_ids)):
        if g != w:
            assert abs(got_scores[pos] - want_scores[pos]) <= tol and w in got_ids, (got_ids, want_ids)


def test_concurrent_recommendations_equal_the_in_process_retriever(shared, model_a):
    bodies = requests_for(np.random.default_rng(0), 48)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda b: httpx.post(shared.url + "/v1/recommend", json=b, timeout=30), bodies))
    with Retriever(model_a / "user_tower.onnx", model_a / "items.index") as retriever:
        for body, response in zip(bodies, responses):
            assert response.status_code == 200, response.text
            data = response.json()
            assert data["generation"] == 1 and data["model_hash"] == retriever.model_hash
            want = retriever.recommend(
                body["users"], k=body["k"], seen=body.get("seen"), exclude_seen=body.get("exclude_seen", True)
            )
            assert len(data["results"]) == len(body["users"])
            for row, ids, scores in zip(data["results"], want.item_ids, want.scores):
                keep = np.isfinite(scores)
                assert_same_ranking(row["ids"], row["scores"], ids[keep].tolist(), scores[keep].tolist())
                excluded = set(body.get("seen", [[]] * 9)[data["results"].index(row)] if "seen" in body else [])
                if body.get("exclude_seen", True):
                    assert not excluded & set(row["ids"])
    # the requests were really gathered: some batch held more than one request
    text = shared.client.get("/metrics").text
    batches = {s.labels.get("le"): s.value for f in text_string_to_metric_families(text)
               if f.name == "rechub_serve_batch_requests" for s in f.samples
               if s.name.endswith("_bucket") and s.labels.get("endpoint") == "/v1/recommend"}  # fmt: skip
    assert batches["1.0"] < batches["+Inf"], "no micro-batch held two requests"


def test_history_is_excluded_and_k_respected(shared):
    hist = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    got = shared.post("/v1/recommend", {"users": [user(5, hist)], "k": 50}).json()["results"][0]
    assert len(got["ids"]) == 50 and not set(hist) & set(got["ids"])
    assert got["scores"] == sorted(got["scores"], reverse=True)
    kept = shared.post("/v1/recommend", {"users": [user(5, hist)], "k": 50, "exclude_seen": False}).json()
    assert set(hist) & set(kept["results"][0]["ids"]), "with exclude_seen false the history may come back"


def test_search_equals_the_index(shared, model_a):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(5, 16)).astype(np.float32)
    with open_index(model_a / "items.index") as index:
        if index.dim != vectors.shape[1]:
            vectors = rng.normal(size=(5, index.dim)).astype(np.float32)
        want = index.query(vectors, 7, exclude=[[1, 2]] * 5)
        body = {"vectors": vectors.tolist(), "k": 7, "exclude": [[1, 2]] * 5}
        data = shared.post("/v1/search", body).json()
        assert data["metric"] == index.metric.value
        for row, ids, dists in zip(data["results"], want.indices, want.distances):
            assert row["ids"] == ids.tolist()
            np.testing.assert_allclose(row["distances"], dists, atol=1e-5)


BAD = [
    # (name, body or raw (bytes, content type), status, kind, field)
    ("missing feature", {"users": [{"user_id": 1}]}, 422, "missing_feature", "users[0].gender"),
    ("sparse feature as a list", {"users": [user([1], [])]}, 422, "wrong_type", "users[0].user_id"),
    ("bool feature", {"users": [user(True, [])]}, 422, "wrong_type", "users[0].user_id"),
    ("float feature", {"users": [user(1.5, [])]}, 422, "wrong_type", "users[0].user_id"),
    ("history not a list", {"users": [user(1, {"a": 1})]}, 422, "wrong_type", "users[0].hist_movie_id"),
    ("object in history", {"users": [user(1, [1, {}])]}, 422, "wrong_type", "users[0].hist_movie_id[1]"),
    ("id beyond int64 in history", {"users": [user(1, [2**70])]}, 422, "wrong_type", "users[0].hist_movie_id[0]"),
    ("user not an object", {"users": [1]}, 422, "wrong_type", "users[0]"),
    ("users not a list", {"users": {"a": 1}}, 422, "wrong_type", "users"),
    ("no users", {"users": []}, 422, "empty_request", "users"),
    ("no users field", {"k": 3}, 422, "missing_field", "users"),
    ("too many users", {"users": [user(1, [])] * 9}, 422, "too_many_users", "users"),
    ("k zero", {"users": [user(1, [])], "k": 0}, 422, "k_out_of_range", "k"),
    ("k too large", {"users": [user(1, [])], "k": 51}, 422, "k_out_of_range", "k"),
    ("k a string", {"users": [user(1, [])], "k": "5"}, 422, "wrong_type", "k"),
    ("k a float", {"users": [user(1, [])], "k": 5.5}, 422, "wrong_type", "k"),
    ("seen id a string", {"users": [user(1, [])], "seen": [["x"]]}, 422, "unknown_id_type", "seen[0][0]"),
    ("seen id a float", {"users": [user(1, [])], "seen": [[1.5]]}, 422, "unknown_id_type", "seen[0][0]"),
    ("seen id beyond int64", {"users": [user(1, [])], "seen": [[2**64]]}, 422, "unknown_id_type", "seen[0][0]"),
    ("seen rows mismatch", {"users": [user(1, [])], "seen": [[1], [2]]}, 422, "wrong_length", "seen"),
    ("seen not lists", {"users": [user(1, [])], "seen": [3]}, 422, "wrong_type", "seen[0]"),
    ("unknown field", {"users": [user(1, [])], "topk": 3}, 422, "unknown_field", "topk"),
    ("exclude_seen a string", {"users": [user(1, [])], "exclude_seen": "no"}, 422, "wrong_type", "exclude_seen"),
    (
        "search param a list",
        {"users": [user(1, [])], "search_params": {"x": [1]}},
        422,
        "wrong_type",
        "search_params.x",
    ),
    (
        "unknown search param",
        {"users": [user(1, [])], "search_params": {"nprobe_typo": 3}},
        422,
        "invalid_search_params",
        "search_params",
    ),
    ("body a list", [1, 2], 422, "wrong_type", None),
    ("body too large", {"users": [user(1, list(range(1, 6000)))]}, 413, "body_too_large", None),
    ("not JSON", (b"{users: 1", "application/json"), 400, "invalid_json", None),
    ("invalid UTF-8", (b'{"users": "\xff\xfe"}', "application/json"), 400, "invalid_json", None),
    ("deep nesting", (b"[" * 100000 + b"]" * 100000, "application/json"), 413, "body_too_large", None),
    ("deep nesting under the limit", (b"[" * 9000 + b"]" * 9000, "application/json"), None, None, None),
    ("NaN literal", (b'{"users": [], "k": NaN}', "application/json"), 422, None, None),
    (
        "Infinity in history",
        (
            b'{"users": [{"user_id": 1, "gender": "M", "age": 1, "occupation": 1, "zip": "1", '
            b'"hist_movie_id": [Infinity]}]}',
            "application/json",
        ),
        422,
        "wrong_type",
        "users[0].hist_movie_id[0]",
    ),
    ("form content type", (b"users=1", "application/x-www-form-urlencoded"), 415, "unsupported_media_type", None),
]


@pytest.mark.parametrize(("name", "body", "status", "kind", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_recommend_requests_get_a_4xx_that_names_the_field(shared, name, body, status, kind, field):
    if isinstance(body, tuple):
        response = shared.client.post("/v1/recommend", content=body[0], headers={"content-type": body[1]})
    else:
        response = shared.post("/v1/recommend", body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and (kind is None or error["kind"] == kind), error
    assert field is None or error.get("field") == field, error
    if field:
        assert field.split("[")[0].split(".")[0] in error["message"]
    assert "Traceback" not in response.text and not re.search(r"/(tmp|home|work|usr)/", response.text)


BAD_SEARCH = [
    ("wrong dimension", {"vectors": [[0.1, 0.2]]}, "wrong_dimension", "vectors[0]"),
    ("beyond float32", {"vectors": "huge"}, "wrong_type", "vectors[0][0]"),
    ("string in vector", {"vectors": [["a"] * 16]}, "wrong_type", None),
    ("exclude id a string", {"vectors": None, "exclude": [["a"]]}, "unknown_id_type", "exclude[0][0]"),
    ("too many vectors", {"vectors": "many"}, "too_many_vectors", "vectors"),
]


@pytest.mark.parametrize(("name", "body", "kind", "field"), BAD_SEARCH, ids=[b[0] for b in BAD_SEARCH])
def test_bad_search_requests(shared, model_a, name, body, kind, field):
    dim = shared.client.get("/v1/info").json()["index"]["dim"]
    body = dict(body)
    if body["vectors"] is None:
        body["vectors"] = [[0.1] * dim]
    elif body["vectors"] == "many":
        body["vectors"] = [[0.1] * dim] * 9
    elif body["vectors"] == "huge":
        body["vectors"] = [[1e300] + [0.1] * (dim - 1)]
    elif name == "string in vector":
        body["vectors"] = [["a"] * dim]
    response = shared.post("/v1/search", body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["kind"] == kind and (field is None or error["field"] == field), error


def test_nan_and_zero_vectors_are_4xx(shared):
    dim = shared.client.get("/v1/info").json()["index"]["dim"]
    nan = shared.client.post(
        "/v1/search", content=b'{"vectors": [[' + b",".join([b"NaN"] * dim) + b"]]}",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert nan.status_code == 422 and nan.json()["error"]["kind"] == "wrong_type"


def test_an_engine_error_fails_only_its_own_request(shared):
    """A zero vector has no cosine: the core refuses it. Sent among good requests of the same k (one index
    query for the whole batch), only it gets the 4xx; the others get their answers."""
    dim = shared.client.get("/v1/info").json()["index"]["dim"]
    rng = np.random.default_rng(5)
    bodies = [{"vectors": [[0.0] * dim] if i == 3 else rng.normal(size=(2, dim)).tolist(), "k": 4} for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: httpx.post(shared.url + "/v1/search", json=b, timeout=30), bodies))
    assert [a.status_code for a in answers] == [200, 200, 200, 422, 200, 200, 200, 200]
    error = answers[3].json()["error"]
    assert error["kind"] == "invalid_input" and "zero vector" in error["message"]
    assert all(len(a.json()["results"]) == 2 for i, a in enumerate(answers) if i != 3)


def test_http_level_errors_are_json(shared):
    for response, status, kind in (
        (shared.client.get("/no/such/path"), 404, "not_found"),
        (shared.client.get("/v1/recommend"), 405, "method_not_allowed"),
        (shared.client.post("/admin/reload"), 404, "admin_disabled"),
    ):
        assert response.status_code == status and response.json()["error"]["kind"] == kind, response.text
    chunked = shared.client.post(
        "/v1/recommend", content=iter([b'{"users": [' + b'{"a": 1},' * 3000, b"{}]}"]),
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert chunked.status_code == 413 and chunked.json()["error"]["kind"] == "body_too_large"


def test_bad_requests_never_made_a_500_and_are_counted(shared):
    families = {f.name: f for f in text_string_to_metric_families(shared.client.get("/metrics").text)}
    statuses = {s.labels["status"] for s in families["rechub_serve_requests"].samples if s.name.endswith("_total")}
    assert "500" not in statuses
    kinds = {s.labels["kind"] for s in families["rechub_serve_errors"].samples if s.name.endswith("_total")}
    assert {"missing_feature", "wrong_type", "k_out_of_range", "body_too_large", "unknown_id_type"} <= kinds


def test_metrics_parse_and_cover_the_endpoints(shared):
    shared.post("/v1/recommend", {"users": [user(1, [1])]})
    families = {f.name: f for f in text_string_to_metric_families(shared.client.get("/metrics").text)}
    for name in ("rechub_serve_requests", "rechub_serve_request_duration_seconds", "rechub_serve_errors",
                 "rechub_serve_batch_users", "rechub_serve_batch_duration_seconds", "rechub_serve_index_generation",
                 "rechub_serve_live_recall", "rechub_serve_swaps", "rechub_serve_model_info"):  # fmt: skip
        assert name in families, f"{name} missing from /metrics"
    assert families["rechub_serve_request_duration_seconds"].type == "histogram"
    endpoints = {s.labels.get("endpoint") for s in families["rechub_serve_request_duration_seconds"].samples}
    assert {"/v1/recommend", "/v1/info", "/metrics"} & endpoints
    assert [s.value for s in families["rechub_serve_index_generation"].samples] == [1.0]


def test_info_and_probes(shared, model_a):
    info = shared.client.get("/v1/info").json()
    manifest = json.loads((model_a / "items.index" / "manifest.json").read_text())
    assert info["generation"] == 1 and info["mode"] == "recommend"
    assert info["model_hash"] == manifest["metadata"]["model_hash"]
    assert info["index"]["manifest"]["created"] == manifest["created"]
    assert info["index"]["backend"] == "numpy" and info["versions"]["rechub-serving"]
    assert info["recall"]["enabled"] and info["recall"]["reference"].startswith("the serving index")
    assert [f["name"] for f in info["user_tower"]["features"]][-1] == "hist_movie_id"
    assert not re.search(r"/(tmp|home|work|usr)/", json.dumps(info)), "info must not show file paths"
    assert shared.client.get("/health").json()["status"] == "ok"
    assert shared.client.get("/ready").json() == {"status": "ready", "generation": 1}


def test_openapi_matches_the_answers(shared):
    from rechub_serving.serve.schemas import ErrorResponse, RecommendResponse

    spec = shared.client.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/search", "/v1/info", "/health", "/ready", "/metrics", "/admin/reload"} <= set(
        spec["paths"]
    )
    user_schema = spec["components"]["schemas"]["UserFeatures"]
    assert set(user_schema["required"]) == {"user_id", "gender", "age", "occupation", "zip", "hist_movie_id"}
    seen_items = spec["components"]["schemas"]["RecommendRequest"]["properties"]["seen"]
    assert "integer" in json.dumps(seen_items)
    ok = shared.post("/v1/recommend", {"users": [user(1, [1, 2])], "k": 3})
    RecommendResponse.model_validate(ok.json())
    assert "RecommendResponse" in json.dumps(spec["paths"]["/v1/recommend"]["post"]["responses"]["200"])
    bad = shared.post("/v1/recommend", {"users": [], "k": 3})
    ErrorResponse.model_validate(bad.json())
    assert "422" in spec["paths"]["/v1/recommend"]["post"]["responses"]


def test_request_timeout_is_a_504(start_server, model_a):
    server = start_server(model_a, "--timeout", "0.00001")
    response = server.post("/v1/recommend", {"users": [user(1, [1])]})
    assert response.status_code == 504 and response.json()["error"]["kind"] == "timeout"
    assert server.stop() == 0


@pytest.mark.slow
def test_index_alone_serves_search_only(start_server, model_a):
    server = start_server("--index", model_a / "items.index")
    dim = server.client.get("/v1/info").json()["index"]["dim"]
    assert server.post("/v1/search", {"vectors": [[0.1] * dim], "k": 3}).status_code == 200
    missing = server.post("/v1/recommend", {"users": [user(1, [])]})
    assert missing.status_code == 404 and missing.json()["error"]["kind"] == "no_user_tower"
    assert "/v1/recommend" not in server.client.get("/openapi.json").json()["paths"]
    assert server.stop() == 0


def test_cli_refuses_bad_paths_and_has_no_token_option(tmp_path):
    env_path = {"PYTHONPATH": str(ROOT)}
    import os

    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "rechub_serving.cli", "serve", *a], capture_output=True, text=True,
        env={**os.environ, **env_path}, timeout=120,
    )  # fmt: skip
    missing = run(str(tmp_path / "nope"))
    assert missing.returncode == 1 and "is not a directory" in missing.stderr and "Traceback" not in missing.stderr
    assert run("--index", str(tmp_path), "--admin-token", "x").returncode == 2


def test_importing_the_library_imports_no_web_framework():
    code = "import rechub_serving, rechub_serving.serve, sys; print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_search_params_are_per_request(tmp_path, start_server):
    """Two groups in flight: each request gets its own k, and the engine sees each request's parameters."""
    pytest.importorskip("faiss")
    try:
        builder = builder_factory("faiss", index_type="HNSW", metric="l2", m=4, ef_search=4)
    except Exception as exc:  # the faiss plugin is not installed
        pytest.skip(f"faiss backend unavailable: {exc}")
    rng = np.random.default_rng(0)
    items = rng.normal(size=(3000, 8)).astype(np.float32)
    with builder.from_embeddings(items) as index:
        index.save(tmp_path / "hnsw.index")
        queries = rng.normal(size=(20, 8)).astype(np.float32)
        low = index.query(queries, 10, ef_search=4).indices
        high = index.query(queries, 10, ef_search=256).indices
    server = start_server("--index", tmp_path / "hnsw.index", "--max-wait-ms", "30")
    bodies = [{"vectors": [q.tolist()], "k": 10, "search_params": {"ef_search": 4 if i % 2 else 256}}
              for i, q in enumerate(queries)]  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda b: httpx.post(server.url + "/v1/search", json=b, timeout=30).json(), bodies))
    for i, answer in enumerate(answers):
        want = low[i] if i % 2 else high[i]
        assert answer["results"][0]["ids"] == want.tolist()
    assert not np.array_equal(low, high), "the test needs ef_search to matter"
    assert server.stop() == 0


@pytest.mark.slow
def test_json_logs_carry_structured_errors_and_one_line_per_request(start_server, model_a):
    server = start_server(model_a, "--log-format", "json", "--log-level", "debug", "--watch-interval", "0")
    assert server.post("/v1/recommend", {"users": [user(1, [1])], "k": 0}).status_code == 422
    assert server.post("/v1/recommend", {"users": [user(1, [1])]}).status_code == 200
    assert server.stop() == 0
    records = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    rejected = [r for r in records if r.get("kind") == "k_out_of_range"]
    assert rejected and rejected[0]["field"] == "k" and rejected[0]["endpoint"] == "/v1/recommend"
    lines = [r for r in records if r.get("endpoint") == "/v1/recommend" and "duration_ms" in r]
    assert sorted(r["status"] for r in lines) == [200, 422]
