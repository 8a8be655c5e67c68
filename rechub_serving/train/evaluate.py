"""Retrieval metrics (Recall, Hit, NDCG @K) computed by querying this SDK's own index.

Every user's already-seen items are excluded through the index's ``exclude``
argument, exactly as serving does, so the numbers measure what production
would return. The default index is the exact ``numpy`` backend with cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import builder_factory

__all__ = ["evaluate_retrieval", "most_popular_baseline", "ranking_metrics"]


def ranking_metrics(retrieved: np.ndarray, targets: Any, ks: Sequence[int]) -> dict[str, float]:
    """Recall@K, Hit@K and NDCG@K of ``retrieved`` (n, K) ids against ``targets``.

    ``targets`` is one id per row (a 1-D array) or one collection of ids per row.
    Padding (-1 / None) never matches.
    """
    retrieved = np.asarray(retrieved)
    n, width = retrieved.shape
    if isinstance(targets, np.ndarray) and targets.ndim == 1 and targets.dtype != object:
        hits = retrieved == targets[:, None]
        n_targets = np.ones(n)
    else:
        hits = np.zeros(retrieved.shape, dtype=bool)
        for i, row in enumerate(targets):  # evaluation only: rows hold different numbers of targets
            hits[i] = np.isin(retrieved[i], np.asarray(list(row), dtype=retrieved.dtype))
        n_targets = np.array([len(row) for row in targets], dtype=np.float64)
    gains = 1.0 / np.log2(np.arange(width) + 2.0)
    out: dict[str, float] = {}
    for k in ks:
        kk = min(k, width)
        h = hits[:, :kk]
        found = h.sum(axis=1)
        ideal = np.cumsum(gains)[np.minimum(n_targets, kk).astype(int) - 1]
        out[f"recall@{k}"] = float(np.mean(found / np.maximum(n_targets, 1)))
        out[f"hit@{k}"] = float(np.mean(found > 0))
        out[f"ndcg@{k}"] = float(np.mean((h * gains[:kk]).sum(axis=1) / ideal))
    return out


def evaluate_retrieval(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    targets: Any,
    *,
    item_ids: Any = None,
    exclude: Sequence[Any] | None = None,
    ks: Sequence[int] = (10,),
    builder: Any = None,
) -> dict[str, float]:
    """Build an index over ``item_vectors`` (default: exact numpy, cosine), query, score.

    ``exclude`` gives per user the item ids not to retrieve (the training items).
    """
    builder = builder if builder is not None else builder_factory("numpy", metric="cosine")
    k = min(max(ks), len(item_vectors))
    with builder.from_embeddings(item_vectors, ids=item_ids) as index:
        result = index.query(user_vectors, k, exclude=exclude)
    return ranking_metrics(np.asarray(result.indices), targets, ks)


def most_popular_baseline(
    popularity: np.ndarray,
    n_users: int,
    targets: Any,
    *,
    item_ids: Any = None,
    exclude: Sequence[Any] | None = None,
    ks: Sequence[int] = (10,),
) -> dict[str, float]:
    """Recommend the most popular unseen items to everyone (through the SDK: ip on 1-d vectors)."""
    items = np.asarray(popularity, dtype=np.float32).reshape(-1, 1)
    users = np.ones((n_users, 1), dtype=np.float32)
    return evaluate_retrieval(
        users, items, targets, item_ids=item_ids, exclude=exclude, ks=ks, builder=builder_factory("numpy", metric="ip")
    )
