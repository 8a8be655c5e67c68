"""A plugin registered in-process, nothing installed: how a plugin author tests discovery.

The fake plugin below is a complete backend in twenty lines (brute force),
written against the public engine protocol only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest

from rechub_serving import UnknownBackendError, builder_factory, hookimpl, list_backends, list_broken_plugins
from rechub_serving.testing import registered_plugin

FAKE_PLUGIN = """
import numpy as np
from rechub_serving import Backend, Capabilities, Engine, Param, RawDistance, hookimpl

class FakeEngine(Engine):
    def __init__(self, vectors, metric):
        self.vectors, self.distance = vectors, RawDistance.table(metric)
    dim = property(lambda self: self.vectors.shape[1])
    def __len__(self):
        return len(self.vectors)
    def search(self, queries, k, params, exclude):
        if self.distance is RawDistance.SQUARED_L2:
            cost = ((queries[:, None, :] - self.vectors[None]) ** 2).sum(-1)
        else:
            cost = -(queries @ self.vectors.T)
        top = np.argsort(cost, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(cost, top, axis=1)
        return top, (best if self.distance is RawDistance.SQUARED_L2 else -best)

class FakeBackend(Backend):
    name = "fake"
    params = (Param("flavour", str, "vanilla", "does nothing", choices=("vanilla", "mint")),)
    capabilities = Capabilities(exact=True, persist=False)
    def build(self, vectors, config, ids=None):
        return FakeEngine(vectors, config.metric)
    def load(self, files, config):
        raise NotImplementedError

@hookimpl
def register_backends(register):
    register(FakeBackend)
"""


def fake_module() -> types.ModuleType:
    module = types.ModuleType("fake_rechub_plugin")
    exec(compile(FAKE_PLUGIN, "fake_rechub_plugin.py", "exec"), module.__dict__)
    return module


def test_a_plugin_registered_in_process_works_like_an_installed_one():
    items = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    with registered_plugin(fake_module(), name="fake-plugin"):
        assert "fake" in {b.name for b in list_backends()}
        with builder_factory("fake", metric="l2", flavour="MINT").from_embeddings(
            items, ids=[f"i{i}" for i in range(50)]
        ) as index:
            res = index.query(items[:3], 2, exclude=[["i0"], [], None])
            assert res.indices[0, 0] != "i0" and res.indices[1, 0] == "i1"
            with builder_factory("numpy", metric="l2").from_embeddings(items) as ref:
                np.testing.assert_allclose(
                    index.query(items, 5).distances, ref.query(items, 5).distances, rtol=1e-4, atol=1e-4
                )
    with pytest.raises(UnknownBackendError):
        builder_factory("fake")


def test_a_backend_class_can_be_registered_directly():
    module = fake_module()
    with registered_plugin(module.FakeBackend, name="fake-class"):
        assert builder_factory("fake").backend is module.FakeBackend
    assert "fake" not in {b.name for b in list_backends()}


def _run(code: str, **env: str) -> str:
    """Plugin discovery happens once per process: a fresh interpreter sees the environment."""
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()


def test_environment_variable_restricts_plugins():
    code = "from rechub_serving import list_backends; print(','.join(b.name for b in list_backends()))"
    assert "hnswlib" in _run(code).split(",")
    assert _run(code, RECHUB_SERVING_PLUGINS="").split(",") == ["numpy"]
    assert "hnswlib" in _run(code, RECHUB_SERVING_PLUGINS="hnswlib").split(",")


def test_a_broken_plugin_is_reported_and_the_others_keep_working():
    class Broken:
        @staticmethod
        @hookimpl
        def register_backends(register):
            raise RuntimeError("the engine library is too old")

    with registered_plugin(Broken(), name="broken-plugin"):
        (broken,) = [b for b in list_broken_plugins() if b.plugin == "broken-plugin"]
        assert "too old" in broken.error
        assert {"numpy", "hnswlib"} <= {b.name for b in list_backends()}
