"""Measuring backends: build time, memory, size on disk, QPS, latency, recall@k.

Used by ``bench``, ``tune`` and ``quickstart``; no typer here, so it is tested
directly. Ground truth always comes from the exact ``numpy`` backend.

Memory is the growth of the resident set size (RSS) of this process *and its
child processes* (milvus-lite runs its engine in a child) across the build,
measured with psutil; it sees native allocations (C++ engines) that
tracemalloc cannot. Without psutil, tracemalloc's peak of Python-visible
allocations is reported instead, and the report says which was used.
"""

from __future__ import annotations

import gc
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._common import dir_size

__all__ = [
    "Measurement",
    "TunePoint",
    "exact_topk",
    "measure",
    "recall_at_k",
    "sweep_grid",
    "sweepable_params",
    "synthetic_catalogue",
    "tune_search",
]

logger = logging.getLogger("rechub_serving.cli")

# Search parameters that change memory or threading, not what comes back.
_NEUTRAL_WORDS = ("block", "bytes", "batch", "thread", "jobs", "timeout", "workers")


@dataclass
class Measurement:
    """One configuration measured (``error`` set when it failed)."""

    label: str
    backend: str
    params: dict[str, Any]
    build_s: float | None = None
    memory_bytes: int | None = None
    memory_method: str | None = None
    size_bytes: int | None = None
    qps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    recall: float | None = None
    k: int = 10
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rss() -> tuple[int | None, str]:
    try:
        import psutil
    except ImportError:
        return None, "tracemalloc"
    proc = psutil.Process()
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, "rss"


class _MemoryProbe:
    def __enter__(self) -> _MemoryProbe:
        gc.collect()
        self.before, self.method = _rss()
        if self.before is None:
            import tracemalloc

            self._started = not tracemalloc.is_tracing()
            if self._started:
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.before is not None:
            after, _ = _rss()
            self.delta = max(0, (after or 0) - self.before)
        else:
            import tracemalloc

            self.delta = max(0, tracemalloc.get_traced_memory()[1] - self._base)
            if self._started:
                tracemalloc.stop()


def exact_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int, metric: str, ids: Any = None, exclude: Any = None
) -> np.ndarray:
    """The exact top-k ids (numpy backend), the ground truth for recall."""
    from rechub_serving import builder_factory

    with builder_factory("numpy", metric=metric).from_embeddings(vectors, ids=ids) as index:
        return np.asarray(index.query(queries, k=min(k, len(index)), exclude=exclude).indices)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (padding ignored)."""
    found, truth = np.asarray(found), np.asarray(truth)
    hits = total = 0
    for f_row, t_row in zip(found, truth):
        t = {v for v in t_row.tolist() if v is not None and v != -1}
        f = {v for v in f_row.tolist() if v is not None and v != -1}
        hits += len(t & f)
        total += len(t)
    return hits / total if total else 1.0


def _timed_queries(index: Any, queries: np.ndarray, k: int, exclude: Any, params: dict[str, Any], repeats: int):
    """Run the batch ``repeats`` times; return (result ids, median seconds)."""
    times, ids = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        res = index.query(queries, k=k, exclude=exclude, **params)
        times.append(time.perf_counter() - start)
        ids = np.asarray(res.indices)
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
    """Build ``backend`` with ``params`` over ``vectors`` and measure it; errors are recorded, not raised."""
    from rechub_serving import builder_factory

    stage = on_stage or (lambda _text: None)
    result = Measurement(label, backend, dict(params), k=k)
    index = None
    try:
        builder = builder_factory(backend, **params)
        stage(f"{label}: building")
        with _MemoryProbe() as probe:
            start = time.perf_counter()
            index = builder.from_embeddings(vectors, ids=ids)
            result.build_s = time.perf_counter() - start
        result.memory_bytes, result.memory_method = probe.delta, probe.method
        kk = min(k, len(index))
        stage(f"{label}: querying")
        found, seconds = _timed_queries(index, queries, kk, exclude, {}, repeats)
        result.qps = len(queries) / seconds if seconds > 0 else float("inf")
        result.recall = recall_at_k(found, truth)
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


# -- tune --------------------------------------------------------------------------------------------
def sweepable_params(schema: Any) -> list[Any]:
    """Numeric search parameters that trade recall for speed (block sizes, threads, ... are left out)."""
    out = []
    for p in schema:
        if not p.search or p.runtime or p.secret or p.type not in (int, float):
            continue
        if any(word in p.name.lower() for word in _NEUTRAL_WORDS):
            continue
        out.append(p)
    return out


def sweep_grid(param: Any, n_items: int, k: int) -> list[Any]:
    """Ascending powers of two within the parameter's bounds, up to ``max(4096, 4 * n_items)``."""
    low = max(1.0, float(param.minimum) if param.minimum is not None else 1.0)
    cap = max(4096, 4 * n_items)
    high = min(float(param.maximum), cap) if param.maximum is not None else cap
    values: list[Any] = []
    v = 1.0
    while v < low:
        v *= 2
    while v <= high:
        values.append(int(v) if param.type is int else float(v))
        v *= 2
    return values


