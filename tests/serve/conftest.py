"""Fixtures of the serving tests: tiny trained models, and real servers in subprocesses on free ports.

A server is ``python -m rechub_serving.cli serve ...`` started the way a user
starts it, bound to 127.0.0.1 on a free port, called with a real HTTP client
(httpx), and stopped with SIGTERM (its exit code is checked by the tests
that care).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 90


def train_model(out: Path, seed: int) -> Path:
    """A small DSSM trained on synthetic MovieLens-shaped data, exported as `rechub-index train` does."""
    from rechub_serving.train import make_synthetic, train_dssm
    from rechub_serving.train.artifacts import write_artifacts

    result = train_dssm(
        make_synthetic(200, 120, 4000, seed=seed), mode=2, n_epoch=1, batch_size=128, seq_max_len=10,
        ks=(10,), progress=False, threads=1, seed=seed,
    )  # fmt: skip
    write_artifacts(result, out)
    return out


@pytest.fixture(scope="session")
def model_a(tmp_path_factory) -> Path:
    return train_model(tmp_path_factory.mktemp("model_a"), seed=0)


@pytest.fixture(scope="session")
def model_b(tmp_path_factory) -> Path:
    return train_model(tmp_path_factory.mktemp("model_b"), seed=1)


@pytest.fixture
def model_copy(model_a, tmp_path) -> Path:
    """A private copy of model A (tests that replace files must not touch the shared one)."""
    return Path(shutil.copytree(model_a, tmp_path / "model"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `rechub-index serve` subprocess and an HTTP client for it."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        environment.pop("RECHUB_SERVE_ADMIN_TOKEN", None)
        environment.update(env or {})
        self._log_file = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rechub_serving.cli", "serve", *args, "--port", str(self.port)],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=environment, cwd=str(log.parent),
        )  # fmt: skip
        self.client = httpx.Client(base_url=self.url, timeout=30)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise AssertionError(f"the server was not ready within {STARTUP_TIMEOUT_S} s:\n{self.output()}")

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def post(self, path: str, body: object) -> httpx.Response:
        return self.client.post(path, json=body)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        self._log_file.close()
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    """``start_server(*args, env=None) -> Server``; every server still running at the end is killed."""
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server([str(a) for a in args], tmp_path / f"server-{len(servers)}.log", env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(signal.SIGKILL)


def user(user_id: int, hist: list, **extra) -> dict:
    """Raw features of one synthetic MovieLens user."""
    return {
        "user_id": user_id,
        "gender": "M",
        "age": 25,
        "occupation": 4,
        "zip": "00000",
        "hist_movie_id": hist,
        **extra,
    }


@pytest.fixture
def make_user():
    return user
