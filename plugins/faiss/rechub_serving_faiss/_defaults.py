"""Index types and defaults that scale with the catalogue.

The named index types (``Flat``, ``IVF``, ``HNSW``, ``IVFPQ``, ``SQ8``) are
turned into faiss factory strings here, with every parameter the user left as
``None`` chosen from the catalogue size. The rules keep two promises:

* never a configuration the data cannot train (IVF lists need about 39
  training points each, a PQ codebook of ``2**nbits`` centroids needs at least
  that many points), so a 50-item catalogue gets one list, not 28 empty ones,
  and faiss never has a reason to warn;
* an approximate index is there to be faster than exact search: each search
  default (``ef_search``, ``nprobe``) is the fastest setting that reaches
  recall@10 >= 0.95 on the benchmark data (100,000 x 64 clustered items,
  queries drawn like the items; ``benchmarks/bench_faiss.py``, the curves in
  docs/backends/faiss.md): ``ef_search=36`` (recall 0.958), and ``nprobe=28``
  of ``nlist=1265`` lists (0.957), kept in proportion for other ``nlist``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EF_SEARCH_SWEEP",
    "MIN_POINTS_PER_LIST",
    "NAMED_TYPES",
    "NPROBE_SWEEP",
    "Plan",
    "canonical_index_type",
    "default_nprobe",
    "index_family",
    "plan_index",
]

#: faiss's k-means warns below 39 training points per centroid.
MIN_POINTS_PER_LIST = 39
#: HNSW defaults (faiss's own efConstruction=40 gives poor graphs at 100k).
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF_SEARCH = 36
#: nprobe = nlist / NPROBE_DIVISOR (28 of 1265 lists at 100,000 items), at least MIN_NPROBE.
NPROBE_DIVISOR = 45
MIN_NPROBE = 16

#: What ``rechub-index tune`` sweeps (faiss caps nprobe at nlist; ef_search below k is raised to k).
NPROBE_SWEEP = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64, 128, 256)
EF_SEARCH_SWEEP = (10, 16, 24, 32, 36, 40, 48, 64, 96, 128, 256, 512)
_GRAPH_TOKENS = ("HNSW", "NSG", "NNDescent")

NAMED_TYPES = {
    "flat": "Flat",
    "ivf": "IVF",
    "ivfflat": "IVF",
    "ivf_flat": "IVF",
    "ivf-flat": "IVF",
    "hnsw": "HNSW",
    "hnswflat": "HNSW",
    "ivfpq": "IVFPQ",
    "ivf_pq": "IVFPQ",
    "ivf-pq": "IVFPQ",
    "sq8": "SQ8",
}


def canonical_index_type(value: str) -> str:
    """``Flat``/``IVF``/``HNSW``/``IVFPQ``/``SQ8`` for the named types, else the factory string as given."""
    text = value.strip()
    if not text:
        raise ValueError("index_type is empty; use Flat, IVF, HNSW, IVFPQ, SQ8 or a faiss factory string")
    return NAMED_TYPES.get(text.lower(), text)


def index_family(kind: str) -> str:
    """``"flat"``, ``"ivf"`` (inverted lists: ``nprobe`` applies), ``"graph"`` (``ef_search``) or ``"other"``."""
    if kind in ("Flat", "SQ8"):
        return "flat"
    if kind in ("IVF", "IVFPQ"):
        return "ivf"
    if kind == "HNSW":
        return "graph"
    upper = kind.upper()
    if upper.startswith("IVF") or ",IVF" in upper:
        return "ivf"
    if any(token in kind for token in _GRAPH_TOKENS):
        return "graph"
    return "other"


def default_nlist(n: int, n_train: int) -> int:
    """About ``4 * sqrt(n)`` lists, but never fewer than 39 training points per list."""
    return max(1, min(round(4 * math.sqrt(n)), n_train // MIN_POINTS_PER_LIST))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: all of them up to 16 lists, else about ``nlist / 45`` (at least 16)."""
    if nlist <= MIN_NPROBE:
        return nlist
    return min(nlist, max(MIN_NPROBE, round(nlist / NPROBE_DIVISOR)))


