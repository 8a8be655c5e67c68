"""Milvus at 1,000,000 x 64: the batched insert stays under the gRPC message limit.

    python benchmarks/bench_milvus_scale.py            # 1,000,000 x 64 on milvus-lite
    python benchmarks/bench_milvus_scale.py --n 50000  # a quick run

Builds through the SDK (index_type FLAT by default, so the time is the insert and
flush, not an index build), checks the count, queries, and writes
docs/benchmarks/milvus-scale.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from _common import markdown_table, write_report

import rechub_serving as rs
from rechub_serving.evaluation import clustered_data, ground_truth, recall_at_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--index-type", default="FLAT")
    parser.add_argument("--queries", type=int, default=10)
    args = parser.parse_args()
    items = clustered_data(args.n, args.dim, seed=0)
    queries = clustered_data(args.queries, args.dim, seed=1, centres_seed=0)
    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        builder = rs.builder_factory("milvus", index_type=args.index_type, path=str(Path(tmp) / "scale.db"))
        start = time.perf_counter()
        index = builder.from_embeddings(items)
        build_s = time.perf_counter() - start
        with index:
            count = len(index)
            start = time.perf_counter()
            res = index.query(queries, 10)
            query_s = time.perf_counter() - start
            truth, _ = ground_truth(items, queries, 10, "l2")
            recall = recall_at_k(np.asarray(res.indices), truth)
        rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    rows = [
        [
            f"{args.n:,} x {args.dim}",
            args.index_type,
            f"{build_s:.1f}",
            f"{count:,}",
            f"{args.queries / query_s:.1f}",
            f"{recall:.3f}",
            f"{rss / 2**20:,.0f}",
        ]
    ]
    body = f"""
Measured by `python benchmarks/bench_milvus_scale.py --n {args.n}` on {platform.machine()} (2 shared cores),
milvus-lite embedded (no server). The build inserts in batches sized under the gRPC message
limit, flushes, builds the index and loads the collection; a message-size failure would end the run.
FLAT on milvus-lite is a plain scan, hence the low QPS; it is used here so that the time is the
insert. One run with a batch of 100 queries at once over this FLAT collection ran the process
out of memory (24 GiB; milvus-lite's brute-force search runs in-process), so the default here
is 10 queries: serve large catalogues from milvus-lite with HNSW (the default index type) or a server.

{markdown_table(["vectors", "index_type", "build s", "count after build", "QPS (batch of queries)", "recall@10", "RSS MiB (with the milvus-lite process)"], rows)}
"""
    path = write_report("milvus-scale", "Milvus at scale", body)
    print(body)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
