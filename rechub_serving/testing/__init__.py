"""Test helpers for backend authors: the conformance suite, fake plugins and a mock backend.

Run the whole contract against your backend in five lines, nothing installed::

    from rechub_serving.testing import BackendConformance
    from my_plugin import MyBackend

    class TestMyEngine(BackendConformance):
        backend = MyBackend          # or "myengine" once installed
        params = {"m": 16}

``BackendConformance`` needs pytest (the ``rechub-serving[testing]`` extra);
the rest of this module does not.
"""

from __future__ import annotations

from typing import Any

from rechub_serving.evaluation import ground_truth, recall_at_k

from ._data import clustered_data, reference_topk, true_distances
from ._mock import MockEngine, mock_backend
from ._plugins import registered_plugin, reload_plugins

__all__ = [
    "BackendConformance",
    "MockEngine",
    "clustered_data",
    "ground_truth",
    "mock_backend",
    "recall_at_k",
    "reference_topk",
    "registered_plugin",
    "reload_plugins",
    "true_distances",
]


def __getattr__(name: str) -> Any:
    # The suite imports pytest: only when it is asked for.
    if name == "BackendConformance":
        from ._conformance import BackendConformance

        return BackendConformance
    raise AttributeError(f"module 'rechub_serving.testing' has no attribute {name!r}")
