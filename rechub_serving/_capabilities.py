"""What a backend can do, declared once per backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Capabilities"]


@dataclass(frozen=True)
class Capabilities:
    """Capabilities of a backend.

    exact: results equal exhaustive search (for every configuration).
    add / remove: vectors can be added / removed after the build.
    native_filter: ``exclude`` is applied inside the engine's search
    (otherwise the core over-fetches and drops).
    persist: ``save()`` works. mmap: a saved index can be memory-mapped.
    gpu: the engine can run on a GPU.
    """

    exact: bool = False
    add: bool = False
    remove: bool = False
    native_filter: bool = False
    persist: bool = True
    mmap: bool = False
    gpu: bool = False

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)
