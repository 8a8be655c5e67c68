"""The milvus backend against the official Milvus standalone image (docker-compose.yml), via pytest-docker.

Skipped with the reason when no Docker engine answers.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rechub_serving import builder_factory
from rechub_serving.testing import BackendConformance

pytestmark = [pytest.mark.docker, pytest.mark.server]


def _docker_problem() -> str | None:
    if not shutil.which("docker"):
        return "the docker command is not installed"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker engine answers ({lines[-1] if lines else f'exit code {info.returncode}'})"
    return None


@pytest.fixture(scope="session")
def docker_compose_file():
    return str(Path(__file__).parent.parent / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_milvus_uri(request):
    problem = _docker_problem()
    if problem:
        pytest.skip(f"Docker Milvus tests skipped: {problem}")
    services = request.getfixturevalue("docker_services")  # pytest-docker: compose up, down at the end
    port = services.port_for("standalone", 19530)
    uri = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            from pymilvus import MilvusClient

            client = MilvusClient(uri=uri, timeout=3)
            client.list_collections(timeout=3)
            client.close()
            return True
        except Exception:
            return False

    services.wait_until_responsive(check=ready, timeout=240.0, pause=2.0)
    return uri


class TestDockerConformance(BackendConformance):
    backend = "milvus"
    params = {"index_type": "HNSW"}
    metrics = ("cosine",)

    @pytest.fixture(autouse=True)
    def _uri(self, docker_milvus_uri):
        self.uri = docker_milvus_uri

    def make_builder(self, **params):
        return builder_factory(self.backend, uri=self.uri, **{**self.params, **params})


def test_docker_ivf_flat(docker_milvus_uri):
    items = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    with builder_factory("milvus", uri=docker_milvus_uri, index_type="IVF_FLAT", nlist=8).from_embeddings(
        items
    ) as index:
        res = index.query(items[:3], 3, nprobe=8)
        assert res.indices[:, 0].tolist() == [0, 1, 2]
