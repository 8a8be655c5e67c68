"""Shared fixtures of the core's tests."""

from __future__ import annotations

import numpy as np
import pytest

from rechub_serving.evaluation import clustered_data
from rechub_serving.testing import reload_plugins


@pytest.fixture
def items() -> np.ndarray:
    return clustered_data(300, 8, seed=0)


@pytest.fixture
def fresh_registry():
    """Forget loaded plugins before and after the test (env vars take effect)."""
    reload_plugins()
    yield
    reload_plugins()
