"""Scale: the faiss backend's Flat and HNSW over 1,000,000 x 64 on one small machine.

For each index type, built through ``rechub_serving.builder_factory("faiss", ...)``
over ``clustered_data(1,000,000 x 64)``: build time, batch QPS (1,000 queries,
k=10, median of ``--repeats`` calls), recall@10 against exact ground truth (a
brute-force ``faiss.IndexFlatL2`` scan, computed once), and memory: the
process's resident set size (psutil, sampled every 20 ms) before, at its peak
during, and after the build. The SDK's query overhead is measured on the very
faiss object the index searches (raw ``index.search`` vs ``Indexer.query``,
same queries, interleaved, medians).

    python benchmarks/bench_scale.py                         # 1,000,000 x 64, ~10-15 minutes on 2 cores
    python benchmarks/bench_scale.py --ef-construction 100   # a faster HNSW build
    python benchmarks/bench_scale.py --quick --out /tmp/r    # < 1 minute smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS, markdown_table, write_report

from rechub_serving import builder_factory
from rechub_serving.evaluation import clustered_data, recall_at_k

K = 10
REPORT = "scale"
TITLE = "Scale: faiss Flat and HNSW over 1,000,000 vectors"
MiB = 1024 * 1024


class RssSampler:
    """Samples this process's RSS in a background thread; ``phase()`` reports before / peak / after."""

    def __init__(self, interval: float = 0.02):
        self._proc = psutil.Process()
        self._interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        return self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self.rss())

    @contextlib.contextmanager
    def phase(self, out: dict[str, float]):
        gc.collect()
        out["before"] = self.rss() / MiB
        self._peak = self.rss()
        yield
        self._peak = max(self._peak, self.rss())
        out["peak"] = self._peak / MiB
        out["after"] = self.rss() / MiB

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def overhead(index: Any, queries: np.ndarray, repeats: int) -> dict[str, float] | None:
    """Median seconds of raw faiss vs the SDK on the same faiss object, interleaved; None if not reachable."""
    raw = getattr(index.engine, "index", None)  # the faiss CPU index the plugin searches (FaissEngine.index)
    if raw is None or not hasattr(raw, "search"):
        return None
    raw.search(queries[:10], K)
    index.query(queries[:10], K)
    raw_s, sdk_s = [], []
    for r in range(repeats):
        pair = [("raw", lambda: raw.search(queries, K)), ("sdk", lambda: index.query(queries, K))]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            fn()
            (raw_s if name == "raw" else sdk_s).append(time.perf_counter() - start)
    return {"raw": statistics.median(raw_s), "sdk": statistics.median(sdk_s)}


def measure(
    name: str,
    params: dict[str, Any],
    items: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    sampler: RssSampler,
    args,
    per_call: list[dict[str, Any]],
) -> tuple[list[list[str]], list[str], list[str]]:
    """Build one index; rows of the main table, of the per-call table and the overhead row."""
    mem: dict[str, float] = {}
    print(f"building {name} {params}", flush=True)
    with sampler.phase(mem):
        start = time.perf_counter()
        index = builder_factory("faiss", metric="l2", **params).from_embeddings(items)
        build_s = time.perf_counter() - start
    print(f"  built in {build_s:.1f} s, rss peak {mem['peak']:.0f} MiB", flush=True)
    resolved = {k: v for k, v in index.params.items() if v is not None and k not in ("metric", "index_type")}
    with index:
        found = index.query(queries, K).indices
        recall = recall_at_k(found, truth, K)
        over = overhead(index, queries, args.repeats)
        sdk_s = over["sdk"] if over else statistics.median(_times(lambda: index.query(queries, K), args.repeats))
        row = [
            name,
            ", ".join(f"{k}={v}" for k, v in resolved.items()) or "(defaults)",
            f"{build_s:.1f}",
            f"{len(queries) / sdk_s:,.0f}",
            f"{recall:.3f}",
            f"{mem['before']:,.0f}",
            f"{mem['peak']:,.0f}",
            f"{mem['after']:,.0f}",
            f"{mem['after'] - mem['before']:,.0f}",
        ]
        extra = []
        for search in per_call:
            found = index.query(queries, K, **search).indices
            sec = statistics.median(_times(lambda s=search: index.query(queries, K, **s), args.repeats))
            label = ", ".join(f"{k}={v}" for k, v in search.items())
            extra.append([name, label, f"{len(queries) / sec:,.0f}", f"{recall_at_k(found, truth, K):.3f}"])
        over_row = (
            [
                name,
                f"{over['raw'] * 1e3:.1f}",
                f"{over['sdk'] * 1e3:.1f}",
                f"{(over['sdk'] / over['raw'] - 1) * 100:+.1f}%",
            ]
            if over
            else [name, "-", "-", "raw faiss object not reachable"]
        )
    gc.collect()
    return [row], extra, over_row


