"""Constants and the rules that choose a parameter the user left to the plugin.

One place for every default, so the backend, the engine and the docs agree:
``nlist`` scales with the catalogue, ``nprobe`` above ``nlist`` is clamped
(as the faiss plugin does: visiting every list is all there is), ``ef`` is
never below ``k`` (Milvus refuses that).
"""

from __future__ import annotations

import math

from rechub_serving import Metric

__all__ = [
    "DEFAULT_EF_CONSTRUCTION",
    "DEFAULT_M",
    "INDEX_TYPES",
    "MAX_NQ",
    "MAX_TOPK",
    "MESSAGE_BYTES",
    "PK_FIELD",
    "VARCHAR_MAX",
    "VECTOR_FIELD",
    "build_timeout",
    "ef_for",
    "insert_batch_rows",
    "milvus_metric",
    "nlist_for",
    "nprobe_for",
    "tune_values",
]

INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")
OWN_PARAMS = {"IVF_FLAT": ("nlist", "nprobe"), "HNSW": ("m", "ef_construction", "ef_search")}
INDEX_PARAMS = ("nlist", "nprobe", "m", "ef_construction", "ef_search")

MAX_TOPK = 16384  # Milvus' limit on results per query
MAX_NQ = 1000  # queries per search request
MESSAGE_BYTES = 16 << 20  # payload budget of one insert / search request (the gRPC limit is 64 MiB)
MAX_NLIST = 65536
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF_FLOOR = 64
MIN_DEFAULT_NPROBE = 16

PK_FIELD = "pk"
VECTOR_FIELD = "vector"
VARCHAR_MAX = 65535

_MILVUS_METRIC = {Metric.L2: "L2", Metric.IP: "IP", Metric.COSINE: "COSINE"}
METRIC_OF = {v: k for k, v in _MILVUS_METRIC.items()}

# What `rechub-index tune` sweeps per index type (FLAT and AUTOINDEX: nothing).
_EF_VALUES = (16, 32, 64, 128, 256, 512)
_NPROBE_VALUES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def milvus_metric(metric: Metric) -> str:
    """Milvus' name of a metric (``L2``, ``IP``, ``COSINE``)."""
    return _MILVUS_METRIC[metric]


def nlist_for(n: int, given: int | None) -> int:
    """IVF lists for ``n`` vectors: the given value or ~4·sqrt(n), never more lists than vectors."""
    wanted = given or round(4 * math.sqrt(max(n, 1)))
    return max(1, min(wanted, max(n, 1), MAX_NLIST))


def nprobe_for(nlist: int, given: int | None) -> int:
    """Lists visited per query: the given value or max(16, nlist/8), clamped to ``nlist``.

    An ``nprobe`` above ``nlist`` is not an error: it means "every list", the
    same as ``nprobe = nlist`` (the faiss plugin does the same).
    """
    wanted = given if given is not None else max(MIN_DEFAULT_NPROBE, nlist // 8)
    return max(1, min(int(wanted), nlist))


def ef_for(k: int, given: int | None) -> int:
    """HNSW search beam for ``k`` results: the given value or max(64, k), never below ``k``."""
    return max(int(given) if given is not None else DEFAULT_EF_FLOOR, k)


def build_timeout(given: float | None, timeout: float, n: int) -> float:
    """Seconds an index build or load may take: the given value, else ``timeout`` plus 1 s per 1,000 vectors."""
    return given if given is not None else timeout + n / 1000


def tune_values(index_type: str, nlist: int | None) -> dict[str, list[int]]:
    """The search parameter ``rechub-index tune`` sweeps for ``index_type`` ({}: exact or engine-chosen)."""
    if index_type == "HNSW":
        return {"ef_search": list(_EF_VALUES)}
    if index_type == "IVF_FLAT":
        values = [v for v in _NPROBE_VALUES if nlist is None or v < nlist]
        return {"nprobe": values + ([nlist] if nlist is not None else [])}
    return {}


def insert_batch_rows(dim: int, kind: str, batch_size: int | None) -> int:
    """Rows per insert request: ``batch_size`` if given, never more than fits in :data:`MESSAGE_BYTES`."""
    per_row = dim * 4 + (16 if kind == "int" else 80)
    fit = max(1, MESSAGE_BYTES // per_row)
    return max(1, min(batch_size or fit, fit))
