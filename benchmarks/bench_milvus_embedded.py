"""A saved embedded Milvus index, before (0.1: a pointer into a shared database) and after (self-contained).

    git worktree add /tmp/rechub-0.1 b8be4d6          # the 0.1 code, for "before"
    python benchmarks/bench_milvus_embedded.py --before /tmp/rechub-0.1              # 100,000 x 64
    python benchmarks/bench_milvus_embedded.py --before /tmp/rechub-0.1 --n 1000000 --name milvus-embedded-1m \
        --repeats 2 --singles 10

For each implementation, in fresh processes (so "open" is what a serving
worker pays at start): build the default index (HNSW, cosine) and save it;
open it (``open_index`` until the first answer: imports excluded, milvus-lite
start included) and measure queries; then open it a second time while a
first process holds it open (what a second serving worker costs). Disk is
counted in allocated blocks, each hard-linked file once. The two
implementations run alternately within one run; open figures are medians
of ``--repeats`` fresh processes. Writes docs/benchmarks/<name>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import markdown_table, spread, write_report

ROOT = Path(__file__).resolve().parent.parent


# -- the worker (runs under one implementation's PYTHONPATH) --------------------------------------------
def _rss_mib() -> float:
    import psutil

    proc = psutil.Process()
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import pymilvus  # noqa: F401  (imports are not what is measured)

    import rechub_serving as rs
    from rechub_serving.evaluation import clustered_data

    queries = clustered_data(1000, args.dim, seed=1, centres_seed=0)
    out: dict[str, object] = {}
    if args.worker == "build":
        items = clustered_data(args.n, args.dim, seed=0)
        start = time.perf_counter()
        index = rs.builder_factory("milvus", metric="cosine", timeout=3600.0).from_embeddings(items)
        out["build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        index.save(args.index)
        out["save_s"] = time.perf_counter() - start
        index.close()
    else:
        start = time.perf_counter()
        try:
            index = rs.open_index(args.index, timeout=3600.0)
            first = index.query(queries[0], 10)
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
            print(json.dumps(out), flush=True)
            return
        out["open_s"] = time.perf_counter() - start
        assert np.asarray(first.indices).shape == (1, 10)
        batch = []
        for _ in range(3):
            start = time.perf_counter()
            index.query(queries, 10)
            batch.append(time.perf_counter() - start)
        out["qps_batch"] = len(queries) / statistics.median(batch)
        singles = []
        for q in queries[: args.singles]:
            start = time.perf_counter()
            index.query(q, 10)
            singles.append(time.perf_counter() - start)
        out["p50_ms"] = statistics.median(singles) * 1000
        out["rss_mib"] = _rss_mib()
        if args.hold:
            print(json.dumps(out), flush=True)
            sys.stdin.readline()
        index.close()
    print(json.dumps(out), flush=True)


# -- the driver -------------------------------------------------------------------------------------------
def disk_bytes(*paths: Path) -> int:
    """Allocated bytes under ``paths``, each inode once (hard links are not counted twice)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in paths:
        if not root.exists():
            continue
        for dirpath, _, files in os.walk(root):
            for name in files:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


