"""Exclusion strategy for the hnswlib backend: hnswlib's native filter vs the core's over-fetch.

hnswlib's ``knn_query(filter=...)`` takes one Python callable per call, the same
for every row, so a per-user ``exclude`` needs one call per query row and a
Python call per visited node. The core's fallback (``native_filter=False``)
asks for ``k + max(len(exclude row))`` in one batched, multi-threaded call and
drops the excluded ids. Both run side by side in one process on the same
index; medians of several runs; the table is printed as markdown.

    python plugins/hnswlib/benchmarks/bench_exclude.py [--items 20000] [--dim 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
from rechub_serving_hnswlib import HnswlibBuilder

from rechub_serving.testing import clustered_data, ground_truth, recall_at_k


class NativeFilterBuilder(HnswlibBuilder):
    """The same backend with hnswlib's filter callable doing the exclusion."""

    capabilities = dataclasses.replace(HnswlibBuilder.capabilities, native_filter=True)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ef-search", type=int, default=None)
    args = parser.parse_args()

    items = clustered_data(args.items, args.dim, seed=0)
    queries = clustered_data(args.queries, args.dim, seed=1, centres_seed=0)  # users near the catalogue
    rng = np.random.default_rng(2)
    truth, _ = ground_truth(items, queries, 1000, "l2")
    print(
        f"{args.items} x {args.dim} items, {args.queries} queries, k={args.k}, threads={args.threads or 'all'}, ef_search={args.ef_search}, medians of {args.repeats} runs\n"
    )
    print(
        "| excluded per row | over-fetch (s) | native filter (s) | native / over-fetch | recall over-fetch | recall native |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    over = HnswlibBuilder(metric="l2", seed=1, threads=args.threads, ef_search=args.ef_search).from_embeddings(items)
    native = NativeFilterBuilder(metric="l2", seed=1, threads=args.threads, ef_search=args.ef_search).from_embeddings(
        items
    )
    for n_excluded in (0, 10, 50, 200, 1000):
        # A realistic history: half among the user's true neighbours, half random.
        exclude = [
            np.unique(np.concatenate([row[: n_excluded // 2], rng.choice(args.items, n_excluded - n_excluded // 2)]))
            for row in truth
        ]
        banned = [set(r.tolist()) for r in exclude]
        expected = np.stack([[p for p in row if p not in b][: args.k] for row, b in zip(truth, banned)])
        t_over = median_seconds(lambda e=exclude: over.query(queries, args.k, exclude=e), args.repeats)
        t_native = median_seconds(lambda e=exclude: native.query(queries, args.k, exclude=e), args.repeats)
        r_over = recall_at_k(np.asarray(over.query(queries, args.k, exclude=exclude).indices), expected)
        r_native = recall_at_k(np.asarray(native.query(queries, args.k, exclude=exclude).indices), expected)
        print(
            f"| {n_excluded} | {t_over:.4f} | {t_native:.4f} | {t_native / t_over:.2f}x | {r_over:.3f} | {r_native:.3f} |"
        )


if __name__ == "__main__":
    main()
