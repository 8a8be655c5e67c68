"""Test helpers for backend authors: the conformance suite and fake plugins.

Every backend, built-in or third-party, runs the same suite in its own tests::

    from rechub_serving.testing import BackendConformance

    class TestMyEngine(BackendConformance):
        backend = "myengine"
        params = {"m": 16}
        exact = False
        recall_floor = 0.9

and may register a plugin for the duration of a test with :func:`registered_plugin`.
"""

from __future__ import annotations

from ..evaluation import clustered_data, ground_truth, recall_at_k, true_distances
from ._conformance import BackendConformance
from ._plugins import registered_plugin, reload_plugins

__all__ = [
    "BackendConformance",
    "clustered_data",
    "ground_truth",
    "recall_at_k",
    "registered_plugin",
    "reload_plugins",
    "true_distances",
]
