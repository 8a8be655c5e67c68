"""Exception classes.

Every error the SDK raises on purpose derives from :class:`RechubError`, and
also from the closest built-in (``ValueError``, ``LookupError``, ...) so that
generic ``except`` clauses keep working. Messages say what was wrong, what was
expected and what to do.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendMismatchError",
    "BackendUnavailableError",
    "ChecksumMismatchError",
    "DimensionMismatchError",
    "DuplicateIdError",
    "IndexClosedError",
    "IndexFormatError",
    "IndexWriteError",
    "InvalidInputError",
    "InvalidParameterError",
    "MissingPluginError",
    "NotAnIndexError",
    "PluginError",
    "RechubError",
    "UnknownBackendError",
    "UnknownMetricError",
    "UnknownParameterError",
    "UnsupportedFormatVersionError",
    "UnsupportedOperation",
]


class RechubError(Exception):
    """Base class of every error raised by rechub-serving on purpose."""


class InvalidInputError(RechubError, ValueError):
    """Embeddings, queries, ids or ``k`` are not what the contract accepts."""


class DimensionMismatchError(InvalidInputError):
    """Vectors do not have the dimension of the index."""


class DuplicateIdError(InvalidInputError):
    """The same external id was given twice, or is already in the index."""


class InvalidParameterError(RechubError, ValueError):
    """A backend parameter has a wrong type or value."""


class UnknownParameterError(InvalidParameterError, TypeError):
    """A parameter name the backend does not have."""


class UnknownMetricError(InvalidParameterError):
    """A metric name that is none of l2, ip, cosine or their aliases."""


class UnknownBackendError(RechubError, LookupError):
    """No installed plugin registers a backend of that name."""


class MissingPluginError(UnknownBackendError):
    """A saved index names a backend whose plugin is not installed."""


class PluginError(RechubError):
    """A plugin failed to import or to register its backends."""


class UnsupportedOperation(RechubError, NotImplementedError):
    """The backend's engine cannot do this (for example remove on HNSW)."""


class IndexClosedError(RechubError, RuntimeError):
    """The indexer was used after ``close()``."""


class IndexFormatError(RechubError, ValueError):
    """A saved index cannot be read."""


class NotAnIndexError(IndexFormatError):
    """The path is not a saved index (and not a native file the backend adopts)."""


class UnsupportedFormatVersionError(IndexFormatError):
    """The index was written by a newer format version than this one reads."""


class ChecksumMismatchError(IndexFormatError):
    """A file of the saved index is truncated, edited or missing."""


class BackendMismatchError(IndexFormatError):
    """The saved index was written by another backend than the builder's."""


class IndexWriteError(RechubError, OSError):
    """A save could not be written (a full disk, no permission); an index saved there before is unchanged."""


class BackendError(RechubError, RuntimeError):
    """The engine failed while doing what it was asked."""


class BackendUnavailableError(BackendError, ConnectionError):
    """A remote engine (a server) cannot be reached."""
