"""One faiss thread in tests: the CI machine is small and shared, OpenMP spinning only slows it down."""

import faiss
import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
