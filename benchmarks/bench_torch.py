"""The torch backend beside the numpy backend and faiss Flat: exact top-10, and what half precision costs.

For each catalogue size: build time, batch QPS (1,000 queries), single-query
p50/p99, recall@10 against the float32 exact answer, and memory (device memory
on a GPU). On a GPU (``--device cuda``) the queries are tensors already on the
device, as a serving process that runs its user tower there would pass them.

Run: ``python benchmarks/bench_torch.py [--device cuda] [--sizes 100000 1000000] [--out DIR]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table, write_report

import rechub_serving as rs
from rechub_serving.evaluation import clustered_data, recall_at_k

DIM, K, N_QUERIES = 64, 10, 1000


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _run(label: str, builder: rs.Builder, items, queries, device: str, truth, single: int) -> list[object]:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    index = builder.from_embeddings(items)
    _sync(device)
    build = time.perf_counter() - start
    q = torch.from_numpy(queries).to(device) if builder.name == "torch" else queries
    index.query(q[:10], K)  # warm up
    batch_times = []
    for _ in range(3):
        start = time.perf_counter()
        res = index.query(q, K)
        _sync(device)
        batch_times.append(time.perf_counter() - start)
    found = res.indices.cpu().numpy() if hasattr(res.indices, "cpu") else np.asarray(res.indices)
    lat = []
    for i in range(single):
        one = q[i]
        start = time.perf_counter()
        index.query(one, K)
        _sync(device)
        lat.append(time.perf_counter() - start)
    memory = (
        torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") and builder.name == "torch" else None
    )
    index.close()
    lat.sort()
    return [
        label,
        f"{build:.2f}",
        f"{N_QUERIES / statistics.median(batch_times):,.0f}",
        f"{lat[len(lat) // 2] * 1e3:.2f}",
        f"{lat[int(len(lat) * 0.99)] * 1e3:.2f}",
        f"{recall_at_k(found, truth):.4f}",
        f"{memory:,.0f}" if memory is not None else "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--single", type=int, default=200, help="single queries timed for p50/p99")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sections = []
    for n in args.sizes:
        items = clustered_data(n, DIM, seed=0)
        queries = clustered_data(N_QUERIES, DIM, seed=1, centres_seed=0)
        with rs.builder_factory("torch", device=args.device, metric="cosine").from_embeddings(items) as exact:
            truth = np.asarray(exact.query(queries, K).indices)
        rows = []
        for dtype in ("float32", "float16", "bfloat16"):
            builder = rs.builder_factory("torch", device=args.device, metric="cosine", dtype=dtype)
            rows.append(
                _run(f"torch {dtype} ({args.device})", builder, items, queries, args.device, truth, args.single)
            )
        rows.append(
            _run("numpy (cpu)", rs.builder_factory("numpy", metric="cosine"), items, queries, "cpu", truth, args.single)
        )
        if "faiss" in {b.name for b in rs.list_backends()}:
            flat = rs.builder_factory("faiss", index_type="Flat", metric="cosine")
            rows.append(_run("faiss Flat (cpu)", flat, items, queries, "cpu", truth, args.single))
        headers = ["backend", "build s", "batch QPS", "single p50 ms", "single p99 ms", "recall@10", "GPU MiB peak"]
        sections.append(f"## {n:,} x {DIM}, cosine, k = {K}, {N_QUERIES} queries\n\n" + markdown_table(headers, rows))
        print(sections[-1])
    body = (
        "Exact top-10 by blocked matrix product and `topk`; recall is measured against the float32 answer.\n"
        "Half precision stores the vectors in 16 bits (half the memory); scores accumulate in float32.\n\n"
        + "\n\n".join(sections)
    )
    name = "torch-gpu" if args.device.startswith("cuda") else "torch"
    print("wrote", write_report(name, f"torch backend ({args.device})", body, args.out))


if __name__ == "__main__":
    main()
