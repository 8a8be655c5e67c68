"""A complete backend plugin, registered in-process and checked against the numpy reference.

A plugin implements the engine protocol (docs/plugins.md): a ``Backend``
describes the backend and makes engines; an ``Engine`` answers searches with
labels and raw distances. The core does everything else: it converts and
validates inputs (C-contiguous float32, finite, normalised for cosine), maps
ids to labels, applies ``exclude``, pads, turns ``Engine.distance`` into the
metric table, saves with a manifest and checksums, and locks. Installed for
real, a plugin is a distribution with an entry point::

    [project.entry-points.rechub_serving]
    tiny = "my_package.tiny_backend"      # a module with a @hookimpl register_backends

Here ``registered_plugin`` registers it for a block of code, and
``Builder(TinyBackend)`` uses it with no registration at all. Its tests would
subclass ``rechub_serving.testing.BackendConformance`` (which needs pytest;
this script does not). Run: ``python examples/third_party_plugin.py``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rechub_serving import (
    Backend,
    BackendConfig,
    Builder,
    Capabilities,
    Engine,
    EngineFiles,
    Metric,
    RawDistance,
    builder_factory,
    open_index,
)
from rechub_serving.testing import registered_plugin


# --- the plugin ----------------------------------------------------------------------------
class TinyEngine(Engine):
    """Brute force over one matrix; a vector's label is its row."""

    def __init__(self, vectors: np.ndarray, metric: Metric):
        self.vectors = vectors
        self.distance = RawDistance.table(metric)  # squared L2 for l2, the inner product for ip and cosine

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.vectors)

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.distance is RawDistance.SQUARED_L2:  # |q - x|^2, smaller is better
            cost = (queries**2).sum(1)[:, None] - 2 * queries @ self.vectors.T + (self.vectors**2).sum(1)
        else:  # the inner product, larger is better
            cost = -(queries @ self.vectors.T)
        labels = np.argsort(cost, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(cost, labels, axis=1)
        return labels, best if self.distance is RawDistance.SQUARED_L2 else -best

    def save(self, directory: Path) -> dict[str, Any]:
        np.save(directory / "vectors.npy", self.vectors, allow_pickle=False)
        return {}


class TinyBackend(Backend):
    name = "tiny"
    capabilities = Capabilities(exact=True, persist=True)

    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> TinyEngine:
        return TinyEngine(vectors, config.metric)

    def load(self, files: EngineFiles, config: BackendConfig) -> TinyEngine:
        return TinyEngine(np.load(files.path("vectors.npy"), allow_pickle=False), config.metric)


# --- using it ------------------------------------------------------------------------------
def main() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(2_000, 16)).astype(np.float32)
    users = rng.normal(size=(5, 16)).astype(np.float32)
    names = [f"sku-{i}" for i in range(len(items))]
    seen = [names[:5]] * len(users)

    with registered_plugin(TinyBackend, name="tiny-plugin"), tempfile.TemporaryDirectory() as tmp:
        for metric in ("l2", "ip", "cosine"):
            with builder_factory("numpy", metric=metric).from_embeddings(items, ids=names) as reference:
                want = reference.query(users, k=10, exclude=seen)
            with builder_factory("tiny", metric=metric).from_embeddings(items, ids=names) as tiny:
                got = tiny.query(users, k=10, exclude=seen)
                tiny.save(Path(tmp) / metric)
            with open_index(Path(tmp) / metric) as loaded:  # found by its registered name
                again = loaded.query(users, k=10, exclude=seen)
            for result in (got, again):
                assert (result.indices == want.indices).all()
                np.testing.assert_allclose(result.distances, want.distances, rtol=1e-4, atol=1e-3)
            print(f"tiny/{metric}: same ids and distances as numpy, saved and loaded; user 0 -> {got.indices[0, :3]}")

    with Builder(TinyBackend, metric="ip").from_embeddings(items) as tiny:  # no registration at all
        with builder_factory("numpy", metric="ip").from_embeddings(items) as reference:
            assert (tiny.query(users, k=10).indices == reference.query(users, k=10).indices).all()
        print(f"Builder(TinyBackend), unregistered: same ids as numpy; user 0 -> {tiny.query(users[0], 3).indices[0]}")


if __name__ == "__main__":
    main()
