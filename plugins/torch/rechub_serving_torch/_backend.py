"""The ``torch`` backend: exact top-k by blocked matrix product and ``topk`` on a torch device.

The vectors live on the builder's ``device`` (``cpu``, ``cuda``, ``cuda:1``...)
in ``float32``, ``float16`` or ``bfloat16``. A query is scored against one
block of items at a time (at most ``block_bytes`` of scores), each block is
reduced with ``topk`` and merged into the running top-k, so memory is bounded
by the block size. Queries that are tensors on the device stay there and the
results come back there (the core's tensor path); numpy queries are copied
to the device and the results back.

Half-precision storage halves (float16, bfloat16) the memory and, on a GPU,
the time; scores are accumulated in float32 but the stored vectors are
rounded, so results are approximate: docs/backends/torch.md has the recall
each costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rechub_serving import (
    Backend,
    BackendConfig,
    Capabilities,
    Engine,
    EngineFiles,
    IndexFormatError,
    InvalidParameterError,
    Metric,
    Param,
    RawDistance,
    UnsupportedOperation,
)

__all__ = ["TorchBackend", "TorchEngine"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _device(value: str) -> str:
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"not a torch device ({exc}); use cpu, cuda or cuda:N") from None
    return str(device)


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


class TorchBackend(Backend):
    """Exact (float32) or half-precision brute force with torch, on the CPU or a GPU."""

    name = "torch"
    engine_distribution = "torch"
    capabilities = Capabilities(exact=True, add=True, remove=True, native_filter=True, persist=True, gpu=True)
    params = (
        Param("device", str, "cpu", "torch device: cpu, cuda, cuda:1 ...", runtime=True, check=_device),
        Param("dtype", str, "float32", "storage: float32 (exact), float16 or bfloat16", choices=tuple(DTYPES)),
        Param(
            "block_bytes",
            int,
            256 << 20,
            "memory budget of one score block, in bytes",
            minimum=4096,
            maximum=1 << 40,
            search=True,
        ),
    )

    def check_config(self, config: BackendConfig) -> None:
        device = torch.device(config["device"])
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            raise UnsupportedOperation(
                f"torch: device={config['device']!r} is not available here (torch {torch.__version__}, "
                f"{torch.cuda.device_count()} CUDA devices); use device='cpu' or install a CUDA build of torch"
            )
        if device.type not in ("cpu", "cuda"):
            raise InvalidParameterError(f"torch: device={config['device']!r}: only cpu and cuda devices are supported")

    def capabilities_for(self, config: BackendConfig) -> Capabilities:
        exact = config["dtype"] == "float32"
        return Capabilities(exact=exact, add=True, remove=True, native_filter=True, persist=True, gpu=True)

    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> TorchEngine:
        device = torch.device(config["device"])
        stored = torch.from_numpy(vectors).to(device, DTYPES[config["dtype"]]).contiguous()
        labels = torch.arange(len(vectors), dtype=torch.int64, device=device)
        return TorchEngine(stored, labels, config.metric)

    def load(self, files: EngineFiles, config: BackendConfig) -> TorchEngine:
        device = torch.device(config["device"])
        raw = np.load(files.path("vectors.npy"), allow_pickle=False)
        labels = np.load(files.path("labels.npy"), allow_pickle=False)
        dtype = files.meta.get("dtype", "float32")
        if dtype not in DTYPES or raw.ndim != 2 or labels.ndim != 1 or len(labels) != len(raw):
            raise IndexFormatError(f"torch: saved vectors {raw.dtype} {raw.shape} / labels {labels.shape} do not fit")
        tensor = torch.from_numpy(raw)
        tensor = tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor.to(DTYPES[dtype])
        engine_labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        return TorchEngine(tensor.to(device).contiguous(), engine_labels, config.metric)
