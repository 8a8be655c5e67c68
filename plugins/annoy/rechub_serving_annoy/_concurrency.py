"""Thread-level plumbing: the batch fan-out over a thread pool.

Annoy releases the GIL inside ``get_nns_by_vector``, so a batch of queries
split over a thread pool uses every core. The core never runs a search while
the index saves or closes, so the pool needs no lock of its own around the
engine; :meth:`QueryPool.run` waits for every chunk before it returns.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

__all__ = ["QueryPool", "usable_cores"]


def usable_cores() -> int:
    """CPU cores this process may run on (affinity aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


class QueryPool:
    """Runs ``work(start, stop)`` over row ranges of a batch on up to ``threads`` threads.

    The pool is created on first use and shared by every query of one index,
    so concurrent callers queue on the same workers instead of multiplying
    threads. Small batches run on the calling thread.
    """

    #: rows per thread below which a batch is not worth splitting
    min_rows_per_thread = 2

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # guards the lazy creation of the executor only

    def run(self, n_rows: int, work: Callable[[int, int], None]) -> None:
        workers = min(self.threads, n_rows // self.min_rows_per_thread)
        if workers <= 1:
            work(0, n_rows)
            return
        # A few chunks per worker balance rows of uneven cost.
        n_chunks = min(n_rows, workers * 4)
        bounds = [n_rows * i // n_chunks for i in range(n_chunks + 1)]
        futures = [self._pool().submit(work, a, b) for a, b in itertools.pairwise(bounds) if b > a]
        # Wait for every chunk before raising: no chunk may outlive the search that started it.
        wait(futures)
        for future in futures:
            future.result()  # re-raises the first error of a chunk

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="rechub-annoy")
            return self._executor

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
