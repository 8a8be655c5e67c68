"""Benchmark of the Annoy backend: the recall-QPS curve its defaults are chosen from, exact search
side by side, and the batch fan-out over threads.

For each metric and number of trees, ``search_k`` is swept (recall@k is deterministic), the
smallest ``search_k`` reaching the target recall is found by bisection, and those candidates are
timed side by side with the defaults and exact (numpy) search, alternating run by run: medians of
``--repeats``. The fastest candidate is what the plugin's defaults should give; the page says
whether they do. Written to ``docs/benchmarks/annoy.md``.

    python benchmarks/bench_annoy.py                 # 100,000 x 64, 1,000 queries (about 30 min on 2 cores)
    python benchmarks/bench_annoy.py --quick --out /tmp/annoy   # a smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import markdown_table, spread, write_report  # benchmarks/_common.py: the script's directory is on sys.path

from rechub_serving import Indexer, builder_factory
from rechub_serving.evaluation import clustered_data, ground_truth, recall_at_k

QUIET_ONE, QUIET_TWO = 0.9, 1.8  # CPU seconds per wall second of an uncontended run


@dataclass
class Point:
    n_trees: int
    search_k: int
    recall: float
    qps: float  # queries per CPU second, one run, threads=1: the curve's indication (medians: side by side)


@dataclass
class MetricResult:
    metric: str
    builds: list[list[Any]] = field(default_factory=list)
    curve: list[Point] = field(default_factory=list)
    cheapest: dict[int, Point] = field(default_factory=dict)  # n_trees -> smallest search_k reaching the target
    timed: list[list[Any]] = field(default_factory=list)
    best: tuple[int, int] | None = None  # the fastest forest with at least --min-trees trees
    best_any: tuple[int, int] | None = None  # the fastest of all
    default: tuple[int, int, float] | None = None  # resolved n_trees, search_k, recall


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(seconds of wall time, seconds of process CPU time, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def recall_of(index: Indexer, queries: np.ndarray, truth: np.ndarray, k: int, search_k: int | None) -> float:
    params = {} if search_k is None else {"search_k": search_k}
    return recall_at_k(index.query(queries, k, **params).indices, truth)


def cheapest_search_k(
    index: Indexer, queries, truth, k: int, target: float, n: int
) -> tuple[list[Point], Point | None]:
    """Ladder up from k by 1.5x until the target is reached, then bisect to 2 %: the smallest search_k reaching it."""
    n_trees = int(index.params["n_trees"])
    points = []

    def point(search_k: int) -> Point:
        _, used, res = timed(lambda: index.query(queries, k, search_k=search_k))
        p = Point(n_trees, search_k, recall_at_k(res.indices, truth), len(queries) / max(used, 1e-9))
        points.append(p)
        return p

    lo, search_k = None, k
    while True:
        p = point(search_k)
        if p.recall >= target:
            break
        if search_k >= 4 * n * n_trees:  # the whole forest: more cannot help
            return points, None
        lo, search_k = search_k, math.ceil(search_k * 1.5)
    hi = search_k
    while lo is not None and hi - lo > max(10, hi // 50):
        mid = (lo + hi) // 2
        if point(mid).recall >= target:
            hi = mid
        else:
            lo = mid
    best = min((p for p in points if p.recall >= target), key=lambda p: p.search_k)
    return points, best


def bench_metric(args: argparse.Namespace, metric: str, items, queries, tmp: Path) -> MetricResult:
    out = MetricResult(metric)
    truth, _ = ground_truth(items, queries, args.k, metric)
    paths: dict[int, Path] = {}
    for n_trees in args.trees:
        builder = builder_factory("annoy", metric=metric, seed=0, n_trees=n_trees, threads=1)
        build_s, _, index = timed(lambda b=builder: b.from_embeddings(items))
        with index:
            path = index.save(tmp / f"{metric}-{n_trees}.index")
            points, best = cheapest_search_k(index, queries, truth, args.k, args.target, len(items))
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
        out.builds.append([metric, n_trees, f"{build_s:.1f}", f"{size:.0f}"])
        out.curve += points
        paths[n_trees] = path
        if best is not None:
            out.cheapest[n_trees] = best
        print(f"[{metric}] n_trees={n_trees}: built in {build_s:.1f} s; cheapest: {best}", flush=True)

    with builder_factory("annoy", metric=metric, seed=0).from_embeddings(items) as built:  # as a user builds it
        default_path = built.save(tmp / f"{metric}-defaults.index")
    with builder_factory("annoy", threads=1).from_index_file(default_path) as default:
        resolved = (int(default.params["n_trees"]), int(default.params["search_k"]))
        out.default = (*resolved, recall_of(default, queries, truth, args.k, None))
        extra = [("annoy defaults", *resolved, default, {})]
        out.timed = time_side_by_side(args, metric, items, queries, truth, paths, out.cheapest, extra)
    reaching = [row for row in out.timed if row[0] == "annoy" and float(row[3]) >= args.target]
    for attr, rows in (("best_any", reaching), ("best", [r for r in reaching if r[1] >= args.min_trees])):
        fastest = max(rows, key=lambda row: row[-1], default=None)
        if fastest is not None:
            setattr(out, attr, (fastest[1], fastest[2]))
    for row in out.timed:
        row.pop()  # the raw median used to pick the fastest
    return out


def time_side_by_side(args, metric, items, queries, truth, paths, cheapest, extra: list[Any]) -> list[list[Any]]:
    """The cheapest point of each forest, ``extra`` contenders and exact search: alternating, medians of --repeats."""
    contenders: list[tuple[str, int | str, int | str, Indexer, dict[str, Any]]] = []
    opened = []
    for n_trees, p in cheapest.items():
        index = builder_factory("annoy", threads=1).from_index_file(paths[n_trees])
        opened.append(index)
        contenders.append(("annoy", n_trees, p.search_k, index, {"search_k": p.search_k}))
    contenders += extra
    exact = builder_factory("numpy", metric=metric).from_embeddings(items)
    opened.append(exact)
    contenders.append(("exact (numpy)", "", "", exact, {}))
    times: list[list[float]] = [[] for _ in contenders]
    cpu: list[list[float]] = [[] for _ in contenders]
    try:
        for index, _, params in ((c[3], c[0], c[4]) for c in contenders):
            index.query(queries[:50], args.k, **params)  # warm pages and pools
        for _ in range(args.repeats):
            for i, (_, _, _, index, params) in enumerate(contenders):
                wall, used, _ = timed(lambda index=index, params=params: index.query(queries, args.k, **params))
                times[i].append(wall)
                cpu[i].append(used)
        exact_times = times[-1]
        rows = []
        for (name, n_trees, search_k, index, params), t, c in zip(contenders, times, cpu):
            recall = recall_at_k(index.query(queries, args.k, **params).indices, truth)
            per_cpu = len(queries) / statistics.median(c)
            speedup = spread([e / a for e, a in zip(exact_times, t)])
            qps = len(queries) / statistics.median(t)
            rows.append([name, n_trees, search_k, f"{recall:.3f}", f"{qps:,.0f}", f"{per_cpu:,.0f}", speedup, per_cpu])
        return rows
    finally:
        for index in opened:
            index.close()


def bench_other_sizes(args: argparse.Namespace) -> list[list[Any]]:
    """The defaults away from the calibration point: other catalogue sizes and other k.

    For each, the recall of the defaults (built as a user builds them: every core) and the
    smallest search_k that reaches the target on the same forest: how well the formula fits.
    """
    rows = []
    cases = [(n, args.k) for n in args.sizes] + [(args.n, k) for k in args.other_k]
    for n, k in cases:
        items = clustered_data(n, args.dim, seed=0)
        queries = clustered_data(args.queries, args.dim, seed=1, centres_seed=0)
        for metric in args.metrics:
            truth, _ = ground_truth(items, queries, k, metric)
            with builder_factory("annoy", metric=metric, seed=0).from_embeddings(items) as index:
                n_trees, search_k = index.params["n_trees"], index.engine.default_search_k(k)
                recall = recall_of(index, queries, truth, k, None)
                _, best = cheapest_search_k(index, queries, truth, k, args.target, n)
            rows.append(
                [
                    f"{n:,}",
                    k,
                    metric,
                    n_trees,
                    search_k,
                    f"{recall:.3f}",
                    best.search_k if best else "none",
                ]
            )
            print(
                f"[{metric}] n={n} k={k}: default search_k {search_k}, recall {recall:.3f}; cheapest {best}", flush=True
            )
    return rows


def low_dim_data(n: int, dim: int, latent: int, seed: int) -> np.ndarray:
    """Vectors on a smooth ``latent``-dimensional manifold in ``dim`` dimensions, plus a little noise."""
    mixing = np.random.default_rng(0).normal(size=(latent, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    z = np.tanh(rng.normal(size=(n, latent)).astype(np.float32))
    return np.ascontiguousarray(z @ mixing + rng.normal(scale=0.05, size=(n, dim)).astype(np.float32))


def bench_low_dim(args: argparse.Namespace) -> list[list[Any]]:
    """Forests of 1, 5 and 20 trees on data of low intrinsic dimension: why the defaults keep a forest."""
    items = low_dim_data(args.low_dim_n, args.dim, 8, seed=1)
    queries = low_dim_data(args.queries, args.dim, 8, seed=2)
    rows = []
    for metric in args.metrics:
        truth, _ = ground_truth(items, queries, args.k, metric)
        for n_trees in (1, 5, 20, None):
            params = {} if n_trees is None else {"n_trees": n_trees}
            with builder_factory("annoy", metric=metric, seed=0, threads=1, **params).from_embeddings(items) as index:
                _, best = cheapest_search_k(index, queries, truth, args.k, args.target, len(items))
                default_recall = recall_of(index, queries, truth, args.k, None) if n_trees is None else None
                name = "defaults" if n_trees is None else n_trees
                rows.append(
                    [
                        metric,
                        name,
                        index.params["n_trees"],
                        best.search_k if best else "none",
                        f"{best.qps:,.0f}" if best else "",
                        "" if default_recall is None else f"{default_recall:.3f} at {index.params['search_k']}",
                    ]
                )
            print(f"[low-dim {metric}] n_trees={name}: cheapest {best}", flush=True)
    return rows


def bench_threads(args: argparse.Namespace, items, queries) -> dict[str, Any]:
    """The defaults with threads=1 vs threads=2 on the same saved file, alternating run by run."""
    with tempfile.TemporaryDirectory(prefix="bench-annoy-threads-") as tmp:
        with builder_factory("annoy", metric=args.metrics[0], seed=0).from_embeddings(items) as index:
            path = index.save(Path(tmp) / "threads.index")
        with (
            builder_factory("annoy", threads=1).from_index_file(path) as one,
            builder_factory("annoy", threads=2).from_index_file(path) as two,
        ):
            one.query(queries[:50], args.k)
            two.query(queries[:50], args.k)
            ratios, cpu_one, cpu_two, t_one, t_two = [], [], [], [], []
            for _ in range(args.repeats):
                w1, c1, r1 = timed(lambda: one.query(queries, args.k))
                w2, c2, r2 = timed(lambda: two.query(queries, args.k))
                np.testing.assert_array_equal(r1.indices, r2.indices)  # the fan-out changes nothing
                ratios.append(w1 / w2)
                cpu_one.append(c1 / w1)
                cpu_two.append(c2 / w2)
                t_one.append(w1)
                t_two.append(w2)
            stall = gil_stall(one.engine.annoy_index, queries[0].tolist(), len(items) * int(one.params["n_trees"]))
    quiet = [r for r, a, b in zip(ratios, cpu_one, cpu_two) if a >= QUIET_ONE and b >= QUIET_TWO]
    return {
        "qps": (len(queries) / statistics.median(t_one), len(queries) / statistics.median(t_two)),
        "ratios": ratios,
        "quiet": quiet,
        "cpu": (statistics.median(cpu_one), statistics.median(cpu_two)),
        "gil": stall,
    }


def gil_stall(index: Any, query: list[float], search_k: int, calls: int = 3) -> tuple[float, float]:
    """(seconds one search takes, longest pause of a Python loop while another thread searches).

    If Annoy held the GIL during a search, the loop could not run for the whole
    search; a longest pause well under the search time shows the GIL is released.
    """
    start = time.perf_counter()
    index.get_nns_by_vector(query, 10, search_k)
    one = time.perf_counter() - start
    done = threading.Event()

    def search() -> None:
        for _ in range(calls):
            index.get_nns_by_vector(query, 10, search_k)
        done.set()

    thread = threading.Thread(target=search)
    stamps = [time.perf_counter()]
    thread.start()
    while not done.is_set():
        stamps.append(time.perf_counter())
    thread.join()
    return one, float(np.diff(stamps).max()) if len(stamps) > 1 else float("inf")


def report(
    args: argparse.Namespace,
    results: list[MetricResult],
    others: list[list[Any]],
    low_dim: list[list[Any]],
    threads: dict[str, Any],
) -> str:
    k, target = args.k, args.target
    parts = [
        f"{args.n:,} x {args.dim} clustered vectors (`rechub_serving.evaluation.clustered_data`, 32 Gaussian "
        f"clusters), {args.queries:,} queries drawn like the items (same centres, seed 1), k = {k}, seed 0. "
        f"Recall@{k} is against exact search and does not depend on the machine. Speeds are one query thread "
        "(`threads=1`, one batch per run), as wall-clock QPS (which depends on the machine's load, recorded "
        "below) and as queries per CPU second (the work itself). The swept forests are built with `threads=1`; "
        "the defaults as a user builds them.",
        "## Defaults",
        f"The defaults should be the fastest setting reaching recall@{k} >= {target} with a forest of at least "
        f"{args.min_trees} trees (the section on data of low intrinsic dimension says why not fewer):",
        markdown_table(
            [
                "metric",
                "fastest of all (n_trees, search_k)",
                f"fastest with >= {args.min_trees} trees",
                "defaults (n_trees, search_k)",
                f"defaults recall@{k}",
            ],
            [
                [
                    r.metric,
                    "{}, {}".format(*r.best_any) if r.best_any else "none",
                    "{}, {}".format(*r.best) if r.best else "none",
                    "{}, {}".format(*r.default[:2]),
                    f"{r.default[2]:.3f}",
                ]
                for r in results
                if r.default is not None
            ],
        ),
        "## Side by side at the target recall",
        "For each forest, the smallest `search_k` reaching the target (one query thread), timed with the defaults "
        "(built as a user builds them, on every core; queried on one thread) and exact search (numpy backend, "
        f"every core through BLAS), alternating run by run, medians of {args.repeats}. On a shared machine the "
        "wall-clock QPS mostly measures the neighbours; the fastest setting is chosen by queries per CPU second "
        "(process CPU time: the work a query costs). Speed-up: exact wall time / this wall time, median (range) "
        "over the runs.",
        markdown_table(
            [
                "metric",
                "contender",
                "n_trees",
                "search_k",
                f"recall@{k}",
                "QPS (wall, median)",
                "queries per CPU second",
                "speed-up over exact",
            ],
            [[r.metric, *row] for r in results for row in r.timed],
        ),
        "## Recall-QPS curve",
        f"Every `search_k` tried while looking for recall@{k} >= {target} (queries per CPU second: one run "
        "each, indicative).",
        markdown_table(
            ["metric", "n_trees", "search_k", f"recall@{k}", "queries per CPU second"],
            [
                [r.metric, p.n_trees, p.search_k, f"{p.recall:.3f}", f"{p.qps:,.0f}"]
                for r in results
                for p in sorted(r.curve, key=lambda p: (p.n_trees, p.search_k))
            ],
        ),
        "## The defaults at other sizes and other k",
        f"Same data family, default builds (every core, seed 0): the recall the defaults reach, and the smallest "
        f"`search_k` that reaches recall@k >= {target} on the same forest.",
        markdown_table(
            ["n", "k", "metric", "n_trees", "default search_k", "recall@k", "smallest search_k reaching the target"],
            others,
        ),
        "## A forest or a single tree: data of low intrinsic dimension",
        f"On the clustered data a single tree needs the fewest candidates (recall {target} there means scanning "
        "most of the query's cluster, and every extra tree adds duplicates). On "
        f"{args.low_dim_n:,} x {args.dim} vectors on a smooth 8-dimensional manifold (plus noise), it needs "
        "several times more than a forest: the defaults keep a forest of at least "
        f"{args.min_trees} trees. Smallest `search_k` reaching recall@{k} >= {target}, and its queries per CPU "
        "second (one run, one thread):",
        markdown_table(
            ["metric", "forest", "n_trees", "smallest search_k", "queries per CPU second", "defaults' recall@k"],
            low_dim,
        ),
        "## Builds",
        markdown_table(
            ["metric", "n_trees", "build s (1 thread)", "saved size MiB"], [b for r in results for b in r.builds]
        ),
        f"## Batch throughput of the defaults ({args.metrics[0]}): one query thread versus two",
        markdown_table(
            ["threads", "QPS (median)"],
            [["1", f"{threads['qps'][0]:,.0f}"], ["2", f"{threads['qps'][1]:,.0f}"]],
        ),
        f"threads=1 time / threads=2 time: {spread(threads['ratios'])}; process CPU seconds per wall second "
        f"(medians) {threads['cpu'][0]:.2f} and {threads['cpu'][1]:.2f}: on an idle 2-core machine about 1.0 "
        f"and 2.0, lower when other processes hold the cores. In the {len(threads['quiet'])} runs where this "
        f"process got at least {QUIET_ONE} and {QUIET_TWO} CPUs the ratio is "
        + (spread(threads["quiet"]) if threads["quiet"] else "(no such run)")
        + ".",
        f"GIL check: one search over the whole forest takes {threads['gil'][0] * 1e3:.0f} ms; while another "
        f"thread ran three of them, a pure-Python loop on the main thread never paused longer than "
        f"{threads['gil'][1] * 1e3:.0f} ms: Annoy releases the GIL inside `get_nns_by_vector`.",
    ]
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.95, help="recall@k the defaults must reach")
    parser.add_argument("--trees", default="5,10,20,30,50", help="forests to sweep")
    parser.add_argument("--metrics", default="l2,cosine,ip")
    parser.add_argument("--repeats", type=int, default=7, help="alternating timed runs (medians are reported)")
    parser.add_argument(
        "--sizes", default="10000,30000,300000", help="other catalogue sizes the defaults are checked at"
    )
    parser.add_argument("--other-k", default="1,50,100", help="other k the defaults are checked at (at --n)")
    parser.add_argument("--min-trees", type=int, default=5, help="smallest forest the defaults may choose")
    parser.add_argument("--low-dim-n", type=int, default=30_000, help="size of the low-dimensional data set")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="directory of the report (default docs/benchmarks)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.queries, args.trees, args.repeats, args.sizes, args.other_k = 5000, 200, "1,10", 2, "2000", "50"
        args.low_dim_n = 3000
    args.trees = [int(t) for t in args.trees.split(",")]
    args.sizes = [int(n) for n in args.sizes.split(",") if n]
    args.other_k = [int(k) for k in args.other_k.split(",") if k]
    args.metrics = args.metrics.split(",")

    items = clustered_data(args.n, args.dim, seed=0)
    queries = clustered_data(args.queries, args.dim, seed=1, centres_seed=0)
    with tempfile.TemporaryDirectory(prefix="bench-annoy-") as tmp:
        results = [bench_metric(args, m, items, queries, Path(tmp)) for m in args.metrics]
    threads = bench_threads(args, items, queries[:250])
    others = bench_other_sizes(args)
    low_dim = bench_low_dim(args)
    path = write_report("annoy", "Annoy backend benchmark", report(args, results, others, low_dim, threads), args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
