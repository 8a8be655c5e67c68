"""The faiss :class:`~rechub_serving.Builder`: parameter schema, build, load, adopt.

Metrics: ``l2`` uses ``METRIC_L2`` (faiss already returns squared distances);
``ip`` and ``cosine`` use ``METRIC_INNER_PRODUCT`` (cosine vectors arrive
L2-normalised from the core, so the inner product *is* the cosine).
Labels: IVF indexes store the core's labels natively (``add_with_ids``);
Flat and SQ8 sit in an ``IndexIDMap2`` so that ``remove`` works; HNSW stores
positions, which equal the labels because HNSW can never remove.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rechub_serving import (
    BackendError,
    Builder,
    Capabilities,
    IdMap,
    IndexFormatError,
    InvalidParameterError,
    NotAnIndexError,
    Param,
    UnsupportedOperation,
)

from ._defaults import canonical_index_type, plan_index
from ._engine import gpu_available, inspect_index, metric_name
from ._indexer import INDEX_FILE, FaissIndexer, _first_line

__all__ = ["FaissBuilder"]

logger = logging.getLogger("rechub_serving.faiss")

_TRAIN_SEED = 1234
_GRAPH_TOKENS = ("HNSW", "NSG", "NNDescent")


def _index_type(value: str) -> str:
    return canonical_index_type(value)


class FaissBuilder(Builder):
    """Faiss indexes: exact ``Flat``, ``IVF`` (IVF-Flat), ``HNSW``, ``IVFPQ``, ``SQ8`` or any factory string."""

    name = "faiss"
    capabilities = Capabilities(
        exact=True, add=True, remove=True, native_filter=True, persist=True, mmap=True, gpu=False
    )
    params = (
        Param(
            "index_type",
            str,
            "Flat",
            "Flat (exact), IVF, HNSW, IVFPQ, SQ8, or any faiss index_factory string (e.g. 'IVF1024,PQ16')",
            check=_index_type,
        ),
        Param(
            "nlist",
            int,
            None,
            "IVF lists (default ~4*sqrt(n), >= 39 training vectors per list)",
            aliases=("nlists",),
            minimum=1,
        ),
        Param(
            "nprobe",
            int,
            None,
            "IVF lists visited per query (default: all up to 16, else ~nlist/20, >= 16)",
            minimum=1,
            search=True,
        ),
        Param("m", int, None, "HNSW neighbours per node (default 32)", aliases=("M",), minimum=2, maximum=256),
        Param(
            "ef_construction",
            int,
            None,
            "HNSW build beam width (default max(200, 2*m))",
            aliases=("efConstruction",),
            minimum=1,
        ),
        Param(
            "ef_search",
            int,
            None,
            "HNSW search beam width (default 128; raised to k when k is larger)",
            aliases=("efSearch", "ef"),
            minimum=1,
            search=True,
        ),
        Param(
            "pq_m", int, None, "IVFPQ sub-quantizers, a divisor of dim (default: largest divisor <= dim/2)", minimum=1
        ),
        Param(
            "nbits",
            int,
            None,
            "IVFPQ bits per sub-quantizer code (default 8, fewer for tiny catalogues)",
            minimum=1,
            maximum=16,
        ),
        Param(
            "train_size",
            int,
            None,
            "vectors sampled to train IVF / PQ / SQ (default: all)",
            aliases=("n_train",),
            minimum=1,
        ),
        Param(
            "threads", int, None, "faiss OpenMP threads (process-wide; default: faiss's own)", minimum=1, runtime=True
        ),
        Param("device", str, "cpu", "cpu, or cuda (needs a GPU build of faiss)", choices=("cpu", "cuda"), runtime=True),
        Param("mmap", bool, False, "memory-map a saved index when loading (read-only: no add/remove)", runtime=True),
    )

    @classmethod
    def engine_version(cls) -> str:
        return faiss.__version__

    # -- configuration -------------------------------------------------------------
    def _check_config(self, config: dict[str, Any]) -> None:
        if config["device"] == "cuda" and not gpu_available():
            raise UnsupportedOperation(
                f"device='cuda' needs a GPU build of faiss and a visible GPU; the installed faiss {faiss.__version__} "
                f"has {'no GPU support' if not hasattr(faiss, 'StandardGpuResources') else 'no visible GPU'}. "
                "Install faiss-gpu (conda: faiss-gpu) or use device='cpu'."
            )

    def capabilities_for(self, config: Mapping[str, Any]) -> Capabilities:
        kind = canonical_index_type(config["index_type"])
        mmap = bool(config.get("mmap"))
        if kind == "HNSW":
            remove, native = False, True
        elif kind in ("Flat", "IVF", "IVFPQ", "SQ8"):
            remove, native = True, True
        else:  # a factory string: the live index narrows this further
            is_ivf = kind.upper().startswith("IVF") or ",IVF" in kind.upper()
            remove = is_ivf or not any(t in kind for t in _GRAPH_TOKENS)
            native = True
        return Capabilities(
            exact=kind == "Flat",
            add=not mmap,
            remove=remove and not mmap,
            native_filter=native,
            persist=True,
            mmap=True,
            gpu=config.get("device") == "cuda",
        )

    def _faiss_metric(self) -> int:
        return faiss.METRIC_L2 if self.config["metric"] == "l2" else faiss.METRIC_INNER_PRODUCT

    def _apply_threads(self) -> None:
        if self.config["threads"] is not None:
            faiss.omp_set_num_threads(int(self.config["threads"]))

    # -- build ---------------------------------------------------------------------
    def _build(self, vectors: np.ndarray, ids: IdMap) -> FaissIndexer:
        self._apply_threads()
        n, dim = vectors.shape
        train_n = min(n, self.config["train_size"] or n)
        try:
            plan = plan_index(self.config, n, dim, train_n)
        except ValueError as exc:
            raise InvalidParameterError(f"faiss: {exc}") from None
        try:
            index = faiss.index_factory(dim, plan.factory, self._faiss_metric())
        except RuntimeError as exc:
            raise InvalidParameterError(
                f"faiss: index_type={plan.index_type!r} is not a faiss factory string faiss accepts for dim {dim} "
                f"({_first_line(exc)}); use Flat, IVF, HNSW, IVFPQ, SQ8 or see the faiss index_factory docs"
            ) from None
        if plan.family == "factory" and not _stores_ids(index) and not _is_graph(index):
            index = faiss.index_factory(dim, "IDMap2," + plan.factory, self._faiss_metric())
        if plan.ef_construction is not None:
            hnsw = inspect_index(index).hnsw
            if hnsw is not None:
                hnsw.hnsw.efConstruction = int(plan.ef_construction)
        labels = np.arange(n, dtype=np.int64)
        try:
            if not index.is_trained:
                index.train(_training_sample(vectors, train_n))
            if _stores_ids(index):
                index.add_with_ids(vectors, labels)
            else:
                index.add(vectors)
        except RuntimeError as exc:
            raise BackendError(f"faiss failed to build {plan.factory!r} over {n} x {dim}: {_first_line(exc)}") from None
        _apply_search_defaults(index, plan.resolved)
        logger.debug("faiss built %s (%s) over %d x %d", plan.index_type, plan.factory, n, dim)
        return FaissIndexer(index, {"factory": plan.factory, **plan.resolved}, gpu_index=self._to_gpu(index))

    def _to_gpu(self, index: Any) -> Any:
        if self.config["device"] != "cuda":
            return None
        try:  # pragma: no cover - needs a GPU build of faiss
            return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        except RuntimeError as exc:  # pragma: no cover
            raise UnsupportedOperation(f"faiss cannot move this index to the GPU: {_first_line(exc)}") from None

    # -- load ----------------------------------------------------------------------
    def _read(self, path: Path) -> Any:
        # IO_FLAG_MMAP_IFC maps flat codes (Flat, SQ, HNSW storage); IO_FLAG_MMAP maps IVF lists but
        # refuses the memory-mapped reader the first one needs, so try both, then IVF-only mapping.
        attempts = [faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC, faiss.IO_FLAG_MMAP] if self.config["mmap"] else [0]
        for flags in attempts:
            try:
                return faiss.read_index(str(path), flags)
            except RuntimeError as exc:
                error = exc
        try:
            raise error
        except RuntimeError as exc:
            raise NotAnIndexError(
                f"{path} is not a faiss index file faiss {faiss.__version__} can read: {_first_line(exc)}"
            ) from None

    def _load(self, directory: Path, manifest: Mapping[str, Any]) -> FaissIndexer:
        self._apply_threads()
        engine = manifest.get("engine") or {}
        index = self._read(directory / engine.get("file", INDEX_FILE))
        resolved = dict(engine.get("resolved") or {})
        _apply_search_defaults(index, resolved)
        return FaissIndexer(index, resolved, gpu_index=self._to_gpu(index))

    def _adopt(self, path: Path) -> FaissIndexer:
        """Adopt a bare ``faiss.write_index`` file: metric from the file, ids from its IDMap if any."""
        self._apply_threads()
        index = self._read(path)
        try:
            metric = metric_name(index)
        except ValueError as exc:
            raise IndexFormatError(f"{path}: {exc}; rechub-serving supports l2, ip and cosine") from None
        external = _take_external_ids(index, path)
        return FaissIndexer(index, {}, gpu_index=self._to_gpu(index), adopted=(metric, external))


def _stores_ids(index: Any) -> bool:
    return inspect_index(index).has_ids


def _is_graph(index: Any) -> bool:
    return inspect_index(index).family == "hnsw"


def _training_sample(vectors: np.ndarray, n_train: int) -> np.ndarray:
    if n_train >= len(vectors):
        return vectors
    rows = np.sort(np.random.default_rng(_TRAIN_SEED).choice(len(vectors), n_train, replace=False))
    return np.ascontiguousarray(vectors[rows])


def _apply_search_defaults(index: Any, resolved: Mapping[str, Any]) -> None:
    """Store the default nprobe / efSearch on the index itself (the zero-cost path for default queries)."""
    info = inspect_index(index)
    if info.ivf is not None and resolved.get("nprobe"):
        info.ivf.nprobe = int(resolved["nprobe"])
    if info.hnsw is not None and resolved.get("ef_search"):
        info.hnsw.hnsw.efSearch = int(resolved["ef_search"])


def _take_external_ids(index: Any, path: Path) -> np.ndarray | None:
    """For an IDMap file, move its ids out (they become the external ids) and relabel it 0..n-1."""
    wrapper = faiss.downcast_index(index)
    if not isinstance(wrapper, faiss.IndexIDMap):
        if inspect_ivf_positional(index):
            return None
        raise IndexFormatError(
            f"{path} is an IVF index whose stored ids are not 0..n-1; adopting it would lose them. "
            "Wrap it in an IndexIDMap2 before writing, or rebuild with from_embeddings(ids=...)"
        )
    external = faiss.vector_to_array(wrapper.id_map).astype(np.int64)
    if len(external) and external.min() < 0:
        raise IndexFormatError(f"{path} stores negative ids; rechub-serving ids must be >= 0")
    if len(np.unique(external)) != len(external):
        raise IndexFormatError(f"{path} stores duplicate ids; every id must be unique")
    faiss.copy_array_to_vector(np.arange(len(external), dtype=np.int64), wrapper.id_map)
    if isinstance(wrapper, faiss.IndexIDMap2):
        wrapper.construct_rev_map()
    return external


def inspect_ivf_positional(index: Any) -> bool:
    """True unless ``index`` is an IVF index whose stored ids are something else than 0..n-1."""
    info = inspect_index(index)
    if info.ivf is None:
        return True
    invlists = info.ivf.invlists
    seen = []
    for list_no in range(info.ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            seen.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
    ids = np.sort(np.concatenate(seen)) if seen else np.zeros(0, np.int64)
    return bool(np.array_equal(ids, np.arange(len(ids))))
