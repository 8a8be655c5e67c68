"""Exact top-k by blocked matrix product: the reference search every backend is checked against.

Scores are computed block by block (a matrix product over at most
``block_bytes`` of scores at a time), each block reduced to its top-k and
merged into the running top-k, so memory is bounded by the block size, not by
n_queries x n_items.
"""

from __future__ import annotations

import numpy as np

from ._metrics import Metric

__all__ = ["exact_search"]


def exact_search(
    items: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: Metric,
    *,
    block_bytes: int = 64 << 20,
    item_norms: np.ndarray | None = None,
    excluded_cols: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` over ``items``: (row positions, distances), best first.

    ``metric`` l2 gives squared distances, ip and cosine give inner products
    (cosine expects normalised inputs). ``excluded_cols[i]`` lists item rows
    that query ``i`` must not get; missing results are position -1.
    """
    n_items, n_q = len(items), len(queries)
    k = min(k, n_items)
    l2 = metric is Metric.L2
    if l2 and item_norms is None:
        item_norms = np.einsum("ij,ij->i", items, items)
    # Blocks: all queries at once when they fit, item blocks sized to the budget.
    # One score costs 4 bytes plus 8 for the partial sort's int64 position.
    budget = max(1, block_bytes // 12)
    q_block = max(1, min(n_q, budget // max(k * 4, 1024)))
    i_block = max(k, min(n_items, budget // q_block))
    out_pos = np.empty((n_q, k), dtype=np.int64)
    out_key = np.empty((n_q, k), dtype=np.float32)
    for qs in range(0, n_q, q_block):
        q = queries[qs : qs + q_block]
        best_key = best_pos = None
        banned = _banned_pairs(excluded_cols, qs, len(q))
        for start in range(0, n_items, i_block):
            block = items[start : start + i_block]
            key = q @ block.T  # higher is better
            if l2:
                key *= -2.0
                key += item_norms[start : start + len(block)]  # lower is better
            else:
                np.negative(key, out=key)
            if banned is not None:
                rows, cols = banned
                sel = (cols >= start) & (cols < start + len(block))
                key[rows[sel], cols[sel] - start] = np.inf
            if len(block) > k:
                part = np.argpartition(key, k - 1, axis=1)[:, :k]
                key = np.take_along_axis(key, part, axis=1)
                pos = part + start
            else:
                pos = np.broadcast_to(np.arange(start, start + len(block)), key.shape)
            if best_key is None:
                best_key, best_pos = key, pos
            else:
                key = np.concatenate([best_key, key], axis=1)
                pos = np.concatenate([best_pos, pos], axis=1)
                part = np.argpartition(key, k - 1, axis=1)[:, :k]
                best_key = np.take_along_axis(key, part, axis=1)
                best_pos = np.take_along_axis(pos, part, axis=1)
        order = np.argsort(best_key, axis=1, kind="stable")
        out_key[qs : qs + len(q)] = np.take_along_axis(best_key, order, axis=1)
        out_pos[qs : qs + len(q)] = np.take_along_axis(best_pos, order, axis=1)
    missing = ~np.isfinite(out_key)
    if l2:
        out_key += np.einsum("ij,ij->i", queries, queries)[:, None]
        np.maximum(out_key, 0.0, out=out_key)  # rounding can dip below zero
    else:
        np.negative(out_key, out=out_key)
    if missing.any():
        out_pos[missing] = -1
    return out_pos, out_key


def _banned_pairs(excluded: list[np.ndarray] | None, offset: int, n: int):
    if excluded is None:
        return None
    rows = [np.full(len(c), i, np.int64) for i, c in enumerate(excluded[offset : offset + n]) if len(c)]
    if not rows:
        return None
    cols = [c for c in excluded[offset : offset + n] if len(c)]
    return np.concatenate(rows), np.concatenate(cols)
