"""The ``torch`` engine: item vectors as tensors on one device, exact blocked search.

Everything that needs torch lives here, imported by the backend only when an
index is built, loaded or checked, so that installing the plugin does not
make every ``builder_factory(...)`` call import torch (1.8 s and about
200 MiB here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rechub_serving import Engine, EngineFiles, IndexFormatError, Metric, RawDistance

from ._backend import DTYPE_NAMES

__all__ = ["DTYPES", "TorchEngine", "build_engine", "check_device", "load_engine"]

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


class TorchEngine(Engine):
    """Item vectors (and their labels) as tensors on one device; exact blocked search."""

    def __init__(self, vectors: torch.Tensor, labels: torch.Tensor, metric: Metric):
        self.vectors = vectors
        self.labels = labels
        self.l2 = metric is Metric.L2
        self.norms = (vectors.float() ** 2).sum(1) if self.l2 else None
        self.distance = RawDistance.table(metric)
        self.tensor_device = vectors.device
        self._row_of: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def search(
        self, queries: Any, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[Any, Any]:
        host = isinstance(queries, np.ndarray)
        q = torch.from_numpy(queries).to(self.tensor_device) if host else queries
        pos, dist = self._topk(q, k, int(params["block_bytes"]), self._banned(exclude, len(q)))
        labels = torch.where(pos >= 0, self.labels[pos.clamp_min(0)], pos)
        if host:
            return labels.cpu().numpy(), dist.cpu().numpy()
        return labels, dist

    def _topk(self, q: torch.Tensor, k: int, block_bytes: int, banned: tuple[torch.Tensor, torch.Tensor] | None):
        n, items = len(q), len(self.vectors)
        sign = -1.0 if self.l2 else 1.0  # topk keeps the largest: negate l2 distances
        rows_per_block = max(k, min(items, block_bytes // max(4 * n, 1)))
        best_score = best_pos = None
        compute = torch.float32 if self.tensor_device.type == "cpu" else self.vectors.dtype
        qc = q.to(compute)
        for start in range(0, items, rows_per_block):
            block = self.vectors[start : start + rows_per_block]
            scores = (qc @ block.to(compute).T).float()
            if self.l2:
                scores = self.norms[start : start + len(block)] - 2.0 * scores  # type: ignore[index]
            scores = scores * sign
            if banned is not None:
                rows, cols = banned
                inside = (cols >= start) & (cols < start + len(block))
                scores[rows[inside], cols[inside] - start] = float("-inf")
            top = torch.topk(scores, min(k, len(block)), dim=1)
            pos = top.indices + start
            if best_score is None:
                best_score, best_pos = top.values, pos
            else:
                merged = torch.topk(torch.cat([best_score, top.values], 1), min(k, best_score.shape[1] + len(block)), 1)
                best_score = merged.values
                best_pos = torch.gather(torch.cat([best_pos, pos], 1), 1, merged.indices)  # type: ignore[list-item]
        assert best_score is not None and best_pos is not None
        missing = torch.isinf(best_score)
        dist = best_score * sign
        if self.l2:
            dist = (dist + (q.float() ** 2).sum(1, keepdim=True)).clamp_min(0.0)
        return torch.where(missing, torch.full_like(best_pos, -1), best_pos), dist

    def _banned(self, exclude: Sequence[np.ndarray] | None, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(query row, item row) pairs to leave out, from the core's label arrays."""
        if exclude is None:
            return None
        if self._row_of is None:
            size = int(self.labels.max()) + 1 if len(self.labels) else 0
            row_of = torch.full((size,), -1, dtype=torch.int64, device=self.tensor_device)
            row_of[self.labels] = torch.arange(len(self.labels), device=self.tensor_device)
            self._row_of = row_of
        rows, cols = [], []
        for i, banned in enumerate(exclude):
            banned = banned[banned < len(self._row_of)]
            if len(banned):
                found = self._row_of[torch.from_numpy(banned).to(self.tensor_device)]
                found = found[found >= 0]
                rows.append(torch.full_like(found, i))
                cols.append(found)
        if not rows:
            return None
        return torch.cat(rows), torch.cat(cols)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        new = torch.from_numpy(vectors).to(self.tensor_device, self.vectors.dtype)
        self.vectors = torch.cat([self.vectors, new])
        self.labels = torch.cat([self.labels, torch.from_numpy(labels).to(self.tensor_device)])
        if self.norms is not None:
            self.norms = torch.cat([self.norms, (new.float() ** 2).sum(1)])
        self._row_of = None

    def remove(self, labels: np.ndarray) -> int:
        drop = torch.isin(self.labels, torch.from_numpy(labels).to(self.tensor_device))
        keep = ~drop
        self.vectors, self.labels = self.vectors[keep].contiguous(), self.labels[keep]
        if self.norms is not None:
            self.norms = self.norms[keep]
        self._row_of = None
        return int(drop.sum())

    def save(self, directory: Path) -> dict[str, Any]:
        vectors = self.vectors.cpu()
        dtype = str(vectors.dtype).removeprefix("torch.")
        raw = vectors.view(torch.int16).numpy() if vectors.dtype == torch.bfloat16 else vectors.numpy()
        np.save(directory / "vectors.npy", raw, allow_pickle=False)
        np.save(directory / "labels.npy", self.labels.cpu().numpy(), allow_pickle=False)
        return {"dtype": dtype}

    def close(self) -> None:
        self.vectors = self.vectors[:0]
        self.labels = self.labels[:0]
        self.norms = self._row_of = None


def check_device(value: str) -> tuple[str, str, bool, str]:
    """``(name, type, available, what is here)`` of a device; ValueError when it is not a torch device."""
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"not a torch device ({exc}); use cpu, cuda or cuda:N") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    available = device.type != "cuda" or (device.index or 0) < count
    return str(device), device.type, available, f"torch {torch.__version__}, {count} CUDA devices"


def build_engine(vectors: np.ndarray, device: str, dtype: str, metric: Metric) -> TorchEngine:
    """An engine over ``vectors`` (labels 0..n-1) stored as ``dtype`` on ``device``."""
    where = torch.device(device)
    stored = torch.from_numpy(vectors).to(where, DTYPES[dtype]).contiguous()
    labels = torch.arange(len(vectors), dtype=torch.int64, device=where)
    return TorchEngine(stored, labels, metric)


def load_engine(files: EngineFiles, device: str, metric: Metric) -> TorchEngine:
    """The engine :meth:`TorchEngine.save` wrote, on ``device``."""
    raw = np.load(files.path("vectors.npy"), allow_pickle=False)
    labels = np.load(files.path("labels.npy"), allow_pickle=False)
    dtype = files.meta.get("dtype", "float32")
    if dtype not in DTYPES or raw.ndim != 2 or labels.ndim != 1 or len(labels) != len(raw):
        raise IndexFormatError(f"torch: saved vectors {raw.dtype} {raw.shape} / labels {labels.shape} do not fit")
    tensor = torch.from_numpy(raw)
    tensor = tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor.to(DTYPES[dtype])
    where = torch.device(device)
    engine_labels = torch.from_numpy(labels.astype(np.int64)).to(where)
    return TorchEngine(tensor.to(where).contiguous(), engine_labels, metric)
