"""Core benchmarks: numpy backend vs faiss IndexFlat, bounded query memory, import cost.

    python benchmarks/bench_core.py            # the issue's sizes
    python benchmarks/bench_core.py --quick    # small sizes, for a smoke run

Writes docs/benchmarks/core.md. faiss is a benchmark-only dependency here.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np
from _common import markdown_table, median_time, write_report

import rechub_serving as rs
from rechub_serving.evaluation import clustered_data


def bench_vs_faiss(n: int, dim: int, n_queries: int, k: int, repeats: int) -> list[list[object]]:
    import faiss

    items = clustered_data(n, dim, seed=0)
    queries = clustered_data(n_queries, dim, seed=1, centres_seed=0)
    rows = []
    for metric, flat in (("l2", faiss.IndexFlatL2), ("ip", faiss.IndexFlatIP)):
        raw = flat(dim)
        raw.add(items)
        index = rs.builder_factory("numpy", metric=metric).from_embeddings(items)
        ratios, ours_t, faiss_t = [], [], []
        for _ in range(repeats):  # interleaved, so both see the same machine load
            f = median_time(lambda raw=raw: raw.search(queries, k), repeats=1)
            o = median_time(lambda index=index: index.query(queries, k), repeats=1)
            ratios.append(o / f)
            ours_t.append(o)
            faiss_t.append(f)
        _, truth = raw.search(queries, k)
        same = float((np.asarray(index.query(queries, k).indices) == truth).mean())
        rows.append(
            [
                metric,
                f"{statistics.median(faiss_t) * 1e3:.0f}",
                f"{statistics.median(ours_t) * 1e3:.0f}",
                f"{statistics.median(ratios):.2f}x",
                f"{same:.4f}",
            ]
        )
        index.close()
    return rows


def bench_memory(n: int, dim: int, n_queries: int, k: int) -> list[list[object]]:
    items = clustered_data(n, dim, seed=0)
    queries = clustered_data(n_queries, dim, seed=1, centres_seed=0)
    rows = []
    for block_mb in (16, 64, 256):
        index = rs.builder_factory("numpy", metric="l2", block_bytes=block_mb << 20).from_embeddings(items)
        index.query(queries[:1], k)  # norms are computed once, not per query
        tracemalloc.start()
        start = time.perf_counter()
        index.query(queries, k)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        naive = n_queries * n * 4
        rows.append([block_mb, f"{peak / 2**20:.0f}", f"{naive / 2**20:.0f}", f"{elapsed:.2f}"])
        index.close()
    return rows


def bench_import(repeats: int) -> tuple[float, list[str]]:
    code = (
        "import time, sys; t = time.perf_counter(); import rechub_serving; "
        "print(time.perf_counter() - t); "
        "print(','.join(m for m in ('torch', 'faiss', 'annoy', 'pymilvus', 'onnxruntime', 'typer', 'hnswlib') if m in sys.modules))"
    )
    times, heavy = [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(
            "\n"
        )
        times.append(float(out[0]))
        heavy = [m for m in out[1].split(",") if m]
    return statistics.median(times), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n, nq, big = (20_000, 200, 100_000) if args.quick else (100_000, 1000, 1_000_000)
    speed = bench_vs_faiss(n, 64, nq, 10, args.repeats)
    memory = bench_memory(big, 64, nq, 10)
    import_s, heavy = bench_import(args.repeats)
    body = f"""
Machine: {platform.machine()}, {platform.python_version()}, numpy {np.__version__}. Measured by
`python benchmarks/bench_core.py{" --quick" if args.quick else ""}`; times are medians of {args.repeats}
interleaved runs, ratios are taken run by run on the same machine load.

## Exact top-10: numpy backend vs faiss `IndexFlat`

{n:,} x 64 clustered items, {nq:,} queries, k = 10. Goal: within 1.5x of faiss.

{markdown_table(["metric", "faiss ms", "rechub numpy ms", "ratio (ours / faiss)", "same ids as faiss"], speed)}

## Peak extra memory of one query batch

{big:,} x 64 items, {nq:,} queries, k = 10; peak of numpy allocations during `query()` (tracemalloc).
A naive full score matrix would need the "naive" column. The peak stays under about
2 x `block_bytes` (the budget covers the float32 score block and the partial sort's int64
positions; the running top-k adds a little), whatever the catalogue size.

{markdown_table(["block_bytes MiB", "peak MiB", "naive MiB", "seconds"], memory)}

## Import cost

`import rechub_serving` in a fresh interpreter: median {import_s * 1e3:.0f} ms (goal < 300 ms).
Heavy modules imported by it: {", ".join(heavy) or "none"} (goal: none of torch or an engine library).
"""
    path = write_report("core", "Core benchmarks", body)
    print(body)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
