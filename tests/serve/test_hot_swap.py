"""Hot swap: new files on disk are served without one failed request; bad ones are refused and the old pair stays."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rechub_serving import builder_factory
from tests.serve.conftest import user

PROBE = {"users": [user(7, [1, 2, 3])], "k": 10}


def metric(server, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(server.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def wait_for(predicate, timeout: float = 30.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def model_hash(model_dir) -> str:
    return json.loads((model_dir / "items.index" / "manifest.json").read_text())["metadata"]["model_hash"]


def save_index(model_dir, vectors, ids, metadata) -> None:
    """Replace the model dir's index the way the core saves (atomically, over the old one)."""
    with builder_factory("numpy", metric="cosine").from_embeddings(vectors, ids=ids) as index:
        index.save(model_dir / "items.index", metadata=metadata)


class Load:
    """Client threads sending the probe request in a loop; every answer and every failure recorded."""

    def __init__(self, url: str, threads: int = 4):
        self.url = url
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.answers: list[tuple[int, str, tuple]] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/v1/recommend", json=PROBE)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(repr(exc))
                    continue
                with self._lock:
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text}")
                    else:
                        data = response.json()
                        self.answers.append((data["generation"], data["model_hash"], tuple(data["results"][0]["ids"])))

    def generations(self) -> set[int]:
        with self._lock:
            return {a[0] for a in self.answers}

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)


@pytest.mark.slow
def test_swaps_under_load_fail_no_request_and_change_the_answer(start_server, model_copy, model_b, tmp_path):
    live = tmp_path / "live"
    os.symlink(model_copy, live)  # blue/green: the served path is a link flipped atomically
    server = start_server(live, "--watch-interval", "0.2", "--max-wait-ms", "5")
    first = server.post("/v1/recommend", PROBE).json()["results"][0]["ids"]
    load = Load(server.url)
    try:
        wait_for(lambda: len(load.answers) > 20, what="traffic")
        # 1. a new index in place (same model, the 5 best items of the probe gone): the answer must change
        ids = np.asarray(json.loads((model_copy / "item_ids.json").read_text()))
        vectors = np.load(model_copy / "item_embeddings.npy")
        keep = ~np.isin(ids, first[:5])
        save_index(model_copy, vectors[keep], ids[keep], {"model_hash": model_hash(model_copy), "normalized": True})
        wait_for(lambda: 2 in load.generations(), what="generation 2")
        # 2. a whole new model directory behind the link
        other = shutil.copytree(model_b, tmp_path / "model_b")
        os.symlink(other, tmp_path / "live.next")
        os.replace(tmp_path / "live.next", live)
        wait_for(lambda: 3 in load.generations(), what="generation 3")
        wait_for(lambda: len([a for a in load.answers if a[0] == 3]) > 10, what="traffic on generation 3")
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    by_generation = {}
    for generation, digest, answer in load.answers:
        by_generation.setdefault(generation, set()).add((digest, answer))
    assert by_generation[1] == {(model_hash(model_copy), tuple(first))}
    ((_, answer2),) = by_generation[2]
    assert not set(first[:5]) & set(answer2) and answer2[:5] == tuple(first[5:10])
    assert {d for d, _ in by_generation[3]} == {model_hash(model_b)}
    generations = [a[0] for a in load.answers]
    assert generations == sorted(generations), "once a client saw a generation it never saw an older one"
    info = server.client.get("/v1/info").json()
    assert info["generation"] == 3 and info["last_swap"]["outcome"] == "swapped"
    assert metric(server, "rechub_serve_index_generation") == 3
    assert metric(server, "rechub_serve_swaps_total", outcome="swapped") == 2
    assert server.stop() == 0


