"""How many threads numpy's BLAS and OpenMP engines (faiss) use inside one server process.

A server's parallelism is the micro-batch and the event loop beside it; a
BLAS or OpenMP pool on top of that mostly spins against them, and on a small,
shared machine a 64-user batch can take ten times longer with two BLAS
threads than with one. The libraries read their environment variables only
when they load, which is before a command line runs, so the limit is set
through their own ``*_set_num_threads`` functions, found among the shared
libraries the process has loaded (what threadpoolctl does, for the two
runtimes that matter here). Environment variables the user set
(``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ...) win: nothing is changed
then. Linux only; elsewhere the libraries keep their defaults.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

__all__ = ["limit_compute_threads"]

logger = logging.getLogger("rechub_serving.serve")

_SETTERS = {
    "openblas": ("OPENBLAS_NUM_THREADS", ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                                          "openblas_set_num_threads")),
    "gomp": ("OMP_NUM_THREADS", ("omp_set_num_threads",)),
    "libomp": ("OMP_NUM_THREADS", ("omp_set_num_threads",)),
    "iomp": ("OMP_NUM_THREADS", ("omp_set_num_threads",)),
}  # fmt: skip


def _loaded_libraries() -> list[str]:
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = {line.split(maxsplit=5)[-1] for line in lines if ".so" in line and "/" in line}
    return sorted(p for p in paths if os.path.isfile(p))


def limit_compute_threads(n: int) -> list[str]:
    """Set BLAS and OpenMP pools to ``n`` threads; returns the libraries changed (``n <= 0``: none)."""
    if n <= 0:
        return []
    changed = []
    for path in _loaded_libraries():
        name = os.path.basename(path).lower()
        for key, (env, symbols) in _SETTERS.items():
            if key not in name or os.environ.get(env) or os.environ.get("MKL_NUM_THREADS" if key == "iomp" else env):
                continue
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for symbol in symbols:
                setter = getattr(lib, symbol, None)
                if setter is not None:
                    setter(ctypes.c_int(n))
                    changed.append(os.path.basename(path))
                    break
    if changed:
        logger.debug("compute threads set to %d in %s", n, ", ".join(changed))
    return changed
