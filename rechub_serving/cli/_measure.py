"""Measuring configurations for ``bench``, ``tune`` and ``quickstart``: build time, memory, size, QPS, latency, recall.

No typer here (tested directly). Recall and ground truth come from
:mod:`rechub_serving.evaluation`, like everywhere else.

Memory is the growth of the resident set size (RSS) of this process and its
child processes (milvus-lite runs its engine in a child) from just before a
build to just after it, with the index alive: it sees what native engines
allocate, which Python's allocation tracing cannot. Freed memory is handed
back to the system (``malloc_trim``) before each measurement, so one
configuration's garbage is not reused by the next one unseen.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rechub_serving import Indexer, builder_factory
from rechub_serving.evaluation import recall_at_k

from ._common import dir_size

__all__ = [
    "MEMORY_LABEL",
    "Measurement",
    "TuneOutcome",
    "TunePoint",
    "measure",
    "truth_ids",
    "tune_search",
]

logger = logging.getLogger("rechub_serving.cli")

#: What the memory column holds, for table headers and reports.
MEMORY_LABEL = "RSS growth"


@dataclass
class Measurement:
    """One configuration measured (``error`` set when it failed)."""

    label: str
    backend: str
    params: dict[str, Any]
    build_s: float | None = None
    rss_growth_bytes: int | None = None
    size_bytes: int | None = None
    qps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    recall: float | None = None
    k: int = 10
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def truth_ids(positions: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    """Ground-truth row positions as the index's ids (padding -1 stays -1, or None for string ids)."""
    if ids is None:
        return positions
    ids = np.asarray(ids)
    out = ids[np.maximum(positions, 0)]
    if ids.dtype == object:
        out = out.astype(object)
        out[positions < 0] = None
    else:
        out = np.where(positions >= 0, out, -1)
    return out


# -- memory ---------------------------------------------------------------------------------------
def resident_bytes() -> int | None:
    """RSS of this process and its children, in bytes (None when psutil cannot tell)."""
    try:
        import psutil
    except ImportError:  # a broken install: psutil is a dependency
        return None
    proc = psutil.Process()
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return int(total)


@functools.cache
def _malloc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_memory() -> None:
    """Collect garbage and return freed heap pages to the system (glibc), so RSS reflects live memory."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# -- one configuration ----------------------------------------------------------------------------
def _timed_queries(
    index: Indexer, queries: np.ndarray, k: int, exclude: Any, params: Mapping[str, Any], repeats: int
) -> tuple[np.ndarray, float]:
    """Run the batch ``repeats`` times; return (result ids, median seconds)."""
    times, ids = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        res = index.query(queries, k=k, exclude=exclude, **params)
        times.append(time.perf_counter() - start)
        ids = np.asarray(res.indices)
    assert ids is not None
    return ids, statistics.median(times)


def measure(
    label: str,
    backend: str,
    params: dict[str, Any],
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    truth: np.ndarray,
    *,
    ids: Any = None,
    exclude: Any = None,
    latency_queries: int = 200,
    repeats: int = 3,
    measure_size: bool = True,
    on_stage: Callable[[str], None] | None = None,
) -> Measurement:
    """Build ``backend`` with ``params`` over ``vectors`` and measure it; errors are recorded, not raised.

    ``truth`` holds the true top-k ids of ``queries`` (see :func:`truth_ids`).
    """
    stage = on_stage or (lambda _text: None)
    result = Measurement(label, backend, dict(params), k=k)
    index = None
    try:
        builder = builder_factory(backend, **params)
        stage(f"{label}: building")
        release_memory()
        before = resident_bytes()
        start = time.perf_counter()
        index = builder.from_embeddings(vectors, ids=ids)
        result.build_s = time.perf_counter() - start
        after = resident_bytes()
        if before is not None and after is not None:
            result.rss_growth_bytes = max(0, after - before)
        kk = min(k, len(index))
        stage(f"{label}: querying")
        found, seconds = _timed_queries(index, queries, kk, exclude, {}, repeats)
        result.qps = len(queries) / seconds if seconds > 0 else float("inf")
        result.recall = recall_at_k(found, truth, kk)
        lat = []
        for i in range(min(len(queries), latency_queries)):
            row_exclude = None if exclude is None else [exclude[i]]
            start = time.perf_counter()
            index.query(queries[i : i + 1], k=kk, exclude=row_exclude)
            lat.append(time.perf_counter() - start)
        if lat:
            result.p50_ms = float(np.percentile(lat, 50) * 1e3)
            result.p99_ms = float(np.percentile(lat, 99) * 1e3)
        if measure_size and index.capabilities.persist:
            stage(f"{label}: saving")
            tmp = Path(tempfile.mkdtemp(prefix="rechub-bench-"))
            try:
                result.size_bytes = dir_size(index.save(tmp / "index"))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except Exception as exc:  # one failing configuration must not stop the others
        logger.debug("configuration %s failed", label, exc_info=True)
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        if index is not None:
            try:
                index.close()
            except Exception:  # closing after a failure: nothing more to report
                logger.debug("closing %s failed", label, exc_info=True)
    return result


# -- tune ----------------------------------------------------------------------------------------------
@dataclass
class TunePoint:
    """One setting tried: ``params`` (search parameters), recall, QPS, or the error."""

    params: dict[str, Any]
    recall: float | None = None
    qps: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TuneOutcome:
    """What a sweep tried (``swept``: the values, per parameter), every point, and the best one (or None)."""

    swept: dict[str, list[Any]] = field(default_factory=dict)
    points: list[TunePoint] = field(default_factory=list)
    best: TunePoint | None = None


def tune_search(
    index: Indexer,
    space: Mapping[str, Sequence[Any]],
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    target: float,
    *,
    repeats: int = 3,
    on_point: Callable[[TunePoint], None] | None = None,
) -> TuneOutcome:
    """Measure the defaults, then sweep each parameter of ``space`` (the backend's ``tune_space()``).

    Parameters are swept one at a time, the others at their defaults, in the
    order the backend declares the values (cheapest first); a sweep stops at
    the first value that reaches ``target``: further values only cost speed.
    The best point is the fastest that reaches ``target`` (the defaults
    included), or None.
    """
    outcome = TuneOutcome()
    report = on_point or (lambda _p: None)
    kk = min(k, len(index))

    def run(params: dict[str, Any]) -> TunePoint:
        point = TunePoint(dict(params))
        try:
            found, seconds = _timed_queries(index, queries, kk, None, params, repeats)
            point.recall = recall_at_k(found, truth, kk)
            point.qps = len(queries) / seconds if seconds > 0 else float("inf")
        except Exception as exc:  # a value invalid for this configuration: recorded, skipped
            point.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        outcome.points.append(point)
        report(point)
        return point

    run({})
    for name, values in space.items():
        tried = outcome.swept[name] = []
        for value in values:
            tried.append(value)
            point = run({name: value})
            if point.recall is not None and point.recall >= target:
                break
    reached = [p for p in outcome.points if p.recall is not None and p.recall >= target]
    outcome.best = max(reached, key=lambda p: p.qps or 0.0) if reached else None
    return outcome
