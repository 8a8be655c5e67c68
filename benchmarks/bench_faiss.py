"""Faiss backend: SDK overhead over raw faiss, and recall of the default IVF / HNSW.

Overhead is measured on the *same* faiss index object and the same queries,
side by side in one run, one faiss thread on both sides
(``faiss.omp_set_num_threads(1)``), interleaving SDK and raw repetitions and
reporting medians:

* batch: one call with ``--queries`` vectors (default 1000), Flat and HNSW;
* single: ``--single`` calls with one vector each, reported per query in µs.

Recall@10 of ``index_type="IVF"`` and ``"HNSW"`` with default parameters is
measured against exact search on clustered data (``rechub_serving.testing.
clustered_data``). Results go to ``docs/benchmarks/faiss.md`` as markdown.

    python benchmarks/bench_faiss.py                # small, ~1 minute
    python benchmarks/bench_faiss.py --n 100000     # the issue's 100k x 64
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import faiss
import numpy as np

from rechub_serving import builder_factory
from rechub_serving.testing import clustered_data, ground_truth, recall_at_k

K = 10


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def overhead(index, queries: np.ndarray, reps: int, n_single: int) -> dict[str, float]:
    """Paired timings of raw faiss and the SDK on the same index object.

    Each repetition times raw and SDK back to back (order alternating) so that
    load from other processes hits both alike; medians of the paired numbers
    and of the paired ratios are reported.
    """
    raw = index._index  # the very faiss object the SDK searches
    index.query(queries[:10], K)
    raw.search(queries[:10], K)  # warm up both paths
    singles = [np.ascontiguousarray(q[None, :]) for q in queries[:n_single]]
    vectors = list(queries[:n_single])

    def batch_raw():
        raw.search(queries, K)

    def batch_sdk():
        index.query(queries, K)

    def one_raw():
        for q in singles:
            raw.search(q, K)

    def one_sdk():
        for q in vectors:
            index.query(q, K)

    out: dict[str, list[float]] = {key: [] for key in ("batch_raw", "batch_sdk", "single_raw", "single_sdk")}
    for rep in range(reps):
        for kind, f_raw, f_sdk, scale in (
            ("batch", batch_raw, batch_sdk, 1.0),
            ("single", one_raw, one_sdk, 1e6 / n_single),
        ):
            if rep % 2:
                t_sdk, t_raw = _timed(f_sdk), _timed(f_raw)
            else:
                t_raw, t_sdk = _timed(f_raw), _timed(f_sdk)
            out[f"{kind}_raw"].append(t_raw * scale)
            out[f"{kind}_sdk"].append(t_sdk * scale)
    med = statistics.median
    result = {key: med(values) for key, values in out.items()}
    result["batch_ratio"] = med(s / r for s, r in zip(out["batch_sdk"], out["batch_raw"]))
    result["single_diff"] = med(s - r for s, r in zip(out["single_sdk"], out["single_raw"]))
    result["single_ratio"] = med(s / r for s, r in zip(out["single_sdk"], out["single_raw"]))
    return result


class _CachedEngine:
    """Stands in for the faiss index and replays one real result per batch shape.

    Timing the SDK around it measures the SDK's own work per call (validation,
    conversion, id mapping, padding) without the engine's time and its noise.
    """

    def __init__(self, real):
        self._real = real
        self._cache: dict[tuple[int, int], object] = {}

    def search(self, x, k, *args, **kwargs):
        key = (len(x), k)
        if key not in self._cache:
            self._cache[key] = self._real.search(x, k, *args, **kwargs)
        return self._cache[key]

    def __getattr__(self, name):
        return getattr(self._real, name)


def sdk_only_overhead(index, queries: np.ndarray, reps: int, n_single: int) -> dict[str, float]:
    """Per-call SDK time with the engine replaced by a replay (µs): single vectors and a batch."""
    real = index._index
    stub = _CachedEngine(real)
    index._index = stub
    try:
        vectors = list(queries[:n_single])
        singles = [np.ascontiguousarray(q[None, :]) for q in vectors]
        index.query(vectors[0], K)
        index.query(queries, K)
        single, batch = [], []
        for _ in range(reps):
            t_sdk = _timed(lambda: [index.query(q, K) for q in vectors])
            t_stub = _timed(lambda: [stub.search(q, K) for q in singles])
            single.append((t_sdk - t_stub) / n_single * 1e6)
            t_sdk = _timed(lambda: index.query(queries, K))
            t_stub = _timed(lambda: stub.search(queries, K))
            batch.append((t_sdk - t_stub) * 1e6)
    finally:
        index._index = real
    return {"single_us": statistics.median(single), "batch_us": statistics.median(batch)}


def recall_rows(index_type: str, items, query_sets, extra: dict) -> list[dict[str, object]]:
    """Build with defaults; recall@10 and QPS for each query set (and each extra per-call setting)."""
    builder = builder_factory("faiss", index_type=index_type, threads=1)
    start = time.perf_counter()
    index = builder.from_embeddings(items)
    build = time.perf_counter() - start
    rows = []
    with index:
        params = {
            k: v for k, v in index.params.items() if k in ("nlist", "nprobe", "m", "ef_construction", "ef_search")
        }
        chosen = ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)
        for name, queries, truth in query_sets:
            for call in ({}, *extra.get(name, [])):
                found = np.asarray(index.query(queries, K, **call).indices)
                qtime = statistics.median(_timed(lambda q=queries, c=call: index.query(q, K, **c)) for _ in range(3))
                rows.append(
                    {
                        "type": index_type,
                        "params": chosen + "".join(f"; per call {k}={v}" for k, v in call.items()),
                        "queries": name,
                        "recall": recall_at_k(found, truth),
                        "build": build,
                        "qps": len(queries) / qtime,
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="catalogue size (the issue: 100000)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000, help="batch size")
    parser.add_argument("--single", type=int, default=300, help="single-vector queries per repetition")
    parser.add_argument("--reps", type=int, default=15, help="repetitions (medians are reported)")
    parser.add_argument("--skip-recall", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs/benchmarks/faiss.md")
    args = parser.parse_args(argv)

    faiss.omp_set_num_threads(1)
    # Items and "like items" queries come from one draw (held-out rows); off-cluster queries from another.
    both = clustered_data(args.n + args.queries, args.dim, seed=0)
    items, like = np.ascontiguousarray(both[: args.n]), np.ascontiguousarray(both[args.n :])
    queries = clustered_data(args.queries, args.dim, seed=1)

    lines = [
        "# Faiss backend benchmark",
        "",
        f"Generated by `python benchmarks/bench_faiss.py --n {args.n} --dim {args.dim} --queries {args.queries} "
        f"--single {args.single} --reps {args.reps}` on {platform.machine()}, faiss {faiss.__version__}, "
        f"one faiss thread on both sides, clustered data (`clustered_data`, 32 centres). "
        f"Medians of {args.reps} paired repetitions (raw and SDK back to back; overheads are medians of the "
        "paired differences / ratios).",
        "",
        "## SDK overhead over raw faiss (same index object, same queries)",
        "",
        f"| index | batch of {args.queries}: faiss | SDK | overhead | single query: faiss | SDK | overhead |",
        "|---|---|---|---|---|---|---|",
    ]
    for index_type in ("Flat", "HNSW"):
        with builder_factory("faiss", index_type=index_type, threads=1).from_embeddings(items) as index:
            r = overhead(index, queries, args.reps, args.single)
        batch_pct = (r["batch_ratio"] - 1) * 100
        single_us = r["single_diff"]
        single_pct = (r["single_ratio"] - 1) * 100
        lines.append(
            f"| {index_type} {args.n:,} x {args.dim} | {r['batch_raw'] * 1e3:.1f} ms | {r['batch_sdk'] * 1e3:.1f} ms "
            f"| {batch_pct:+.1f}% | {r['single_raw']:.1f} µs | {r['single_sdk']:.1f} µs "
            f"| {single_us:+.1f} µs ({single_pct:+.1f}%) |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "Targets (issue 3): batch ≤ 5% (Flat, HNSW); single query ≤ 30 µs on HNSW and ≤ 5% on Flat.",
        "",
        "## The SDK's own time per call, engine excluded",
        "",
        "The wall-clock pairs above carry the engine's run-to-run noise, which on a shared machine is larger",
        "than the SDK's work. Here the faiss object is replaced by a replay of one real result, so what is",
        "timed is only validation, conversion, parameters, id mapping and padding (medians of the repetitions,",
        "the replay's own call time subtracted).",
        "",
        f"| index | per single-vector query | per batch of {args.queries} |",
        "|---|---|---|",
    ]
    for index_type in ("Flat", "HNSW"):
        with builder_factory("faiss", index_type=index_type, threads=1).from_embeddings(items[:20_000]) as index:
            r = sdk_only_overhead(index, queries, args.reps, args.single)
        lines.append(f"| {index_type} | {r['single_us']:.1f} µs | {r['batch_us']:.0f} µs |")
        print(lines[-1], flush=True)
    if not args.skip_recall:
        query_sets = [
            ("like items", like, ground_truth(items, like, K, "l2")[0]),
            ("off-cluster", queries, ground_truth(items, queries, K, "l2")[0]),
        ]
        lines += [
            "",
            "## Recall@10 with default parameters (metric l2, vs exact search)",
            "",
            "| index_type | chosen parameters | queries | recall@10 | build (s) | QPS (1 thread, batch) |",
            "|---|---|---|---|---|---|",
        ]
        extra = {"HNSW": {"off-cluster": [{"ef_search": 512}]}}
        for index_type in ("IVF", "HNSW"):
            for row in recall_rows(index_type, items, query_sets, extra.get(index_type, {})):
                lines.append(
                    f"| {row['type']} | {row['params']} | {row['queries']} | {row['recall']:.3f} "
                    f"| {row['build']:.1f} | {row['qps']:,.0f} |"
                )
                print(lines[-1], flush=True)
        lines += [
            "",
            "Target (issue 3): recall@10 ≥ 0.90 at 100,000 x 64 with defaults. Queries *like items* are",
            "held-out points of the item clusters; *off-cluster* queries lie around other random centres,",
            "far from every item, where nearly all items are equidistant (HNSW's hard case).",
        ]
    lines += [
        "",
        "Overheads are paired SDK-vs-raw differences on one index object; on a shared machine the",
        "noise can exceed the overhead itself (negative values). Rerun on an idle machine.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
