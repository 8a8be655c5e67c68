"""Shared fixtures of the core's tests."""

from __future__ import annotations

import numpy as np
import pytest

from rechub_serving._plugins import _registry
from rechub_serving.evaluation import clustered_data


@pytest.fixture
def items() -> np.ndarray:
    return clustered_data(300, 8, seed=0)


@pytest.fixture
def fresh_registry():
    """Forget loaded plugins before and after the test (env vars take effect)."""
    _registry.reset()
    yield _registry
    _registry.reset()