class Impl:
    def __init__(self, name: str, code: Path, work: Path):
        self.name = name
        self.index = work / name / "items.index"
        self.shared = work / name / "shared.db"  # 0.1's database; 0.2 never writes there
        self.private = work / name / "private"  # 0.2's private databases
        self.env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(code), str(code / "plugins" / "milvus")]),
            RECHUB_SERVING_PLUGINS="milvus",
            RECHUB_MILVUS_PATH=str(self.shared),
            RECHUB_MILVUS_WORKDIR=str(self.private),
        )

    def run(self, mode: str, args: argparse.Namespace, hold: bool = False) -> subprocess.Popen:
        cmd = [sys.executable, __file__, "--worker", mode, "--index", str(self.index), "--n", str(args.n)]
        cmd += ["--dim", str(args.dim), "--singles", str(args.singles)] + (["--hold"] if hold else [])
        return subprocess.Popen(
            cmd, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def result(self, proc: subprocess.Popen, timeout: float | None = None) -> dict:
        """The worker's last JSON line, or ``{"error": its last error line}`` when it failed."""
        out, err = proc.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(f"{self.name} worker failed ({proc.returncode}):\n{err[-3000:]}", flush=True)
            last = [line for line in err.splitlines() if "Error" in line or "Exception" in line]
            return {"error": (last[-1] if last else f"exit code {proc.returncode}").strip()[:300]}
        return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a checkout of the 0.1 code (git worktree add DIR b8be4d6)")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--singles", type=int, default=100, help="single-vector queries timed per open")
    parser.add_argument("--name", default="milvus-embedded")
    parser.add_argument("--out", type=Path, default=None, help="directory of the report (default docs/benchmarks)")
    parser.add_argument("--worker", choices=("build", "open"), help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-milvus-", dir=os.environ.get("BENCH_TMP")))
    impls = [Impl("after (0.2)", ROOT, work)]
    if args.before:
        impls.insert(0, Impl("before (0.1)", args.before.resolve(), work))
    rows, notes = [], []
    try:
        builds = {}
        for impl in impls:
            impl.index.parent.mkdir(parents=True)
            start = time.perf_counter()
            builds[impl.name] = impl.result(impl.run("build", args))
            builds[impl.name]["wall_s"] = time.perf_counter() - start
            print(impl.name, "built", builds[impl.name], flush=True)
        failed = [impl for impl in impls if "error" in builds[impl.name]]
        for impl in failed:
            minutes = builds[impl.name]["wall_s"] / 60
            rows.append([impl.name, f"failed after {minutes:.0f} min: {builds[impl.name]['error']}"] + [""] * 8)
        impls = [impl for impl in impls if impl not in failed]
        opens: dict[str, list[dict]] = {impl.name: [] for impl in impls}
        for _ in range(args.repeats):  # alternately, so that both see the same machine
            for impl in impls:
                opens[impl.name].append(impl.result(impl.run("open", args)))
        for impl in impls:
            holder = impl.run("open", args, hold=True)
            assert holder.stdout is not None
            held = json.loads(holder.stdout.readline())
            disk_one = disk_bytes(impl.index, impl.shared, impl.private)
            seconds = []
            for _ in range(args.repeats):  # a second opener, measured while both hold the index open
                proc = impl.run("open", args, hold=True)
                assert proc.stdout is not None and proc.stdin is not None
                line = proc.stdout.readline()
                second = json.loads(line) if line.startswith("{") else impl.result(proc)
                if "error" in second:
                    proc.communicate()
                    seconds = [second]
                    break
                second["extra_disk"] = disk_bytes(impl.index, impl.shared, impl.private) - disk_one
                proc.stdin.write("\n")
                proc.stdin.flush()
                impl.result(proc)
                seconds.append(second)
            if "error" in seconds[0]:
                second = seconds[0]
            else:
                second = {k: statistics.median(r[k] for r in seconds) for k in ("open_s", "rss_mib", "extra_disk")}
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            impl.result(holder)
            o = opens[impl.name]
            med = {k: statistics.median(r[k] for r in o) for k in ("open_s", "qps_batch", "p50_ms", "rss_mib")}
            if "error" in second:
                second_text = f"fails: {second['error']}"
            else:
                extra = second["extra_disk"] / 2**20
                second_text = f"{second['open_s']:.2f} s, +{extra:,.1f} MiB disk, {second['rss_mib']:,.0f} MiB RSS"
            rows.append(
                [
                    impl.name,
                    f"{builds[impl.name]['build_s']:.1f}",
                    f"{builds[impl.name]['save_s']:.2f}",
                    f"{disk_bytes(impl.index) / 2**20:,.1f}",
                    f"{disk_bytes(impl.index, impl.shared) / 2**20:,.1f}",
                    f"{med['open_s']:.2f}",
                    f"{med['qps_batch']:,.0f}",
                    f"{med['p50_ms']:.2f}",
                    f"{med['rss_mib']:,.0f}",
                    second_text,
                ]
            )
            print(rows[-1], held.get("open_s"), flush=True)
        if len(impls) == 2:
            a, b = (opens[impl.name] for impl in impls)
            notes.append(
                "open time after/before, per alternate pair: "
                + spread([y["open_s"] / x["open_s"] for x, y in zip(a, b)])
                + "; batch QPS after/before: "
                + spread([y["qps_batch"] / x["qps_batch"] for x, y in zip(a, b)])
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    headers = [
        "implementation",
        "build s",
        "save s",
        "saved directory MiB",
        "all data MiB",
        "open s (to first answer)",
        "QPS, batch of 1000",
        "p50 ms, one query",
        "RSS MiB",
        "second opener while the first holds it",
    ]
    body = (
        f"{args.n:,} x {args.dim} clustered vectors, cosine, the default index (HNSW M=16, efConstruction=200), "
        f"k=10. Build and save once per implementation; open figures are medians of {args.repeats} fresh "
        "processes, alternating the implementations. 'all data' adds the shared database 0.1 keeps outside the "
        "saved directory. RSS counts the process and its children (0.2 runs milvus-lite in a child process).\n\n"
        + markdown_table(headers, rows)
        + ("\n\n- " + "\n- ".join(notes) if notes else "")
    )
    path = write_report(args.name, f"Saved embedded Milvus index: {args.n:,} x {args.dim}", body, args.out)
    print(path.read_text())


if __name__ == "__main__":
    main()
