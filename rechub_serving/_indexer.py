"""The :class:`Indexer`: one concrete class that holds a plugin's engine and owns everything around it.

An engine only ranks labels. The Indexer validates and converts inputs,
normalises for cosine, maps external ids to labels and back, applies
``exclude`` (through the engine's native filter, or by over-fetching and
dropping), converts the engine's numbers to the metric table, pads short
rows, merges per-call search parameters, saves with a manifest and
checksums, and refuses use after close.

Concurrency: one readers-writer lock per index. Queries hold the shared side
from the moment they read the id map until their labels are mapped back, so a
query sees one state of the index, before or after any ``add``, ``remove``,
``save`` or ``close`` (which hold the exclusive side). ``close`` waits for
running queries; queries that start after it raise :class:`IndexClosedError`,
on every backend alike.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._arrays import (
    MAX_K,
    MAX_SQUARED_NORM,
    NUMPY,
    as_matrix,
    as_queries,
    c_einsum,
    check_k,
    is_torch_tensor,
    normalize_checked,
    normalize_rows,
    value_error,
)
from ._capabilities import Capabilities
from ._engine import Engine, RawDistance
from ._errors import (
    BackendError,
    IndexClosedError,
    IndexWriteError,
    InvalidInputError,
    InvalidParameterError,
    RechubError,
    UnsupportedOperation,
)
from ._ids import IdMap, normalize_ids
from ._metrics import Metric
from ._params import resolve_params
from ._result import QueryResult
from ._rwlock import ReadWriteLock
from ._storage import write_index
from ._tensors import convert_tensor, pad_tensors, tensor_queries

if TYPE_CHECKING:
    from ._builder import Builder

__all__ = ["MAX_RESULT_ENTRIES", "Indexer"]

logger = logging.getLogger("rechub_serving")

#: The most ``n_queries * k`` result slots one call may ask for (about 1.5 GB of ids and distances).
MAX_RESULT_ENTRIES = 1 << 27
_PARAM_CACHE_SIZE = 256
_FLOAT32 = np.dtype(np.float32)
_INT64 = np.dtype(np.int64)
_SMALL = 64
_NO_IDS = np.zeros(0, np.int64)
_NO_IDS.flags.writeable = False


class Indexer:
    """A built or loaded index: query it, change it, save it, close it.

    Made by a :class:`~rechub_serving.Builder` (``from_embeddings``,
    ``from_index_file``) or :func:`~rechub_serving.open_index`; never
    subclassed by plugins. An indexer is its own context manager (``with``
    closes it) and may be used without ``with``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        builder: Builder,
        dim: int,
        ids: IdMap | None,
        metadata: Mapping[str, Any] | None = None,
    ):
        config = builder.config
        self._engine: Engine | None = engine
        self._builder = builder
        self._backend_name = builder.name
        self._dim = int(dim)
        self._vector_shape = (self._dim,)
        self._metric = config.metric
        self._cosine = self._metric is Metric.COSINE
        self._ids = ids
        self._native_ids = ids is None
        self._metadata = dict(metadata or {})
        self._lock = ReadWriteLock()
        self._closed = False
        self._capabilities: Capabilities = engine.capabilities(builder.capabilities)
        distance = engine.distance or RawDistance.table(self._metric)
        if not distance.fits(self._metric):
            raise BackendError(
                f"the {self._backend_name} engine reports {distance.value} distances, which cannot express "
                f"the {self._metric.value} metric; this is a bug in the plugin"
            )
        self._convert = None if distance is RawDistance.INNER_PRODUCT else distance
        self._search_defaults: dict[str, Any] = builder.search_params
        self._tensor_device = engine.tensor_device
        self._param_cache: dict[Any, dict[str, Any]] = {}

    # -- description -------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> Metric:
        return self._metric

    @property
    def backend(self) -> str:
        """The backend's name (what :func:`~rechub_serving.builder_factory` takes)."""
        return self._backend_name

    @property
    def builder(self) -> Builder:
        """The builder (configuration) this index was made or loaded with."""
        return self._builder

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
        return str(getattr(self._engine, "id_kind", "int"))

    @property
    def engine(self) -> Engine:
        """The plugin's engine object (for engine-specific extras; the Indexer is the contract)."""
        return self._require_engine()

    @property
    def search_params(self) -> dict[str, Any]:
        """The search parameters queries start from, with the values the engine chose filled in."""
        resolved = self._resolved()
        return {k: (resolved.get(k, v) if v is None else v) for k, v in self._search_defaults.items()}

    @property
    def params(self) -> dict[str, Any]:
        """Metric, build and default search parameters of this index (no secrets), resolved values filled in."""
        resolved = self._resolved()
        build = {k: (resolved.get(k, v) if v is None else v) for k, v in self._builder.build_params.items()}
        return {"metric": self._metric.value, **build, **self.search_params}

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata saved in the manifest (for example the hash of the model that made the vectors)."""
        return dict(self._metadata)

    def __len__(self) -> int:
        self._check_open()
        ids = self._ids
        return len(ids) if ids is not None else len(self._require_engine())

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"n={len(self)}"
        return f"<Indexer {self._backend_name} {state} dim={self._dim} metric={self._metric.value}>"

    def _resolved(self) -> Mapping[str, Any]:
        engine = self._engine
        if engine is None:
            return {}
        try:
            return dict(engine.resolved_params() or {})
        except Exception:  # a description never breaks the index
            logger.debug("resolved_params() of the %s engine failed", self._backend_name, exc_info=True)
            return {}

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> Indexer:
        self._check_open()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the engine, after running queries finish. Idempotent; later use raises IndexClosedError."""
        if self._closed:
            return
        with self._lock.exclusive():
            if self._closed:
                return
            self._closed = True
            engine, self._engine = self._engine, None
            if engine is not None:
                try:
                    engine.close()
                except Exception as exc:
                    logger.warning("closing the %s engine failed: %s", self._backend_name, exc)

    def _closed_error(self) -> IndexClosedError:
        return IndexClosedError(
            f"this {self._backend_name} index is closed; open it again with open_index() or a builder"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _require_engine(self) -> Engine:
        engine = self._engine
        if engine is None:
            raise self._closed_error()
        return engine

    # -- queries -------------------------------------------------------------------
    def query(
        self, queries: Any, k: int | None = None, *, exclude: Any = None, top_k: int | None = None, **search_params: Any
    ) -> QueryResult:
        """Top-``k`` items for each query row, best first.

        ``queries`` is (n, d) or a single (d,) vector (numpy, torch or lists).
        ``exclude`` gives, per query row, external ids that must not come back
        (for a single vector, one collection or one id). Keyword search
        parameters (``nprobe``, ``ef_search``, ...) apply to this call only.
        Short rows are padded with id -1 (``None`` for string ids) and the
        worst distance. ``top_k`` is accepted as torch-rechub's name for ``k``.
        """
        if top_k is not None:
            if k is not None:
                raise InvalidInputError("give k or top_k, not both")
            k = top_k
        if type(k) is not int or not 0 < k <= MAX_K:
            k = check_k(k)
        if self._tensor_device is not None and is_torch_tensor(queries) and queries.device == self._tensor_device:
            return self._query_tensors(queries, k, exclude, search_params)
        if (
            type(queries) is np.ndarray
            and queries.dtype is _FLOAT32
            and queries.shape == self._vector_shape
            and queries.flags.c_contiguous
        ):  # the common case: one float32 vector, checked below like any other
            q, family, was_vector = queries.reshape(1, self._dim), NUMPY, True
        else:
            q, family, was_vector = as_queries(queries, self._dim, check_values=False)
        n = len(q)
        if n == 1:
            row = q[0]
            sq1 = float(c_einsum("i,i", row, row))  # inf when it overflows float32
            if not sq1 < MAX_SQUARED_NORM:
                raise value_error(q, "queries")
            if self._cosine:
                if not sq1 > 0:
                    raise value_error(q, "queries", zero=True)
                q = q * np.float32(1.0 / math.sqrt(sq1))
        else:
            sq = c_einsum("ij,ij->i", q, q)
            if not sq.max() < MAX_SQUARED_NORM:
                raise value_error(q, "queries")
            if self._cosine:
                q = normalize_checked(q, sq)
        if n * k > MAX_RESULT_ENTRIES:
            raise InvalidInputError(
                f"{n} queries x k={k} asks for {n * k:,} results, more than one call returns "
                f"({MAX_RESULT_ENTRIES:,}); split the batch or ask for fewer"
            )
        params = self._call_params(search_params) if search_params else self._search_defaults
        lock = self._lock
        lock.acquire_shared()
        try:
            engine = self._engine
            if engine is None:
                raise self._closed_error()
            ids = self._ids
            count = ids.count if ids is not None else len(engine)
            if exclude is None and count:
                labels, dist = self._engine_search(engine, q, k, k if k < count else count, params, None, ids)
            else:
                rows = None if exclude is None else self._exclusions(exclude, n, was_vector, ids)
                labels, dist = self._search(engine, q, k, count, params, rows, ids)
            found = ids.to_external(labels) if ids is not None else labels
        finally:
            lock.release_shared()
        if family is not NUMPY:
            found, dist = family.wrap(found, dist)
        return QueryResult(found, dist, self._metric)

    def _query_tensors(self, queries: Any, k: int, exclude: Any, search_params: Mapping[str, Any]) -> QueryResult:
        """The tensor path (see ``_tensors``): queries on the engine's device stay there, results too."""
        q, was_vector = tensor_queries(queries, self._dim, self._cosine)
        n = len(q)
        if n * k > MAX_RESULT_ENTRIES:
            raise InvalidInputError(f"{n} queries x k={k} is more results than one call returns; split the batch")
        params = self._call_params(search_params) if search_params else self._search_defaults
        with self._lock.shared():
            engine = self._require_engine()
            ids = self._ids
            count = ids.count if ids is not None else len(engine)
            rows = None if exclude is None else self._exclusions(exclude, n, was_vector, ids)
            native = rows is None or (self._capabilities.native_filter and engine.can_filter(rows))
            if count == 0 or not native:  # the numpy path does what the tensor path does not
                labels, dist = self._search(engine, q.cpu().numpy(), k, count, params, rows, ids)
                found = ids.to_external(labels) if ids is not None else labels
                torch = sys.modules["torch"]
                out = torch.from_numpy(found).to(q.device) if found.dtype != object else found
                return QueryResult(out, torch.from_numpy(dist).to(q.device), self._metric)
            ask = k if k < count else count
            try:
                answer: tuple[Any, Any] = engine.search(q, ask, params, rows)
            except RechubError:
                raise
            except Exception as exc:
                raise BackendError(f"the {self._backend_name} engine failed to search: {_describe(exc)}") from exc
            tl, traw = answer
            if tuple(tl.shape) != tuple(traw.shape) or tl.dim() != 2 or len(tl) != n or tl.shape[1] > ask:
                raise BackendError(f"the {self._backend_name} engine returned tensors of shape {tuple(tl.shape)}")
            lo = int(tl.min()) if tl.numel() else -1
            if ids is not None and tl.numel() and (lo < -1 or int(tl.max()) >= ids.n_labels or ids.alive is not None):
                bad = ids.bad_labels(tl.cpu().numpy())
                if len(bad):
                    raise BackendError(
                        f"the {self._backend_name} engine returned tl {bad[:5].tolist()} not in this index"
                    )
            tdist = convert_tensor(self._convert, traw)
            tl, tdist, finite = pad_tensors(tl, tdist, k, self._metric.pad_distance, lo < 0)
            if not finite:
                raise self._garbage()
            if ids is None or ids.identity_int:
                return QueryResult(tl, tdist, self._metric)
            tfound = ids.to_external(tl.cpu().numpy())
        torch = sys.modules["torch"]
        return QueryResult(
            torch.from_numpy(tfound).to(q.device) if tfound.dtype != object else tfound, tdist, self._metric
        )

    def _search(
        self,
        engine: Engine,
        q: np.ndarray,
        k: int,
        count: int,
        params: Mapping[str, Any],
        rows: list[np.ndarray] | None,
        ids: IdMap | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        if count == 0:
            labels, dist = np.full((len(q), 0), -1, np.int64), np.zeros((len(q), 0), np.float32)
            return self._finish(labels, dist, k)
        if rows is None:
            return self._engine_search(engine, q, k, min(k, count), params, None, ids)
        if self._capabilities.native_filter and engine.can_filter(rows):
            return self._engine_search(engine, q, k, min(k, count), params, rows, ids)
        extra = max(len(r) for r in rows)
        labels, dist = self._engine_search(engine, q, None, min(k + extra, count), params, None, ids)
        labels, dist = _drop_excluded(labels, dist, rows)
        return self._finish(labels, dist, k)

    def _engine_search(
        self,
        engine: Engine,
        q: np.ndarray,
        k: int | None,
        ask: int,
        params: Mapping[str, Any],
        rows: list[np.ndarray] | None,
        ids: IdMap | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One engine call for ``ask`` results, checked and converted; finished to ``k`` columns unless k is None."""
        try:
            labels, dist = engine.search(q, ask, params, rows)
        except RechubError:
            raise
        except Exception as exc:
            raise BackendError(f"the {self._backend_name} engine failed to search: {_describe(exc)}") from exc
        if type(labels) is not np.ndarray:
            labels = np.asarray(labels)
        if type(dist) is not np.ndarray or dist.dtype != np.float32:
            dist = np.asarray(dist, dtype=np.float32)
        if labels.ndim != 2 or len(labels) != len(q) or labels.shape[1] > ask or dist.shape != labels.shape:
            raise BackendError(
                f"the {self._backend_name} engine returned results of shape {labels.shape} / {dist.shape} for "
                f"{len(q)} queries and k={ask}; this is a bug in the plugin"
            )
        lo: Any = -1
        if labels.dtype is not _INT64 and labels.dtype != object:
            if labels.dtype.kind not in "iu":
                raise BackendError(f"the {self._backend_name} engine returned labels of dtype {labels.dtype}")
            labels = labels.astype(np.int64)
        small = labels.size <= _SMALL  # tiny results: Python's min/max beat numpy's reductions by microseconds
        if labels.dtype is _INT64 and labels.size:
            if small:
                flat = labels.ravel().tolist()
                lo, hi = min(flat), max(flat)
            else:
                lo, hi = labels.min(), labels.max()
            if ids is not None and (lo < -1 or hi >= ids.n_labels or ids.alive is not None):
                bad = ids.bad_labels(labels)
                if len(bad):
                    raise BackendError(
                        f"the {self._backend_name} engine returned labels {bad[:5].tolist()} that are not in this "
                        "index (never given to it, or removed); this is a bug in the plugin"
                    )
        convert = self._convert
        finite = None
        if convert is RawDistance.SQUARED_L2 and small:
            values = dist.ravel().tolist()
            total = sum(values)
            finite = math.isfinite(total)
            if finite and min(values) < 0:
                dist = np.maximum(dist, np.float32(0.0))
        elif convert is not None:
            dist = convert.convert(dist)
        if k is None:
            return labels, dist
        if lo >= 0 and labels.shape[1] == k:  # full rows, no padding: only garbage to rule out
            if finite is None:
                finite = math.isfinite(sum(dist.ravel().tolist())) if small else np.isfinite(dist.sum(dtype=np.float64))
            if not finite:
                raise self._garbage()
            return labels, dist
        return self._finish(labels, dist, k)

    def _finish(self, labels: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cut or pad to ``k`` columns; padding slots get the worst distance; no garbage rows."""
        n, m = labels.shape
        if m < k:
            pad_label = None if labels.dtype == object else -1
            labels = np.concatenate([labels, np.full((n, k - m), pad_label, dtype=labels.dtype)], axis=1)
            dist = np.concatenate([dist, np.full((n, k - m), self._metric.pad_distance, np.float32)], axis=1)
        elif m > k:
            labels, dist = labels[:, :k], dist[:, :k]
        pad = (labels == None) if labels.dtype == object else labels < 0  # noqa: E711 - elementwise
        if pad.any():
            dist = np.where(pad, np.float32(self._metric.pad_distance), dist)
            if not np.isfinite(dist[~pad]).all():
                raise self._garbage()
        elif not np.isfinite(dist.sum(dtype=np.float64)):
            raise self._garbage()
        return labels, dist

    def _garbage(self) -> BackendError:
        return BackendError(
            f"the {self._backend_name} engine returned a NaN or infinite distance for a real item; "
            "this is a bug in the plugin or a damaged index"
        )

    def _call_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Per-call search parameters, validated once per distinct set of values."""
        try:
            if len(given) == 1:  # the common case: one parameter, no sort
                ((name, value),) = given.items()
                key: Any = (name, type(value), value)
            else:
                key = tuple(sorted((name, type(value), value) for name, value in given.items()))
            cached = self._param_cache.get(key)
        except TypeError:  # an unhashable value: resolve (and reject) without caching
            key, cached = None, None
        if cached is None:
            resolved = resolve_params(self._builder.schema(), given, self._backend_name, search_only=True)
            cached = {**self._search_defaults, **resolved}
            if key is not None:
                if len(self._param_cache) >= _PARAM_CACHE_SIZE:
                    self._param_cache.clear()
                self._param_cache[key] = cached
        return cached

    def _exclusions(self, exclude: Any, n: int, was_vector: bool, ids: IdMap | None) -> list[np.ndarray] | None:
        """One label array per query row (external ids for native-id engines); None when nothing is excluded."""
        if was_vector and not _is_nested(exclude):
            exclude = [exclude]
        if isinstance(exclude, (str, bytes)) or not isinstance(exclude, (Sequence, np.ndarray)):
            raise InvalidInputError(
                f"exclude must be a list with one collection of ids per query row, got {type(exclude).__name__}"
            )
        if len(exclude) != n:
            raise InvalidInputError(
                f"exclude has {len(exclude)} rows but there are {n} queries; give one collection of ids per query (or None)"
            )
        kind = self.id_kind
        rows = []
        for row in exclude:
            values = _id_values(row, kind)
            if ids is not None:
                labels = ids.to_labels(values) if len(values) else values
                rows.append(labels[labels >= 0] if len(labels) else labels)
            else:
                rows.append(values)
        return rows if any(len(r) for r in rows) else None

    # -- mutation ----------------------------------------------------------------
    def add(self, embeddings: Any, ids: Any = None) -> None:
        """Add vectors with new unique ids (default: after the largest id ever given)."""
        self._check_open()
        self._require("add", "cannot add vectors after the build; rebuild with from_embeddings()")
        vectors = self._vectors(embeddings)
        with self._lock.exclusive():
            self._check_open()
            self._add_locked(vectors, ids)

    def remove(self, ids: Any) -> int:
        """Remove vectors by external id; returns how many were removed. Unknown ids are ignored."""
        self._check_open()
        self._require("remove", "cannot remove vectors; rebuild without them")
        wanted = _id_values(ids, self.id_kind, name="ids")
        with self._lock.exclusive():
            self._check_open()
            return self._remove_locked(wanted)

    def upsert(self, embeddings: Any, ids: Any) -> None:
        """Insert or replace vectors by id, in one step that queries never see half-done."""
        self._check_open()
        self._require("add", "cannot add vectors after the build; rebuild with from_embeddings()")
        self._require("remove", "cannot replace vectors; rebuild with from_embeddings()")
        vectors = self._vectors(embeddings)
        wanted = normalize_ids(ids, len(vectors))
        with self._lock.exclusive():
            self._check_open()
            self._remove_locked(wanted)
            self._add_locked(vectors, wanted)

    def _vectors(self, embeddings: Any) -> np.ndarray:
        vectors, _, _ = as_matrix(embeddings, "embeddings", dim=self._dim)
        return normalize_rows(vectors) if self._cosine else vectors

    def _require(self, capability: str, what: str) -> None:
        if not getattr(self._capabilities, capability):
            raise UnsupportedOperation(f"the {self._backend_name} backend ({self._describe_config()}) {what}")

    def _add_locked(self, vectors: np.ndarray, ids: Any) -> None:
        engine = self._require_engine()
        if self._ids is None:
            external = normalize_ids(ids, len(vectors)) if ids is not None else None
            if external is not None and len(external) and (external.dtype == object) != (self.id_kind == "str"):
                raise InvalidInputError(f"this index has {self.id_kind} ids; the new ids must be {self.id_kind} too")
            before = len(engine)
            self._engine_call("add vectors", engine.add, vectors, external)
            self._check_count(engine, before + len(vectors), "add")
            return
        new_map, labels = self._ids.extend(ids, len(vectors))
        self._engine_call("add vectors", engine.add, vectors, labels)
        self._ids = new_map
        self._check_count(engine, len(new_map), "add")

    def _remove_locked(self, wanted: np.ndarray) -> int:
        engine = self._require_engine()
        if not len(wanted):
            return 0
        if self._ids is None:
            before = len(engine)
            removed = int(self._engine_call("remove vectors", engine.remove, np.unique(wanted)) or 0)
            self._check_count(engine, before - removed, "remove")
            return removed
        labels = self._ids.to_labels(wanted)
        labels = np.unique(labels[labels >= 0])
        if len(labels):
            self._engine_call("remove vectors", engine.remove, labels)
            self._ids = self._ids.without(labels)
            self._check_count(engine, len(self._ids), "remove")
        return len(labels)

    def _check_count(self, engine: Engine, expected: int, what: str) -> None:
        got = len(engine)
        if got != expected:
            raise BackendError(
                f"after {what} the {self._backend_name} engine holds {got} vectors, the index expects {expected}; "
                "the engine and the id map disagree (a bug in the plugin): rebuild the index"
            )

    def _engine_call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except RechubError:
            raise
        except Exception as exc:
            raise BackendError(f"the {self._backend_name} engine failed to {what}: {_describe(exc)}") from exc

    def set_search_defaults(self, **search_params: Any) -> None:
        """Change the search parameters that queries (and a saved manifest) start from.

        Validated like per-call parameters; use it after tuning. Queries in
        flight keep the settings they started with.
        """
        self._check_open()
        resolved = resolve_params(self._builder.schema(), search_params, self._backend_name, search_only=True)
        self._search_defaults = {**self._search_defaults, **resolved}
        self._param_cache = {}

    # -- persistence ---------------------------------------------------------------
    def save(self, path: str | Path, *, metadata: Mapping[str, Any] | None = None) -> Path:
        """Save to directory ``path`` atomically (an existing index there is replaced).

        ``metadata`` (JSON-serialisable) is merged into :attr:`metadata` and
        written into the manifest, inside the checksummed directory. Readers
        that open ``path`` meanwhile get the old or the new index, whole.
        """
        self._check_open()
        self._require("persist", "cannot save indexes")
        merged = {**self._metadata, **dict(metadata or {})}
        try:
            json.dumps(merged, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(f"metadata must be JSON-serialisable: {exc}") from None
        with self._lock.exclusive():
            engine = self._require_engine()
            builder = self._builder
            fields = {
                "backend": self._backend_name,
                "plugin_distribution": builder.distribution,
                "plugin_version": builder.plugin_version,
                "engine_version": builder.engine_version,
                "metric": self._metric.value,
                "normalized": self._cosine,
                "dim": self._dim,
                "count": len(self._ids) if self._ids is not None else len(engine),
                "params": builder.build_params,
                "search_params": self._search_defaults,
                "metadata": merged,
            }
            try:
                out = write_index(
                    path,
                    write_engine=lambda d: self._engine_call("save", engine.save, d),
                    ids=self._ids,
                    fields=fields,
                )
            except OSError as exc:
                raise IndexWriteError(
                    f"could not save the index to {path}: {exc.strerror or exc}; any index saved there before is unchanged"
                ) from exc
            self._metadata = merged
        return out

    def _describe_config(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._builder.build_params.items() if v is not None) or "default"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": ")


def _is_nested(value: Any) -> bool:
    """True when ``value`` looks like one collection of ids per row (for a single-vector query)."""
    if value is None or isinstance(value, (str, bytes, int, np.integer)):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim > 1 or (
            value.dtype == object and len(value) > 0 and not isinstance(value[0], (str, int, np.integer))
        )
    if isinstance(value, (list, tuple)) and value:
        return all(v is None or (hasattr(v, "__iter__") and not isinstance(v, (str, bytes))) for v in value)
    return False


def _id_values(row: Any, kind: str, name: str = "exclude") -> np.ndarray:
    """One row of ids as an int64 or object array, type-checked against the index's id kind (duplicates allowed)."""
    if row is None:
        return _NO_IDS
    if isinstance(row, (str, bytes, int, np.integer)) and not isinstance(row, bool):
        row = [row]
    elif hasattr(row, "detach") and hasattr(row, "cpu"):  # a torch tensor
        row = row.detach().cpu().numpy()
    elif isinstance(row, (set, frozenset)):
        row = list(row)
    elif not isinstance(row, (Sequence, np.ndarray)):
        raise InvalidInputError(f"{name} rows must be collections of ids, got {type(row).__name__}")
    if isinstance(row, np.ndarray):
        values = row
    else:
        try:
            values = np.asarray(row)
        except (ValueError, TypeError):  # ragged: a row holding lists
            values = np.asarray(list(row), dtype=object)
    if values.ndim != 1:
        if values.size == 0:
            return _NO_IDS
        raise InvalidInputError(f"{name} rows must be flat collections of ids, got shape {values.shape}")
    if not len(values):
        return _NO_IDS
    kind_code = values.dtype.kind
    if kind == "int":
        if kind_code in "iu":
            return values.astype(np.int64, copy=False)
        if kind_code == "O" and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            return values.astype(np.int64)
        raise InvalidInputError(f"{name} holds {_kinds(values)}, but this index has integer ids")
    if kind_code == "U":
        return values.astype(object)
    if kind_code == "O" and all(isinstance(v, str) for v in values):
        return values
    raise InvalidInputError(f"{name} holds {_kinds(values)}, but this index has string ids")


def _kinds(values: np.ndarray) -> str:
    names = sorted({type(v).__name__ for v in values.tolist()}) if values.dtype == object else [str(values.dtype)]
    return " and ".join(names) + " values"


def _drop_excluded(labels: np.ndarray, dist: np.ndarray, rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Remove excluded entries from over-fetched rows, keeping order (dropped slots become padding)."""
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
    dist = np.take_along_axis(dist, order, axis=1)
    dropped = np.take_along_axis(mask, order, axis=1)
    labels[dropped] = None if labels.dtype == object else -1
    return labels, dist
