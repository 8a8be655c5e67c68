"""Training an index: the sample, and faiss's own stderr kept off the user's terminal.

faiss's k-means writes ``WARNING clustering N points to K centroids: please
provide at least M training points`` straight to the C ``stderr`` (file
descriptor 2), once per k-means run: once for an IVF quantizer, once per
sub-quantizer for PQ, hundreds of times for OPQ. The named index types never
trigger it with their defaults (``nlist`` and ``nbits`` keep >= 39 training
vectors per centroid), but explicit values and factory strings can. So
training runs with descriptor 2 pointed at a temporary file; faiss's warnings
are logged at DEBUG on ``rechub_serving.faiss`` (visible with ``--debug``),
and anything else written there meanwhile (another thread's output) is
written back to stderr afterwards, never lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["TRAIN_SEED", "train", "training_sample"]

logger = logging.getLogger("rechub_serving.faiss")

TRAIN_SEED = 1234
_FAISS_LINE = re.compile(r"^WARNING clustering \d+ points to \d+ centroids")
_REDIRECT = threading.Lock()  # descriptor 2 is process-wide: one redirection at a time


def training_sample(vectors: np.ndarray, n_train: int) -> np.ndarray:
    """``n_train`` rows of ``vectors`` drawn with a fixed seed (all of them when there are no more)."""
    if n_train >= len(vectors):
        return vectors
    rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(len(vectors), n_train, replace=False))
    return np.ascontiguousarray(vectors[rows])


def train(index: Any, sample: np.ndarray) -> None:
    """``index.train(sample)`` with faiss's stderr routed to the log."""
    with _stderr_to_log():
        index.train(sample)


@contextlib.contextmanager
def _stderr_to_log() -> Iterator[None]:
    with _REDIRECT, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            _route(sink.read().decode("utf-8", "replace"))


def _route(text: str) -> None:
    others = []
    for line in text.splitlines(keepends=True):
        if _FAISS_LINE.match(line):
            logger.debug("faiss: %s", line.strip())
        else:
            others.append(line)
    if others:
        sys.stderr.write("".join(others))
        sys.stderr.flush()
