"""The tensor path: queries already on an engine's torch device stay there.

An engine that sets ``tensor_device`` (a ``torch.device``) and is queried with
torch tensors on that very device gets a validated float32 tensor on the
device and answers with tensors there: nothing crosses to the host but the
few scalars the checks need (the smallest and largest label, whether every
distance is finite). Everything else (other devices, numpy, lists) takes the
ordinary numpy path. torch is never imported here: a tensor's module is
already loaded when one arrives.
"""

from __future__ import annotations

import sys
from typing import Any

from ._arrays import MAX_SQUARED_NORM, value_error
from ._engine import RawDistance
from ._errors import DimensionMismatchError, InvalidInputError

__all__ = ["convert_tensor", "pad_tensors", "tensor_queries"]


def _torch() -> Any:
    return sys.modules["torch"]


def tensor_queries(value: Any, dim: int, cosine: bool) -> tuple[Any, bool]:
    """``value`` as a contiguous float32 (n, d) tensor on its device, checked like numpy queries."""
    torch = _torch()
    if value.is_complex() or not (value.dtype.is_floating_point or value.dtype in (torch.int32, torch.int64)):
        raise InvalidInputError(f"queries have dtype {value.dtype}, which is not a real number type")
    was_vector = value.dim() == 1
    q = value.detach().reshape(1, -1) if was_vector else value.detach()
    if q.dim() != 2:
        raise InvalidInputError(f"queries have shape {tuple(value.shape)}; expected (n, d) or a single (d,) vector")
    if q.shape[0] == 0:
        raise InvalidInputError(f"queries are empty (shape {tuple(q.shape)}); pass at least one vector")
    if q.shape[1] != dim:
        raise DimensionMismatchError(f"queries have dimension {q.shape[1]} but the index has dimension {dim}")
    q = q.to(torch.float32).contiguous()
    sq = (q * q).sum(dim=1)
    if not bool(sq.max() < MAX_SQUARED_NORM):
        raise value_error(q.cpu().numpy(), "queries")
    if cosine:
        if not bool(sq.min() > 0):
            raise value_error(q.cpu().numpy(), "queries", zero=True)
        q = q / sq.sqrt().unsqueeze(1)
    return q, was_vector


def convert_tensor(kind: RawDistance | None, raw: Any) -> Any:
    """:meth:`RawDistance.convert` for a tensor."""
    dist = raw.to(_torch().float32)
    if kind is RawDistance.SQUARED_L2:
        return dist.clamp_min(0.0)
    if kind is RawDistance.L2:
        return dist * dist
    if kind is RawDistance.ONE_MINUS_IP:
        return 1.0 - dist
    if kind is RawDistance.ANGULAR:
        return 1.0 - dist * dist * 0.5
    return dist


def pad_tensors(labels: Any, dist: Any, k: int, pad_distance: float, may_pad: bool) -> tuple[Any, Any, bool]:
    """Pad to ``k`` columns and mask padding slots; returns ``(labels, dist, finite)``."""
    torch = _torch()
    n, m = labels.shape
    if m < k:
        labels = torch.cat([labels, labels.new_full((n, k - m), -1)], dim=1)
        dist = torch.cat([dist, dist.new_full((n, k - m), pad_distance)], dim=1)
        may_pad = True
    if may_pad:
        pad = labels < 0
        dist = torch.where(pad, torch.full_like(dist, pad_distance), dist)
        finite = bool(torch.isfinite(dist[~pad]).all())
    else:
        finite = bool(torch.isfinite(dist).all())
    return labels, dist, finite
