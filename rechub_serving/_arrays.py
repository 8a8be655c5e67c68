"""Input conversion: numpy arrays, torch tensors or nested lists to float32.

Conversion happens once, at the boundary; everything inside works on
C-contiguous float32 numpy arrays. The *family* of the input (numpy, or torch
on a device) is remembered so that results go back in the same family.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import DimensionMismatchError, InvalidInputError

__all__ = ["Family", "as_matrix", "as_queries", "is_torch_tensor", "normalize_rows"]


@dataclass(frozen=True)
class Family:
    """Where results go back to: plain numpy, or torch on ``device``."""

    torch_device: Any = None

    @property
    def is_torch(self) -> bool:
        return self.torch_device is not None

    def wrap(self, indices: np.ndarray, distances: np.ndarray) -> tuple[Any, Any]:
        """Return ``(indices, distances)`` in this family (torch: int64 / float32)."""
        if self.torch_device is None:
            return indices, distances
        torch = sys.modules["torch"]
        dist = torch.from_numpy(distances).to(self.torch_device)
        if indices.dtype == object:  # string ids have no tensor form
            return indices, dist
        return torch.from_numpy(indices).to(self.torch_device), dist


NUMPY = Family()


def is_torch_tensor(value: Any) -> bool:
    """True when ``value`` is a torch tensor, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _to_numpy(value: Any, name: str) -> tuple[np.ndarray, Family]:
    if isinstance(value, np.ndarray):
        return value, NUMPY
    if is_torch_tensor(value):
        if value.is_complex():
            raise InvalidInputError(f"{name} is a complex tensor ({value.dtype}); pass real-valued vectors")
        if value.dtype.is_floating_point and value.dtype.itemsize < 4:
            tensor = value.detach().float()  # bfloat16/float16 have no numpy view
        else:
            tensor = value.detach()
        return tensor.cpu().numpy(), Family(value.device)
    try:
        return np.asarray(value), NUMPY
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"{name} could not be read as a numeric array ({exc}); "
            "pass a 2-D numpy array, torch tensor or list of equal-length lists"
        ) from None


def as_matrix(
    value: Any,
    name: str = "embeddings",
    *,
    dim: int | None = None,
    allow_vector: bool = False,
    allow_empty: bool = False,
) -> tuple[np.ndarray, Family, bool]:
    """Validate and convert ``value`` to a C-contiguous float32 (n, d) matrix.

    Returns ``(matrix, family, was_vector)``. A 1-D input is accepted as one
    row only when ``allow_vector``; NaN and inf are rejected with the index of
    the first bad row.
    """
    array, family = _to_numpy(value, name)
    kind = array.dtype.kind
    if kind == "c":
        raise InvalidInputError(f"{name} has complex dtype {array.dtype}; pass real-valued vectors")
    if kind not in "fiu":
        raise InvalidInputError(
            f"{name} has dtype {array.dtype}, which is not a real number type; pass float or integer vectors"
        )
    was_vector = False
    if array.ndim == 1 and allow_vector:
        array = array.reshape(1, -1)
        was_vector = True
    if array.ndim != 2:
        expected = "(n, d) or a single (d,) vector" if allow_vector else "(n, d)"
        raise InvalidInputError(f"{name} has shape {array.shape}; expected {expected}")
    if array.shape[1] == 0:
        raise InvalidInputError(f"{name} has shape {array.shape}: vectors of dimension 0")
    if array.shape[0] == 0 and not allow_empty:
        raise InvalidInputError(f"{name} is empty (shape {array.shape}); pass at least one vector")
    if dim is not None and array.shape[1] != dim:
        raise DimensionMismatchError(f"{name} have dimension {array.shape[1]} but the index has dimension {dim}")
    if array.dtype != np.float32 or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise InvalidInputError(f"{name} contain NaN or inf (first in row {bad}); clean or drop those rows")
    return array, family, was_vector


def as_queries(value: Any, dim: int) -> tuple[np.ndarray, Family, bool]:
    """Validate queries: (n, d) or a single (d,) vector, finite, of the index's dim."""
    return as_matrix(value, "queries", dim=dim, allow_vector=True)


def normalize_rows(matrix: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Return a copy of ``matrix`` with unit-length rows (for the cosine metric)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not norms.all():
        bad = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise InvalidInputError(
            f"{name} row {bad} is the zero vector, which has no cosine similarity; drop it or use metric='ip' or 'l2'"
        )
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


def check_k(k: Any) -> int:
    """Validate ``k``: a positive integer (bool is not an integer here)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError(f"k must be a positive integer, got {k!r} ({type(k).__name__})")
    if k <= 0:
        raise InvalidInputError(f"k must be a positive integer, got {k}")
    return int(k)
