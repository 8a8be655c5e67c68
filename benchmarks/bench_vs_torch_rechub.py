"""rechub-serving's engines side by side with torch-rechub 0.9.0's serving module.

Same clustered data (``rechub_serving.evaluation.clustered_data``, default
100,000 x 64 items, 1,000 queries, k=10), torch tensors in on both sides
(torch-rechub requires them). Per configuration (faiss Flat, HNSW, IVF and
annoy) four sides where they make sense:

* torch-rechub with its defaults, rechub-serving with its defaults;
* rechub-serving with torch-rechub's (effective) parameters, and torch-rechub
  with the parameters our defaults resolve to, so the libraries are compared on
  equal indexes as well as out of the box.

Reported: build time (median over ``--build-repeats`` builds), batch QPS
(one call with all queries, median over ``--repeats``), recall@10 against exact
ground truth (``rechub_serving.evaluation.ground_truth``). Builds and queries
are interleaved (round-robin, order rotated every round) so that every side sees
the same machine load. A second table checks what the returned *distances*
mean on each side.

torch-rechub's Milvus builder needs a Milvus server at host:port. With
``--milvus`` the script re-runs itself inside a loopback-only network namespace
(``unshare -n``; needs root or user namespaces) and starts the ``milvus``
2.3.5 package's embedded server there, which listens on every interface.

    python benchmarks/bench_vs_torch_rechub.py                 # full size, ~15 minutes on 2 cores
    python benchmarks/bench_vs_torch_rechub.py --milvus        # plus Milvus (server in a netns)
    python benchmarks/bench_vs_torch_rechub.py --quick --out /tmp/r   # < 1 minute smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS, markdown_table, write_report

from rechub_serving import builder_factory
from rechub_serving.evaluation import clustered_data, ground_truth, recall_at_k, true_distances

K = 10
REPORT = "vs-torch-rechub"
TITLE = "rechub-serving vs torch-rechub 0.9.0 serving"
IN_NETNS_FLAG = "--_in-netns"


# --------------------------------------------------------------------------- sides


@dataclass
class Handle:
    """A built index of either library: ``query(tensor) -> (ids, distances)`` and ``close()``."""

    query: Callable[[torch.Tensor], tuple[Any, Any]]
    close: Callable[[], None]
    info: str = ""


@dataclass
class Side:
    """One way of building an index (library + parameters)."""

    lib: str  # "torch-rechub" or "rechub-serving"
    label: str  # "defaults", "matched to ours", ...
    build: Callable[[torch.Tensor], Handle]
    params: Callable[[], str]
    build_s: list[float] = field(default_factory=list)
    query_s: list[float] = field(default_factory=list)
    recall: float = float("nan")
    error: str = ""


def trh_side(label: str, make: Callable[[], Any], params: Callable[[], str]) -> Side:
    """torch-rechub: its ``from_embeddings`` is a context manager, kept open by an ExitStack."""

    def build(items: torch.Tensor) -> Handle:
        stack = contextlib.ExitStack()
        indexer = stack.enter_context(make().from_embeddings(items))
        return Handle(lambda q: indexer.query(q, K), stack.close)

    return Side("torch-rechub", label, build, params)


def our_side(label: str, backend: str, params: dict[str, Any], describe: Callable[[], str] | None = None) -> Side:
    """rechub-serving through ``builder_factory``; the resolved parameters are read back from the index."""
    resolved: dict[str, Any] = {}

    def build(items: torch.Tensor) -> Handle:
        index = builder_factory(backend, **params).from_embeddings(items)
        resolved.update({k: v for k, v in index.params.items() if v is not None and k not in ("factory",)})
        return Handle(lambda q: tuple(index.query(q, K)), index.close)

    def text() -> str:
        if describe is not None:
            return describe()
        shown = {k: v for k, v in resolved.items() if k not in ("metric", "index_type")}
        return ", ".join(f"{k}={v}" for k, v in shown.items()) or "-"

    side = Side("rechub-serving", label, build, text)
    side.resolved = resolved  # type: ignore[attr-defined]
    return side


@dataclass
class Config:
    name: str
    metric: str  # metric of the ground truth, in rechub-serving's table
    sides: list[Side]
    note: str = ""


def annoy_defaults(items: np.ndarray) -> tuple[int, int]:
    """Our annoy defaults on these items (n_trees, search_k at k=10), as the plugin resolves them."""
    from rechub_serving import builder_factory

    with builder_factory("annoy", metric="cosine").from_embeddings(items) as index:
        return int(index.params["n_trees"]), int(index.params["search_k"])


def make_configs(items: np.ndarray, which: set[str]) -> list[Config]:
    from torch_rechub.serving import builder_factory as trh_factory

    dim = items.shape[1]

    configs = []
    if "flat" in which:
        configs.append(
            Config(
                "faiss Flat (L2)",
                "l2",
                [
                    trh_side("defaults", lambda: trh_factory("faiss", index_type="Flat", metric="L2"), lambda: "-"),
                    our_side("defaults", "faiss", {"index_type": "Flat", "metric": "l2"}, lambda: "IDMap2,Flat"),
                ],
                "Both are exact; the same faiss code scans the same matrix.",
            )
        )
    if "hnsw" in which:
        hnsw_ours = our_side("defaults", "faiss", {"index_type": "HNSW", "metric": "l2"})
        configs.append(
            Config(
                "faiss HNSW (L2)",
                "l2",
                [
                    trh_side(
                        "defaults",
                        lambda: trh_factory("faiss", index_type="HNSW", metric="L2"),
                        lambda: "m=32 (efConstruction=40, efSearch=16: faiss's own)",
                    ),
                    hnsw_ours,
                    our_side(
                        "matched to torch-rechub",
                        "faiss",
                        {"index_type": "HNSW", "metric": "l2", "m": 32, "ef_construction": 40, "ef_search": 16},
                    ),
                    trh_side(
                        "efSearch matched to ours",
                        lambda: trh_factory(
                            "faiss",
                            index_type="HNSW",
                            metric="L2",
                            m=hnsw_ours.resolved["m"],
                            efSearch=hnsw_ours.resolved["ef_search"],
                        ),
                        lambda: (
                            f"m={hnsw_ours.resolved.get('m')}, efSearch={hnsw_ours.resolved.get('ef_search')} "
                            "(efConstruction cannot be set: 40)"
                        ),
                    ),
                ],
                "torch-rechub cannot set efConstruction (faiss's 40); ours defaults to 200, which is most of "
                "the build-time difference.",
            )
        )
    if "ivf" in which:
        ivf_ours = our_side("defaults", "faiss", {"index_type": "IVF", "metric": "l2"})
        configs.append(
            Config(
                "faiss IVF-Flat (L2)",
                "l2",
                [
                    trh_side(
                        "defaults",
                        lambda: trh_factory("faiss", index_type="IVF", metric="L2"),
                        lambda: "nlists=100 (nprobe=1: faiss's own)",
                    ),
                    ivf_ours,
                    our_side(
                        "matched to torch-rechub",
                        "faiss",
                        {"index_type": "IVF", "metric": "l2", "nlist": 100, "nprobe": 1},
                    ),
                    trh_side(
                        "matched to ours",
                        lambda: trh_factory(
                            "faiss",
                            index_type="IVF",
                            metric="L2",
                            nlists=ivf_ours.resolved["nlist"],
                            nprobe=ivf_ours.resolved["nprobe"],
                        ),
                        lambda: f"nlists={ivf_ours.resolved.get('nlist')}, nprobe={ivf_ours.resolved.get('nprobe')}",
                    ),
                ],
                "torch-rechub leaves nprobe at faiss's 1 unless given; ours scales nlist (~4*sqrt(n)) and nprobe "
                "(~nlist/20, >= 16) with the catalogue.",
            )
        )
    if "annoy" in which:
        n_trees, search_k = annoy_defaults(items)
        configs.append(
            Config(
                "annoy (angular / cosine)",
                "cosine",
                [
                    trh_side(
                        "defaults",
                        lambda: trh_factory("annoy", d=dim),
                        lambda: "n_trees=10, searchk=-1 (annoy: n_trees*k), threads=-1 (build only)",
                    ),
                    our_side(
                        "defaults",
                        "annoy",
                        {"metric": "cosine"},
                        lambda: f"n_trees={n_trees}, search_k={search_k}, queries over every core",
                    ),
                    our_side(
                        "matched to torch-rechub",
                        "annoy",
                        {"metric": "cosine", "n_trees": 10, "search_k": -1},
                        lambda: "n_trees=10, search_k=-1, queries over every core",
                    ),
                    trh_side(
                        "matched to ours",
                        lambda: trh_factory("annoy", d=dim, n_trees=n_trees, searchk=search_k),
                        lambda: f"n_trees={n_trees}, searchk={search_k}",
                    ),
                ],
                "torch-rechub adds items one by one from the tensor and queries one vector at a time in Python "
                "on one thread; ours adds in blocks and fans a batch out over a thread pool (annoy releases the GIL).",
            )
        )
    return configs


# --------------------------------------------------------------------------- measuring


def _close(handle: Handle | None) -> None:
    if handle is not None:
        handle.close()
    gc.collect()


def run_config(config: Config, items: torch.Tensor, queries: torch.Tensor, truth: np.ndarray, args) -> None:
    """Interleaved builds (order rotated per round), then interleaved timed batch queries."""
    sides = config.sides
    handles: dict[int, Handle | None] = {i: None for i in range(len(sides))}
    order = list(range(len(sides)))
    for r in range(args.build_repeats):
        for i in order[r % len(order) :] + order[: r % len(order)] if r else order:
            side = sides[i]
            if side.error:
                continue
            _close(handles[i])
            handles[i] = None
            try:
                start = time.perf_counter()
                handles[i] = side.build(items)
                side.build_s.append(time.perf_counter() - start)
            except Exception as exc:  # a side that cannot run is reported, not fatal
                side.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            print(f"  build {side.lib} {side.label}: {side.build_s[-1:] or side.error}", flush=True)
    live = [i for i in order if handles[i] is not None]
    for i in live:
        ids, _ = handles[i].query(queries)  # warm-up and recall
        sides[i].recall = recall_at_k(np.asarray(ids), truth, K)
    for r in range(args.repeats):
        for i in live[r % len(live) :] + live[: r % len(live)]:
            start = time.perf_counter()
            handles[i].query(queries)
            sides[i].query_s.append(time.perf_counter() - start)
    for i in live:
        _close(handles[i])


# --------------------------------------------------------------------------- distances


def distance_rows(dim: int) -> list[list[str]]:
    """What the returned numbers mean, on a small catalogue, checked against the metric table."""
    from torch_rechub.serving import builder_factory as trh_factory

    items_np = clustered_data(2000, dim, seed=5)
    queries_np = clustered_data(20, dim, seed=6, centres_seed=5)
    items, queries = torch.from_numpy(items_np), torch.from_numpy(queries_np)
    cases = [
        ("faiss L2 / l2", ("faiss", {"metric": "L2"}), ("faiss", {"metric": "l2"}), "l2", "squared L2", lambda d: d),
        ("faiss IP / ip", ("faiss", {"metric": "IP"}), ("faiss", {"metric": "ip"}), "ip", "inner product", lambda d: d),
        (
            "annoy angular / cosine",
            ("annoy", {"d": dim, "metric": "angular"}),
            ("annoy", {"metric": "cosine"}),
            "cosine",
            "sqrt(2 - 2 cos)",
            lambda d: np.sqrt(np.maximum(2 - 2 * d, 0)),
        ),
        (
            "annoy euclidean / l2",
            ("annoy", {"d": dim, "metric": "euclidean"}),
            ("annoy", {"metric": "l2"}),
            "l2",
            "unsquared L2",
            lambda d: np.sqrt(np.maximum(d, 0)),
        ),
        (
            "annoy dot / ip",
            ("annoy", {"d": dim, "metric": "dot"}),
            ("annoy", {"metric": "ip"}),
            "ip",
            "inner product",
            lambda d: d,
        ),
    ]
    rows = []
    for name, (tb, tp), (ob, op), metric, trh_means, conv in cases:
        with trh_factory(tb, **tp).from_embeddings(items) as ix:
            t_ids, t_d = (np.asarray(a) for a in ix.query(queries, K))
        with builder_factory(ob, **op).from_embeddings(items) as index:
            o_ids, o_d = (np.asarray(a) for a in index.query(queries, K))
        t_table = true_distances(items_np, queries_np, t_ids, metric)
        o_table = true_distances(items_np, queries_np, o_ids, metric)
        rows.append(
            [
                name,
                trh_means,
                f"{np.nanmax(np.abs(t_d - t_table)):.3g}",
                f"{np.nanmax(np.abs(t_d - conv(t_table))):.2g}",
                {"l2": "squared L2", "ip": "inner product", "cosine": "cosine similarity"}[metric],
                f"{np.nanmax(np.abs(o_d - o_table)):.2g}",
            ]
        )
    return rows


# --------------------------------------------------------------------------- milvus


def in_loopback_namespace() -> bool:
    """True when the only network interface is ``lo`` (the server cannot be reached from outside)."""
    try:  # /proc/self/net follows the network namespace (/sys/class/net follows the mount namespace)
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return {line.split(":", 1)[0].strip() for line in lines} == {"lo"}


def reexec_in_namespace() -> str | None:
    """Re-run this script inside ``unshare -n``; returns a reason when that is impossible."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "`unshare` or `ip` is not installed"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode:
        return f"`unshare -n` failed ({probe.stderr.strip()[:120] or probe.returncode}); run as root"
    inner = shlex.join([sys.executable, *sys.argv, IN_NETNS_FLAG])
    os.execvp("unshare", ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"])
    return None  # not reached


@contextlib.contextmanager
def milvus_server():
    """The ``milvus`` 2.3.5 package's embedded standalone server, on a temporary base dir."""
    from milvus import MilvusServer

    base = Path(tempfile.mkdtemp(prefix="rechub-vs-trh-milvus-"))
    server = MilvusServer()
    server.set_base_dir(str(base))
    for key, value in {"queryCoord.checkInterval": 200, "queryCoord.distPullInterval": 100}.items():
        server.config.set(key, value)
    server.start()
    try:
        yield server.listen_port
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def milvus_configs(dim: int, port: int) -> list[Config]:
    from torch_rechub.serving import builder_factory as trh_factory

    where = {"uri": f"http://127.0.0.1:{port}"}
    return [
        Config(
            "Milvus FLAT (cosine), 2.3.5 server",
            "cosine",
            [
                trh_side(
                    "defaults",
                    lambda: trh_factory("milvus", d=dim, host="127.0.0.1", port=port),
                    lambda: "FLAT, COSINE",
                ),
                our_side("FLAT", "milvus", {"index_type": "FLAT", "metric": "cosine", **where}, lambda: "FLAT, cosine"),
            ],
        ),
        Config(
            "Milvus HNSW (cosine), 2.3.5 server",
            "cosine",
            [
                trh_side(
                    "HNSW defaults",
                    lambda: trh_factory("milvus", d=dim, index_type="HNSW", host="127.0.0.1", port=port),
                    lambda: "M=30 (ef: server default)",
                ),
                our_side(
                    "HNSW defaults",
                    "milvus",
                    {"index_type": "HNSW", "metric": "cosine", **where},
                    lambda: "m=16, ef_construction=200, ef_search=max(64, k)",
                ),
            ],
        ),
    ]


# --------------------------------------------------------------------------- report


def result_rows(configs: list[Config], n_queries: int) -> list[list[str]]:
    rows = []
    for config in configs:
        base = config.sides[0]
        base_qps = n_queries / statistics.median(base.query_s) if base.query_s else float("nan")
        for side in config.sides:
            if side.error or not side.query_s:
                rows.append([config.name, side.lib, side.label, side.params(), "-", "-", "-", side.error or "-"])
                continue
            qps = n_queries / statistics.median(side.query_s)
            rows.append(
                [
                    config.name,
                    side.lib,
                    side.label,
                    side.params(),
                    f"{statistics.median(side.build_s):.2f}",
                    f"{qps:,.0f}",
                    f"{side.recall:.3f}",
                    f"{qps / base_qps:.2f}x" if math.isfinite(base_qps) else "-",
                ]
            )
    return rows


def versions() -> str:
    names = ["torch-rechub", "faiss-cpu", "annoy", "torch", "numpy"]
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def write(body: str, out: str | None) -> Path:
    return write_report(REPORT, TITLE, body, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--build-repeats", type=int, default=3, help="builds per side (median reported)")
    parser.add_argument("--repeats", type=int, default=5, help="timed batch queries per side (median reported)")
    parser.add_argument("--configs", default="flat,hnsw,ivf,annoy", help="comma list of flat,hnsw,ivf,annoy")
    parser.add_argument("--milvus", action="store_true", help="also Milvus, server in a loopback-only netns")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test, < 1 minute)")
    parser.add_argument("--out", default=None, help=f"report directory (default {DOCS})")
    parser.add_argument(IN_NETNS_FLAG, dest="in_netns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/bench_vs_torch_rechub.py", *(a for a in given if a != IN_NETNS_FLAG)])
    if args.quick:
        args.n, args.queries, args.build_repeats, args.repeats = 5000, 100, 1, 2

    milvus_note = (
        "Not run (pass `--milvus`). torch-rechub 0.9.0's `MilvusBuilder` only takes `host`/`port` of a "
        "running Milvus server (no milvus-lite); see also `benchmarks/bench_milvus.py`."
    )
    if args.milvus and not args.in_netns:
        reason = reexec_in_namespace()  # returns only on failure
        milvus_note = f"Not run: {reason}."
        args.milvus = False
    if args.in_netns and not in_loopback_namespace():
        raise SystemExit("refusing to start the Milvus server: this network namespace has more than `lo`")

    load_start = os.getloadavg()
    items_np = clustered_data(args.n, args.dim, seed=0)
    queries_np = clustered_data(args.queries, args.dim, seed=1, centres_seed=0)  # users near the catalogue
    items, queries = torch.from_numpy(items_np), torch.from_numpy(queries_np)
    truths: dict[str, np.ndarray] = {}

    def truth(metric: str) -> np.ndarray:
        if metric not in truths:
            truths[metric] = ground_truth(items_np, queries_np, K, metric)[0]
        return truths[metric]

    configs = make_configs(items_np, set(args.configs.split(",")))
    for config in configs:
        print(config.name, flush=True)
        run_config(config, items, queries, truth(config.metric), args)

    milvus_results: list[Config] = []
    if args.milvus:
        try:
            with milvus_server() as port:
                milvus_results = milvus_configs(args.dim, port)
                for config in milvus_results:
                    print(config.name, flush=True)
                    saved = args.build_repeats
                    args.build_repeats = 1
                    run_config(config, items, queries, truth(config.metric), args)
                    args.build_repeats = saved
            milvus_note = (
                "Milvus 2.3.5 standalone server (PyPI `milvus`, embedded) in a loopback-only network namespace, "
                "one build per side (inserting and indexing dominate), same queries, interleaved."
            )
        except Exception as exc:
            milvus_note = f"Milvus run failed: {type(exc).__name__}: {str(exc)[:200]}"

    dist_rows = distance_rows(args.dim)
    load_end = os.getloadavg()
    headers = [
        "configuration",
        "library",
        "side",
        "parameters",
        "build s",
        "QPS (batch)",
        "recall@10",
        "QPS vs 1st row",
    ]
    table = markdown_table(headers, result_rows(configs, args.queries))
    dist_table = markdown_table(
        [
            "metric (torch-rechub / ours)",
            "torch-rechub returns",
            "max |trh - table|",
            "max |trh - formula(table)|",
            "rechub-serving returns",
            "max |ours - table|",
        ],
        dist_rows,
    )
    notes = "\n".join(f"- **{c.name}**: {c.note}" for c in configs if c.note)
    milvus_part = milvus_note
    if milvus_results:
        milvus_part += "\n\n" + markdown_table(headers, result_rows(milvus_results, args.queries))
    body = f"""
Side by side in one process, same data, same torch tensors in:
`clustered_data({args.n:,} x {args.dim})` items, {args.queries:,} queries, k={K}.
Build = median of {args.build_repeats} builds per side; QPS = {args.queries:,} queries in one call, median of
{args.repeats} calls after a warm-up; builds and queries interleaved round-robin across the sides of a
configuration (order rotated per round). Recall@10 against exact search
(`rechub_serving.evaluation.ground_truth`): L2 for faiss, cosine for annoy and Milvus.
"matched" rows give one library the other's (effective) parameters, so equal indexes are compared.

Machine: {platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs (load average
{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end): absolute numbers are noisy, ratios between rows of one
configuration are what to read. faiss uses its default OpenMP threads (all cores) on both sides. {versions()}.
Command: `{command}`.

{table}

{notes}

## What the distances mean

torch-rechub returns each engine's raw number; rechub-serving returns the metric table's number
(`docs/contract.md`): squared L2 ascending, inner product or cosine similarity descending. Checked
on 2,000 x {args.dim} clustered items, 20 queries, on the ids each library returned (`formula` = the
conversion in the second column applied to the table's number):

{dist_table}

So code ported from torch-rechub gets the same ids and order, but annoy's numbers change
(angular -> cosine similarity, and the order of the numbers flips from ascending to descending;
euclidean -> squared); faiss's L2 and IP numbers are unchanged.

## Milvus

{milvus_part}
"""
    print(table)
    print(dist_table)
    print(milvus_part)
    print("wrote", write(body, args.out))


if __name__ == "__main__":
    main()
