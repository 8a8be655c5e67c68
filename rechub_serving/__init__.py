"""rechub-serving: one strict interface over vector index engines for recommender retrieval.

>>> import numpy as np
>>> from rechub_serving import builder_factory
>>> items = np.random.default_rng(0).normal(size=(100, 8)).astype("float32")
>>> with builder_factory("numpy", metric="cosine").from_embeddings(items) as index:
...     ids, distances = index.query(items[:2], k=3)
>>> ids[:, 0].tolist()
[0, 1]

Distances follow one table on every backend: ``l2`` squared Euclidean
(ascending), ``ip`` inner product and ``cosine`` cosine similarity (descending).
"""

from __future__ import annotations

from ._arrays import normalize_rows
from ._builder import Builder
from ._capabilities import Capabilities
from ._engine import Adopted, Backend, BackendConfig, Engine, EngineFiles, RawDistance
from ._engine_keys import EngineKeys
from ._errors import (
    BackendError,
    BackendMismatchError,
    BackendUnavailableError,
    ChecksumMismatchError,
    DimensionMismatchError,
    DuplicateIdError,
    IndexClosedError,
    IndexFormatError,
    IndexWriteError,
    InvalidInputError,
    InvalidParameterError,
    MissingPluginError,
    NotAnIndexError,
    PluginError,
    RechubError,
    UnknownBackendError,
    UnknownMetricError,
    UnknownParameterError,
    UnsupportedFormatVersionError,
    UnsupportedOperation,
)
from ._factory import builder_factory, open_index
from ._indexer import Indexer
from ._metrics import Metric, parse_metric
from ._params import Param
from ._plugins import (
    BackendInfo,
    BrokenPlugin,
    get_backend,
    list_backends,
    list_broken_plugins,
    register_plugin,
    reload_plugins,
    unregister_plugin,
)
from ._result import QueryResult
from ._storage import is_index_dir, read_manifest
from ._version import __version__
from .hookspecs import hookimpl

__all__ = [
    "Adopted",
    "Backend",
    "BackendConfig",
    "BackendError",
    "BackendInfo",
    "BackendMismatchError",
    "BackendUnavailableError",
    "BrokenPlugin",
    "Builder",
    "Capabilities",
    "ChecksumMismatchError",
    "DimensionMismatchError",
    "DuplicateIdError",
    "Engine",
    "EngineFiles",
    "EngineKeys",
    "IndexClosedError",
    "IndexFormatError",
    "IndexWriteError",
    "Indexer",
    "InvalidInputError",
    "InvalidParameterError",
    "Metric",
    "MissingPluginError",
    "NotAnIndexError",
    "Param",
    "PluginError",
    "QueryResult",
    "RawDistance",
    "RechubError",
    "Retriever",
    "UnknownBackendError",
    "UnknownMetricError",
    "UnknownParameterError",
    "UnsupportedFormatVersionError",
    "UnsupportedOperation",
    "__version__",
    "builder_factory",
    "get_backend",
    "hookimpl",
    "is_index_dir",
    "list_backends",
    "list_broken_plugins",
    "normalize_rows",
    "open_index",
    "parse_metric",
    "read_manifest",
    "register_plugin",
    "reload_plugins",
    "unregister_plugin",
]


def __getattr__(name: str):
    # Retriever needs onnxruntime: imported on first use, never by ``import rechub_serving``.
    if name == "Retriever":
        from .retriever import Retriever

        return Retriever
    raise AttributeError(f"module 'rechub_serving' has no attribute {name!r}")
