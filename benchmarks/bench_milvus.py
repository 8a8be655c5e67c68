"""Milvus backend: build time, QPS and recall@10 for 100,000 x 64, side by side with faiss.

Runs, on the same clustered data and the same HNSW parameters (M=16,
efConstruction=200, ef=64): the ``faiss`` backend (raw faiss when the plugin
is missing), ``milvus`` on embedded milvus-lite, ``milvus`` on a Milvus server
(the ``milvus`` 2.3.5 package started in a loopback-only network namespace, or
``--uri``), and torch-rechub 0.9.0's ``MilvusBuilder`` on that server where it
runs at all. Results go to ``docs/benchmarks/milvus.md``.

    python benchmarks/bench_milvus.py [--n 100000] [--dim 64] [--uri http://host:19530 --token root:Milvus]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table, median_time, write_report

from rechub_serving import builder_factory, list_backends
from rechub_serving.testing import clustered_data, ground_truth, recall_at_k

TESTS = Path(__file__).resolve().parent.parent / "plugins" / "milvus" / "tests"
HNSW = {"index_type": "HNSW", "m": 16, "ef_construction": 200, "ef_search": 64}
K = 10


def measure(name, build, query_batch, query_one, queries, truth, repeats):
    """Build once, then median timings of a batch query and of single queries."""
    start = time.perf_counter()
    index = build()
    build_s = time.perf_counter() - start
    try:
        found = query_batch(index, queries)
        recall = recall_at_k(np.asarray(found), truth)
        batch_s = median_time(lambda: query_batch(index, queries), repeats=repeats, warmup=1)
        singles = queries[:100]
        one_s = median_time(lambda: [query_one(index, q) for q in singles], repeats=repeats, warmup=1)
    finally:
        close = getattr(index, "close", None)
        if close:
            close()
    return {
        "name": name,
        "build_s": build_s,
        "batch_qps": len(queries) / batch_s,
        "single_qps": 100 / one_s,
        "recall": recall,
    }


def faiss_runner(items):
    names = {b.name for b in list_backends()}
    if "faiss" in names:
        b = builder_factory("faiss", metric="cosine", **HNSW)
        return (
            "faiss plugin, HNSW",
            lambda: b.from_embeddings(items),
            lambda index, q: index.query(q, K).indices,
            lambda index, q: index.query(q, K),
        )
    import faiss

    def build():
        index = faiss.IndexHNSWFlat(items.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200
        index.add(items / np.linalg.norm(items, axis=1, keepdims=True))
        index.hnsw.efSearch = 64
        return index

    def search(index, q):
        return index.search(q / np.linalg.norm(q, axis=1, keepdims=True), K)[1]

    return "raw faiss, IndexHNSWFlat", build, search, lambda index, q: search(index, q[None])


def milvus_runner(name, items, **where):
    b = builder_factory("milvus", metric="cosine", **HNSW, **where)
    return (
        name,
        lambda: b.from_embeddings(items),
        lambda index, q: index.query(q, K).indices,
        lambda index, q: index.query(q, K),
    )


def torch_rechub_runner(items, uri):
    """torch-rechub 0.9.0's MilvusBuilder (host/port only, ORM API)."""
    import torch
    from torch_rechub.serving import MilvusBuilder as TRMilvusBuilder

    host, port = uri.split("://", 1)[1].rsplit(":", 1)
    builder = TRMilvusBuilder(items.shape[1], "HNSW", "COSINE", m=16, ef=64, host=host, port=int(port))
    stack = contextlib.ExitStack()

    def build():
        index = stack.enter_context(builder.from_embeddings(torch.from_numpy(items)))
        index.close = stack.close
        return index

    def search(index, q):
        return index.query(torch.from_numpy(q), K)[0].numpy()

    return "torch-rechub 0.9.0 MilvusBuilder (server)", build, search, lambda index, q: search(index, q[None])


