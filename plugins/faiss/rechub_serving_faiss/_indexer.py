"""The faiss :class:`~rechub_serving.Indexer`: search, exclusion, add/remove, save.

Thread safety: searches never touch shared state. Per-call ``nprobe`` /
``ef_search`` and the exclusion selector travel in a fresh faiss
``SearchParameters`` object for that call only; when the call uses the
index's own settings and no exclusion, no parameter object is made at all
(the fast path, identical to calling faiss directly). ``add`` / ``remove`` /
``close`` take the write side of a readers-writer lock, searches the read
side, so a search never sees a half-updated index.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rechub_serving import BackendError, Builder, Capabilities, IdMap, Indexer, InvalidParameterError, ReadWriteLock

from ._engine import EngineInfo, exclusion_selector, inspect_index, search_parameters

__all__ = ["INDEX_FILE", "FaissIndexer"]

logger = logging.getLogger("rechub_serving.faiss")

INDEX_FILE = "index.faiss"


class FaissIndexer(Indexer):
    """A faiss index whose labels are the core's int64 labels.

    ``resolved`` holds the parameters chosen at build time (``nlist``,
    ``nprobe``, ``m``, ``ef_search``, ...); ``adopted`` is set for a bare
    faiss file: ``(metric, external ids or None)`` read from the file.
    """

    def __init__(
        self,
        index: Any,
        resolved: dict[str, Any] | None = None,
        *,
        gpu_index: Any = None,
        adopted: tuple[str, np.ndarray | None] | None = None,
    ):
        self._index = index
        self._gpu_index = gpu_index
        self._info: EngineInfo = inspect_index(index)
        self._resolved = dict(resolved or {})
        self._adopted = adopted
        self._rw = ReadWriteLock()
        if self._info.ivf is not None:
            self._resolved.setdefault("nlist", int(self._info.ivf.nlist))
            self._resolved.setdefault("nprobe", int(self._info.ivf.nprobe))
        if self._info.hnsw is not None:
            self._resolved.setdefault("ef_search", int(self._info.hnsw.hnsw.efSearch))
        # The index's own settings: a call that asks for them needs no SearchParameters.
        self._native_nprobe = int(self._info.ivf.nprobe) if self._info.ivf is not None else None
        self._native_ef = int(self._info.hnsw.hnsw.efSearch) if self._info.hnsw is not None else None

    # -- core hooks ----------------------------------------------------------------
    def _attach(self, builder: Builder, dim: int, ids: IdMap | None) -> None:
        if self._adopted is not None:
            builder, ids = self._adopt_identity(builder, ids)
        super()._attach(builder, dim, ids)
        defaults = dict(self._search_defaults)
        for name in ("nprobe", "ef_search"):
            if defaults.get(name) is None and name in self._resolved:
                defaults[name] = self._resolved[name]
        self._search_defaults = defaults
        self._capabilities = self._narrow(self._capabilities)

    def _adopt_identity(self, builder: Builder, ids: IdMap | None) -> tuple[Builder, IdMap | None]:
        """Use the adopted file's metric (and IDMap ids) instead of the builder's defaults."""
        metric, external = self._adopted  # type: ignore[misc]
        given = builder.given_params.get("metric")
        if given is not None and given != metric and not (given == "cosine" and metric == "ip"):
            raise InvalidParameterError(
                f"the faiss file uses metric {metric!r}; it cannot be opened as {given!r} "
                f"(omit metric=, or use metric='cosine' only for an inner-product index of normalised vectors)"
            )
        if given is None:
            builder = type(builder)(**{**builder.given_params, "metric": metric})
        if external is not None:
            ids = IdMap.create(external, len(external))
        return builder, ids

    def _narrow(self, caps: Capabilities) -> Capabilities:
        """Capabilities of this very index (its structure may allow less than its config says)."""
        info = self._info
        return Capabilities(
            exact=caps.exact and info.family == "flat",
            add=caps.add,
            remove=caps.remove and info.can_remove,
            native_filter=caps.native_filter and info.selector,
            persist=caps.persist,
            mmap=caps.mmap,
            gpu=caps.gpu,
        )

    @property
    def params(self) -> dict[str, Any]:
        """Build and search parameters, with the values chosen for ``None`` defaults filled in."""
        out = super().params
        for key, value in self._resolved.items():
            if out.get(key) is None:
                out[key] = value
        return out

    # -- search --------------------------------------------------------------------
    def _search(self, queries, k, params, exclude):
        if exclude is not None and not any(len(r) for r in exclude):
            exclude = None
        if exclude is None:
            return self._engine_search(queries, k, params, None)
        first = exclude[0]
        if all(r is first or np.array_equal(r, first) for r in exclude[1:]):
            # One exclusion set for the whole batch: one search with an id selector.
            return self._engine_search(queries, k, params, exclusion_selector(first))
        # Rows differ and a faiss selector is per call: the core's over-fetch and drop.
        return self._overfetch_search(queries, k, params, exclude)

    def _engine_search(self, queries: np.ndarray, k: int, params: dict[str, Any], selector: Any):
        info = self._info
        nprobe = params.get("nprobe")
        ef = params.get("ef_search")
        if ef is not None:
            ef = max(int(ef), k)
        native = (
            selector is None
            and (info.ivf is None or nprobe is None or nprobe == self._native_nprobe)
            and (info.hnsw is None or ef is None or ef == self._native_ef)
        )
        sp = None if native else search_parameters(info, nprobe, ef, selector)
        rw = self._rw
        rw.acquire_shared()  # explicit acquire/release: this is the per-query hot path
        try:
            index = self._gpu_index if self._gpu_index is not None else self._index
            if index is None:  # closed concurrently; the core reports use-after-close
                raise BackendError("the faiss index was closed during the search")
            dist, labels = index.search(queries, k) if sp is None else index.search(queries, k, params=sp)
        finally:
            rw.release_shared()
        return labels, dist

    def _ntotal(self) -> int:
        return int(self._index.ntotal)

    # -- mutation ------------------------------------------------------------------
    def _add(self, vectors: np.ndarray, labels: np.ndarray | None) -> None:
        with self._rw.exclusive():
            index = self._index
            start = int(index.ntotal)
            if labels is None:
                labels = np.arange(start, start + len(vectors), dtype=np.int64)
            try:
                if self._info.has_ids:
                    index.add_with_ids(vectors, np.ascontiguousarray(labels, dtype=np.int64))
                elif len(labels) and (labels[0] != start or np.any(np.diff(labels) != 1)):
                    raise BackendError(
                        "this faiss index stores positions, not ids, and the new labels do not follow on; "
                        "rebuild it with from_embeddings()"
                    )
                else:
                    index.add(vectors)
            except RuntimeError as exc:
                raise BackendError(f"faiss could not add the vectors: {_first_line(exc)}") from None
            self._sync_gpu()

    def _remove(self, labels: np.ndarray) -> int:
        with self._rw.exclusive():
            try:
                removed = int(self._index.remove_ids(np.ascontiguousarray(labels, dtype=np.int64)))
            except RuntimeError as exc:
                raise BackendError(f"faiss could not remove the vectors: {_first_line(exc)}") from None
            self._sync_gpu()
            return removed

    def _sync_gpu(self) -> None:
        if self._gpu_index is not None:  # pragma: no cover - needs a GPU build of faiss
            res = self._gpu_index.getResources() if hasattr(self._gpu_index, "getResources") else None
            self._gpu_index = faiss.index_cpu_to_gpu(res or faiss.StandardGpuResources(), 0, self._index)

    # -- persistence ---------------------------------------------------------------
    def _save(self, directory: Path) -> dict[str, Any]:
        with self._rw.shared():
            faiss.write_index(self._index, str(directory / INDEX_FILE))
        return {"file": INDEX_FILE, "resolved": self._resolved, "faiss_class": type(self._index).__name__}

    def _engine_count(self) -> int:
        return self._ntotal()

    def _engine_dim(self) -> int:
        return int(self._index.d)

    def _close(self) -> None:
        with self._rw.exclusive():
            self._index = self._gpu_index = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
