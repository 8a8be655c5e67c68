"""The default search width of graph (HNSW) engines, grown with the catalogue.

An HNSW search keeps ``ef`` candidates; at a fixed ``ef`` its recall falls as
the graph grows (measured on clustered 64-d data with ``m=16``, see
docs/benchmarks/engines.md: ``ef=128`` gives recall@10 0.96 at 100,000
vectors but 0.88 at 1,000,000, ``ef=256`` gives 0.96 there). The engines
whose search width is a per-call argument (Voyager's ``query_ef``, USearch's
result count) share this rule, so that one default means one thing.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_EF_SEARCH", "SCALE_FROM", "default_ef", "search_width"]

DEFAULT_EF_SEARCH = 128  # recall@10 >= 0.95 at 100,000 x 64 with m=16, on every metric
SCALE_FROM = 100_000  # above it the default doubles per tenfold more vectors (256 at 1,000,000)


def default_ef(count: int) -> int:
    """The default ``ef`` over ``count`` vectors: 128 up to 100,000, doubled per tenfold more."""
    if count <= SCALE_FROM:
        return DEFAULT_EF_SEARCH
    return round(DEFAULT_EF_SEARCH * 2 ** math.log10(count / SCALE_FROM))


def search_width(ef_search: int | None, k: int, count: int) -> int:
    """Candidates a query for ``k`` results keeps: ``max(ef_search, k)``; None: ``max(default_ef(count), 2k)``."""
    return max(default_ef(count), 2 * k) if ef_search is None else max(ef_search, k)
