"""ef_search for the hnswlib backend: the default, and the cost of per-call ef without shared state.

1. Recall@10 and query time against ``ef_search`` on clustered data (100,000 x 64
   by default, queries drawn like the items), for each metric, through the SDK
   with the default build (m=16, ef_construction=200). The backend's default
   ``ef_search`` is the fastest setting reaching recall@10 >= 0.95 on every metric.
2. The per-call route (``ef`` pinned at 1, ``knn_query`` asked for
   ``max(ef_search, k)`` results, the first ``k`` kept) against hnswlib's own
   ``set_ef(ef_search)`` + ``knn_query(k)`` on the same graph, interleaved in one
   process: identical results, time ratio as median (range) of several runs.

Writes plugins/hnswlib/benchmarks/ef_search.md.

    python plugins/hnswlib/benchmarks/bench_ef_search.py [--items 100000] [--dim 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hnswlib
import numpy as np
from rechub_serving_hnswlib import HnswlibBackend
from rechub_serving_hnswlib.backend import TUNE_GRID

from rechub_serving import Builder
from rechub_serving.evaluation import clustered_data, ground_truth, recall_at_k

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from _common import markdown_table, spread, write_report

K = 10
TARGET = 0.95


def seconds(fn, repeats: int) -> list[float]:
    """CPU seconds of this thread per run: queries run on it (threads=1), and a loaded machine inflates wall time."""
    out = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        out.append(time.thread_time() - start)
    return out


def sweep(items, queries, metric: str, directory: Path, repeats: int) -> tuple[list[list[object]], int | None]:
    """Rows (ef, recall, ms per 1000-query batch, us per single query) up to recall 0.99; the first ef reaching TARGET."""
    truth, _ = ground_truth(items, queries, K, metric)
    start = time.perf_counter()
    with Builder(HnswlibBackend, metric=metric).from_embeddings(items) as built:
        built.save(directory / metric)
    print(f"{metric}: built in {time.perf_counter() - start:.0f} s", flush=True)
    rows, chosen = [], None
    with Builder(HnswlibBackend, threads=1).from_index_file(directory / metric) as index:
        for ef in TUNE_GRID:
            recall = recall_at_k(index.query(queries, K, ef_search=ef).indices, truth)
            batch = statistics.median(seconds(lambda e=ef: index.query(queries, K, ef_search=e), repeats))
            singles = statistics.median(
                seconds(lambda e=ef: [index.query(q, K, ef_search=e) for q in queries[:200]], repeats)
            )
            rows.append([ef, f"{recall:.4f}", f"{batch * 1e3:.1f}", f"{singles / 200 * 1e6:.0f}"])
            print(metric, rows[-1], flush=True)
            if chosen is None and recall >= TARGET:
                chosen = ef
            if recall >= 0.99:
                break
    return rows, chosen


def per_call_cost(saved: Path, dim: int, queries: np.ndarray, repeats: int) -> list[list[object]]:
    """set_ef(ef) + knn_query(k) against set_ef(1) + knn_query(max(ef, k))[:, :k], same graph, interleaved."""
    shared, pinned = hnswlib.Index(space="l2", dim=dim), hnswlib.Index(space="l2", dim=dim)
    shared.load_index(str(saved / "engine" / "index.hnsw"))
    pinned.load_index(str(saved / "engine" / "index.hnsw"))
    pinned.set_ef(1)

    def set_ef(ef: int, q: np.ndarray) -> np.ndarray:
        shared.set_ef(ef)
        return shared.knn_query(q, k=K, num_threads=1)[0]

    def per_call(ef: int, q: np.ndarray) -> np.ndarray:
        return pinned.knn_query(q, k=max(ef, K), num_threads=1)[0][:, :K]

    rows = []
    for ef in (16, 32, 64, 128, 256):
        assert np.array_equal(set_ef(ef, queries), per_call(ef, queries)), "the two routes must search alike"
        batch, single = [], []
        for _ in range(repeats):
            a = seconds(lambda e=ef: set_ef(e, queries), 1)[0]
            b = seconds(lambda e=ef: per_call(e, queries), 1)[0]
            c = seconds(lambda e=ef: [set_ef(e, q) for q in queries[:200]], 1)[0]
            d = seconds(lambda e=ef: [per_call(e, q) for q in queries[:200]], 1)[0]
            batch.append(b / a)
            single.append(d / c)
        rows.append([ef, "identical", spread(batch), spread(single)])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--metrics", default="l2,ip,cosine")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args()

    items = clustered_data(args.items, args.dim, seed=0)
    queries = clustered_data(args.queries, args.dim, seed=1, centres_seed=0)  # drawn like the items
    body = [
        f"{args.items:,} x {args.dim} clustered items (`clustered_data`, seed 0), {args.queries} queries drawn "
        f"like them (seed 1, same centres), k = {K}; default build (m=16, ef_construction=200, all cores); "
        f"queries on one thread (`threads=1`), timed in CPU time of that thread, medians of {args.repeats} runs.\n"
    ]
    chosen = {}
    with tempfile.TemporaryDirectory() as tmp:
        for metric in args.metrics.split(","):
            rows, chosen[metric] = sweep(items, queries, metric, Path(tmp), args.repeats)
            body.append(f"## recall@{K} and time against ef_search: {metric}\n")
            body.append(markdown_table(["ef_search", "recall@10", "ms / 1000-query batch", "us / single query"], rows))
            body.append("")
        body.append(
            "Fastest ef_search reaching recall@10 >= 0.95: "
            + ", ".join(f"{m} {e}" for m, e in chosen.items())
            + f"; the default is the largest: **{max(e or 0 for e in chosen.values())}**.\n"
        )
        first = args.metrics.split(",")[0]
        if first == "l2":
            body.append("## per-call ef (ef pinned at 1, max(ef, k) results) / set_ef(ef), same graph, l2\n")
            rows = per_call_cost(Path(tmp) / "l2", args.dim, queries, args.repeats)
            body.append(
                markdown_table(["ef", "results", "batch of 1000: time ratio", "single query: time ratio"], rows)
            )
    print(write_report("ef_search", "hnswlib: ef_search", "\n".join(body), out=args.out))


if __name__ == "__main__":
    main()
