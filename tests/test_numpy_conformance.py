"""The numpy backend passes the conformance suite (it is the reference)."""

from rechub_serving.testing import BackendConformance


class TestNumpyBackend(BackendConformance):
    backend = "numpy"


class TestNumpyBackendSmallBlocks(BackendConformance):
    """Tiny blocks exercise the block merge path."""

    backend = "numpy"
    params = {"block_bytes": 4096}
    metrics = ("l2", "cosine")