@dataclass
class TunePoint:
    """One setting tried: ``params`` (search parameters), recall, QPS, or the error."""

    params: dict[str, Any]
    recall: float | None = None
    qps: float | None = None
    error: str | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TuneOutcome:
    swept: dict[str, list[Any]] = field(default_factory=dict)
    points: list[TunePoint] = field(default_factory=list)
    best: TunePoint | None = None


def tune_search(
    index: Any,
    schema: Any,
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    target: float,
    *,
    repeats: int = 3,
    on_point: Callable[[TunePoint], None] | None = None,
) -> TuneOutcome:
    """Sweep each recall-relevant search parameter (others at their defaults); pick the fastest reaching ``target``.

    Each sweep goes up the grid and stops one step after the target is first
    reached, at recall 1.0, or when recall has not moved for three steps past
    ``4 * k`` (the parameter does not matter for this configuration).
    ``outcome.swept`` holds the values actually tried.
    """
    outcome = TuneOutcome()
    report = on_point or (lambda _p: None)
    kk = min(k, len(index))

    def run(params: dict[str, Any]) -> TunePoint:
        point = TunePoint(dict(params))
        try:
            found, seconds = _timed_queries(index, queries, kk, None, params, repeats)
            point.recall = recall_at_k(found, truth)
            point.qps = len(queries) / seconds if seconds > 0 else float("inf")
        except Exception as exc:  # an invalid value for this configuration: skip it
            point.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        outcome.points.append(point)
        report(point)
        return point

    base = run({})
    base.note = "defaults"
    for param in sweepable_params(schema):
        grid = sweep_grid(param, len(index), k)
        tried = outcome.swept[param.name] = []
        hit_at, flat, last = None, 0, None
        for step, value in enumerate(grid):
            tried.append(value)
            point = run({param.name: value})
            if point.recall is None:
                continue
            if last is not None and abs(point.recall - last) < 1e-9:
                flat += 1
            else:
                flat = 0
            last = point.recall
            if point.recall >= target and hit_at is None:
                hit_at = step
            # Beam widths below k are often raised to k: a plateau counts only past 4 * k.
            if point.recall >= 1.0 or (hit_at is not None and step > hit_at) or (flat >= 3 and value >= 4 * k):
                break
    reached = [p for p in outcome.points if p.recall is not None and p.recall >= target]
    outcome.best = max(reached, key=lambda p: p.qps or 0.0) if reached else None
    return outcome


# -- quickstart data ------------------------------------------------------------------------------
def synthetic_catalogue(
    n_items: int = 20000, dim: int = 64, n_users: int = 1000, seed: int = 0, seen_per_user: int = 5
):
    """A clustered catalogue like two-tower output: (item_vectors, item_ids, user_vectors, user_ids, seen).

    Items and users are unit vectors around shared cluster centres (users sit
    near the items they like); ``seen`` lists, per user, item ids to exclude.
    """
    rng = np.random.default_rng(seed)
    n_clusters = max(8, int(np.sqrt(n_items)))
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    item_cluster = rng.integers(0, n_clusters, n_items)
    items = centres[item_cluster] + rng.normal(scale=0.6, size=(n_items, dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    user_cluster = rng.integers(0, n_clusters, n_users)
    users = centres[user_cluster] + rng.normal(scale=0.8, size=(n_users, dim)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    item_ids = np.arange(100000, 100000 + n_items, dtype=np.int64)
    user_ids = np.arange(n_users, dtype=np.int64)
    seen = [
        item_ids[rng.choice(n_items, size=min(seen_per_user, n_items), replace=False)].tolist() for _ in range(n_users)
    ]
    return items.astype(np.float32), item_ids, users.astype(np.float32), user_ids, seen