@contextlib.contextmanager
def namespace_server():
    """The milvus 2.3.5 package's server in a loopback-only network namespace (as the tests do)."""
    sys.path.insert(0, str(TESTS))
    from _relay import Relay

    base = Path(tempfile.mkdtemp(prefix="rechub-milvus-bench-"))
    sock = base / "m.sock"
    (base / "server").mkdir()
    relay = Relay.tcp_to_unix(str(sock))
    inner = f"ip link set lo up && exec {sys.executable} {TESTS / '_netns_server.py'} {base / 'server'} {sock}"
    proc = subprocess.Popen(["unshare", "-n", "sh", "-c", inner], stdout=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        line = b""
        while line.strip() != b"READY":
            line = proc.stdout.readline()
            if (not line and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError("the Milvus server did not start")
        yield f"http://127.0.0.1:{relay.port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        relay.close()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--uri", default=os.environ.get("RECHUB_MILVUS_URI"))
    parser.add_argument("--token", default=os.environ.get("RECHUB_MILVUS_TOKEN"))
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    items = clustered_data(args.n, args.dim, seed=0)
    queries = clustered_data(args.queries, args.dim, seed=1, centres_seed=0)  # users near the catalogue
    truth, _ = ground_truth(items, queries, K, "cosine")
    tmp = Path(tempfile.mkdtemp(prefix="rechub-milvus-lite-bench-"))
    results, notes = [], []

    runners = [
        faiss_runner(items),
        milvus_runner("milvus (milvus-lite 3.2.2, embedded, private database)", items),
    ]
    for runner in runners:
        print("running", runner[0], flush=True)
        results.append(measure(*runner, queries, truth, args.repeats))

    server_ctx = (
        contextlib.nullcontext(args.uri)
        if args.uri
        else (contextlib.nullcontext(None) if args.no_server else namespace_server())
    )
    try:
        with server_ctx as uri:
            if uri:
                where = {"uri": uri, **({"token": args.token} if args.token else {})}
                runner = milvus_runner("milvus (Milvus 2.3.5 standalone server)", items, **where)
                print("running", runner[0], flush=True)
                results.append(measure(*runner, queries, truth, args.repeats))
                try:
                    runner = torch_rechub_runner(items, uri)
                    print("running", runner[0], flush=True)
                    results.append(measure(*runner, queries, truth, args.repeats))
                except Exception as exc:  # it may not run at all (API drift, message size, ...)
                    notes.append(
                        f"torch-rechub 0.9.0 MilvusBuilder did not run: {type(exc).__name__}: {str(exc)[:200]}"
                    )
            else:
                notes.append("no Milvus server: pass --uri, or run as root where `unshare -n` works")
    except Exception as exc:
        notes.append(f"server run failed: {type(exc).__name__}: {str(exc)[:200]}")
    shutil.rmtree(tmp, ignore_errors=True)

    base = results[0]
    rows = [
        [
            r["name"],
            f"{r['build_s']:.1f}",
            f"{r['build_s'] / base['build_s']:.1f}x",
            f"{r['batch_qps']:,.0f}",
            f"{r['batch_qps'] / base['batch_qps']:.3f}x",
            f"{r['single_qps']:,.0f}",
            f"{r['single_qps'] / base['single_qps']:.3f}x",
            f"{r['recall']:.3f}",
        ]
        for r in results
    ]
    table = markdown_table(
        [
            "engine",
            "build s",
            "build vs faiss",
            f"QPS batch of {args.queries}",
            "vs faiss",
            "QPS one by one",
            "vs faiss",
            "recall@10",
        ],
        rows,
    )
    body = f"""
{args.n:,} clustered vectors x {args.dim}, cosine, HNSW (M=16, efConstruction=200, ef=64), k={K},
{args.queries} queries. Build = `from_embeddings` wall time (insert in batches, flush, index, load);
QPS = median of {args.repeats} runs after a warm-up; one-by-one = 100 single-vector queries.
Everything ran side by side in one process on {platform.machine()} with {os.cpu_count()} CPUs
(`python benchmarks/bench_milvus.py`).

{table}

{chr(10).join(f"- {note}" for note in notes)}
"""
    print(table)
    for note in notes:
        print("note:", note)
    if not args.no_write:
        print("wrote", write_report("milvus", "Milvus backend benchmark", body))


if __name__ == "__main__":
    main()
