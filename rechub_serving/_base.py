"""The two classes a backend plugin implements: :class:`Builder` and :class:`Indexer`.

The core does everything that must be the same on every engine: validating
and converting inputs, the metric table, cosine normalisation, ids, ``exclude``,
padding, per-call search parameters, saving and loading, use-after-close. A
plugin implements only what touches its engine.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ._arrays import NUMPY, as_matrix, as_queries, check_k, normalize_rows
from ._capabilities import Capabilities
from ._errors import (
    BackendMismatchError,
    IndexClosedError,
    InvalidInputError,
    InvalidParameterError,
    NotAnIndexError,
    RechubError,
    UnsupportedOperation,
)
from ._ids import IdMap, normalize_ids
from ._metrics import Metric, parse_metric
from ._params import Param, resolve_params
from ._result import QueryResult
from ._storage import pinned_directory, read_manifest, save_index

__all__ = ["COMMON_PARAMS", "Builder", "Indexer"]

logger = logging.getLogger("rechub_serving")


def _metric_value(value: Any) -> str:
    try:
        return parse_metric(value).value
    except Exception as exc:  # UnknownMetricError -> the parameter's message
        raise ValueError(str(exc)) from None


COMMON_PARAMS: tuple[Param, ...] = (
    Param(
        "metric", str, "l2", "l2, ip or cosine (aliases: euclidean, dot, inner_product, angular)", check=_metric_value
    ),
    Param("dim", int, None, "expected vector dimension (checked against the data)", aliases=("d",), minimum=1),
)


class Builder(abc.ABC):
    """Configures and creates indexes of one backend.

    Subclass it to add an engine. Class attributes describe the backend:

    ``name``
        what users pass to :func:`builder_factory`.
    ``params``
        the :class:`Param` schema (``metric`` and ``dim`` are added by the core).
        Unknown names, wrong types and aliases are handled by the core.
    ``capabilities``
        what the engine can do at best; narrow it per configuration by
        overriding :meth:`capabilities_for`.

    Implement :meth:`_build` (vectors in, an :class:`Indexer` out) and
    :meth:`_load` (a saved engine directory in). Optionally :meth:`_adopt`
    to accept a bare native file of the engine, :meth:`engine_version`, and
    :meth:`_check_config` for checks that involve several parameters.

    Vectors reaching ``_build`` are C-contiguous float32, finite, non-empty and,
    for the cosine metric, already L2-normalised; the engine then only has to
    rank by inner product (or by its own cosine) and report cosine similarity.
    """

    name: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    capabilities: ClassVar[Capabilities] = Capabilities()
    plugin_version: ClassVar[str] = ""  # set by the plugin manager from the distribution
    distribution: ClassVar[str] = ""

    def __init__(self, **params: Any):
        self._given = resolve_params(self.schema(), params, self.name)
        self.config: dict[str, Any] = {p.name: self._given.get(p.name, p.default) for p in self.schema()}
        self._check_config(self.config)

    # -- description ---------------------------------------------------------
    @classmethod
    def schema(cls) -> tuple[Param, ...]:
        """Every parameter of this backend, the common ones included."""
        return COMMON_PARAMS + tuple(cls.params)

    @classmethod
    def engine_version(cls) -> str | None:
        """Version of the engine library (None when there is none)."""
        return None

    def capabilities_for(self, config: Mapping[str, Any]) -> Capabilities:
        """Capabilities of one configuration (default: the class's)."""
        return self.capabilities

    def _check_config(self, config: dict[str, Any]) -> None:
        """Check combinations of parameters; raise InvalidParameterError."""

    @property
    def metric(self) -> Metric:
        return Metric(self.config["metric"])

    @property
    def given_params(self) -> dict[str, Any]:
        """The parameters the user passed explicitly (canonical names), without defaults."""
        return dict(self._given)

    @property
    def search_params(self) -> dict[str, Any]:
        """The search parameters (defaults applied) queries start from."""
        return {p.name: self.config[p.name] for p in self.schema() if p.search}

    @property
    def build_params(self) -> dict[str, Any]:
        """The build parameters, without metric, dim and secrets."""
        skip = {"metric", "dim"}
        return {
            p.name: self.config[p.name]
            for p in self.schema()
            if not (p.search or p.secret or p.runtime) and p.name not in skip
        }

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._given.items() if not self._is_secret(k))
        return f"{type(self).__name__}({shown})"

    def _is_secret(self, name: str) -> bool:
        return any(p.secret for p in self.schema() if p.name == name)

    # -- public API ------------------------------------------------------------
    def from_embeddings(self, embeddings: Any, ids: Any = None) -> Indexer:
        """Build an index over ``embeddings`` (n, d), one id per row (default 0..n-1)."""
        vectors, _, _ = as_matrix(embeddings, "embeddings", dim=self.config["dim"])
        idmap = IdMap.create(ids, len(vectors))
        if self.metric is Metric.COSINE:
            vectors = normalize_rows(vectors)
        indexer = self._build(vectors, idmap)
        indexer._attach(self, vectors.shape[1], None if indexer.native_ids else idmap)
        logger.info("built %s index: %d x %d, metric %s", self.name, len(vectors), vectors.shape[1], self.metric)
        return indexer

    def from_index_file(self, path: str | Path) -> Indexer:
        """Load a saved index directory, or adopt a bare native file of the engine.

        Search parameters and runtime options given to this builder override
        the saved ones; the metric and build parameters come from the index.
        """
        path = Path(path)
        if path.is_dir():
            for attempt in range(5):
                inode = os.stat(path).st_ino
                try:
                    return self._load_directory(path)
                except (OSError, RechubError):
                    # A concurrent save swapped the directory mid-load: load the new one.
                    if attempt == 4 or not path.is_dir() or os.stat(path).st_ino == inode:
                        raise
        if path.is_file():
            indexer = self._adopt(path)
            ids = IdMap.create(indexer._adopted_ids, indexer._engine_count())
            indexer._attach(self, indexer._engine_dim(), ids)
            return indexer
        raise NotAnIndexError(f"{path} does not exist; pass the directory written by Indexer.save()")

    def _load_directory(self, path: Path) -> Indexer:
        with pinned_directory(path) as pinned:
            manifest = read_manifest(pinned)
            if manifest["backend"] != self.name:
                raise BackendMismatchError(
                    f"{path} was saved by the {manifest['backend']!r} backend, not {self.name!r}; "
                    f"use builder_factory({manifest['backend']!r}) or open_index()"
                )
            builder = self._for_saved(manifest)
            indexer = builder._load(pinned / "engine", manifest)
            idmap = None if indexer.native_ids else IdMap.load(pinned, manifest["ids"])
        indexer._attach(builder, int(manifest["dim"]), idmap)
        indexer._metadata = dict(manifest.get("metadata") or {})
        if idmap is not None and len(idmap) != manifest["count"]:
            raise NotAnIndexError(f"{path}: the id map holds {len(idmap)} ids, the manifest says {manifest['count']}")
        return indexer

    def _for_saved(self, manifest: Mapping[str, Any]) -> Builder:
        """A builder configured as the saved index, with this builder's overrides."""
        saved_metric = manifest["metric"]
        if "metric" in self._given and self._given["metric"] != saved_metric:
            raise InvalidParameterError(
                f"the index was built with metric {saved_metric!r}; it cannot be loaded as "
                f"{self._given['metric']!r} (omit metric= or rebuild)"
            )
        if "dim" in self._given and self._given["dim"] != manifest["dim"]:
            raise InvalidParameterError(f"the index has dimension {manifest['dim']}, not {self._given['dim']}")
        known = {p.name for p in self.schema()}
        saved = {
            k: v for k, v in {**manifest.get("params", {}), **manifest.get("search_params", {})}.items() if k in known
        }
        params = {**saved, "metric": saved_metric, **self._given}
        builder = type(self)(**params)
        builder._given = {**self._given}
        return builder

    # -- to implement ------------------------------------------------------------
    @abc.abstractmethod
    def _build(self, vectors: np.ndarray, ids: IdMap) -> Indexer:
        """Build the engine over ``vectors``; row ``i`` has label ``i``.

        Backends with ``native_ids`` store ``ids.ids`` (the external ids) instead.
        """

    @abc.abstractmethod
    def _load(self, directory: Path, manifest: Mapping[str, Any]) -> Indexer:
        """Load the engine files that :meth:`Indexer._save` wrote into ``directory``."""

    def _adopt(self, path: Path) -> Indexer:
        """Adopt a bare native index file (not a saved directory).

        The engine's rows get labels ``0..n-1``; when the file carries its own
        ids (a faiss ``IndexIDMap``), set ``indexer._adopted_ids`` to them, in
        label order, and they become the external ids.
        """
        raise NotAnIndexError(
            f"{path} is a file, not a rechub-serving index directory, and the {self.name!r} "
            "backend cannot adopt native files"
        )


