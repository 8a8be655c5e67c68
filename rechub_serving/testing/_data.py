"""Data and an independent reference for the conformance suite.

:func:`reference_topk` is a float64 brute force with a full sort: slow, simple
and independent of the library's own exact search, which it checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rechub_serving import Metric, parse_metric
from rechub_serving.evaluation import clustered_data, true_distances

__all__ = ["clustered_data", "reference_topk", "true_distances"]


def reference_topk(
    items: Any, queries: Any, k: int, metric: str | Metric, *, banned: Sequence[set[int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (row positions, metric-table distances) in float64; ``banned[i]`` rows left out for query i.

    Missing results (``k`` above what is left) are position -1 with the worst distance.
    """
    metric = parse_metric(metric)
    x = np.asarray(items, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    if metric is Metric.COSINE:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric is Metric.L2:
        scores = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        worst = np.inf
    else:
        scores = -(q @ x.T)
        worst = np.inf
    for i, rows in enumerate(banned or []):
        if rows:
            scores[i, sorted(rows)] = worst
    order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(scores, order, axis=1)
    pos = np.where(np.isfinite(dist), order, -1)
    if metric is not Metric.L2:
        dist = -dist
    if pos.shape[1] < k:
        pad = np.full((len(q), k - pos.shape[1]), -1)
        pos = np.concatenate([pos, pad], axis=1)
        dist = np.concatenate([dist, np.full(pad.shape, np.inf if metric is Metric.L2 else -np.inf)], axis=1)
    return pos.astype(np.int64), dist
