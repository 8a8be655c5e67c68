"""rechub-serving-torch: exact top-k with torch, on the CPU or a GPU.

>>> from rechub_serving import builder_factory
>>> builder = builder_factory("torch", device="cuda", dtype="float16")  # doctest: +SKIP
"""

from __future__ import annotations

from rechub_serving import hookimpl

from ._backend import TorchBackend

__version__ = "0.2.0"

__all__ = ["TorchBackend", "TorchEngine", "__version__", "register_backends"]


def __getattr__(name: str):
    # TorchEngine imports torch: loaded on first use, never by registering the plugin.
    if name == "TorchEngine":
        from ._engine import TorchEngine

        return TorchEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_backends(register):
    """Register the ``torch`` backend."""
    register(TorchBackend)
