"""A test double: a backend whose search is a function you give, like httpx's ``MockTransport``.

Use it in the tests of code that *uses* an index (a service, a retriever),
or to measure the SDK's own overhead with the engine's cost taken out::

    backend = mock_backend(lambda queries, k, params: (labels, distances))
    index = Builder(backend, metric="ip").from_embeddings(vectors)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rechub_serving import Backend, BackendConfig, Capabilities, Engine, EngineFiles, UnsupportedOperation

__all__ = ["MockEngine", "mock_backend"]

Handler = Callable[[np.ndarray, int, Mapping[str, Any]], tuple[np.ndarray, np.ndarray]]


class MockEngine(Engine):
    """Holds the vectors (for ``dim`` and ``len``) and answers every search with ``handler``.

    ``calls`` records ``(queries, k, params, exclude)`` of each search (unless
    ``record`` is False: a benchmark's million calls would keep a million query arrays).
    """

    def __init__(self, vectors: np.ndarray, handler: Handler, record: bool = True):
        self.vectors = vectors
        self.handler = handler
        self.record = record
        self.calls: list[tuple[np.ndarray, int, Mapping[str, Any], Sequence[np.ndarray] | None]] = []

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries, k, params, exclude):
        if self.record:
            self.calls.append((queries, k, params, exclude))
        return self.handler(queries, k, params)


def mock_backend(
    handler: Handler, name: str = "mock", capabilities: Capabilities | None = None, record: bool = True
) -> type[Backend]:
    """A Backend class whose engines answer with ``handler(queries, k, params) -> (labels, distances)``.

    ``record=False``: the engines keep no ``calls`` (for benchmarks).

    ``distances`` are in the metric table's meaning. Not registered anywhere:
    use it with ``Builder(backend, ...)`` or ``registered_plugin(backend)``.
    """

    class MockBackend(Backend):
        def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> MockEngine:
            return MockEngine(vectors, handler, record)

        def load(self, files: EngineFiles, config: BackendConfig) -> MockEngine:
            raise UnsupportedOperation("a mock backend cannot load saved indexes")

    MockBackend.name = name
    MockBackend.capabilities = capabilities or Capabilities(persist=False)
    MockBackend.__qualname__ = MockBackend.__name__ = f"MockBackend[{name}]"
    return MockBackend
