"""Plugin discovery: entry points, broken plugins, the restricting variable, fake plugins."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

import rechub_serving as rs
from rechub_serving import Backend, Capabilities, Engine, Param, hookimpl
from rechub_serving.testing import registered_plugin


def _fake_distribution(tmp_path, monkeypatch, name: str, module_source: str) -> None:
    """Install a distribution with one entry point, visible to importlib.metadata."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = tmp_path / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[rechub_serving]\n{name} = {name}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)


class TinyEngine(Engine):
    def __init__(self, vectors):
        self.vectors = vectors

    dim = property(lambda self: self.vectors.shape[1])

    def __len__(self):
        return len(self.vectors)

    def search(self, queries, k, params, exclude):
        scores = queries @ self.vectors.T
        top = np.argsort(-scores, axis=1)[:, :k]
        return top, np.take_along_axis(scores, top, axis=1)


class TinyBackend(Backend):
    name = "tiny"
    params = (Param("depth", int, 3, "a made-up parameter", aliases=("Depth",), minimum=1),)
    capabilities = Capabilities(exact=True, persist=False)

    def build(self, vectors, config, ids=None):
        return TinyEngine(vectors)

    def load(self, files, config):
        raise AssertionError("not persisted")


def test_numpy_backend_is_registered_like_any_plugin(fresh_registry):
    names = [b.name for b in rs.list_backends()]
    assert "numpy" in names
    info = next(b for b in rs.list_backends() if b.name == "numpy")
    assert info.capabilities.exact and info.distribution == "rechub-serving"
    assert info.describe()["params"][0]["name"] == "metric"


def test_registered_plugin_is_added_and_removed(fresh_registry):
    with registered_plugin(TinyBackend):
        builder = rs.builder_factory("tiny", Depth=5, metric="ip")
        assert builder.config["depth"] == 5
        with builder.from_embeddings(np.eye(4, dtype=np.float32)) as index:
            assert np.asarray(index.query(np.eye(4)[1], 1).indices).tolist() == [[1]]
            with pytest.raises(rs.UnsupportedOperation):
                index.save("/tmp/never")
    with pytest.raises(rs.UnknownBackendError):
        rs.builder_factory("tiny")


def test_unknown_backend_lists_installed_and_names_distribution(fresh_registry):
    with pytest.raises(rs.UnknownBackendError) as info:
        rs.builder_factory("scann")
    message = str(info.value)
    assert "numpy" in message and "rechub-serving-scann" in message


def test_misspelt_backend_gets_did_you_mean(fresh_registry):
    with pytest.raises(rs.UnknownBackendError) as info:
        rs.builder_factory("nmupy")
    assert "Did you mean 'numpy'?" in str(info.value) and "rechub-serving-nmupy" not in str(info.value)


def test_backend_name_is_positional_so_name_is_a_parameter(fresh_registry):
    with pytest.raises(rs.UnknownParameterError, match="'name'"):
        rs.builder_factory("numpy", name="x")  # not "got multiple values for argument"


def test_unknown_parameter_lists_valid_names_and_suggests(fresh_registry):
    with registered_plugin(TinyBackend):
        with pytest.raises(rs.UnknownParameterError) as info:
            rs.builder_factory("tiny", detph=2)
        assert "depth" in str(info.value) and "Did you mean" in str(info.value)
        with pytest.raises(rs.InvalidParameterError, match="expected an integer"):
            rs.builder_factory("tiny", depth="deep")
        with pytest.raises(rs.InvalidParameterError, match="too small"):
            rs.builder_factory("tiny", depth=0)
        with pytest.raises(rs.InvalidParameterError, match="twice"):
            rs.builder_factory("tiny", depth=2, Depth=3)


def test_broken_plugin_is_reported_and_isolated(fresh_registry, tmp_path, monkeypatch):
    _fake_distribution(tmp_path, monkeypatch, "broken_plugin", "raise ImportError('engine library missing')\n")
    names = [b.name for b in rs.list_backends()]
    assert "numpy" in names
    broken = rs.list_broken_plugins()
    assert any(b.plugin == "broken_plugin" and "engine library missing" in b.error for b in broken)


def test_plugin_failing_in_hook_is_isolated(fresh_registry, tmp_path, monkeypatch):
    source = """
    from rechub_serving import hookimpl

    @hookimpl
    def register_backends(register):
        raise RuntimeError("boom")
    """
    _fake_distribution(tmp_path, monkeypatch, "hook_fails", source)
    assert "numpy" in [b.name for b in rs.list_backends()]
    assert any(b.plugin == "hook_fails" and "boom" in b.error for b in rs.list_broken_plugins())


def test_entry_point_plugin_is_loaded(fresh_registry, tmp_path, monkeypatch):
    source = """
    from rechub_serving import hookimpl
    from tests.test_plugins import TinyBackend

    class Renamed(TinyBackend):
        name = "renamed"

    @hookimpl
    def register_backends(register):
        register(Renamed)
    """
    _fake_distribution(tmp_path, monkeypatch, "good_plugin", source)
    info = next(b for b in rs.list_backends() if b.name == "renamed")
    assert info.distribution == "good_plugin" and info.version == "0.1"


def test_environment_variable_restricts_plugins(fresh_registry, tmp_path, monkeypatch):
    _fake_distribution(tmp_path, monkeypatch, "broken_plugin", "raise ImportError('x')\n")
    monkeypatch.setenv("RECHUB_SERVING_PLUGINS", "")
    assert [b.name for b in rs.list_backends()] == ["numpy"]
    assert rs.list_broken_plugins() == []


def test_duplicate_backend_name_is_a_broken_plugin(fresh_registry):
    class Clash(TinyBackend):
        name = "numpy"

    with registered_plugin(Clash, name="clash"):
        assert rs.builder_factory("numpy").backend.__name__ == "NumpyBackend"
        assert any("already registered" in b.error for b in rs.list_broken_plugins())


def test_hookimpl_is_public():
    assert callable(hookimpl)
