"""The Milvus engine: one collection whose primary keys are the external ids (``native_ids``).

Search sends batches of at most :data:`MAX_NQ` queries; ``exclude`` becomes a
filter expression ``pk not in [...]`` per distinct exclusion list (one user
per request is the usual case), and with many different lists the core
over-fetches and drops instead (:meth:`MilvusEngine.can_filter`). The first
search after a build, an attach, an ``add`` or a ``remove`` runs at Strong
consistency so that writes are visible; later ones at Bounded, which skips
the server's wait for its next time tick.

Engine-specific extras, reachable as ``index.engine``: ``collection``,
``location``, ``temporary`` and ``keep()``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rechub_serving import (
    DuplicateIdError,
    Engine,
    InvalidInputError,
    Metric,
    RawDistance,
    UnsupportedOperation,
)

from ._collection import CollectionInfo, IndexSpec, drop_quietly, insert_rows, literal, mark_kept
from ._connection import Connection
from ._defaults import MAX_NQ, MAX_TOPK, MESSAGE_BYTES, ef_for, nprobe_for
from ._private import DATA_DIR, copy_collection

__all__ = ["MilvusEngine"]

logger = logging.getLogger("rechub_serving.milvus")

SERVER_FILE = "milvus.json"  # what a saved server index holds: where its collection is
_MAX_DISTINCT_FILTERS = 4  # more distinct exclusion lists in one batch: over-fetch instead
_PARAM_CACHE = 64
_QUICK_DROP_S = 5.0  # a drop at exit or after an interrupt waits at most this long


class _ParamGate:
    """Searches with equal engine parameters run together; one with other values waits for them.

    milvus-lite 3.2 sets ``nprobe`` / ``ef`` on the index object it shares
    between requests and then searches, so two concurrent searches with
    different values use each other's (an IVF search can even fail with
    "Invalid key"). This gate keeps per-call parameters correct; it is not a
    lock against add/remove/save/close (the core serialises those).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._value: Any = None
        self._active = 0

    @contextlib.contextmanager
    def enter(self, value: Any) -> Iterator[None]:
        with self._cond:
            while self._active and self._value != value:
                self._cond.wait()
            self._value = value
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()


class _Resources:
    """What closing releases; shared with the finalizer, so it must not refer to the engine."""

    def __init__(self, conn: Connection, name: str, temporary: bool):
        self.conn = conn
        self.name = name
        self.temporary = temporary

    def release(self, wait: bool = True) -> None:
        conn = self.conn
        try:
            # A private database goes as a whole; elsewhere a temporary collection is dropped.
            if self.temporary and conn.private is None and conn.is_open:
                drop_quietly(conn, self.name, None if wait else _QUICK_DROP_S)
        finally:
            conn.close(wait=wait)

    def finalize(self) -> None:
        """Garbage collection or interpreter exit: never wait long for a server that went away."""
        self.release(wait=False)