def test_a_bad_pair_is_refused_and_the_old_one_keeps_serving(start_server, model_copy, model_b, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token-for-tests\n")
    server = start_server(model_copy, "--watch-interval", "0.2", "--admin-token-file", token)
    before = server.post("/v1/recommend", PROBE).json()
    dim = server.client.get("/v1/info").json()["index"]["dim"]
    rng = np.random.default_rng(0)

    def refused(count: int):
        return lambda: metric(server, "rechub_serve_swaps_total", outcome="refused") == count

    # a wrong dimension
    save_index(model_copy, rng.normal(size=(50, dim + 3)), None, {"model_hash": model_hash(model_copy)})
    wait_for(refused(1), what="the refusal of a wrong dimension")
    info = server.client.get("/v1/info").json()
    assert info["generation"] == 1 and info["last_swap"]["outcome"] == "refused"
    assert "dimension" in info["last_swap"]["message"]
    assert not re.search(r"/(tmp|home|work)/", info["last_swap"]["message"])
    assert server.post("/v1/recommend", PROBE).json() == before
    # an index of another model (its hash differs from the tower's): refused on request too
    save_index(model_copy, np.load(model_b / "item_embeddings.npy"), None, {"model_hash": model_hash(model_b)})
    wait_for(refused(2), what="the refusal of another model's index")
    auth = {"authorization": "Bearer s3cret-token-for-tests"}
    assert server.client.post("/admin/reload").status_code == 401
    assert server.client.post("/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    answer = server.client.post("/admin/reload", headers=auth)
    assert answer.status_code == 409 and answer.json()["error"]["kind"] == "swap_refused"
    assert "model" in answer.json()["error"]["message"] and "generation 1" in answer.json()["error"]["message"]
    # a damaged user tower
    (model_copy / "tower.tmp").write_bytes(b"not an onnx model")
    os.replace(model_copy / "tower.tmp", model_copy / "user_tower.onnx")
    answer = server.client.post("/admin/reload", headers=auth)
    assert answer.status_code == 409
    assert server.post("/v1/recommend", PROBE).json() == before
    assert server.client.get("/ready").status_code == 200
    # the right files again: swapped by the watcher
    shutil.copy(model_b / "user_tower.onnx", model_copy / "tower.tmp")
    os.replace(model_copy / "tower.tmp", model_copy / "user_tower.onnx")
    save_index(model_copy, np.load(model_b / "item_embeddings.npy"),
               np.asarray(json.loads((model_b / "item_ids.json").read_text())),
               {"model_hash": model_hash(model_b), "normalized": True})  # fmt: skip
    wait_for(lambda: server.client.get("/v1/info").json()["generation"] == 2, what="generation 2")
    assert server.post("/v1/recommend", PROBE).json()["model_hash"] == model_hash(model_b)
    ok = server.client.post("/admin/reload", headers=auth)
    assert ok.status_code == 200 and ok.json()["generation"] == 3
    assert server.stop() == 0
    log = server.output()
    assert "refused the new model" in log and "s3cret" not in log


@pytest.mark.slow
def test_admin_token_from_the_environment(start_server, model_a):
    server = start_server(model_a, "--watch-interval", "0", env={"RECHUB_SERVE_ADMIN_TOKEN": "env-token-123"})
    assert server.client.post("/admin/reload", headers={"authorization": "Bearer nope"}).status_code == 401
    ok = server.client.post("/admin/reload", headers={"authorization": "Bearer env-token-123"})
    assert ok.status_code == 200 and ok.json() == {
        "swapped": True, "generation": 2, "message": ok.json()["message"]
    }  # fmt: skip
    assert server.client.get("/v1/info").json()["admin"] is True
    assert server.stop() == 0


@pytest.mark.slow
def test_an_index_alone_refuses_another_dimension_or_metric(start_server, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "items.index"

    def save(dim: int, metric: str) -> None:
        with builder_factory("numpy", metric=metric).from_embeddings(rng.normal(size=(100, dim))) as index:
            index.save(path)

    save(8, "l2")
    server = start_server("--index", path, "--watch-interval", "0.2")
    save(9, "l2")
    wait_for(lambda: metric(server, "rechub_serve_swaps_total", outcome="refused") == 1, what="a dimension refusal")
    assert "dimension 9 differs from the serving 8" in server.client.get("/v1/info").json()["last_swap"]["message"]
    save(8, "ip")
    wait_for(lambda: metric(server, "rechub_serve_swaps_total", outcome="refused") == 2, what="a metric refusal")
    assert "metric 'ip' differs" in server.client.get("/v1/info").json()["last_swap"]["message"]
    assert server.post("/v1/search", {"vectors": [[0.5] * 8]}).json()["generation"] == 1
    save(8, "l2")
    wait_for(lambda: server.client.get("/v1/info").json()["generation"] == 2, what="generation 2")
    assert server.stop() == 0


def test_a_generation_in_use_stays_open_until_its_last_batch_ends(model_a):
    """In process: a swap while a batch holds the old generation closes it only when the batch lets go."""
    from rechub_serving.serve.config import RecallConfig, ServeConfig
    from rechub_serving.serve.store import ModelStore

    config = ServeConfig(model_dir=str(model_a), watch_interval_s=0, recall=RecallConfig(sample_rate=0))
    store = ModelStore(config, config.paths())
    store.load_initial()
    try:
        with store.acquire() as old:
            swapped, generation, _ = store.reload("test")
            assert swapped and generation == 2 and store.current is not old
            assert not old.index.closed, "closed while a batch still used it"
            assert len(old.retriever.recommend(user(1, [1]), k=3)) == 1
        assert old.index.closed and not store.current.index.closed
    finally:
        store.close()
