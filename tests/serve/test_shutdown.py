"""SIGTERM: stop accepting, answer every request already accepted, exit 0; the same with several workers."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rechub_serving import builder_factory


@pytest.fixture(scope="module")
def big_index(tmp_path_factory):
    """An exact index large enough that a batch takes a while (so requests are in flight at SIGTERM)."""
    path = tmp_path_factory.mktemp("big") / "items.index"
    rng = np.random.default_rng(0)
    with builder_factory("numpy", metric="ip").from_embeddings(rng.normal(size=(100_000, 32))) as index:
        index.save(path)
    return path


def accepted(server, endpoint: str) -> tuple[float, float]:
    """(in flight, answered) requests to `endpoint`, from one scrape.

    One scrape of one worker reads the request counter before the in-flight
    gauge (their registration order), and the server lowers the gauge before it raises the counter, so a request that
    ends meanwhile is counted at most once.
    """
    answered = flight = 0.0
    for family in text_string_to_metric_families(server.client.get("/metrics").text):
        if family.name == "rechub_serve_requests":
            answered = sum(
                s.value for s in family.samples if s.name.endswith("_total") and s.labels["endpoint"] == endpoint
            )
        elif family.name == "rechub_serve_in_flight_requests":
            flight = family.samples[0].value - 1  # this scrape excluded
    return flight, answered


def search_body(rng, n=8):
    return {"vectors": rng.normal(size=(n, 32)).tolist(), "k": 50}


def test_sigterm_answers_every_accepted_request_and_exits_0(start_server, big_index):
    server = start_server("--index", big_index, "--max-batch", "16", "--timeout", "300")
    rng = np.random.default_rng(1)
    bodies = [search_body(rng, 256) for _ in range(10)]  # 256 queries on 100,000 items: a while each
    clients = [httpx.Client(base_url=server.url, timeout=120) for _ in bodies]  # built before: they send at once
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(c.post, "/v1/search", json=b) for c, b in zip(clients, bodies, strict=True)]
        # Signal once every request is accepted (in flight or already answered) and some are still in flight;
        # waiting for all ten in flight at once raced with the first ones finishing on a fast machine.
        deadline = time.monotonic() + 60
        while True:
            flight, answered = accepted(server, "/v1/search")
            if flight >= 1 and flight + answered >= len(bodies):
                break
            assert answered < len(bodies), "every request was answered before the signal"
            assert time.monotonic() < deadline, "the requests were never all accepted"
            time.sleep(0.005)
        server.proc.send_signal(signal.SIGTERM)
        try:  # a probe on a connection the server has not closed yet sees it draining
            assert server.client.get("/ready").status_code == 503
        except httpx.TransportError:
            pass
        responses = [f.result() for f in futures]
    for c in clients:
        c.close()
    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert all(len(row["ids"]) == 50 for r in responses for row in r.json()["results"])
    assert server.proc.wait(60) == 0, server.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=5)
    log = server.output()
    assert "every accepted request was answered" in log and "Traceback" not in log
    assert log.index("Waiting for connections to close") < log.index("every accepted request was answered")


@pytest.mark.slow
def test_sigterm_during_a_load_loop(start_server, big_index):
    """Clients in a loop: every answer before the exit is a 200; the only failures are refused new connections."""
    server = start_server("--index", big_index, "--max-batch", "32", "--timeout", "300")
    rng = np.random.default_rng(2)
    statuses: list[int] = []
    late_errors: list[str] = []
    early_errors: list[str] = []
    signalled = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while True:
                sent_after = signalled.is_set()
                try:
                    response = c.post("/v1/search", json=search_body(rng, 4))
                except httpx.TransportError as exc:
                    with lock:
                        (late_errors if sent_after or signalled.is_set() else early_errors).append(repr(exc))
                    if isinstance(exc, httpx.ConnectError):
                        return
                    continue
                with lock:
                    statuses.append(response.status_code)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    signalled.set()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0, server.output()
    for thread in threads:
        thread.join(60)
    assert statuses and set(statuses) == {200}, set(statuses)
    assert early_errors == []
    assert all("ConnectError" in e or "RemoteProtocolError" in e or "ReadError" in e for e in late_errors), late_errors


@pytest.mark.slow
def test_several_workers_share_the_port_and_the_metrics(start_server, model_a):
    from tests.serve.conftest import user

    server = start_server(model_a, "--workers", "2", "--watch-interval", "0")

    def generations():
        for family in text_string_to_metric_families(server.client.get("/metrics").text):
            if family.name == "rechub_serve_index_generation":
                return {s.labels["pid"]: s.value for s in family.samples}
        return {}

    deadline = time.monotonic() + 60
    while sorted(generations().values()) != [1.0, 1.0]:  # /ready answered by one worker; wait for both
        assert time.monotonic() < deadline, generations()
        time.sleep(0.2)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda i: httpx.post(server.url + "/v1/recommend", json={"users": [user(i, [1])]}, timeout=60),
                     range(40))
        )  # fmt: skip
    assert [r.status_code for r in responses] == [200] * 40
    families = {f.name: f for f in text_string_to_metric_families(server.client.get("/metrics").text)}
    served = sum(
        s.value for s in families["rechub_serve_requests"].samples
        if s.name.endswith("_total") and s.labels["endpoint"] == "/v1/recommend"
    )  # fmt: skip
    assert served == 40, "a scrape of one worker reports every worker's requests"
    assert sorted(generations().values()) == [1.0, 1.0]
    assert server.stop() == 0, server.output()