class MilvusEngine(Engine):
    """A loaded Milvus collection; the core's lock serialises search against add/remove/save/close."""

    def __init__(
        self,
        conn: Connection,
        name: str,
        spec: IndexSpec,
        info: CollectionInfo,
        count: int,
        *,
        temporary: bool,
        batch_size: int | None = None,
        progress: bool | None = None,
        consistency: str | None = None,
        next_id: int | None = None,
    ):
        self._conn = conn
        self._spec = spec
        self._info = info
        self._count = int(count)
        self._batch_size = batch_size
        self._progress = progress
        self._consistency = consistency
        self._next_id = next_id
        self._fresh_writes = True  # the first search waits for every write (Strong)
        self._search_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._gate = None if conn.target.is_server else _ParamGate()
        self._resources = _Resources(conn, name, temporary)
        self._finalizer = weakref.finalize(self, self._resources.finalize)
        self.id_kind = info.kind
        self.distance = RawDistance.SQUARED_L2 if spec.metric == "L2" else RawDistance.INNER_PRODUCT

    # -- extras ---------------------------------------------------------------------------
    @property
    def collection(self) -> str:
        """The collection's name."""
        return self._resources.name

    @property
    def location(self) -> str:
        """Where the collection lives (no secrets)."""
        return f"{self._conn.describe()}, collection {self.collection!r}"

    @property
    def temporary(self) -> bool:
        """True when closing deletes the data (a private database, or an unsaved collection)."""
        return self._conn.private is not None or self._resources.temporary

    @property
    def index_spec(self) -> dict[str, Any]:
        """The collection's vector index: type, Milvus metric and build parameters."""
        return self._spec.as_dict()

    def keep(self) -> None:
        """Keep the collection after close, even if the index is not saved (server or ``path=`` databases)."""
        if self._conn.private is not None:
            raise UnsupportedOperation(
                "this embedded index lives in a private milvus-lite database that is deleted on close; "
                "keep it with index.save(path), or build with path='my.db' (your own database) or uri= (a server)"
            )
        if self._resources.temporary:
            self._resources.temporary = False
            mark_kept(self._conn, self.collection)

    # -- the protocol --------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._info.dim

    def __len__(self) -> int:
        return self._count

    @property
    def metric(self) -> Metric:
        return self._spec.metric_enum

    def resolved_params(self) -> Mapping[str, Any]:
        spec = self._spec
        if spec.index_type == "IVF_FLAT":
            return {"nlist": spec.nlist, "nprobe": nprobe_for(spec.nlist, None)}
        if spec.index_type == "HNSW":
            return {
                "m": spec.params.get("M"),
                "ef_construction": spec.params.get("efConstruction"),
                "ef_search": ef_for(1, None),
            }
        return {}

    def can_filter(self, exclude: Sequence[np.ndarray]) -> bool:
        distinct = {tuple(sorted(row.tolist())) for row in exclude}
        extra = max((len(r) for r in exclude), default=0)
        # A filter is one expression per request: cheap with few distinct lists (one user
        # per request); over-fetching serves many different lists in one request.
        return len(distinct) <= _MAX_DISTINCT_FILTERS or extra > MAX_TOPK // 2

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if k > MAX_TOPK:
            raise InvalidInputError(f"Milvus returns at most {MAX_TOPK} results per query; k={k} is too large")
        search = self._search_params(params, k)
        if self._gate is None:
            return self._run_search(queries, k, search, exclude)
        with self._gate.enter(tuple(search["params"].items())):
            return self._run_search(queries, k, search, exclude)

    def _run_search(
        self, queries: np.ndarray, k: int, search: dict[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if exclude is None or not any(len(r) for r in exclude):
            return self._search_rows(queries, k, search, "")
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, row in enumerate(exclude):
            groups.setdefault(tuple(sorted(row.tolist())), []).append(i)
        labels, dist = self._empty(len(queries), k)
        pk = self._info.pk
        for key, rows in groups.items():
            expr = f"{pk} not in [{', '.join(literal(v) for v in key)}]" if key else ""
            labels[rows], dist[rows] = self._search_rows(queries[rows], k, search, expr)
        return labels, dist

    def _search_params(self, params: Mapping[str, Any], k: int) -> dict[str, Any]:
        """Milvus search parameters for one call, made once per distinct value."""
        kind = self._spec.index_type
        if kind == "IVF_FLAT":
            key: tuple[Any, ...] = ("nprobe", params.get("nprobe"))
        elif kind == "HNSW":
            key = ("ef", params.get("ef_search"), k)
        else:
            key = ()
        cached = self._search_cache.get(key)
        if cached is None:
            out: dict[str, Any] = {}
            if kind == "IVF_FLAT":
                out["nprobe"] = nprobe_for(self._spec.nlist, params.get("nprobe"))
            elif kind == "HNSW":
                out["ef"] = ef_for(k, params.get("ef_search"))
            # A search parameter of another index type (nprobe on HNSW) is ignored per query, as
            # generic tools expect; given to the builder it is an error (check_config).
            cached = {"metric_type": self._spec.metric, "params": out}
            if len(self._search_cache) >= _PARAM_CACHE:
                self._search_cache.clear()
            self._search_cache[key] = cached
        return cached

    def _empty(self, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.id_kind == "str":
            return np.full((n, k), None, dtype=object), np.zeros((n, k), np.float32)
        return np.full((n, k), -1, dtype=np.int64), np.zeros((n, k), np.float32)

    def _search_rows(self, queries: np.ndarray, k: int, search: dict[str, Any], expr: str) -> tuple[Any, Any]:
        n = len(queries)
        out_ids, out_dist = self._empty(n, k)
        step = max(1, min(MAX_NQ, MESSAGE_BYTES // max(1, queries.shape[1] * 4), max(1, MAX_NQ * 16 // max(k, 1))))
        conn, name = self._conn, self.collection
        consistency = self._consistency or ("Strong" if self._fresh_writes else "Bounded")
        for start in range(0, n, step):
            batch = queries[start : start + step]
            result = conn.call(
                "search",
                conn.client.search,
                name,
                data=list(batch),
                limit=k,
                filter=expr,
                output_fields=[self._info.pk],
                search_params=search,
                anns_field=self._info.vector,
                consistency_level=consistency,
                collection=name,
            )
            for j, hits in enumerate(result):
                got = min(len(hits.ids), k)
                if got:
                    out_ids[start + j, :got] = list(hits.ids[:got])
                    out_dist[start + j, :got] = np.asarray(hits.distances[:got], dtype=np.float32)
        if consistency == "Strong":
            self._fresh_writes = False
        return out_ids, out_dist

    # -- changes ----------------------------------------------------------------------------
    def _check_kind(self, ids: np.ndarray) -> None:
        kind = "int" if ids.dtype == np.int64 else "str"
        if len(ids) and kind != self.id_kind:
            raise InvalidInputError(f"this index has {self.id_kind} ids; got {kind} ids")

    def _existing(self, ids: np.ndarray) -> list[Any]:
        """Which of ``ids`` are in the collection."""
        found: list[Any] = []
        conn, name, pk = self._conn, self.collection, self._info.pk
        for start in range(0, len(ids), 4096):
            expr = f"{pk} in [{', '.join(literal(v) for v in ids[start : start + 4096].tolist())}]"
            rows = conn.call(
                "query",
                conn.client.query,
                name,
                filter=expr,
                output_fields=[pk],
                consistency_level="Strong",
                collection=name,
            )
            found += [row[pk] for row in rows]
        return found

    def _max_id(self) -> int:
        if self._next_id is None:
            conn, pk = self._conn, self._info.pk
            top = -1
            try:
                iterator = conn.client.query_iterator(
                    self.collection, batch_size=16384, filter="", output_fields=[pk], timeout=conn.timeout
                )
                while True:
                    page = iterator.next()
                    if not page:
                        break
                    top = max(top, max(int(row[pk]) for row in page))
                iterator.close()
            except Exception as exc:
                raise conn.error("scanning ids", exc, self.collection) from None
            self._next_id = top + 1
        return self._next_id

    def add(self, vectors: np.ndarray, labels: np.ndarray | None) -> None:
        if labels is None:
            if self.id_kind == "str":
                raise InvalidInputError("this index has string ids; pass ids= for the new vectors")
            start = self._max_id()
            labels = np.arange(start, start + len(vectors), dtype=np.int64)
        self._check_kind(labels)
        dup = self._existing(labels)
        if dup:
            raise DuplicateIdError(f"id {dup[0]!r} is already in the index; remove it first or use another id")
        insert_rows(
            self._conn,
            self.collection,
            vectors,
            labels,
            batch_size=self._batch_size,
            progress=self._progress,
            fields=self._info.fields,
        )
        self._count += len(labels)
        self._fresh_writes = True
        if self.id_kind == "int" and len(labels):
            self._next_id = max(self._next_id or 0, int(labels.max()) + 1)

    def remove(self, labels: np.ndarray) -> int:
        self._check_kind(labels)
        found = self._existing(labels)
        conn = self._conn
        for start in range(0, len(found), 4096):
            conn.call(
                "delete",
                conn.client.delete,
                self.collection,
                ids=found[start : start + 4096],
                collection=self.collection,
            )
        if found:
            self._count -= len(found)
            self._fresh_writes = True
        return len(found)

    # -- persistence ------------------------------------------------------------------------
    def _common_meta(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "id_kind": self.id_kind,
            "fields": {"pk": self._info.pk, "vector": self._info.vector},
            "index": self._spec.as_dict(),
            "server_version": self._conn.server_version(),
        }

    def save(self, directory: Path) -> dict[str, Any]:
        conn, name = self._conn, self.collection
        conn.call("flush", conn.client.flush, name, collection=name)
        if conn.target.is_server:
            # The data stays on the server: the saved index points at the collection, which is kept.
            if self._resources.temporary:
                self._resources.temporary = False
                mark_kept(conn, name)
            info = {**self._common_meta(), "layout": "server", "location": conn.target.manifest_entry()}
            (directory / SERVER_FILE).write_text(json.dumps(info, indent=2))
            logger.info("saved index points at %s", self.location)
            return {**info, "file": SERVER_FILE}
        # Embedded: the saved index holds its own milvus-lite database (this one collection).
        files = copy_collection(conn.collection_root / name, directory / DATA_DIR / "collections" / name)
        logger.debug("copied %d files of collection %r into %s", files, name, directory)
        return {**self._common_meta(), "layout": "embedded", "database": DATA_DIR}

    def close(self) -> None:
        self._finalizer.detach()
        self._resources.release()

    def abandon(self) -> None:
        """Release at once without waiting for the database to stop (an interrupted or failed build)."""
        self._finalizer.detach()
        self._resources.release(wait=False)
