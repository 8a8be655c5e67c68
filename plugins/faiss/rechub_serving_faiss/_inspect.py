"""What a faiss index is, read from the index object itself.

Capabilities are read from the index structure (not only from the
configuration), so an adopted file or an expert's factory string gets exactly
what its structure allows: ``remove`` needs stored ids (an IVF index or an
``IndexIDMap``) and a structure that can delete (not a graph); exclusion
inside the engine needs an index whose search honours ``SearchParameters.sel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from rechub_serving import Metric

__all__ = [
    "EngineInfo",
    "exclusion_selector",
    "gpu_available",
    "id_map_view",
    "inspect_index",
    "metric_of",
    "search_parameters",
]


@dataclass(frozen=True)
class EngineInfo:
    """What the search and mutation code needs to know about one faiss index."""

    family: str  # "flat", "sq", "ivf", "hnsw", "pq", "other"
    has_ids: bool  # labels are stored (IVF or IndexIDMap): add_with_ids and remove work
    can_remove: bool
    selector: bool  # SearchParameters.sel is honoured
    ivf: Any = None  # the IndexIVF inside, if any
    hnsw: Any = None  # the IndexHNSW inside, if any
    id_map: Any = None  # the top-level IndexIDMap / IndexIDMap2, if any


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
    top = faiss.downcast_index(index)
    id_map = top if isinstance(top, (faiss.IndexIDMap, faiss.IndexIDMap2)) else None
    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError, AttributeError):
        ivf = None
    if ivf is not None and isinstance(inner, faiss.IndexIVF):
        # Under an IDMap an IVF index cannot remove: it keeps the positions of the others, the map shifts them.
        return EngineInfo("ivf", True, not has_idmap, True, ivf=ivf, id_map=id_map)
    if isinstance(inner, faiss.IndexHNSW):
        return EngineInfo("hnsw", has_idmap, False, True, hnsw=inner, id_map=id_map)
    if isinstance(inner, faiss.IndexFlat):
        return EngineInfo("flat", has_idmap, has_idmap, True, id_map=id_map)
    if isinstance(inner, faiss.IndexScalarQuantizer):
        return EngineInfo("sq", has_idmap, has_idmap, True, id_map=id_map)
    if isinstance(inner, faiss.IndexPQ):
        return EngineInfo("pq", has_idmap, has_idmap, False, id_map=id_map)
    return EngineInfo("other", has_idmap, False, False, id_map=id_map)


def search_parameters(info: EngineInfo, nprobe: int | None, ef_search: int | None, selector: Any = None) -> Any:
    """A ``SearchParameters*`` object of the kind ``info``'s index expects (IVF ones refuse any other)."""
    params: Any
    if info.family == "ivf":
        params = faiss.SearchParametersIVF()
        if nprobe is not None:
            params.nprobe = int(nprobe)
    elif info.family == "hnsw":
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
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
    selector._keep = batch  # type: ignore[attr-defined]  # the C++ object points at ``batch``
    return selector


def id_map_view(id_map_index: Any) -> np.ndarray:
    """The labels of an ``IndexIDMap`` as a numpy view of its ``id_map`` (valid until the index changes)."""
    vector = id_map_index.id_map
    size = int(vector.size())
    if not size:
        return np.zeros(0, np.int64)
    return faiss.rev_swig_ptr(vector.data(), size)


def metric_of(index: Any) -> Metric:
    """``Metric.L2`` or ``Metric.IP`` from ``index.metric_type``; other faiss metrics are refused."""
    if index.metric_type == faiss.METRIC_L2:
        return Metric.L2
    if index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return Metric.IP
    raise ValueError(f"faiss metric_type {index.metric_type} is neither METRIC_L2 nor METRIC_INNER_PRODUCT")


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
