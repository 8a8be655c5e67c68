"""The SDK's own time per query, with the engine replaced by a replay of one fixed answer.

What is measured is everything ``Indexer.query`` does around the engine:
input checks and conversion, per-call parameters, the lock, exclusion,
label checks, distance conversion, padding, id mapping, the result object.
The replay's own call time is measured in the same loop and subtracted.

``--baseline SRC`` runs the very same measurement in a subprocess on another
checkout of rechub-serving (for example the 0.1 release, through its old
plugin API), so "before" and "after" come from one run on one machine.

Run: ``python benchmarks/bench_overhead.py [--baseline /path/to/old/checkout] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM, N_ITEMS, K = 64, 1000, 10
_KEEP: list[object] = []


def _replay_index(metric: str, batch: int):
    """An index over N_ITEMS vectors whose engine replays a fixed (batch, K) answer."""
    import rechub_serving as rs

    labels = np.tile(np.arange(K, dtype=np.int64), (batch, 1))
    dist = np.tile(np.linspace(0.1, 1.0, K, dtype=np.float32), (batch, 1))
    if metric != "l2":
        dist = dist[:, ::-1].copy()
    items = np.random.default_rng(0).normal(size=(N_ITEMS, DIM)).astype(np.float32)

    def replay(queries, k, *rest):
        return labels[: len(queries), :k], dist[: len(queries), :k]

    if hasattr(rs, "Engine"):  # 0.2: the engine protocol
        from rechub_serving.testing import mock_backend

        search_params = (rs.Param("ef_search", int, None, "replayed", minimum=1, maximum=1 << 16, search=True),)
        backend = mock_backend(replay, name="replay", record=False)
        backend.params = search_params
        return rs.Builder(backend, metric=metric).from_embeddings(items), replay

    class ReplayIndexer(rs.Indexer):  # 0.1: plugins subclassed the Indexer
        def __init__(self, n):
            self.n = n

        def _search(self, queries, k, params, exclude):
            return replay(queries, k)

        def _engine_count(self):
            return self.n

    class ReplayBuilder(rs.Builder):
        name = f"replay{len(_KEEP)}"
        capabilities = rs.Capabilities(persist=False)
        params = (rs.Param("ef_search", int, None, "replayed", minimum=1, search=True),)

        def _build(self, vectors, ids):
            return ReplayIndexer(len(vectors))

        def _load(self, directory, manifest):
            raise NotImplementedError

    from rechub_serving.testing import registered_plugin

    context = registered_plugin(ReplayBuilder, name=f"replay-bench-{len(_KEEP)}")
    context.__enter__()
    _KEEP.append(context)  # unregistered when garbage-collected otherwise
    return rs.builder_factory(ReplayBuilder.name, metric=metric).from_embeddings(items), replay


def measure(repeats: int) -> dict[str, float]:
    """Median SDK microseconds per call for each case."""
    rng = np.random.default_rng(1)
    single = rng.normal(size=DIM).astype(np.float32)
    batch = rng.normal(size=(1000, DIM)).astype(np.float32)
    cases = {
        "single l2": ("l2", single, {}, 1, 20_000),
        "single cosine": ("cosine", single, {}, 1, 20_000),
        "single l2, per-call ef_search": ("l2", single, {"ef_search": 32}, 1, 20_000),
        "single l2, exclude 20 ids": ("l2", single, {"exclude": list(range(500, 520))}, 1, 10_000),
        "batch of 1,000 l2": ("l2", batch, {}, 1000, 200),
        "batch of 1,000 cosine": ("cosine", batch, {}, 1000, 200),
    }
    out = {}
    for name, (metric, queries, kwargs, rows, calls) in cases.items():
        index, replay = _replay_index(metric, rows)
        sdk, raw = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                index.query(queries, K, **kwargs)
            sdk.append((time.perf_counter() - start) / calls)
            q2 = queries.reshape(-1, DIM)
            start = time.perf_counter()
            for _ in range(calls):
                replay(q2, K)
            raw.append((time.perf_counter() - start) / calls)
        out[name] = round((statistics.median(sdk) - statistics.median(raw)) * 1e6, 2)
    return out


def _baseline(src: Path, repeats: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "RECHUB_SERVING_PLUGINS": ""}
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_overhead as b, json; print(json.dumps(b.measure({repeats})))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=src, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure side by side (before)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (baseline, current)")
    parser.add_argument("--out", type=Path, default=None, help="directory for the report (default docs/benchmarks)")
    args = parser.parse_args()
    os.environ.setdefault("RECHUB_SERVING_PLUGINS", "")
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import markdown_table, spread, write_report

    before: dict[str, list[float]] = {}
    after: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        if args.baseline:
            for k, v in _baseline(args.baseline, args.repeats).items():
                before.setdefault(k, []).append(v)
        for k, v in measure(args.repeats).items():
            after.setdefault(k, []).append(v)
    rows = []
    for name, values in after.items():
        row = [name, spread(values, ".1f")]
        if args.baseline:
            old = before.get(name)
            row += [
                spread(old, ".1f") if old else "n/a",
                f"{statistics.median(values) / statistics.median(old):.2f}x" if old else "",
            ]
        rows.append(row)
    headers = ["case (k = 10, d = 64)", "SDK µs per call, now"]
    if args.baseline:
        headers += ["before (baseline)", "now / before"]
    body = (
        "The SDK's own time per `query` call: the engine is replaced by a replay of one fixed answer, and the\n"
        "replay's own call time is subtracted. Medians of the per-round medians; range over rounds in brackets.\n\n"
        + markdown_table(headers, rows)
    )
    print(body)
    print("wrote", write_report("overhead", "SDK overhead per query", body, args.out))


if __name__ == "__main__":
    main()
