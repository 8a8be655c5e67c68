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

try:  # einsum without its Python wrapper: the squared norm of one query costs a microsecond, and never warns
    from numpy._core.multiarray import c_einsum
except ImportError:  # pragma: no cover - numpy 1.x
    c_einsum = np.einsum

__all__ = [
    "MAX_K",
    "MAX_SQUARED_NORM",
    "Family",
    "as_matrix",
    "as_queries",
    "c_einsum",
    "check_k",
    "is_torch_tensor",
    "normalize_rows",
]


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


#: Largest squared norm of a vector: every distance between two such vectors stays finite in float32.
MAX_SQUARED_NORM = 1e37


def _convert(
    value: Any, name: str, dim: int | None, allow_vector: bool, allow_empty: bool
) -> tuple[np.ndarray, Family, bool]:
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
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.ascontiguousarray(array, dtype=np.float32)
    return array, family, was_vector


def squared_norms(matrix: np.ndarray) -> np.ndarray:
    """Row squared norms (float32; inf or NaN where a row overflows or holds NaN/inf, without warnings)."""
    return c_einsum("ij,ij->i", matrix, matrix)


def value_error(matrix: np.ndarray, name: str, *, zero: bool = False) -> InvalidInputError:
    """The error for rows with NaN/inf, a norm too large for float32 distances, or (``zero``) no norm at all."""
    if zero:
        bad = int(np.flatnonzero(~(squared_norms(matrix) > 0))[0])
        return InvalidInputError(
            f"{name} row {bad} is the zero vector, which has no cosine similarity; drop it or use metric='ip' or 'l2'"
        )
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        return InvalidInputError(
            f"{name} contain NaN, inf or values beyond float32's range (first in row {bad}); clean or drop those rows"
        )
    bad = int(np.flatnonzero(~(squared_norms(matrix.astype(np.float64)) < MAX_SQUARED_NORM))[0])
    return InvalidInputError(
        f"{name} row {bad} has a norm above 3e18, too large for float32 distances (they would overflow to inf); "
        "rescale the vectors"
    )


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
    row only when ``allow_vector``; NaN, inf and norms whose distances would
    overflow float32 are rejected with the index of the first bad row.
    """
    array, family, was_vector = _convert(value, name, dim, allow_vector, allow_empty)
    if len(array) and not (squared_norms(array).max() < MAX_SQUARED_NORM):
        raise value_error(array, name)
    return array, family, was_vector


def as_queries(
    value: Any, dim: int, *, cosine: bool = False, check_values: bool = True
) -> tuple[np.ndarray, Family, bool]:
    """Validate queries: (n, d) or a single (d,) vector, finite, of the index's dim.

    With ``cosine`` the rows come back L2-normalised (a new array; the
    caller's is never modified). ``check_values=False`` leaves the NaN / inf /
    magnitude check (and normalisation) to the caller.
    """
    array, family, was_vector = _convert(value, "queries", dim, True, False)
    if check_values:
        sq = squared_norms(array)
        if not (sq.max() < MAX_SQUARED_NORM):
            raise value_error(array, "queries")
        if cosine:
            array = normalize_checked(array, sq)
    return array, family, was_vector


def normalize_checked(matrix: np.ndarray, sq: np.ndarray, name: str = "queries") -> np.ndarray:
    """``matrix`` with unit rows, given its finite row squared norms ``sq``; zero rows are refused."""
    if not sq.min() > 0:
        bad = int(np.flatnonzero(~(sq > 0))[0])
        raise InvalidInputError(
            f"{name} row {bad} is the zero vector, which has no cosine similarity; drop it or use metric='ip' or 'l2'"
        )
    return matrix / np.sqrt(sq)[:, None]


def normalize_rows(matrix: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Return a copy of ``matrix`` with unit-length rows (for the cosine metric)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not norms.all():
        bad = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise InvalidInputError(
            f"{name} row {bad} is the zero vector, which has no cosine similarity; drop it or use metric='ip' or 'l2'"
        )
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


#: The largest ``k`` one query may ask for.
MAX_K = 1 << 20


def check_k(k: Any) -> int:
    """Validate ``k``: a positive integer up to :data:`MAX_K` (bool is not an integer here)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError(f"k must be a positive integer, got {k!r} ({type(k).__name__})")
    if k <= 0:
        raise InvalidInputError(f"k must be a positive integer, got {k}")
    if k > MAX_K:
        raise InvalidInputError(f"k={k} is more than one query may ask for ({MAX_K:,}); ask for fewer results")
    return int(k)
