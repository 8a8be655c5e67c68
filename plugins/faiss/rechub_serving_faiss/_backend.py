"""The faiss :class:`~rechub_serving.Backend`: parameter schema, build, load, adopt.

Metrics: ``l2`` uses ``METRIC_L2`` (faiss already returns squared distances);
``ip`` and ``cosine`` use ``METRIC_INNER_PRODUCT`` (cosine vectors arrive
L2-normalised from the core, so the inner product *is* the cosine).
Labels: IVF indexes store the core's labels natively (``add_with_ids``);
Flat and SQ8 sit in an ``IndexIDMap2`` so that ``remove`` works; HNSW stores
positions, which equal the labels because HNSW can never remove.
Saved format (unchanged since 0.1): ``engine/index.faiss`` written by
``faiss.write_index``, and ``{"file", "resolved", "faiss_class"}`` as the
manifest's engine entry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rechub_serving import (
    Adopted,
    Backend,
    BackendConfig,
    BackendError,
    Capabilities,
    EngineFiles,
    IndexFormatError,
    InvalidParameterError,
    Param,
    UnsupportedOperation,
)

from ._defaults import (
    EF_SEARCH_SWEEP,
    NPROBE_SWEEP,
    canonical_index_type,
    index_family,
    plan_index,
)
from ._engine import INDEX_FILE, FaissEngine
from ._files import first_line, read_index, saved_resolved, take_external_ids
from ._inspect import gpu_available, inspect_index, metric_of
from ._train import train, training_sample

__all__ = ["FaissBackend"]

logger = logging.getLogger("rechub_serving.faiss")


def _index_type(value: str) -> str:
    return canonical_index_type(value)


class FaissBackend(Backend):
    """Faiss indexes: exact ``Flat``, ``IVF`` (IVF-Flat), ``HNSW``, ``IVFPQ``, ``SQ8`` or any factory string."""

    name = "faiss"
    engine_distribution = ("faiss-cpu", "faiss-gpu", "faiss")
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
            maximum=1 << 24,
        ),
        Param(
            "nprobe",
            int,
            None,
            "IVF lists visited per query (default: all up to 16 lists, else ~nlist/45, >= 16)",
            minimum=1,
            maximum=1 << 24,
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
            maximum=1 << 16,
        ),
        Param(
            "ef_search",
            int,
            None,
            "HNSW search beam width (default 36; raised to k when k is larger)",
            aliases=("efSearch", "ef"),
            minimum=1,
            maximum=1 << 20,
            search=True,
        ),
        Param(
            "pq_m",
            int,
            None,
            "IVFPQ sub-quantizers, a divisor of dim (default: largest divisor <= dim/2)",
            minimum=1,
            maximum=1 << 16,
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
            maximum=1 << 40,
        ),
        Param(
            "threads",
            int,
            None,
            "faiss OpenMP threads (process-wide; default: faiss's own)",
            minimum=1,
            maximum=1 << 12,
            runtime=True,
        ),
        Param("device", str, "cpu", "cpu, or cuda (needs a GPU build of faiss)", choices=("cpu", "cuda"), runtime=True),
        Param("mmap", bool, False, "memory-map a saved index when loading (read-only: no add/remove)", runtime=True),
    )

    # -- configuration -------------------------------------------------------------
    def check_config(self, config: BackendConfig) -> None:
        if config["device"] == "cuda" and not gpu_available():
            raise UnsupportedOperation(
                f"device='cuda' needs a GPU build of faiss and a visible GPU; the installed faiss {faiss.__version__} "
                f"has {'no GPU support' if not hasattr(faiss, 'StandardGpuResources') else 'no visible GPU'}. "
                "Install faiss-gpu (conda: faiss-gpu) or use device='cpu'."
            )

    def capabilities_for(self, config: BackendConfig) -> Capabilities:
        kind = canonical_index_type(config["index_type"])
        family = index_family(kind)
        mmap = bool(config["mmap"])
        return Capabilities(
            exact=kind == "Flat",
            add=not mmap,
            remove=family != "graph" and not mmap,  # a factory string's live index narrows this further
            native_filter=True,
            persist=True,
            mmap=True,
            gpu=config["device"] == "cuda",
        )

    def tune_space(self, config: BackendConfig) -> dict[str, list[int]]:
        """IVF indexes sweep ``nprobe`` (up to ``nlist`` when given), graphs ``ef_search``; the rest nothing."""
        family = index_family(canonical_index_type(config["index_type"]))
        if family == "ivf":
            nlist = config["nlist"]
            return {"nprobe": [v for v in NPROBE_SWEEP if nlist is None or v <= nlist]}
        if family == "graph":
            return {"ef_search": list(EF_SEARCH_SWEEP)}
        return {}

    # -- build ---------------------------------------------------------------------
    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> FaissEngine:
        _apply_threads(config)
        n, dim = vectors.shape
        train_n = min(n, config["train_size"] or n)
        try:
            plan = plan_index(config, n, dim, train_n)
        except ValueError as exc:
            raise InvalidParameterError(f"faiss: {exc}") from None
        metric = faiss.METRIC_L2 if config["metric"] == "l2" else faiss.METRIC_INNER_PRODUCT
        try:
            index = faiss.index_factory(dim, plan.factory, metric)
        except RuntimeError as exc:
            raise InvalidParameterError(
                f"faiss: index_type={plan.index_type!r} is not a faiss factory string faiss accepts for dim {dim} "
                f"({first_line(exc)}); use Flat, IVF, HNSW, IVFPQ, SQ8 or see the faiss index_factory docs"
            ) from None
        info = inspect_index(index)
        if plan.family == "factory" and not info.has_ids and info.family != "hnsw":
            index = faiss.index_factory(dim, "IDMap2," + plan.factory, metric)
            info = inspect_index(index)
        if plan.ef_construction is not None and info.hnsw is not None:
            info.hnsw.hnsw.efConstruction = int(plan.ef_construction)
        try:
            if not index.is_trained:
                train(index, training_sample(vectors, train_n))
            if info.has_ids:
                index.add_with_ids(vectors, np.arange(n, dtype=np.int64))
            else:
                index.add(vectors)
        except RuntimeError as exc:
            raise BackendError(f"faiss failed to build {plan.factory!r} over {n} x {dim}: {first_line(exc)}") from None
        _set_search_defaults(index, plan.resolved)
        logger.debug("faiss built %s (%s) over %d x %d", plan.index_type, plan.factory, n, dim)
        return FaissEngine(index, {"factory": plan.factory, **plan.resolved}, gpu_index=_to_gpu(index, config))

    # -- load and adopt ------------------------------------------------------------
    def load(self, files: EngineFiles, config: BackendConfig) -> FaissEngine:
        _apply_threads(config)
        name = files.meta.get("file", INDEX_FILE)
        if not isinstance(name, str):
            raise IndexFormatError(
                f"the manifest's engine.file is {name!r}, expected a file name such as {INDEX_FILE!r}"
            )
        index = read_index(files.path(name), bool(config["mmap"]))
        resolved = saved_resolved(files.meta.get("resolved"))
        _set_search_defaults(index, {**resolved, **_given_search(config)})
        return FaissEngine(index, resolved, mapped=bool(config["mmap"]), gpu_index=_to_gpu(index, config))

    def adopt(self, path: Path, config: BackendConfig) -> Adopted:
        """A bare ``faiss.write_index`` file: metric from the file, ids from its IDMap if any."""
        _apply_threads(config)
        index = read_index(path, bool(config["mmap"]))
        try:
            metric = metric_of(index)
        except ValueError as exc:
            raise IndexFormatError(f"{path}: {exc}; rechub-serving supports l2, ip and cosine") from None
        external = take_external_ids(index, path)
        _set_search_defaults(index, _given_search(config))
        engine = FaissEngine(index, mapped=bool(config["mmap"]), gpu_index=_to_gpu(index, config))
        return Adopted(engine, metric.value, ids=external)


# -- helpers --------------------------------------------------------------------------------------
def _apply_threads(config: BackendConfig) -> None:
    if config["threads"] is not None:
        faiss.omp_set_num_threads(int(config["threads"]))


def _given_search(config: BackendConfig) -> dict[str, int]:
    return {k: int(config[k]) for k in ("nprobe", "ef_search") if config[k] is not None}


def _set_search_defaults(index: Any, values: Mapping[str, Any]) -> None:
    """Store the default nprobe / efSearch on the index itself: default queries then need no parameter object."""
    info = inspect_index(index)
    if info.ivf is not None and values.get("nprobe"):
        info.ivf.nprobe = int(values["nprobe"])
    if info.hnsw is not None and values.get("ef_search"):
        info.hnsw.hnsw.efSearch = int(values["ef_search"])


def _to_gpu(index: Any, config: BackendConfig) -> Any:
    if config["device"] != "cuda":
        return None
    try:  # pragma: no cover - needs a GPU build of faiss
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except RuntimeError as exc:  # pragma: no cover
        raise UnsupportedOperation(f"faiss cannot move this index to the GPU: {first_line(exc)}") from None
