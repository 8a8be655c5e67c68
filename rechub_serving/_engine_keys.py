"""The engine's own keys of the core's labels, for engines that store a key per vector.

A helper for plugins (Voyager and USearch use it): the core numbers vectors
``0..n-1`` (labels); an engine that stores its own integer key per vector
needs those keys to differ from the labels only when it adopted a native file.

An index built here stores label ``i`` under key ``i``. An adopted file
keeps its ids: its live ids, sorted, are the keys of labels ``0..n-1`` (and
become the index's external ids); labels the core adds later get keys from
``first_new`` on, above every id the file ever held, so that they never meet
one of its deleted ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._engine import EngineFiles
from ._errors import IndexFormatError

__all__ = ["EngineKeys"]


class EngineKeys:
    """Labels <-> keys: identity, or an adopted file's sorted ids followed by ``first_new, first_new + 1...``."""

    def __init__(self, file_keys: np.ndarray | None = None, first_new: int = 0):
        self.file_keys = file_keys
        self.first_new = first_new
        self.shift = 0 if file_keys is None else first_new - len(file_keys)

    @classmethod
    def adopted(cls, live: np.ndarray, first_new: int, deleted: np.ndarray) -> EngineKeys:
        """Keys for a file whose live ids are ``live`` (sorted int64) and whose ids were all below ``first_new``."""
        if not len(deleted) and live[-1] == len(live) - 1:
            return cls()  # ids 0..n-1: the labels themselves
        return cls(live, first_new)

    def external(self) -> np.ndarray | None:
        """The external ids of labels ``0..n-1`` (None: the labels themselves)."""
        return self.file_keys

    def of(self, labels: np.ndarray) -> np.ndarray:
        """The keys of ``labels``."""
        if self.file_keys is None:
            return labels
        keys = labels + self.shift
        old = labels < len(self.file_keys)
        keys[old] = self.file_keys[labels[old]]
        return keys

    def labels(self, keys: np.ndarray) -> np.ndarray:
        """The labels of ``keys`` (int64; -1 padding stays -1)."""
        if self.file_keys is None:
            return keys
        old = np.searchsorted(self.file_keys, keys)
        return np.where(keys < 0, -1, np.where(keys >= self.first_new, keys - self.shift, old))

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the keys beside the engine's files; returns the manifest entries :meth:`load` reads back."""
        if self.file_keys is None:
            return {}
        np.save(directory / "keys.npy", self.file_keys, allow_pickle=False)
        return {"keys": "keys.npy", "first_new": self.first_new}

    @classmethod
    def load(cls, files: EngineFiles) -> EngineKeys:
        """The keys :meth:`save` wrote (identity when it wrote none); a damaged file raises ``IndexFormatError``."""
        if "keys" not in files.meta:
            return cls()
        file_keys, first_new = cls.read(files, "keys"), files.meta.get("first_new")
        if not isinstance(first_new, int) or (len(file_keys) and first_new <= file_keys[-1]):
            raise IndexFormatError(
                f"the engine's first_new={first_new!r} does not follow its keys; the index is damaged"
            )
        return cls(file_keys, first_new)

    @staticmethod
    def read(files: EngineFiles, name: str) -> np.ndarray:
        """The sorted, unique, non-negative int64 keys saved under ``files.meta[name]`` (none when absent)."""
        if name not in files.meta:
            return np.zeros(0, np.int64)
        keys = np.load(files.path(str(files.meta[name])), allow_pickle=False)
        if keys.ndim != 1 or keys.dtype != np.int64 or (len(keys) and (keys[0] < 0 or (np.diff(keys) <= 0).any())):
            raise IndexFormatError(f"the engine's {name} file holds {keys.dtype} {keys.shape}, not sorted unique keys")
        return keys
