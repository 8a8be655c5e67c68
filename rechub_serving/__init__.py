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
from ._base import Builder, Indexer
from ._capabilities import Capabilities
from ._errors import (
    BackendError,
    BackendMismatchError,
    BackendUnavailableError,
    ChecksumMismatchError,
    DimensionMismatchError,
    DuplicateIdError,
    IndexClosedError,
    IndexFormatError,
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
from ._ids import IdMap
from ._metrics import Metric, parse_metric
from ._params import Param
from ._plugins import BackendInfo, BrokenPlugin, list_backends, list_broken_plugins
from ._result import QueryResult
from ._rwlock import ReadWriteLock
from ._version import __version__
from .hookspecs import hookimpl

__all__ = [
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
    "IdMap",
    "IndexClosedError",
    "IndexFormatError",
    "Indexer",
    "InvalidInputError",
    "InvalidParameterError",
    "Metric",
    "MissingPluginError",
    "NotAnIndexError",
    "Param",
    "PluginError",
    "QueryResult",
    "ReadWriteLock",
    "RechubError",
    "Retriever",
    "UnknownBackendError",
    "UnknownMetricError",
    "UnknownParameterError",
    "UnsupportedFormatVersionError",
    "UnsupportedOperation",
    "__version__",
    "builder_factory",
    "hookimpl",
    "list_backends",
    "list_broken_plugins",
    "normalize_rows",
    "open_index",
    "parse_metric",
]


def __getattr__(name: str):
    # Retriever needs onnxruntime: imported on first use, never by ``import rechub_serving``.
    if name == "Retriever":
        from .retriever import Retriever

        return Retriever
    raise AttributeError(f"module 'rechub_serving' has no attribute {name!r}")