class Indexer(abc.ABC):
    """A built or loaded index: query it, save it, close it.

    Subclass it next to your :class:`Builder`. Implement :meth:`_search` (and
    :meth:`_save`; :meth:`_add`, :meth:`_remove`, :meth:`_close` where the
    engine can). The core calls them with validated, converted arguments:

    * labels are int64 (``-1`` = nothing); with ``native_ids = True`` they are
      the external ids themselves and the engine keeps the id map;
    * ``k`` never exceeds ``len(self)``;
    * ``params`` holds every search parameter, defaults and per-call overrides
      merged; never store them on the engine, so concurrent queries with
      different settings stay independent;
    * ``_search`` returns ``(labels, distances)`` of shape ``(n, k)`` best
      first, distances already in the metric table's meaning; it may pad short
      rows with label ``-1``.

    An indexer is its own context manager and may be used without ``with``.
    """

    native_ids: ClassVar[bool] = False

    _closed = False
    _ids: IdMap | None = None
    _adopted_ids: Any = None
    _metadata: Mapping[str, Any] = {}

    def _attach(self, builder: Builder, dim: int, ids: IdMap | None) -> None:
        self._builder = builder
        self._dim = int(dim)
        self._metric = builder.metric
        self._ids = ids
        self._search_defaults = builder.search_params
        self._capabilities = builder.capabilities_for(builder.config)
        self._lock = threading.RLock()

    # -- description -------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> Metric:
        return self._metric

    @property
    def backend(self) -> str:
        return self._builder.name

    @property
    def params(self) -> dict[str, Any]:
        """Build and default search parameters of this index (no secrets)."""
        return {"metric": self._metric.value, **self._builder.build_params, **self._search_defaults}

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def id_kind(self) -> str:
        """``"int"`` or ``"str"``: the type of this index's external ids."""
        if self._ids is not None:
            return self._ids.kind
        return getattr(self, "_kind", "int")

    def __len__(self) -> int:
        self._check_open()
        return len(self._ids) if self._ids is not None else self._engine_count()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"n={len(self)}"
        return f"<{type(self).__name__} {self.backend} {state} dim={self._dim} metric={self._metric.value}>"

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> Indexer:
        self._check_open()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the engine. Idempotent; any later use raises IndexClosedError."""
        if not self._closed:
            self._closed = True
            self._close()

    def _check_open(self) -> None:
        if self._closed:
            raise IndexClosedError(f"this {self.backend} index is closed; open it again with open_index() or a builder")

    # -- queries -------------------------------------------------------------------
    def query(
        self, queries: Any, k: int | None = None, *, exclude: Any = None, top_k: int | None = None, **search_params: Any
    ) -> QueryResult:
        """Top-``k`` items for each query row, best first.

        ``queries`` is (n, d) or a single (d,) vector (numpy, torch or lists).
        ``exclude`` gives, per query row, external ids that must not come back.
        Keyword search parameters (``nprobe``, ``ef_search``, ...) apply to this
        call only. Short rows are padded with id -1 and the worst distance.
        ``top_k`` is accepted as torch-rechub's name for ``k``.
        """
        self._check_open()
        if top_k is not None:
            if k is not None:
                raise InvalidInputError("give k or top_k, not both")
            k = top_k
        k = check_k(k)
        q, family, was_vector = as_queries(queries, self._dim)
        if self._metric is Metric.COSINE:
            q = normalize_rows(q, "queries")
        if search_params:
            params = {
                **self._search_defaults,
                **resolve_params(self._builder.schema(), search_params, self.backend, search_only=True),
            }
        else:
            params = self._search_defaults
        rows = None if exclude is None else self._exclusions(exclude, len(q), was_vector)
        count = len(self)
        labels, dist = self._run_search(q, k, count, params, rows)
        labels, dist = self._finish(labels, dist, k)
        ids = self._ids.to_external(labels) if self._ids is not None else labels
        return QueryResult(*family.wrap(ids, dist) if family is not NUMPY else (ids, dist), self._metric)

    def _run_search(self, q: np.ndarray, k: int, count: int, params: dict, rows: list[np.ndarray] | None):
        if count == 0:
            return np.full((len(q), 0), -1, np.int64), np.zeros((len(q), 0), np.float32)
        if rows is None or self._capabilities.native_filter:
            return self._search(q, min(k, count), params, rows)
        return self._overfetch_search(q, k, params, rows, count)

    def _overfetch_search(
        self, queries: np.ndarray, k: int, params: dict[str, Any], exclude: list[np.ndarray], count: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search without the engine's filter: fetch ``k`` plus the longest exclusion list, drop excluded.

        The core uses it for backends without ``native_filter``; a backend that has
        one may call it from ``_search`` for the calls its filter cannot serve well
        (for example many different exclusion lists in one batch).
        """
        count = len(self) if count is None else count
        extra = max((len(r) for r in exclude), default=0)
        labels, dist = self._search(queries, min(k + extra, count), params, None)
        return _drop_excluded(labels, dist, exclude, self._metric)

    def _finish(self, labels: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cut or pad to k columns; padding slots get the worst distance."""
        labels = np.asarray(labels)
        dist = np.asarray(dist, dtype=np.float32)
        if labels.shape[1] > k:
            labels, dist = labels[:, :k], dist[:, :k]
        missing = k - labels.shape[1]
        if missing > 0:
            pad_label = None if labels.dtype == object else -1
            labels = np.concatenate([labels, np.full((len(labels), missing), pad_label, dtype=labels.dtype)], axis=1)
            dist = np.concatenate([dist, np.full((len(dist), missing), self._metric.pad_distance, np.float32)], axis=1)
        pad = _padding_mask(labels)
        if pad is not None:
            dist = np.where(pad, np.float32(self._metric.pad_distance), dist)
        if labels.dtype != object and labels.dtype != np.int64:
            labels = labels.astype(np.int64)
        return np.ascontiguousarray(labels), np.ascontiguousarray(dist)

    def _exclusions(self, exclude: Any, n: int, was_vector: bool) -> list[np.ndarray]:
        if was_vector and not _is_nested(exclude):
            exclude = [exclude]
        if isinstance(exclude, (str, bytes)) or not hasattr(exclude, "__len__"):
            raise InvalidInputError("exclude must be a list with one collection of ids per query row")
        if len(exclude) != n:
            raise InvalidInputError(
                f"exclude has {len(exclude)} rows but there are {n} queries; give one collection of ids per query (or None)"
            )
        rows = []
        for row in exclude:
            if row is None:
                row = []
            values = list(row) if not isinstance(row, np.ndarray) else row
            if self._ids is not None:
                rows.append(self._ids.to_labels(values) if len(values) else np.zeros(0, np.int64))
            else:
                rows.append(normalize_ids(values, name="exclude") if len(values) else np.zeros(0, np.int64))
        if self._ids is not None:
            rows = [r[r >= 0] for r in rows]
        return rows

    # -- mutation ----------------------------------------------------------------
    def add(self, embeddings: Any, ids: Any = None) -> None:
        """Add vectors (with new unique ids; default: after the largest id)."""
        self._check_open()
        if not self._capabilities.add:
            raise UnsupportedOperation(
                f"the {self.backend} backend ({self._describe_config()}) cannot add vectors after the build; rebuild with from_embeddings()"
            )
        vectors, _, _ = as_matrix(embeddings, "embeddings", dim=self._dim)
        if self._metric is Metric.COSINE:
            vectors = normalize_rows(vectors)
        with self._lock:
            if self._ids is None:
                self._add(vectors, normalize_ids(ids, len(vectors)) if ids is not None else None)
                return
            new_map, labels = self._ids.extend(ids, len(vectors))
            self._add(vectors, labels)
            self._ids = new_map

    def remove(self, ids: Any) -> int:
        """Remove vectors by external id; returns how many were removed. Unknown ids are ignored."""
        self._check_open()
        if not self._capabilities.remove:
            raise UnsupportedOperation(
                f"the {self.backend} backend ({self._describe_config()}) cannot remove vectors; rebuild without them"
            )
        with self._lock:
            if self._ids is None:
                return int(self._remove(normalize_ids(ids)))
            labels = self._ids.to_labels(normalize_ids(ids))
            labels = labels[labels >= 0]
            if len(labels):
                self._remove(labels)
                self._ids = self._ids.without(labels)
            return len(labels)

    def set_search_defaults(self, **search_params: Any) -> None:
        """Change the search parameters that queries (and a saved manifest) start from.

        Validated like per-call parameters; use it after tuning. Queries in
        flight keep the settings they started with.
        """
        self._check_open()
        resolved = resolve_params(self._builder.schema(), search_params, self.backend, search_only=True)
        self._search_defaults = {**self._search_defaults, **resolved}

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata saved in the manifest (for example the hash of the model that made the vectors)."""
        return dict(self._metadata)

    def save(self, path: str | Path, *, metadata: Mapping[str, Any] | None = None) -> Path:
        """Save to directory ``path`` atomically (an existing index there is replaced).

        ``metadata`` (JSON-serialisable) is merged into :attr:`metadata` and
        written into the manifest, inside the checksummed directory.
        """
        self._check_open()
        if not self._capabilities.persist:
            raise UnsupportedOperation(f"the {self.backend} backend cannot save indexes")
        with self._lock:
            if metadata:
                self._metadata = {**self._metadata, **metadata}
            return save_index(self, Path(path))

    def _describe_config(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._builder.build_params.items() if v is not None) or "default"

    # -- to implement --------------------------------------------------------------
    @abc.abstractmethod
    def _search(
        self, queries: np.ndarray, k: int, params: dict[str, Any], exclude: list[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(labels, distances)`` of shape (n, k), best first."""

    def _save(self, directory: Path) -> dict[str, Any] | None:
        """Write the engine's files into ``directory``; return extra manifest data."""
        raise UnsupportedOperation(f"the {self.backend} backend cannot save indexes")

    def _add(self, vectors: np.ndarray, labels: np.ndarray | None) -> None:
        raise UnsupportedOperation(f"the {self.backend} backend cannot add vectors")

    def _remove(self, labels: np.ndarray) -> int | None:
        raise UnsupportedOperation(f"the {self.backend} backend cannot remove vectors")

    def _close(self) -> None:
        """Release engine resources (called once)."""

    def _engine_count(self) -> int:
        """Vectors in the engine (used for native ids and adopted files)."""
        raise NotImplementedError

    def _engine_dim(self) -> int:
        """Dimension of an adopted native file."""
        raise NotImplementedError


def _is_nested(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim > 1 or (
            value.dtype == object and len(value) > 0 and not isinstance(value[0], (str, int, np.integer))
        )
    if isinstance(value, (list, tuple)) and value:
        return all(v is None or (hasattr(v, "__iter__") and not isinstance(v, str)) for v in value)
    return False


def _padding_mask(labels: np.ndarray) -> np.ndarray | None:
    if labels.dtype == object:
        mask = np.equal(labels, None)
    else:
        mask = labels < 0
    return mask if mask.any() else None


def _drop_excluded(labels: np.ndarray, dist: np.ndarray, rows: list[np.ndarray], metric: Metric):
    """Remove excluded entries from over-fetched rows, keeping order."""
    labels = np.array(labels, copy=True)
    mask = np.zeros(labels.shape, dtype=bool)
    for i, row in enumerate(rows):
        if len(row):
            if labels.dtype == object:
                banned = set(row.tolist())
                mask[i] = [v in banned for v in labels[i]]
            else:
                mask[i] = np.isin(labels[i], row)
    if not mask.any():
        return labels, dist
    order = np.argsort(mask, axis=1, kind="stable")
    labels = np.take_along_axis(labels, order, axis=1)
    dist = np.take_along_axis(np.asarray(dist, np.float32), order, axis=1)
    dropped = np.take_along_axis(mask, order, axis=1)
    labels[dropped] = None if labels.dtype == object else -1
    dist[dropped] = metric.pad_distance
    return labels, dist
