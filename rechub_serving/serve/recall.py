"""Live recall: a sample of served answers checked against exact search, in the background.

After a batch is answered, each request is sampled with probability
``sample_rate``; a sampled request's user vectors, k, exclusions and served
ids are put on a bounded queue (full: the sample is dropped and counted, the
request never waits). One background thread answers each sample again with the generation's :class:`~.reference.ExactReference`
and adds, per user, the served ids found in the exact top-k (hits) and the
exact top-k's size (relevant). Recall@k is hits / relevant: over the last
``window`` users (the ``rechub_serve_live_recall`` gauge and ``/v1/info``) and
since the generation started; the ``*_hits`` / ``*_relevant`` counters let
Prometheus compute it over any range. A hot swap starts the numbers afresh.
"""

from __future__ import annotations

import collections
import logging
import queue
import random
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics import ServeMetrics
from .reference import ExactReference

__all__ = ["RecallMonitor", "recall_counts"]

logger = logging.getLogger("rechub_serving.serve")


def recall_counts(served: np.ndarray, exact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many served ids are in the exact top-k, and how many exact ids there are (padding ignored)."""
    hits, relevant = np.zeros(len(exact), np.int64), np.zeros(len(exact), np.int64)
    for i in range(len(exact)):
        want = {v for v in exact[i].tolist() if v is not None and v != -1}
        got = {v for v in served[i].tolist() if v is not None and v != -1}
        hits[i] = len(want & got)
        relevant[i] = len(want)
    return hits, relevant


@dataclass
class _Sample:
    generation: int
    reference: ExactReference
    vectors: np.ndarray
    k: int
    exclude: list[list[Any]] | None
    served: np.ndarray


class RecallMonitor:
    """Sample answers, check them against exact search off the request path, export recall@k."""

    def __init__(
        self, sample_rate: float, queue_size: int, window: int, metrics: ServeMetrics, seed: int | None = None
    ):
        self.sample_rate = float(sample_rate)
        self.window = int(window)
        self._metrics = metrics
        self._queue: queue.Queue[_Sample | None] = queue.Queue(maxsize=int(queue_size))
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple[int, int]] = collections.deque(maxlen=self.window)
        self._generation = 0
        self._hits = self._relevant = self._users = self._dropped = self._failed = 0
        self._reference_note = ""
        self._source: str | None = None
        self._thread: threading.Thread | None = None

    # -- generations -----------------------------------------------------------------------------------
    def reset(self, generation: int, reference: ExactReference | None, note: str) -> None:
        """A new model generation serves: recall starts afresh against its reference."""
        with self._lock:
            self._generation = generation
            self._recent.clear()
            self._hits = self._relevant = self._users = 0
            self._source = reference.source if reference is not None else None
            self._reference_note = note
        self._metrics.live_recall.set(float("nan"))

    # -- the request side ---------------------------------------------------------------------------------
    def wants(self) -> bool:
        """Draw whether to sample one request (cheap; called per request on the batch thread)."""
        return self.sample_rate > 0 and (self.sample_rate >= 1 or self._random.random() < self.sample_rate)

    def offer(
        self,
        generation: int,
        reference: ExactReference,
        vectors: np.ndarray,
        k: int,
        exclude: list[list[Any]] | None,
        served: np.ndarray,
    ) -> bool:
        """Queue one answered request for checking; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(_Sample(generation, reference, np.array(vectors), k, exclude, np.array(served)))
            return True
        except queue.Full:
            with self._lock:
                self._dropped += 1
            self._metrics.recall_dropped.inc()
            return False

    # -- the background side ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="rechub-recall", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def drain(self, timeout: float = 10.0) -> None:
        """Block until every queued sample is checked (for tests and shutdown)."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        done.wait(timeout)

    def _work(self) -> None:
        # Not at a lower OS priority: a low-priority thread that wants the GIL back makes the serving threads
        # wait until the OS schedules it (CPython hands the GIL over), which on a busy machine is worse.
        while True:
            sample = self._queue.get()
            try:
                if sample is None:
                    return
                self._check(sample)
            except Exception as exc:  # a closed old generation, an engine error: skip this sample
                with self._lock:
                    self._failed += 1
                logger.debug("recall sample skipped: %s", exc)
            finally:
                self._queue.task_done()

    def _check(self, sample: _Sample) -> None:
        if sample.generation != self._generation:
            return
        exact = sample.reference.top_ids(sample.vectors, sample.k, sample.exclude)
        hits, relevant = recall_counts(sample.served, exact)
        with self._lock:
            if sample.generation != self._generation:
                return
            for h, r in zip(hits.tolist(), relevant.tolist()):
                self._recent.append((h, r))
            self._hits += int(hits.sum())
            self._relevant += int(relevant.sum())
            self._users += len(hits)
            window = self._window_recall()
        self._metrics.recall_hits.inc(int(hits.sum()))
        self._metrics.recall_relevant.inc(int(relevant.sum()))
        self._metrics.recall_checked.inc(len(hits))
        if window is not None:
            self._metrics.live_recall.set(window)

    def _window_recall(self) -> float | None:
        relevant = sum(r for _, r in self._recent)
        return sum(h for h, _ in self._recent) / relevant if relevant else None

    def snapshot(self) -> dict[str, Any]:
        """What ``/v1/info`` shows under ``recall``."""
        with self._lock:
            enabled = self._source is not None and self.sample_rate > 0
            return {
                "enabled": enabled,
                "reference": self._source,
                "note": self._reference_note or None,
                "sample_rate": self.sample_rate,
                "window_users": self.window,
                "recall_at_k": self._window_recall(),
                "recall_at_k_generation": self._hits / self._relevant if self._relevant else None,
                "checked_users": self._users,
                "pending": self._queue.qsize(),
                "dropped": self._dropped,
                "failed": self._failed,
            }
