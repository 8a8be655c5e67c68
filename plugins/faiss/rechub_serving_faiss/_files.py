"""Reading faiss files: a saved index's engine file, a bare ``faiss.write_index`` file, memory-mapped or not.

What a file says is untrusted: the manifest's ``resolved`` entry is
type-checked, an IDMap file's ids are checked (unique, >= 0) before they
become the index's external ids, and an IVF file whose stored ids are not its
positions is refused rather than silently relabelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rechub_serving import IndexFormatError, NotAnIndexError

from ._inspect import inspect_index

__all__ = ["first_line", "read_index", "saved_resolved", "take_external_ids"]

_RESOLVED_KEYS = ("factory", "nlist", "nprobe", "m", "ef_construction", "ef_search", "pq_m", "nbits")


def saved_resolved(value: Any) -> dict[str, Any]:
    """The manifest's ``resolved`` entry, type-checked (a manifest is untrusted input)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise IndexFormatError(f"the manifest's engine.resolved is {type(value).__name__}, expected an object")
    out: dict[str, Any] = {}
    for key in _RESOLVED_KEYS:
        item = value.get(key)
        if item is None:
            continue
        ok = isinstance(item, str) if key == "factory" else type(item) is int and 0 < item <= 1 << 24
        if not ok:
            raise IndexFormatError(f"the manifest's engine.resolved.{key} is {item!r}; the manifest was edited")
        out[key] = item
    return out


def read_index(path: Path, mmap: bool) -> Any:
    # IO_FLAG_MMAP_IFC maps flat codes (Flat, SQ, HNSW storage); IO_FLAG_MMAP maps IVF lists but
    # refuses the memory-mapped reader the first one needs, so try both.
    attempts = [faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC, faiss.IO_FLAG_MMAP] if mmap else [0]
    error: RuntimeError | None = None
    for flags in attempts:
        try:
            return faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            error = exc
    raise NotAnIndexError(
        f"{path} is not a faiss index file faiss {faiss.__version__} can read: {first_line(error)}"
    ) from None


def take_external_ids(index: Any, path: Path) -> np.ndarray | None:
    """For an IDMap file, move its ids out (they become the external ids) and relabel it 0..n-1."""
    wrapper = faiss.downcast_index(index)
    if not isinstance(wrapper, faiss.IndexIDMap):
        if _ivf_positional(index):
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


def _ivf_positional(index: Any) -> bool:
    """True unless ``index`` is an IVF index whose stored ids are something else than 0..n-1."""
    ivf = inspect_index(index).ivf
    if ivf is None:
        return True
    seen = []
    for list_no in range(ivf.nlist):
        size = ivf.invlists.list_size(list_no)
        if size:
            seen.append(faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), size).copy())
    ids = np.sort(np.concatenate(seen)) if seen else np.zeros(0, np.int64)
    return bool(np.array_equal(ids, np.arange(len(ids))))


def first_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
