"""Faiss backend: the SDK's time over raw faiss per single query, and the recall-QPS curves behind the defaults.

Overhead (``--overhead``): a paired, interleaved measurement on the *same*
faiss objects the SDK searches. For every query vector, one raw
``index.search`` and one ``Indexer.query`` are timed back to back (their order
alternating), many single queries in several rounds; the page reports the
median per-call time of each side, the median of the paired differences and
that median over the raw median. For ``Flat`` the raw side is timed twice:
on the ``IndexIDMap2`` the index is stored as (what 0.1 searched) and on the
``IndexFlat`` inside it (what 0.2 searches), which shows where 0.1's extra
time went. Run at faiss's default thread count (every core) and at one thread.

Defaults (``--curves``): at 100,000 x 64 clustered items
(``rechub_serving.evaluation.clustered_data``) and 1,000 queries drawn like
the items (same centres, other noise), recall@10 against exact search and
single-thread batch QPS for each ``ef_search`` (HNSW, m=32,
ef_construction=200) and each ``nprobe`` (IVF, nlist by the default rule);
each default is the fastest setting with recall@10 >= 0.95. Then the
defaults themselves are built and measured, also on off-cluster queries.

    python benchmarks/bench_faiss.py                         # both, 100,000 x 64 (several minutes)
    python benchmarks/bench_faiss.py --overhead --n 20000    # quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rechub_serving import builder_factory
from rechub_serving.evaluation import clustered_data, ground_truth, recall_at_k

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_report

K = 10
TARGET = 0.95
EF_CURVE = (10, 16, 24, 32, 36, 40, 44, 48, 64, 96, 128)
NPROBE_CURVE = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64)


# -- overhead ---------------------------------------------------------------------------------------
def paired_single(sides: dict[str, Any], vectors: list[np.ndarray], rounds: int) -> dict[str, list[float]]:
    """Per-call seconds of each side, every query timed on every side back to back (order rotating)."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for r in range(rounds):
        for i, q in enumerate(vectors):
            shift = (i + r) % len(names)
            for name in names[shift:] + names[:shift]:
                fn = sides[name]
                start = clock()
                fn(q)
                times[name].append(clock() - start)
    return times


#: (index_type, per-call parameters): the per-call rows pass the same value to raw faiss in a prebuilt object.
OVERHEAD_CASES: tuple[tuple[str, dict[str, int]], ...] = (
    ("Flat", {}),
    ("HNSW", {}),
    ("HNSW", {"ef_search": 64}),
    ("IVF", {}),
    ("IVF", {"nprobe": 56}),
)


def overhead_rows(items: np.ndarray, queries: np.ndarray, rounds: int, threads: int) -> list[list[object]]:
    faiss.omp_set_num_threads(threads)
    vectors = [np.ascontiguousarray(q) for q in queries]
    rows: list[list[object]] = []
    built: dict[str, Any] = {}
    for index_type, call in OVERHEAD_CASES:
        if index_type not in built:
            for other in built.values():
                other.close()
            built = {index_type: builder_factory("faiss", index_type=index_type).from_embeddings(items)}
        index = built[index_type]
        stored = index.engine.index
        raw_params: Any = None
        if "nprobe" in call:
            raw_params = faiss.SearchParametersIVF()
            raw_params.nprobe = call["nprobe"]
        if "ef_search" in call:
            raw_params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
            raw_params.efSearch = call["ef_search"]
        sides: dict[str, Any] = {"sdk": lambda q, index=index, call=call: index.query(q, K, **call)}
        sides["raw"] = lambda q, s=stored, p=raw_params: s.search(q[None, :], K, params=p)
        if isinstance(stored, faiss.IndexIDMap2):
            inner = faiss.downcast_index(stored.index)
            sides["raw inner"] = lambda q, s=inner: s.search(q[None, :], K)
        for fn in sides.values():  # warm up every path
            for q in vectors[:20]:
                fn(q)
        t = paired_single(sides, vectors, rounds)
        base = "raw inner" if "raw inner" in t else "raw"
        diffs = [s - r for s, r in zip(t["sdk"], t[base])]
        raw_med = statistics.median(t[base])
        over = statistics.median(diffs)
        stored_med = statistics.median(t["raw"])
        label = f"{index_type} ({type(stored).__name__})" + "".join(f", {k}={v} per call" for k, v in call.items())
        rows.append(
            [
                label,
                threads,
                f"{stored_med * 1e6:.1f} µs",
                f"{raw_med * 1e6:.1f} µs" if base == "raw inner" else "(same)",
                f"{statistics.median(t['sdk']) * 1e6:.1f} µs",
                f"{over * 1e6:+.1f} µs ({over / raw_med * 100:+.1f}%)",
            ]
        )
        print(rows[-1], flush=True)
    for other in built.values():
        other.close()
    return rows


