"""External ids and the internal int64 labels that engines store.

Engines see only labels ``0..n-1`` (plus later additions); the :class:`IdMap`
turns them into the user's ids (int64 or str) and back, and is saved with the
index. ``-1`` is the padding label, so integer ids must be non-negative.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._arrays import is_torch_tensor
from ._errors import DuplicateIdError, IndexFormatError, InvalidInputError

__all__ = ["IdMap", "normalize_ids"]


def normalize_ids(ids: Any, n: int | None = None, name: str = "ids") -> np.ndarray:
    """Validate user ids: int64 array (non-negative) or object array of str.

    Raises on a wrong length, mixed or non-integral types and duplicates.
    """
    if is_torch_tensor(ids):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (np.ndarray, Sequence, Iterable)):
        raise InvalidInputError(f"{name} must be a sequence of int or str, got {type(ids).__name__}")
    array = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids), dtype=object)
    if array.ndim != 1:
        raise InvalidInputError(f"{name} must be one-dimensional, got shape {array.shape}")
    if n is not None and len(array) != n:
        raise InvalidInputError(f"{name} has {len(array)} entries but there are {n} vectors; give one id per row")
    if array.dtype.kind in "iu":
        out = array.astype(np.int64)
    elif array.dtype.kind == "U":
        out = array.astype(object)
    elif array.dtype == object and len(array) and all(isinstance(v, str) for v in array):
        out = array
    elif array.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in array):
        out = array.astype(np.int64)
    elif len(array) == 0:
        out = np.zeros(0, dtype=np.int64)
    else:
        raise InvalidInputError(
            f"{name} must be all integers or all strings (got dtype {array.dtype}); "
            "floats, bools and mixed types are not ids"
        )
    if out.dtype == np.int64 and len(out) and out.min() < 0:
        raise InvalidInputError(f"{name} contains a negative id ({out.min()}); -1 marks padding, use ids >= 0")
    _check_unique(out, name)
    return out


def _check_unique(ids: np.ndarray, name: str) -> None:
    if ids.dtype == np.int64:
        uniq, counts = np.unique(ids, return_counts=True)
        dups = uniq[counts > 1]
    else:
        seen: set[str] = set()
        repeated: list[str] = []
        for value in ids:
            if value in seen:
                repeated.append(value)
            seen.add(value)
        dups = np.asarray(repeated, dtype=object)
    if len(dups):
        shown = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in list(dups)[:5])
        raise DuplicateIdError(f"{name} contains duplicates ({shown}); every id must be unique")


class IdMap:
    """Bidirectional map between internal labels and external ids.

    Labels are allocated once and never reused: a removed id keeps its dead
    label, and adding the same id again gives it a new one. Lookups from ids
    to labels only ever see live labels.
    """

    def __init__(self, external: np.ndarray, alive: np.ndarray | None = None, identity: bool = False):
        self._external = external
        self._alive = alive
        self._identity = identity
        self._is_int = external.dtype == np.int64
        self._fast_identity = identity and self._is_int
        self.n_labels = len(external)  # labels ever allocated (removed ones included)
        self.count = self.n_labels if alive is None else int(alive.sum())  # live ids
        self._index: Any = None  # lazily built reverse lookup over live labels

    # -- construction -------------------------------------------------------
    @classmethod
    def create(cls, ids: Any, n: int) -> IdMap:
        """Positions ``0..n-1`` when ``ids`` is None, else the validated ids."""
        if ids is None:
            return cls(np.arange(n, dtype=np.int64), identity=True)
        return cls(normalize_ids(ids, n))

    @property
    def kind(self) -> str:
        """``"int"`` or ``"str"``."""
        return "int" if self._is_int else "str"

    @property
    def ids(self) -> np.ndarray:
        """External ids by label (int64, or object array of str), removed ones included."""
        return self._external

    @property
    def alive(self) -> np.ndarray | None:
        """Which labels are live (None: all of them)."""
        return self._alive

    def __len__(self) -> int:
        return self.count

    @property
    def identity_int(self) -> bool:
        """True when the ids are the labels themselves (positions, never remapped)."""
        return self._fast_identity

    # -- lookups -------------------------------------------------------------
    def bad_labels(self, labels: np.ndarray) -> np.ndarray:
        """The labels in ``labels`` (``-1`` is padding) that this map never gave out, or removed."""
        flat = np.asarray(labels).ravel()
        wrong = flat[(flat < -1) | (flat >= self.n_labels)]
        if self._alive is not None:
            real = flat[(flat >= 0) & (flat < self.n_labels)]
            wrong = np.concatenate([wrong, real[~self._alive[real]]])
        return wrong

    def to_external(self, labels: np.ndarray) -> np.ndarray:
        """Map labels (``-1`` = padding) to ids: int64 with -1, or object with None."""
        if self._fast_identity:
            return labels
        if self._is_int:
            return np.where(labels >= 0, self._external[np.maximum(labels, 0)], -1)
        out = self._external[np.maximum(labels, 0)].astype(object)
        out[labels < 0] = None
        return out

    def _lookup(self) -> Any:
        index = self._index
        if index is None:
            live = self.alive_labels()
            if self.kind == "int":
                order = live[np.argsort(self._external[live], kind="stable")]
                index = (order, self._external[order])
            else:
                index = {self._external[i]: int(i) for i in live.tolist()}
            self._index = index
        return index

    def to_labels(self, ids: Any) -> np.ndarray:
        """Map external ids to live labels; unknown or removed ids map to -1."""
        if self.kind == "int":
            query = np.asarray(ids)
            if query.dtype.kind not in "iu":
                if query.size == 0:
                    return np.zeros(0, dtype=np.int64)
                raise InvalidInputError(f"this index has integer ids; got {query.dtype} ids")
            query = query.astype(np.int64, copy=False).ravel()
            if self._identity:
                labels = np.where((query >= 0) & (query < self.n_labels), query, -1)
                if self._alive is not None and len(labels):
                    labels = np.where((labels >= 0) & self._alive[np.maximum(labels, 0)], labels, -1)
                return labels.astype(np.int64, copy=False)
            order, sorted_ids = self._lookup()
            if not len(sorted_ids):
                return np.full(len(query), -1, np.int64)
            pos = np.minimum(np.searchsorted(sorted_ids, query), len(sorted_ids) - 1)
            return np.where(sorted_ids[pos] == query, order[pos], -1).astype(np.int64, copy=False)
        index = self._lookup()
        return np.fromiter((index.get(v, -1) if isinstance(v, str) else -1 for v in ids), dtype=np.int64)

    # -- mutation ------------------------------------------------------------
    def extend(self, ids: Any, n: int) -> tuple[IdMap, np.ndarray]:
        """Return a new map with ``n`` more ids, and the labels they got.

        With ``ids=None`` on an int map, new ids continue after the largest id
        ever given (removed ones included, so an id is never silently reused).
        """
        start = self.n_labels
        labels = np.arange(start, start + n, dtype=np.int64)
        identity = False
        if ids is None:
            if self.kind == "str":
                raise InvalidInputError("this index has string ids; pass ids= for the new vectors")
            base = int(self._external.max()) + 1 if start else 0
            new = np.arange(base, base + n, dtype=np.int64)
            identity = self._identity and base == start
        else:
            new = normalize_ids(ids, n)
            if len(new) and (new.dtype == np.int64) != (self.kind == "int"):
                raise InvalidInputError(f"this index has {self.kind} ids; the new ids must be {self.kind} too")
            existing = self.to_labels(new)
            if (existing >= 0).any():
                dup = new[existing >= 0][0]
                raise DuplicateIdError(f"id {dup!r} is already in the index; remove it first or use another id")
        alive = None if self._alive is None else np.concatenate([self._alive, np.ones(n, bool)])
        external = np.concatenate([self._external, new.astype(self._external.dtype)])
        return IdMap(external, alive, identity), labels

    def without(self, labels: np.ndarray) -> IdMap:
        """Return a new map in which ``labels`` are removed."""
        alive = np.ones(self.n_labels, bool) if self._alive is None else self._alive.copy()
        alive[labels] = False
        return IdMap(self._external, alive, self._identity)

    def alive_labels(self) -> np.ndarray:
        """Labels currently in the index, ascending."""
        if self._alive is None:
            return np.arange(self.n_labels, dtype=np.int64)
        return np.flatnonzero(self._alive).astype(np.int64)

    # -- persistence ---------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        """Write ``ids.npy`` (and ``alive.npy``); return the manifest entry."""
        if self.kind == "int":
            np.save(directory / "ids.npy", self._external, allow_pickle=False)
        else:
            np.save(directory / "ids.npy", self._external.astype(str), allow_pickle=False)
        entry: dict[str, Any] = {"kind": self.kind, "file": "ids.npy", "positional": self._identity}
        if self._alive is not None:
            np.save(directory / "alive.npy", self._alive, allow_pickle=False)
            entry["alive"] = "alive.npy"
        return entry

    @classmethod
    def load(cls, ids_file: Path, alive_file: Path | None, entry: dict[str, Any], where: str = "") -> IdMap:
        """Read and check the map written by :meth:`save` (files already verified by the caller)."""
        where = where or str(ids_file.parent)
        try:
            external = np.load(ids_file, allow_pickle=False)
            alive = np.load(alive_file, allow_pickle=False) if alive_file is not None else None
        except (OSError, ValueError, EOFError) as exc:
            raise IndexFormatError(f"{where}: the id map cannot be read ({exc}); save the index again") from None
        if external.ndim != 1:
            raise IndexFormatError(f"{where}: the id map has shape {external.shape}, expected one dimension")
        if entry["kind"] == "str":
            if external.dtype.kind != "U":
                raise IndexFormatError(f"{where}: the id map has dtype {external.dtype}, expected strings")
            external = external.astype(object)
        elif external.dtype != np.int64:
            raise IndexFormatError(f"{where}: the id map has dtype {external.dtype}, expected int64")
        elif len(external) and external.min() < 0:
            raise IndexFormatError(f"{where}: the id map holds a negative id; ids are >= 0")
        if alive is not None and (alive.dtype != np.bool_ or alive.shape != external.shape):
            raise IndexFormatError(f"{where}: alive.npy does not match the id map (dtype {alive.dtype}, {alive.shape})")
        positional = bool(entry.get("positional", False))
        if positional and not np.array_equal(external, np.arange(len(external))):
            positional = False
        idmap = cls(external, alive, positional)
        live = idmap.ids[idmap.alive_labels()]
        try:
            _check_unique(live, "ids")
        except DuplicateIdError as exc:
            raise IndexFormatError(f"{where}: the id map is damaged: {exc}") from None
        return idmap
