"""The numpy backend's query memory is bounded by block_bytes, not by queries x items."""

from __future__ import annotations

import tracemalloc

import rechub_serving as rs
from rechub_serving.evaluation import clustered_data


def test_query_memory_is_bounded_by_the_block_size():
    items = clustered_data(60_000, 16, seed=0)
    queries = clustered_data(200, 16, seed=1)
    block = 1 << 20
    with rs.builder_factory("numpy", block_bytes=block).from_embeddings(items) as index:
        index.query(queries[:1], 10)  # item norms are cached on first use
        tracemalloc.start()
        index.query(queries, 10)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    full_matrix = len(queries) * len(items) * 4  # 48 MB
    assert peak < 2 * block + 200 * 10 * 64, (peak, block)
    assert peak < full_matrix / 10