def _times(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def write(body: str, out: str | None) -> Path:
    return write_report(REPORT, TITLE, body, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed batch queries (median reported)")
    parser.add_argument("--m", type=int, default=None, help="HNSW m (default: the backend's)")
    parser.add_argument(
        "--ef-construction", type=int, default=None, help="HNSW efConstruction (default: the backend's)"
    )
    parser.add_argument("--skip-hnsw", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test, < 1 minute)")
    parser.add_argument("--out", default=None, help=f"report directory (default {DOCS})")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/bench_scale.py", *given])
    if args.quick:
        args.n, args.queries, args.repeats = 20_000, 100, 2

    wall = time.perf_counter()
    load_start = os.getloadavg()
    sampler = RssSampler()
    data_mem: dict[str, float] = {}
    with sampler.phase(data_mem):
        items = clustered_data(args.n, args.dim, seed=0)
        queries = clustered_data(args.queries, args.dim, seed=1, centres_seed=0)  # users near the catalogue
    print(f"data {items.shape}: {items.nbytes / MiB:.0f} MiB", flush=True)

    start = time.perf_counter()
    exact = faiss.IndexFlatL2(args.dim)
    exact.add(items)
    truth = exact.search(queries, K)[1]
    truth_s = time.perf_counter() - start
    del exact
    gc.collect()
    print(f"ground truth in {truth_s:.1f} s", flush=True)

    rows, extra, over_rows = [], [], []
    runs = [("Flat", {"index_type": "Flat"}, [])]
    if not args.skip_hnsw:
        hnsw = {"index_type": "HNSW"}
        if args.m:
            hnsw["m"] = args.m
        if args.ef_construction:
            hnsw["ef_construction"] = args.ef_construction
        runs.append(("HNSW", hnsw, [{"ef_search": 32}, {"ef_search": 64}, {"ef_search": 256}]))
    for name, params, per_call in runs:
        r, e, o = measure(name, params, items, queries, truth, sampler, args, per_call)
        rows += r
        extra += e
        over_rows.append(o)
    sampler.close()
    load_end = os.getloadavg()
    total = time.perf_counter() - wall

    table = markdown_table(
        [
            "index",
            "parameters (resolved)",
            "build s",
            "QPS (batch)",
            "recall@10",
            "RSS before build MiB",
            "peak RSS during build MiB",
            "RSS after build MiB",
            "index RSS MiB",
        ],
        rows,
    )
    extra_table = markdown_table(["index", "per-call search parameter", "QPS (batch)", "recall@10"], extra)
    over_table = markdown_table(
        ["index", f"raw faiss ms / {args.queries} queries", "SDK ms", "SDK overhead"],
        over_rows,
    )
    faiss_threads = faiss.omp_get_max_threads()
    body = f"""
`clustered_data({args.n:,} x {args.dim})` (float32, {items.nbytes / MiB:,.0f} MiB), {args.queries:,} queries, k={K},
metric l2, built through `builder_factory("faiss", index_type=...)` with the backend's defaults
(unless a parameter is shown as given on the command line). Ground truth: a brute-force
`faiss.IndexFlatL2` scan ({truth_s:.1f} s). QPS: all queries in one call, median of {args.repeats} calls
after a warm-up. RSS: this process's resident set (psutil, sampled every 20 ms); "index RSS" = after
minus before the build (the index's own copy of the vectors plus its structure). Peak RSS of the
whole run: {max(float(r[6].replace(",", "")) for r in rows):,.0f} MiB.

Machine: {platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 1024**3:.0f} GiB RAM, shared with other
jobs (load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end; the numbers are noisy);
faiss {faiss.__version__} with {faiss_threads} OpenMP threads, rechub-serving-faiss
{_version("rechub-serving-faiss")}. Whole run: {total / 60:.1f} min.
Command: `{command}`.

{table}

## HNSW search width per call

The same HNSW index, `ef_search` given per call (no index mutation):

{extra_table}

## SDK overhead at this scale

Raw `faiss_index.search(queries, {K})` vs `index.query(queries, {K})` on the same faiss object and the same
{args.queries:,} queries, interleaved, median of {args.repeats}:

{over_table}
"""
    print(table)
    print(extra_table)
    print(over_table)
    print("wrote", write(body, args.out))


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
