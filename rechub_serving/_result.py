"""The result of a top-K query."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ._arrays import is_torch_tensor
from ._metrics import Metric

__all__ = ["QueryResult"]


class QueryResult:
    """Top-K ids and distances for a batch of queries, best first.

    ``indices`` holds external ids (int64, ``-1`` for padding; or an object
    array of str with ``None`` for padding) and ``distances`` the metric's
    numbers (see :mod:`rechub_serving` for the table), both of shape
    ``(n_queries, k)``. Results come back in the family of the queries: torch
    tensors on the query's device when the queries were tensors, numpy arrays
    otherwise. Unpacks as a pair: ``ids, distances = index.query(q, k)``.
    """

    __slots__ = ("distances", "indices", "metric")

    def __init__(self, indices: Any, distances: Any, metric: Metric):
        self.indices = indices
        self.distances = distances
        self.metric = metric

    def __iter__(self) -> Iterator[Any]:
        yield self.indices
        yield self.distances

    def __getitem__(self, i: int) -> Any:
        """``res[0]`` is the ids, ``res[1]`` the distances (as torch-rechub's tuple)."""
        return (self.indices, self.distances)[i]

    def __len__(self) -> int:
        return len(self.distances)

    @property
    def scores(self) -> Any:
        """Higher-is-better scores: the distances, negated for l2."""
        return -self.distances if self.metric is Metric.L2 else self.distances

    @property
    def valid(self) -> Any:
        """Boolean mask of real results (False where a row was padded)."""
        if is_torch_tensor(self.distances):
            import torch  # already imported: the distances are a tensor

            return torch.isfinite(self.distances)
        return np.isfinite(self.distances)

    def to_lists(self) -> list[list[tuple[Any, float]]]:
        """Per query, the list of ``(id, distance)`` pairs without padding."""
        ids = self.indices.cpu().numpy() if is_torch_tensor(self.indices) else np.asarray(self.indices)
        dist = self.distances.cpu().numpy() if is_torch_tensor(self.distances) else np.asarray(self.distances)
        out = []
        for row_ids, row_d in zip(ids, dist):
            keep = np.isfinite(row_d)
            out.append([(i.item() if hasattr(i, "item") else i, float(d)) for i, d in zip(row_ids[keep], row_d[keep])])
        return out

    def __repr__(self) -> str:
        shape = tuple(self.distances.shape)
        return f"QueryResult(metric={self.metric.value!r}, shape={shape})"