# -- recall-QPS curves ------------------------------------------------------------------------------
def qps(index: Any, queries: np.ndarray, reps: int = 5, **params: Any) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        index.query(queries, K, **params)
        times.append(time.perf_counter() - start)
    return len(queries) / statistics.median(times)


def curve(index: Any, name: str, values: tuple[int, ...], queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    out = []
    for value in values:
        found = np.asarray(index.query(queries, K, **{name: value}).indices)
        out.append({"value": value, "recall": recall_at_k(found, truth), "qps": qps(index, queries, **{name: value})})
        print(name, out[-1], flush=True)
    return out


def chosen(points: list[dict]) -> dict | None:
    """The fastest setting that reaches the target recall: the smallest one (the work grows with the value).

    Chosen by the value, not by the measured QPS, so that noise on a shared machine cannot pick it.
    """
    ok = [p for p in points if p["recall"] >= TARGET]
    return min(ok, key=lambda p: p["value"]) if ok else None


def curves_section(items: np.ndarray, like: np.ndarray, off: np.ndarray) -> str:
    batch = f"QPS (1 thread, batch of {len(like)})"
    faiss.omp_set_num_threads(1)
    truth = ground_truth(items, like, K, "l2")[0]
    truth_off = ground_truth(items, off, K, "l2")[0]
    with builder_factory("faiss", index_type="Flat", threads=1).from_embeddings(items) as exact:
        parts = [f"Exact search for reference (`Flat`, same queries, same thread): {qps(exact, like):,.0f} QPS."]
    for index_type, name, values in (("HNSW", "ef_search", EF_CURVE), ("IVF", "nprobe", NPROBE_CURVE)):
        start = time.perf_counter()
        with builder_factory("faiss", index_type=index_type, threads=1).from_embeddings(items) as index:
            build = time.perf_counter() - start
            built = {k: v for k, v in index.params.items() if k in ("nlist", "m", "ef_construction")}
            points = curve(index, name, values, like, truth)
            best = chosen(points)
            default = index.params[name]
            rows: list[list[object]] = [
                [
                    p["value"],
                    f"{p['recall']:.3f}",
                    f"{p['qps']:,.0f}",
                    ("**chosen**" if p is best else "") + (" default" if p["value"] == default else ""),
                ]
                for p in points
            ]
            at_default: list[list[object]] = [
                [
                    "like items",
                    f"{recall_at_k(np.asarray(index.query(like, K).indices), truth):.3f}",
                    f"{qps(index, like):,.0f}",
                ],
                [
                    "off-cluster",
                    f"{recall_at_k(np.asarray(index.query(off, K).indices), truth_off):.3f}",
                    f"{qps(index, off):,.0f}",
                ],
            ]
        params = ", ".join(f"{k}={v}" for k, v in built.items() if v is not None)
        parts.append(
            f"### {index_type} ({params}; build {build:.1f} s on one thread)\n\n"
            + markdown_table([name, "recall@10", batch, ""], rows)
            + f"\n\nThe fastest {name} with recall@10 >= {TARGET}: "
            + (f"**{best['value']}** (recall {best['recall']:.3f})" if best else "none in the sweep")
            + f". With the defaults ({name}={default}):\n\n"
            + markdown_table(["queries", "recall@10", "QPS"], at_default)
        )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000, help="queries for the curves")
    parser.add_argument("--single", type=int, default=300, help="single queries per overhead round")
    parser.add_argument("--rounds", type=int, default=5, help="overhead rounds (every query, every side)")
    parser.add_argument("--overhead", action="store_true", help="only the overhead section")
    parser.add_argument("--curves", action="store_true", help="only the recall-QPS curves")
    parser.add_argument("--out", type=Path, default=None, help="directory for faiss.md (default docs/benchmarks)")
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the script works")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.single, args.rounds = 3000, 100, 20, 2
    both = not (args.overhead or args.curves)
    default_threads = faiss.omp_get_max_threads()

    items = clustered_data(args.n, args.dim, seed=0)
    like = clustered_data(args.queries, args.dim, seed=1, centres_seed=0)
    off = clustered_data(args.queries, args.dim, seed=2)
    body = [
        f"Catalogue: {args.n:,} x {args.dim} clustered items (`clustered_data(n, dim, seed=0)`, 32 centres); "
        f"queries like the items: `clustered_data(q, dim, seed=1, centres_seed=0)`; off-cluster queries: "
        "`clustered_data(q, dim, seed=2)` (other centres, far from every item). k = 10, metric l2."
    ]
    if both or args.overhead:
        rows = []
        for threads in sorted({default_threads, 1}, reverse=True):
            rows += overhead_rows(items, like[: args.single], args.rounds, threads)
        body.append(
            "## Single-query time over raw faiss (paired, interleaved)\n\n"
            f"{args.single} single-vector queries x {args.rounds} rounds; for each query every side runs back to "
            "back (order rotating). *raw* is `search` on the faiss object the index is stored as; *raw inner* the "
            "`IndexFlat` inside the `IndexIDMap2`, which is what the SDK searches; *SDK* is `Indexer.query` "
            "(validation, per-call parameters, ids, metric table, padding checks). Overhead: median of the paired "
            "differences (SDK minus the object the SDK searches), and that over the raw median. The 0.1 plugin "
            "searched the `IndexIDMap2` itself, so a 0.1 `Flat` query cost the *raw* column plus the SDK's own time: "
            "the difference between *raw* and *raw inner* is faiss's per-call OpenMP label translation, which grows "
            "with the thread count and the machine's load. Per-call rows pass the same value to raw faiss in a "
            "prebuilt `SearchParameters*` object. On `HNSW` and `IVF`, where a query takes about 0.1 ms, the "
            "overhead is the core's per-query path (validation, id mapping, metric table, padding checks); the "
            "plugin's `search` adds a dictionary lookup and, per call, a cached parameter object. The machine's load "
            "(recorded below) inflates every figure; the paired differences are the comparable part.\n\n"
            + markdown_table(["index (stored as)", "faiss threads", "raw", "raw inner", "SDK", "SDK overhead"], rows)
        )
    if both or args.curves:
        body.append(
            "## Recall-QPS curves and the approximate defaults\n\n"
            f"Each default is the fastest setting that reaches recall@10 >= {TARGET} on the queries like the "
            "items (exact search is the reference). QPS: one faiss thread, one batch of "
            f"{args.queries} queries through the SDK, median of 5. Recall is deterministic with one faiss thread "
            "(the same on every run); QPS moves with the machine's load, so the choice uses recall only: the "
            "smallest setting that reaches the target, the work growing with the setting.\n\n"
            + curves_section(items, like, off)
        )
    path = write_report("faiss", "Faiss backend benchmark", "\n\n".join(body), args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
