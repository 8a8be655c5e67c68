"""Voyager and USearch beside faiss HNSW, and each beside its own raw engine, in one run on the same data.

For each catalogue size (clustered data, ``clustered_data``; 1,000 queries
drawn like the items; exact top-10 from ``rechub_serving.evaluation``):

* **matched parameters** (every size): every engine built with the same graph (M = 16,
  ef_construction = 128), then recall@10 and batch QPS for ef = 32 ... 256,
  through the SDK and through the engine's own call on the same object;
* up to ``--full-up-to`` items (builds take long on small machines), also
  **defaults**: each backend as it comes (build time and the SDK's share of
  it, batch QPS, single-query p50 / p99, recall@10, RSS growth of the build,
  size of the saved engine files), and recall@10 of the defaults per metric;
* **storage**: the quantised storage types of Voyager and USearch;
* **SDK overhead** on each new engine: a replay (the engine's ``search``
  replaced by a recorded answer; the replay's own time subtracted) and
  paired wall-clock (the SDK against the raw call on the same index object,
  interleaved, medians of the pairs).

Queries run on one thread everywhere; builds use every core. faiss goes
through the ``faiss`` plugin when it is installed and on the 0.2 protocol,
else it is measured with the ``faiss`` module directly (the page says which).

Run: ``python benchmarks/bench_engines.py [--sizes 100000 1000000] [--metric cosine] [--reps 5] [--out DIR]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table, spread, write_report

import rechub_serving as rs
from rechub_serving.evaluation import clustered_data, ground_truth, recall_at_k

DIM, K, N_QUERIES = 64, 10, 1000
EFS = (32, 64, 128, 256)
MATCHED = {"m": 16, "ef_construction": 128}
STORAGE = {"voyager": ("float8", "e4m3"), "usearch": ("f16", "bf16", "i8")}
_PROCESS = psutil.Process()


# -- the raw engine call on the SDK's own engine object ---------------------------------------------------------
class Raw:
    """The engine's own search on the very object the SDK holds, with ``ef`` set the engine's own way."""

    def __init__(self, index: rs.Indexer):
        self.backend = index.backend
        self.obj = index.engine.index

    def batch(self, queries: np.ndarray, ef: int) -> Any:
        if self.backend == "voyager":
            return self.obj.query(queries, K, num_threads=1, query_ef=max(ef, K))
        if self.backend == "usearch":
            return self.obj.search(queries, K, threads=1)
        import faiss

        return self.obj.search(queries, K, params=faiss.SearchParametersHNSW(efSearch=ef))

    def one(self, vector: np.ndarray, ef: int) -> Any:
        if self.backend == "voyager":
            return self.obj.query(vector, K, query_ef=max(ef, K))
        if self.backend == "usearch":
            return self.obj.search(vector, K, threads=1)
        return self.batch(vector[None, :], ef)

    def set_ef(self, ef: int) -> int:
        """USearch keeps its width on the index: set it for raw calls (returns the SDK's value to restore)."""
        if self.backend != "usearch":
            return 0
        kept = self.obj.expansion_search
        self.obj.expansion_search = ef
        return kept

    def restore(self, kept: int) -> None:
        if self.backend == "usearch":
            self.obj.expansion_search = kept


def _faiss_backend() -> str | None:
    """``"sdk"`` when the faiss plugin works on this core, ``"raw"`` when only the faiss module does."""
    try:
        rs.builder_factory("faiss", index_type="HNSW", m=16).from_embeddings(np.eye(4, DIM, dtype=np.float32)).close()
        return "sdk"
    except Exception:  # not installed, or a plugin of the 0.1 protocol
        try:
            import faiss  # noqa: F401

            return "raw"
        except ImportError:
            return None


class RawFaissIndex:
    """faiss HNSW built with the faiss module, answering like an Indexer (for when the plugin is absent)."""

    backend = "faiss"

    def __init__(self, items: np.ndarray, metric: str, m: int, ef_construction: int):
        import faiss

        kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.cosine = metric == "cosine"
        self.index = faiss.IndexHNSWFlat(DIM, m, kind)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(rs.normalize_rows(items) if self.cosine else items)
        self.engine = self  # Raw(index) reads index.engine.index

    def query(self, queries: np.ndarray, k: int, ef_search: int = 128) -> Any:
        import faiss

        q = queries.reshape(-1, DIM)
        q = rs.normalize_rows(q) if self.cosine else q
        _, labels = self.index.search(q, k, params=faiss.SearchParametersHNSW(efSearch=ef_search))
        return rs.QueryResult(labels, np.zeros(labels.shape, np.float32), rs.Metric.L2)

    def save(self, path: Path) -> None:
        import faiss

        path.mkdir(parents=True)
        faiss.write_index(self.index, str(path / "engine.faiss"))

    def close(self) -> None:
        self.index = None


# -- one build, measured ----------------------------------------------------------------------------------------
def build(backend: str, items: np.ndarray, metric: str, faiss_mode: str | None, **params: Any) -> dict[str, Any]:
    """Build; time it (and the engine's own share), the RSS it added, the size of its saved engine files."""
    gc.collect()
    if backend == "faiss":
        import faiss

        faiss.omp_set_num_threads(len(_PROCESS.cpu_affinity() or [1]))  # builds on every core, like the others
    rss = _PROCESS.memory_info().rss
    inside: list[float] = []
    start = time.perf_counter()
    if backend == "faiss" and faiss_mode == "raw":
        index: Any = RawFaissIndex(items, metric, params.get("m", 32), params.get("ef_construction", 200))
    else:
        builder = rs.builder_factory(backend, metric=metric, **params)
        cls = builder.backend
        original = cls.build

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                inside.append(time.perf_counter() - t0)

        cls.build = timed  # type: ignore[method-assign]
        try:
            index = builder.from_embeddings(items)
        finally:
            cls.build = original  # type: ignore[method-assign]
    seconds = time.perf_counter() - start
    grown = (_PROCESS.memory_info().rss - rss) / 2**20
    if backend in ("voyager", "usearch"):
        index.engine.threads = 1  # queries on one thread everywhere
    else:
        faiss.omp_set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "idx")
        engine_files = [p for p in (Path(tmp) / "idx").rglob("*") if p.is_file() and p.suffix != ".json"]
        size = sum(p.stat().st_size for p in engine_files if p.name not in ("ids.npy", "alive.npy")) / 2**20
    return {
        "index": index,
        "build": seconds,
        "sdk_share": (seconds - inside[0]) / seconds if inside else None,
        "rss": grown,
        "file": size,
    }


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _both(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time leaves out the other processes' turns."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def batch_seconds(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up
    return statistics.median(_timed(fn) for _ in range(reps))


def latencies(fn: Callable[[np.ndarray], Any], vectors: np.ndarray) -> tuple[float, float]:
    """p50 and p99 of one call per vector, in ms."""
    fn(vectors[0])
    times = sorted(_timed(lambda v=v: fn(v)) for v in vectors)
    return times[len(times) // 2] * 1e3, times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3


def sdk_recall_qps(index: Any, queries: np.ndarray, truth: np.ndarray, ef: int, reps: int) -> tuple[float, float]:
    found = np.asarray(index.query(queries, K, ef_search=ef).indices)
    qps = N_QUERIES / batch_seconds(lambda: index.query(queries, K, ef_search=ef), reps)
    return recall_at_k(found, truth), qps


# -- SDK overhead ----------------------------------------------------------------------------------------------------
def replay_overhead(index: rs.Indexer, queries: np.ndarray, n_single: int, reps: int) -> dict[str, float]:
    """SDK µs per call with the engine's ``search`` replaced by a recorded answer (replay time subtracted).

    Timed in CPU time of this process: the work is a few µs, less than one turn of another process.
    """
    engine = index.engine
    real = engine.search
    recorded: dict[tuple[int, int], Any] = {}

    def replay(q: np.ndarray, k: int, params: Any, exclude: Any) -> Any:
        key = (len(q), k)
        if key not in recorded:
            recorded[key] = real(q, k, params, exclude)
        return recorded[key]

    engine.search = replay  # type: ignore[method-assign]
    try:
        vectors = list(queries[:n_single])
        singles = [v[None, :] for v in vectors]
        params = index.search_params
        index.query(vectors[0], K)
        index.query(queries, K)
        single, batch = [], []
        for _ in range(reps):
            t_sdk = _both(lambda: [index.query(v, K) for v in vectors])[1]
            t_stub = _both(lambda: [replay(s, K, params, None) for s in singles])[1]
            single.append((t_sdk - t_stub) / n_single * 1e6)
            t_sdk = _both(lambda: [index.query(queries, K) for _ in range(10)])[1]
            t_stub = _both(lambda: [replay(queries, K, params, None) for _ in range(10)])[1]
            batch.append((t_sdk - t_stub) / 10 * 1e6)
    finally:
        del engine.search  # the class's method again
    return {"single_us": statistics.median(single), "batch_us": statistics.median(batch)}


def paired_overhead(
    index: rs.Indexer, queries: np.ndarray, ef: int, n_single: int, reps: int
) -> dict[str, list[float]]:
    """SDK vs the raw call on the same object, back to back, order alternating: per-pair ratios and differences.

    Each pair is timed in wall-clock and in CPU time of this process (which other processes do not inflate).
    """
    raw = Raw(index)
    vectors = list(queries[:n_single])
    out: dict[str, list[float]] = {
        key: [] for key in ("batch_ratio", "single_diff_us", "raw_single_us", "cpu_batch_ratio", "cpu_single_diff_us")
    }

    def sdk_batch() -> None:
        index.query(queries, K, ef_search=ef)

    def sdk_single() -> None:
        for v in vectors:
            index.query(v, K, ef_search=ef)

    def raw_batch() -> None:
        raw.batch(queries, ef)

    def raw_single() -> None:
        for v in vectors:
            raw.one(v, ef)

    def raw_timed(fn: Callable[[], Any]) -> tuple[float, float]:
        kept = raw.set_ef(ef)
        try:
            return _both(fn)
        finally:
            raw.restore(kept)

    sdk_batch(), sdk_single(), raw_timed(raw_batch), raw_timed(raw_single)  # warm-up
    for rep in range(reps):
        if rep % 2:
            s_b, r_b = _both(sdk_batch), raw_timed(raw_batch)
            s_s, r_s = _both(sdk_single), raw_timed(raw_single)
        else:
            r_b, s_b = raw_timed(raw_batch), _both(sdk_batch)
            r_s, s_s = raw_timed(raw_single), _both(sdk_single)
        out["batch_ratio"].append(s_b[0] / r_b[0])
        out["single_diff_us"].append((s_s[0] - r_s[0]) / n_single * 1e6)
        out["raw_single_us"].append(r_s[0] / n_single * 1e6)
        out["cpu_batch_ratio"].append(s_b[1] / r_b[1])
        out["cpu_single_diff_us"].append((s_s[1] - r_s[1]) / n_single * 1e6)
    return out


# -- one catalogue size ----------------------------------------------------------------------------------------
def run_size(n: int, metric: str, faiss_mode: str | None, args: argparse.Namespace) -> str:
    items = clustered_data(n, DIM, seed=0)
    queries = clustered_data(N_QUERIES, DIM, seed=1, centres_seed=0)
    truths = {m: ground_truth(items, queries, K, m)[0] for m in ("l2", "ip", "cosine")}
    truth = truths[metric]
    reps, sections = args.reps, []
    engines = ["voyager", "usearch"] + (["faiss"] if faiss_mode else [])

    # matched parameters: the same graph everywhere
    rows, build_rows = [], []
    for backend in engines:
        extra = {"index_type": "HNSW"} if backend == "faiss" and faiss_mode == "sdk" else {}
        built = build(backend, items, metric, faiss_mode, **MATCHED, **extra)
        index, raw = built["index"], Raw(built["index"])
        print(f"{backend} matched: built in {built['build']:.1f} s", flush=True)
        build_rows.append([backend, f"{built['build']:.1f}", f"{built['rss']:,.0f}", f"{built['file']:,.1f}"])
        for ef in EFS:
            recall, qps = sdk_recall_qps(index, queries, truth, ef, reps)
            kept = raw.set_ef(ef)
            raw_qps = N_QUERIES / batch_seconds(lambda r=raw, e=ef: r.batch(queries, e), reps)
            raw.restore(kept)
            p50, p99 = latencies(lambda v, i=index, e=ef: i.query(v, K, ef_search=e), queries[: args.single])
            sdk = "" if faiss_mode == "raw" and backend == "faiss" else f"{qps:,.0f}"
            rows.append([backend, ef, f"{recall:.4f}", sdk, f"{raw_qps:,.0f}", f"{p50:.3f}", f"{p99:.3f}"])
            print(rows[-1], flush=True)
        if backend == "faiss":
            matched_faiss = [built["build"], built["file"]]
        index.close()
        del index, raw, built
    headers = ["engine", "ef", "recall@10", "batch QPS (SDK)", "batch QPS (raw)", "single p50 ms", "single p99 ms"]
    sections.append(
        f"### Matched parameters: M = 16, ef_construction = 128, {metric}\n\n"
        "The same graph parameters on every engine; `ef` per call (Voyager `query_ef`, USearch\n"
        "`expansion_search`, faiss `efSearch`). Raw QPS is the engine's own call on the object the SDK holds.\n"
        "Single-query latency through the SDK.\n\n"
        + markdown_table(headers, rows)
        + "\n\nThe builds (every core): wall time, growth of this process's resident memory, saved engine files.\n\n"
        + markdown_table(["engine", "build s", "RSS growth MiB", "engine files MiB"], build_rows)
    )

    if n > args.full_up_to:
        return f"## {n:,} x {DIM}\n\n" + "\n\n".join(sections)

    # defaults, storage, overhead
    default_rows, storage_rows, overhead_rows = [], [], []
    configs: list[tuple[str, dict[str, Any]]] = [("voyager", {}), ("usearch", {})]
    if faiss_mode == "sdk":
        configs.append(("faiss", {"index_type": "HNSW"}))
    if not args.skip_storage:
        configs += [(b, {"dtype": d}) for b, dtypes in STORAGE.items() for d in dtypes]
    for backend, params in configs:
        built = build(backend, items, metric, faiss_mode, **params)
        index = built["index"]
        label = f"{backend} " + (", ".join(f"{k}={v}" for k, v in params.items()) or "defaults")
        found = np.asarray(index.query(queries, K).indices)
        recall = recall_at_k(found, truth)
        qps = N_QUERIES / batch_seconds(lambda i=index: i.query(queries, K), reps)
        p50, p99 = latencies(lambda v, i=index: i.query(v, K), queries[: args.single])
        chosen = {k: v for k, v in index.params.items() if k in ("m", "ef_construction", "ef_search")}
        row = [
            label,
            ", ".join(f"{k} {v}" for k, v in chosen.items()),
            f"{built['build']:.1f}",
            f"{built['sdk_share'] * 100:.1f} %" if built["sdk_share"] is not None else "",
            f"{qps:,.0f}",
            f"{p50:.3f}",
            f"{p99:.3f}",
            f"{recall:.4f}",
            f"{built['rss']:,.0f}",
            f"{built['file']:,.1f}",
        ]
        (storage_rows if "dtype" in params else default_rows).append(row)
        print(row, flush=True)
        if backend in ("voyager", "usearch") and not params:
            ef = 128
            rp = replay_overhead(index, queries, args.single, reps)
            pw = paired_overhead(index, queries, ef, args.single, reps)
            overhead_rows.append(
                [
                    backend,
                    f"{rp['single_us']:.1f}",
                    f"{rp['batch_us']:.0f}",
                    f"{statistics.median(pw['raw_single_us']):.0f}",
                    spread(pw["single_diff_us"], ".1f"),
                    spread(pw["cpu_single_diff_us"], ".1f"),
                    spread(pw["batch_ratio"], ".3f"),
                    spread(pw["cpu_batch_ratio"], ".3f"),
                ]
            )
            print(overhead_rows[-1], flush=True)
        index.close()
        del index, built
    headers = [
        "backend",
        "parameters",
        "build s",
        "SDK share of build",
        "batch QPS",
        "single p50 ms",
        "single p99 ms",
        "recall@10",
        "RSS growth MiB",
        "engine files MiB",
    ]
    sections.append(f"### Defaults, {metric}\n\n" + markdown_table(headers, default_rows))
    if storage_rows:
        sections.append(
            f"### Storage types (defaults otherwise), {metric}\n\n"
            "Distances come from the stored, rounded vectors.\n\n" + markdown_table(headers, storage_rows)
        )
    if faiss_mode == "raw":
        sections.append(
            "faiss HNSW with the same graph, measured with the `faiss` module directly (the faiss plugin was "
            f"not importable on this core): built in {matched_faiss[0]:.1f} s, index file {matched_faiss[1]:,.1f} MiB."
        )

    # recall of the defaults on every metric
    metric_rows = []
    for m in args.metrics:
        for backend in ("voyager", "usearch"):
            built = build(backend, items, m, faiss_mode)
            index = built["index"]
            row = [backend, m, f"{recall_at_k(np.asarray(index.query(queries, K).indices), truths[m]):.4f}"]
            row += [
                f"{recall_at_k(np.asarray(index.query(queries, K, ef_search=ef).indices), truths[m]):.4f}" for ef in EFS
            ]
            metric_rows.append(row)
            print(row, flush=True)
            index.close()
            del index, built
    if metric_rows:
        sections.append(
            "### Recall@10 of the defaults on each metric\n\n"
            + markdown_table(["backend", "metric", "defaults"] + [f"ef {ef}" for ef in EFS], metric_rows)
        )

    headers = [
        "engine",
        "replay: SDK µs per single query",
        f"replay: SDK µs per batch of {N_QUERIES}",
        "raw µs per single query (wall)",
        "paired: SDK - raw, µs per single query (wall)",
        "(CPU)",
        "paired: batch SDK / raw (wall)",
        "(CPU)",
    ]
    sections.append(
        "### SDK overhead, defaults (ef 128), one query thread\n\n"
        "Replay: the engine's `search` answers from a recording, so what is timed is the SDK's own work\n"
        "(checks, conversion, ids, padding), in CPU time of this process; the replay's own time is subtracted.\n"
        "Paired: the SDK and the raw engine call on the same index object, back to back, order alternating,\n"
        f"{reps} pairs of {args.single} single queries and of one batch; median (range over the pairs), in\n"
        "wall-clock and in CPU time of this process (which the other processes on a shared machine do not\n"
        "inflate). The paired difference includes what the raw call does not do: the USearch backend asks for\n"
        "`ef` results and keeps the first 10 (its per-call `ef` without shared state).\n\n"
        + markdown_table(headers, overhead_rows)
    )
    return f"## {n:,} x {DIM}\n\n" + "\n\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--metric", default="cosine", help="metric of the main tables")
    parser.add_argument("--metrics", nargs="*", default=["l2", "ip"], help="more metrics for the defaults' recall")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (medians are reported)")
    parser.add_argument("--single", type=int, default=300, help="single queries timed for p50 / p99 and overhead")
    parser.add_argument("--skip-storage", action="store_true", help="no quantised storage builds (large sizes)")
    parser.add_argument(
        "--full-up-to", type=int, default=200_000, help="larger sizes get the matched-parameter table only"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    faiss_mode = _faiss_backend()
    body = [
        "Voyager and USearch through rechub-serving, beside their own raw calls and beside faiss HNSW, on the\n"
        f"same data in one run: clustered items (`clustered_data`, 32 centres), {N_QUERIES:,} queries drawn like the\n"
        f"items, top-{K}, recall against the exact answer. Queries on one thread (faiss: OpenMP threads set to\n"
        "1); builds on every core.\n"
        + {
            "sdk": "faiss runs through the `faiss` plugin (0.2 protocol).",
            "raw": "faiss is measured with the `faiss` module directly: the plugin was not importable on this core.",
            None: "faiss is not installed: no faiss rows.",
        }[faiss_mode]
    ]
    for n in args.sizes:  # the page is rewritten after each size: a long run leaves what it finished
        body.append(run_size(n, args.metric, faiss_mode, args))
        print("wrote", write_report("engines", "Voyager and USearch beside faiss HNSW", "\n\n".join(body), args.out))


if __name__ == "__main__":
    main()
