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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rechub_serving_hnswlib import HnswlibBackend, HnswlibEngine

from rechub_serving import BackendConfig, Builder
from rechub_serving.evaluation import clustered_data, ground_truth, recall_at_k


class NativeFilterEngine(HnswlibEngine):
    """The hnswlib engine with exclusion done by hnswlib's filter callable, one call per query row."""

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if exclude is None:
            return super().search(queries, k, params, None)
        width = min(max(params["ef_search"], k), len(self))
        labels, dist = np.full((len(queries), k), -1, np.int64), np.zeros((len(queries), k), np.float32)
        for i, row in enumerate(exclude):
            banned = frozenset(row.tolist())
            try:
                found, d = self.index.knn_query(
                    queries[i : i + 1],
                    k=min(width, len(self) - len(banned)),
                    filter=lambda label, b=banned: label not in b,
                )
            except RuntimeError:  # a short row: left as padding (a benchmark, not the backend)
                continue
            n = min(k, found.shape[1])
            labels[i, :n], dist[i, :n] = found[0, :n], d[0, :n]
        return labels, dist


class NativeFilterBackend(HnswlibBackend):
    capabilities = dataclasses.replace(HnswlibBackend.capabilities, native_filter=True)

    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> NativeFilterEngine:
        engine = super().build(vectors, config, ids)
        return NativeFilterEngine(engine.index, config.metric, len(engine), config["threads"])


def median_seconds(fn, repeats: int) -> float:
    """Median CPU seconds of this thread (with threads=1 every search runs on it; a loaded machine inflates wall time)."""
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ef-search", type=int, default=100)
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
    params = {"metric": "l2", "seed": 1, "threads": args.threads, "ef_search": args.ef_search}
    over = Builder(HnswlibBackend, **params).from_embeddings(items)
    native = Builder(NativeFilterBackend, **params).from_embeddings(items)
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
