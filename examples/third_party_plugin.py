"""A backend plugin in twenty lines, registered in-process.

A backend is a ``Builder`` and an ``Indexer`` subclass. The core has already
validated and converted the inputs (float32, finite, normalised for cosine),
owns the ids, ``exclude``, padding and the saved-index format; the plugin
ranks and reports distances in the metric table (l2: squared, ascending;
ip / cosine: inner product, descending). Installed for real, it is a
distribution with an entry point::

    [project.entry-points.rechub_serving]
    tiny = "my_package.tiny_backend"      # a module with @hookimpl register_backends

Here ``rechub_serving.testing.registered_plugin`` registers it for a block of
code. Its tests would subclass ``rechub_serving.testing.BackendConformance``.
Run: ``python examples/third_party_plugin.py``.
"""

from __future__ import annotations

import numpy as np

from rechub_serving import Builder, Capabilities, Indexer, Metric, builder_factory
from rechub_serving.testing import registered_plugin


# --- the plugin: twenty lines ------------------------------------------------------------
class TinyIndexer(Indexer):
    def __init__(self, vectors: np.ndarray):
        self._vectors = vectors

    def _search(self, queries, k, params, exclude):
        if self.metric is Metric.L2:  # negative squared distance: higher is better, like ip
            scores = 2 * queries @ self._vectors.T - (self._vectors**2).sum(1) - (queries**2).sum(1)[:, None]
        else:
            scores = queries @ self._vectors.T
        labels = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(scores, labels, axis=1)
        return labels, (-best if self.metric is Metric.L2 else best)

    def _save(self, directory):
        np.save(directory / "vectors.npy", self._vectors, allow_pickle=False)


class TinyBuilder(Builder):
    name = "tiny"
    capabilities = Capabilities(exact=True)

    def _build(self, vectors, ids):
        return TinyIndexer(vectors)

    def _load(self, directory, manifest):
        return TinyIndexer(np.load(directory / "vectors.npy", allow_pickle=False))


# --- using it ----------------------------------------------------------------------------
def main() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(2_000, 16)).astype(np.float32)
    users = rng.normal(size=(5, 16)).astype(np.float32)
    names = [f"sku-{i}" for i in range(len(items))]

    with registered_plugin(TinyBuilder, name="tiny-plugin"):
        for metric in ("l2", "ip", "cosine"):
            with builder_factory("tiny", metric=metric).from_embeddings(items, ids=names) as tiny:
                got = tiny.query(users, k=10, exclude=[names[:5]] * len(users))
            with builder_factory("numpy", metric=metric).from_embeddings(items, ids=names) as reference:
                want = reference.query(users, k=10, exclude=[names[:5]] * len(users))
            assert (got.indices == want.indices).all()
            np.testing.assert_allclose(got.distances, want.distances, rtol=1e-4, atol=1e-3)
            print(f"tiny/{metric}: same ids and distances as the numpy reference; user 0 -> {got.indices[0, :3]}")


if __name__ == "__main__":
    main()