def default_pq_m(dim: int) -> int:
    """Sub-quantizers for IVF-PQ: the largest divisor of ``dim`` that is at most ``dim / 2``."""
    for m in range(max(1, dim // 2), 0, -1):
        if dim % m == 0:
            return m
    return 1


def default_nbits(n_train: int) -> int:
    """Bits per PQ code: 8, fewer when the sample cannot give each of the ``2**nbits`` centroids 39 points.

    Tiny catalogues still get up to 16 centroids (a few points each) rather than 2.
    """
    trainable = math.floor(math.log2(max(1.0, n_train / MIN_POINTS_PER_LIST))) if n_train else 0
    floor = min(4, math.floor(math.log2(max(2, n_train))))
    return max(1, floor, min(8, trainable))


@dataclass
class Plan:
    """What to build: a factory string plus the resolved parameters."""

    index_type: str
    factory: str
    family: str  # "flat", "ivf", "hnsw", "sq", "factory"
    resolved: dict[str, Any] = field(default_factory=dict)
    ef_construction: int | None = None


def plan_index(config: Mapping[str, Any], n: int, dim: int, n_train: int) -> Plan:
    """Resolve the configuration against a catalogue of ``n`` x ``dim`` (training sample ``n_train``).

    Raises ``ValueError`` with a user-facing message for impossible settings.
    """
    kind = canonical_index_type(config["index_type"])
    if kind == "Flat":
        return Plan(kind, "IDMap2,Flat", "flat")
    if kind == "SQ8":
        return Plan(kind, "IDMap2,SQ8", "sq")
    if kind == "HNSW":
        m = config["m"] or DEFAULT_M
        ef_c = config["ef_construction"] or max(DEFAULT_EF_CONSTRUCTION, m * 2)
        ef_s = config["ef_search"] or DEFAULT_EF_SEARCH
        return Plan(kind, f"HNSW{m},Flat", "hnsw", {"m": m, "ef_construction": ef_c, "ef_search": ef_s}, ef_c)
    if kind in ("IVF", "IVFPQ"):
        nlist = config["nlist"]
        if nlist is None:
            nlist = default_nlist(n, n_train)
        elif nlist > n_train:
            raise ValueError(
                f"nlist={nlist} is larger than the {n_train} training vectors; "
                f"use nlist <= {max(1, n_train // MIN_POINTS_PER_LIST)} (about 39 vectors per list) or omit it"
            )
        nprobe = config["nprobe"] or default_nprobe(nlist)
        resolved: dict[str, Any] = {"nlist": nlist, "nprobe": min(nprobe, nlist)}
        if kind == "IVF":
            return Plan(kind, f"IVF{nlist},Flat", "ivf", resolved)
        pq_m = config["pq_m"] or default_pq_m(dim)
        if dim % pq_m:
            raise ValueError(f"pq_m={pq_m} does not divide the dimension {dim}; choose a divisor of {dim}")
        nbits = config["nbits"] or default_nbits(n_train)
        if 2**nbits > n_train:
            raise ValueError(
                f"nbits={nbits} needs at least {2**nbits} training vectors, there are {n_train}; lower nbits or omit it"
            )
        resolved.update(pq_m=pq_m, nbits=nbits)
        # "np": no polysemous training (slow, and only useful for polysemous search, unused here).
        return Plan(kind, f"IVF{nlist},PQ{pq_m}x{nbits}np", "ivf", resolved)
    # A factory string is built literally; nprobe / ef_search / ef_construction still apply when given.
    given = {k: config[k] for k in ("nprobe", "ef_search") if config[k] is not None}
    return Plan(kind, kind, "factory", given, config["ef_construction"])
