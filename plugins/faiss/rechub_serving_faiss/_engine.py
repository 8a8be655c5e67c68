"""Facts about a live faiss index: its family, what it supports, its search parameters.

Capabilities are read from the index object itself (not only from the
configuration), so an adopted file or an expert's factory string gets exactly
what its structure allows: ``remove`` needs stored ids (an IVF index or an
``IndexIDMap``) and a structure that can delete (not a graph), id selectors
need an index whose search honours ``SearchParameters.sel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

__all__ = ["EngineInfo", "gpu_available", "inspect_index", "metric_name", "search_parameters"]


@dataclass(frozen=True)
class EngineInfo:
    """What the search and mutation code needs to know about one faiss index."""

    family: str  # "flat", "sq", "ivf", "hnsw", "pq", "other"
    has_ids: bool  # labels are stored (IVF or IndexIDMap): add_with_ids and remove work
    can_remove: bool
    selector: bool  # SearchParameters.sel is honoured
    ivf: Any = None  # the IndexIVF inside, if any
    hnsw: Any = None  # the IndexHNSW inside, if any


def _unwrap(index: Any) -> tuple[Any, bool]:
    """The innermost index below IDMap / pre-transform wrappers, and whether an IDMap was seen."""
    has_idmap = False
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            has_idmap = True
            index = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        else:
            return index, has_idmap


def inspect_index(index: Any) -> EngineInfo:
    """Classify ``index`` (any faiss CPU index)."""
    inner, has_idmap = _unwrap(index)
    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError, AttributeError):
        ivf = None
    if ivf is not None and isinstance(inner, faiss.IndexIVF):
        return EngineInfo("ivf", True, True, True, ivf=ivf)
    if isinstance(inner, faiss.IndexHNSW):
        return EngineInfo("hnsw", has_idmap, False, True, hnsw=inner)
    if isinstance(inner, faiss.IndexFlat):
        return EngineInfo("flat", has_idmap, has_idmap, True)
    if isinstance(inner, faiss.IndexScalarQuantizer):
        return EngineInfo("sq", has_idmap, has_idmap, True)
    if isinstance(inner, faiss.IndexPQ):
        return EngineInfo("pq", has_idmap, has_idmap, False)
    return EngineInfo("other", has_idmap, False, False)


def search_parameters(info: EngineInfo, nprobe: int | None, ef_search: int | None, selector: Any) -> Any:
    """A fresh ``SearchParameters*`` object for one call (never shared, never stored on the index)."""
    if info.family == "ivf":
        params = faiss.SearchParametersIVF()
        if nprobe is not None:
            params.nprobe = int(nprobe)
    elif info.family == "hnsw":
        params = faiss.SearchParametersHNSW()
        if ef_search is not None:
            params.efSearch = int(ef_search)
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


def exclusion_selector(labels: np.ndarray) -> Any:
    """A selector that accepts every label except ``labels``. Keep the returned object alive."""
    batch = faiss.IDSelectorBatch(np.ascontiguousarray(labels, dtype=np.int64))
    selector = faiss.IDSelectorNot(batch)
    selector._keep = batch  # the C++ object points at ``batch``
    return selector


def metric_name(index: Any) -> str:
    """``"l2"`` or ``"ip"`` from ``index.metric_type``; other faiss metrics are refused."""
    if index.metric_type == faiss.METRIC_L2:
        return "l2"
    if index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "ip"
    raise ValueError(f"faiss metric_type {index.metric_type} is neither METRIC_L2 nor METRIC_INNER_PRODUCT")


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
