"""The layout of an Annoy file, checked before Annoy opens it.

A file written by ``AnnoyIndex.save`` has no header: it is an array of
fixed-size nodes (little-endian int32 and float32 fields). Item ``i`` is node
``i`` (``n_descendants`` 1, or 0 for an id never added); tree nodes follow;
copies of the roots close the file, each counting every item. The node size
depends on the dimension ``f`` and the metric:

=============  ==============================================  ==========  ===========================
Annoy metric   node fields                                     bytes       in an item node
=============  ==============================================  ==========  ===========================
angular        n_descendants, children[2], v[f]                12 + 4 f    children[0] holds the norm
euclidean      n_descendants, a, children[2], v[f]             16 + 4 f    children are 0
dot            n_descendants, children[2], dot_factor, v[f]    16 + 4 f    children are 0, factor >= 0
=============  ==============================================  ==========  ===========================

Annoy itself checks only that the size is a multiple of the node size, and
when it is not it prints its complaint on stderr before raising; a file of
another dimension that happens to fit is mapped and answers garbage.
:func:`problem` reads the first items and the roots (a few pages, not the
whole file), so a wrong ``dim`` or ``metric``, or the file of another engine,
gets a clear error and Annoy never prints.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["describe_fits", "fits", "problem"]

_ITEMS_CHECKED = 256  # first items whose fields are checked
_ROOT_CHUNK = 64  # trailing nodes read at a time while looking for the roots
_MAX_GUESSED_DIM = 65_536


@dataclass(frozen=True)
class _Layout:
    header: int  # bytes before v
    children: int  # int32 slot of children[0]
    zeros: tuple[int, ...]  # int32 slots that are 0 in an item node
    scalar: int  # float32 slot that holds a finite number in an item node (a norm, a, dot_factor)
    non_negative: bool  # ... and never a negative one
    is_norm: bool = False  # ... that is the squared norm of the item's vector


_LAYOUTS = {
    "angular": _Layout(12, 1, zeros=(2,), scalar=1, non_negative=True, is_norm=True),
    "euclidean": _Layout(16, 2, zeros=(2, 3), scalar=1, non_negative=False),
    "dot": _Layout(16, 1, zeros=(1, 2), scalar=3, non_negative=True),
}


def node_size(dim: int, annoy_metric: str) -> int:
    return _LAYOUTS[annoy_metric].header + 4 * dim


def problem(path: Path, dim: int, annoy_metric: str) -> str | None:
    """Why ``path`` is not an Annoy file of ``dim`` and ``annoy_metric``; None when it is one."""
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        return _problem(fh, size, dim, annoy_metric)


def fits(path: Path, dim: int | None = None, limit: int = 3) -> list[tuple[int, str]]:
    """Up to ``limit`` (dimension, Annoy metric) pairs whose layout ``path`` fits (``dim``: only that one)."""
    found: list[tuple[int, str]] = []
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size < 8 or _first_word(fh) not in (0, 1):
            return found
        for name, layout in _LAYOUTS.items():
            dims = np.arange(1, _MAX_GUESSED_DIM + 1) if dim is None else np.array([dim])
            sizes = layout.header + 4 * dims
            for f in dims[(size % sizes == 0) & (size // sizes >= 2)].tolist():
                if _problem(fh, size, f, name) is None:
                    found.append((f, name))
                    if len(found) >= limit:
                        return found
    return found


def describe_fits(path: Path) -> str:
    """A clause saying what ``path`` looks like (for error messages)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        return "the file is empty"
    guesses = fits(path)
    if guesses:
        return "its layout fits " + ", ".join(f"dim={f} with metric {name!r}" for f, name in guesses)
    if re.fullmatch(rb"I[A-Za-z0-9]{3}", head[:4]):
        return f"it starts with {head[:4]!r}, the signature of a faiss index: open it with builder_factory('faiss')"
    return f"no dimension and metric give it Annoy's layout (it starts with {head[:8]!r})"


def _first_word(fh: BinaryIO) -> int:
    fh.seek(0)
    return int(np.frombuffer(fh.read(4), "<i4")[0])


def _problem(fh: BinaryIO, size: int, dim: int, annoy_metric: str) -> str | None:
    layout = _LAYOUTS[annoy_metric]
    s = layout.header + 4 * dim
    if size == 0:
        return "the file is empty"
    if size % s:
        return f"its size, {size:,} bytes, is not a multiple of that layout's {s}-byte node"
    words = s // 4
    n_nodes = size // s

    def nodes(start: int, count: int) -> np.ndarray:
        fh.seek(start * s)
        return np.frombuffer(fh.read(count * s), "<i4").reshape(count, words)

    n_items = int(nodes(n_nodes - 1, 1)[0, 0])
    if not 1 <= n_items < n_nodes:
        return f"its last node counts {n_items} items, impossible in a file of {n_nodes:,} nodes"
    items = nodes(0, min(n_items, _ITEMS_CHECKED))
    counts = items[:, 0]
    if not np.isin(counts, (0, 1)).all() or not (counts == 1).any():
        return "its first nodes are not Annoy items (each item node counts one descendant)"
    real = items[counts == 1]
    scalar = real[:, layout.scalar].view("<f4")
    vectors = real[:, layout.header // 4 :].view("<f4")
    if not (np.isfinite(vectors).all() and np.isfinite(scalar).all()):
        return "its first items hold NaN or infinite values"
    if real[:, layout.zeros].any() or (layout.non_negative and (scalar < 0).any()):
        return "its first nodes are not item nodes of that layout"
    if layout.is_norm and not np.allclose(scalar, np.einsum("ij,ij->i", vectors, vectors), rtol=1e-2, atol=1e-6):
        return "its first nodes are not item nodes of that layout (the stored norms do not match the vectors)"
    roots = _roots(nodes, n_nodes, n_items)
    bucket = words - layout.children  # item slots of a node that lists its items itself
    if n_items > bucket:
        kids = roots[:, layout.children : layout.children + 2]
        if ((kids < 0) | (kids >= n_nodes)).any():
            return "its roots point at nodes outside the file"
    else:
        kids = roots[:, layout.children : layout.children + n_items]
        if ((kids < 0) | (kids >= n_items)).any():
            return "its roots list items that do not exist"
    return None


def _roots(nodes: Callable[[int, int], np.ndarray], n_nodes: int, n_items: int) -> np.ndarray:
    """The trailing nodes that count every item (the roots, copied at the end of the file)."""
    found = []
    stop = n_nodes
    while stop > n_items:
        start = max(n_items, stop - _ROOT_CHUNK)
        block = nodes(start, stop - start)
        other = np.flatnonzero(block[:, 0] != n_items)
        if len(other):
            found.append(block[other[-1] + 1 :])
            break
        found.append(block)
        stop = start
    return np.concatenate(found[::-1])
