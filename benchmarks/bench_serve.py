"""Serving benchmark: `rechub-index serve` under a real HTTP load, with and without micro-batching.

Run: ``python benchmarks/bench_serve.py [--items 100000] [--duration 8] [--repeats 3] [--clients 1,8,64]``
(``--quick`` for a smoke run). Writes docs/benchmarks/serve.md.

What is measured, all in one run on one machine, interleaved so that drifts in
machine load hit every configuration alike:

- a trained DSSM (synthetic MovieLens-shaped data) whose catalogue is grown
  to ``--items`` item vectors around the trained ones, saved as an exact numpy
  index and as a faiss HNSW index (both with the model's hash);
- for each index: two servers, micro-batching on (defaults: up to 64 users,
  2 ms) and off (``--max-batch 1``: one request at a time), each loaded by a
  closed-loop HTTP client (httpx, asyncio, keep-alive, one request per user)
  in its own process at 1, 8 and 64 concurrent clients: throughput,
  p50 and p99 latency as the client sees it, errors;
- the in-process Retriever on the same model and index: one user at a time,
  and batches of 64 and 1,000 users (the cost per user).

Each point is the median of ``--repeats`` runs; ratios are taken run by run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import markdown_table, spread, write_report  # benchmarks/_common.py: the script's directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent


# -- the model and the indexes ------------------------------------------------------------------------------
def build_models(work: Path, n_items: int, quick: bool) -> dict[str, Path]:
    """Train a model, grow its catalogue to ``n_items``, and write one model directory per index kind."""
    from rechub_serving import builder_factory
    from rechub_serving.train import make_synthetic, train_dssm
    from rechub_serving.train.artifacts import write_artifacts

    base = work / "trained"
    sizes = (400, 300, 8000) if quick else (2000, 1700, 60000)
    result = train_dssm(make_synthetic(*sizes, seed=0), mode=2, n_epoch=1 if quick else 2, batch_size=256,
                        seq_max_len=20, ks=(10,), progress=False, threads=1)  # fmt: skip
    write_artifacts(result, base)
    vectors = np.load(base / "item_embeddings.npy")
    ids = np.asarray(json.loads((base / "item_ids.json").read_text()), dtype=np.int64)
    digest = json.loads((base / "items.index" / "manifest.json").read_text())["metadata"]["model_hash"]
    rng = np.random.default_rng(0)
    extra = n_items - len(vectors)
    if extra > 0:  # more items near the trained ones: a catalogue of n_items with the model's geometry
        grown = vectors[rng.integers(0, len(vectors), extra)] + rng.normal(0, 0.15, (extra, vectors.shape[1]))
        grown /= np.linalg.norm(grown, axis=1, keepdims=True)
        vectors = np.concatenate([vectors, grown.astype(np.float32)])
        ids = np.concatenate([ids, np.arange(ids.max() + 1, ids.max() + 1 + extra)])
    configs = {
        "numpy (exact)": ("numpy", {}),
        "faiss HNSW": ("faiss", {"index_type": "HNSW", "m": 32, "ef_construction": 80, "ef_search": 64}),
    }
    out = {}
    for name, (backend, params) in configs.items():
        try:
            builder = builder_factory(backend, metric="cosine", **params)
        except Exception as exc:
            print(f"skipping {name}: {exc}")
            continue
        directory = work / backend
        directory.mkdir()
        for file in ("user_tower.onnx", "item_tower.onnx", "vocabularies.json"):
            shutil.copy(base / file, directory / file)
        np.save(directory / "item_embeddings.npy", vectors)
        (directory / "item_ids.json").write_text(json.dumps(ids.tolist()))
        with builder.from_embeddings(vectors, ids=ids) as index:
            index.save(directory / "items.index", metadata={"model_hash": digest, "normalized": True})
        out[name] = directory
    return out


def request_bodies(model_dir: Path, n: int) -> list[dict]:
    """``n`` one-user requests with raw features drawn from the training vocabularies (k = 10)."""
    vocab = json.loads((model_dir / "vocabularies.json").read_text())
    rng = np.random.default_rng(1)

    def pick(name: str):
        values = vocab[name]["values"]
        return values[int(rng.integers(0, len(values)))]

    bodies = []
    for _ in range(n):
        hist = [pick("movie_id") for _ in range(int(rng.integers(5, 21)))]
        features = {f: pick(f) for f in ("user_id", "gender", "age", "occupation", "zip")}
        bodies.append({"users": [{**features, "hist_movie_id": hist}], "k": 10})
    return bodies


# -- servers and the load generator ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, model_dir: Path, extra: list[str], log: Path, path: str = ""):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        paths = [p for p in (path, str(ROOT), os.environ.get("PYTHONPATH", "")) if p]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        self._log = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rechub_serving.cli", "serve", str(model_dir), "--port", str(self.port),
             "--log-level", "warning", "--watch-interval", "0", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server not ready")

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server process so far (Linux)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(120)
        self._log.close()
        return code


def run_load(url: str, clients: int, duration: float, bodies_file: Path, client: str = "raw") -> dict:
    """Run the load generator in its own process (so its CPU is its own) and return its summary."""
    out = subprocess.run(
        [sys.executable, __file__, "--load-worker", url, str(clients), str(duration), str(bodies_file), client],
        capture_output=True, text=True, timeout=duration + 120,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


async def _raw_requests(url: str, clients: int, bodies: list[bytes]):
    """A lean HTTP/1.1 keep-alive client: one connection per client, requests written as bytes.

    It reads the status line, the headers and ``Content-Length`` bytes of body,
    and counts anything but a complete 200 as an error. Its own CPU cost is a
    small fraction of httpx's, which matters when client and server share two cores.
    """
    host, port = url.removeprefix("http://").split(":")
    wire = [
        (f"POST /v1/recommend HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
         f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        for body in bodies
    ]  # fmt: skip
    streams = [await asyncio.open_connection(host, int(port)) for _ in range(clients)]

    async def send(c: int, i: int) -> bool:
        reader, writer = streams[c]
        writer.write(wire[i % len(wire)])
        head = await reader.readuntil(b"\r\n\r\n")
        at = head.lower().find(b"content-length:")
        size = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
        body = await reader.readexactly(size)
        return head.startswith(b"HTTP/1.1 200") and body.startswith(b'{"results"')

    async def close() -> None:
        for _, writer in streams:
            writer.close()

    return send, close


async def _httpx_requests(url: str, clients: int, bodies: list[bytes]):
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    client = httpx.AsyncClient(base_url=url, limits=limits, timeout=60)
    headers = {"content-type": "application/json"}

    async def send(c: int, i: int) -> bool:
        response = await client.post("/v1/recommend", content=bodies[i % len(bodies)], headers=headers)
        return response.status_code == 200

    return send, client.aclose


async def _load(url: str, clients: int, duration: float, bodies: list[bytes], kind: str) -> dict:
    send, close = await (_raw_requests if kind == "raw" else _httpx_requests)(url, clients, bodies)
    latencies: list[float] = []
    errors = 0

    async def one_client(c: int, stop_at: float) -> None:
        nonlocal errors
        i = c
        while time.perf_counter() < stop_at:
            i += clients
            start = time.perf_counter()
            try:
                ok = await send(c, i)
            except (OSError, asyncio.IncompleteReadError, Exception):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1
                await asyncio.sleep(0.01)

    warm = time.perf_counter() + min(1.0, duration / 4)
    await asyncio.gather(*(one_client(c, warm) for c in range(clients)))
    warm_requests = len(latencies) + errors
    latencies.clear()
    errors = 0
    cpu0, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one_client(c, start + duration) for c in range(clients)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    await close()
    lat = np.asarray(latencies) * 1e3
    return {
        "requests": len(lat),
        "errors": errors,
        "throughput": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "client_cpu_ms_per_request": cpu / max(len(lat), 1) * 1e3,
        "all_requests": warm_requests + len(lat) + errors,
    }


def load_worker(url: str, clients: int, duration: float, bodies_file: Path, kind: str) -> None:
    bodies = [json.dumps(b).encode() for b in json.loads(bodies_file.read_text())]
    print(json.dumps(asyncio.run(_load(url, clients, duration, bodies, kind))))


# -- in process ----------------------------------------------------------------------------------------------------
def in_process(model_dir: Path, bodies: list[dict], duration: float) -> dict:
    """The Retriever alone: one user at a time (latency, throughput) and the per-user cost of batches.

    With one onnxruntime and one BLAS/OpenMP thread, as the servers run; the
    cost of a 64-user batch with the libraries' default threads is measured too.
    """
    from rechub_serving import Retriever
    from rechub_serving.serve.threads import limit_compute_threads

    users = [b["users"][0] for b in bodies]
    out: dict[str, float] = {}

    def batch_cost(retriever, size: int) -> float:
        batch = [users[j % len(users)] for j in range(size)]
        retriever.recommend(batch, k=10)
        per_user = []
        for _ in range(7):
            start = time.perf_counter()
            retriever.recommend(batch, k=10)
            per_user.append((time.perf_counter() - start) / size * 1e3)
        return float(np.median(per_user))

    with Retriever(model_dir / "user_tower.onnx", model_dir / "items.index", threads=1) as retriever:
        out["batch64_default_threads_ms_per_user"] = batch_cost(retriever, 64)
        limit_compute_threads(1)
        for u in users[:50]:
            retriever.recommend(u, k=10)
        times, i = [], 0
        cpu = time.process_time()
        stop_at = time.perf_counter() + duration
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            retriever.recommend(users[i % len(users)], k=10)
            times.append(time.perf_counter() - start)
            i += 1
        out["single_cpu_ms"] = (time.process_time() - cpu) / max(len(times), 1) * 1e3
        lat = np.asarray(times) * 1e3
        out.update(
            throughput=len(lat) / lat.sum() * 1e3,
            p50_ms=float(np.percentile(lat, 50)),
            p99_ms=float(np.percentile(lat, 99)),
            single_ms_per_user=float(np.median(lat)),
        )
        for size in (8, 64, 1000):
            out[f"batch{size}_ms_per_user"] = batch_cost(retriever, size)
    limit_compute_threads(os.cpu_count() or 1)  # back to one thread per core for what follows
    return out


# -- the report ------------------------------------------------------------------------------------------------------
def fmt(value: float, spec: str = ".1f") -> str:
    return "-" if value != value else f"{value:{spec}}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per point")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default docs/benchmarks)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="load generator's HTTP client")
    parser.add_argument(
        "--uvicorn-standard", type=Path, default=None,
        help="a directory holding uvloop and httptools (pip install --target DIR uvloop httptools): "
        "adds a micro-batching server that uses them",
    )  # fmt: skip
    parser.add_argument(
        "--extra-mode", action="append", default=[], metavar="NAME=ARGS",
        help="another server configuration beside the two, e.g. 'micro-batching, 2 compute threads=--compute-threads 2'",
    )  # fmt: skip
    parser.add_argument("--only", default=None, help="only the index whose name contains this (numpy, HNSW)")
    parser.add_argument("--load-worker", nargs=5, metavar=("URL", "CLIENTS", "SECONDS", "BODIES", "CLIENT"))
    args = parser.parse_args(argv)
    if args.load_worker:
        url, clients, seconds, bodies_file, kind = args.load_worker
        load_worker(url, int(clients), float(seconds), Path(bodies_file), kind)
        return
    if args.quick:
        args.items, args.duration, args.repeats = 5000, 1.5, 1
    clients = [int(c) for c in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rechub-bench-serve-"))
    try:
        report = run_all(work, args, clients)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_report("serve", "Serving benchmark (`rechub-index serve`)", report, args.out)
    print(f"wrote {path}")


MODES = {"micro-batching": [], "one at a time": ["--max-batch", "1"]}


def run_all(work: Path, args: argparse.Namespace, clients: list[int]) -> str:
    started = time.perf_counter()
    modes = {mode: (extra, "") for mode, extra in MODES.items()}
    for spec in args.extra_mode:
        name, _, extra_args = spec.partition("=")
        modes[name] = (extra_args.split(), "")
    if args.uvicorn_standard:  # the same server on uvloop + httptools (uvicorn[standard]), from that directory
        modes["micro-batching, uvicorn[standard]"] = ([], str(args.uvicorn_standard))
    models = build_models(work, args.items, args.quick)
    if args.only:
        models = {name: path for name, path in models.items() if args.only.lower() in name.lower()}
    bodies = request_bodies(next(iter(models.values())), 2000)
    bodies_file = work / "bodies.json"
    bodies_file.write_text(json.dumps(bodies))
    results: dict[tuple[str, str, int], list[dict]] = {}
    process: dict[str, dict] = {}
    exit_codes: list[int] = []
    for name, model_dir in models.items():
        print(f"== {name}", flush=True)
        process[name] = in_process(model_dir, bodies, max(2.0, args.duration / 2))
        print(process[name], flush=True)
        servers = {
            mode: ServerProcess(model_dir, extra, work / f"{name}-{mode}.log", path)
            for mode, (extra, path) in modes.items()
        }
        try:
            for _ in range(args.repeats):
                for c in clients:
                    for mode, server in servers.items():
                        cpu = server.cpu_seconds()
                        r = run_load(server.url, c, args.duration, bodies_file, args.client)
                        r["server_cpu_ms_per_request"] = (server.cpu_seconds() - cpu) / max(r["all_requests"], 1) * 1e3
                        results.setdefault((name, mode, c), []).append(r)
                        print(f"{name:14s} {mode:34s} {c:3d} clients: {r['throughput']:7.0f} req/s  "
                              f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  errors {r['errors']}", flush=True)  # fmt: skip
        finally:
            exit_codes += [server.stop() for server in servers.values()]
    return render(models, modes, results, process, clients, args, exit_codes, time.perf_counter() - started)


def render(models, modes, results, process, clients, args, exit_codes, seconds) -> str:
    def med(name, mode, c, key):
        return statistics.median(r[key] for r in results[(name, mode, c)])

    client = (
        "a lean asyncio HTTP/1.1 client (keep-alive, one connection per client, requests pre-encoded)"
        if args.client == "raw"
        else "httpx's AsyncClient (keep-alive)"
    )
    lines = [
        "Measured by `benchmarks/bench_serve.py`: a trained DSSM user tower (ONNX) in front of "
        f"{args.items:,} item vectors (the model's items and more around them), one user per request, k = 10, "
        f"the user's history excluded. The load generator is a closed loop of clients, {client}, in its own "
        "process on the same machine, so it competes with the server for the cores: its own CPU per request "
        'is listed. "Server CPU" is the server process\'s CPU time over a run divided by the requests it '
        "answered: what a request costs, which a shared, busy machine distorts less than throughput or "
        f"latency. Each point is the median of {args.repeats} runs of {args.duration:g} s (after a warm-up), "
        "the configurations interleaved run by run; ratios are taken run by run. Servers run with their "
        "defaults: one uvicorn worker (h11 unless said), micro-batches of up to 64 users waiting at most 2 ms, "
        "one batch thread, one onnxruntime thread, one BLAS/OpenMP thread, live recall sampling 1% of requests. "
        '"One at a time" is the same server with `--max-batch 1`.',
        "",
    ]
    targets = []
    for name in models:
        lines += [f"## {name}", ""]
        rows = []
        for c in clients:
            for mode in modes:
                if (name, mode, c) not in results:
                    continue
                rows.append([c, mode, fmt(med(name, mode, c, "throughput"), ".0f"), fmt(med(name, mode, c, "p50_ms"), ".2f"),
                             fmt(med(name, mode, c, "p99_ms"), ".2f"), sum(r["errors"] for r in results[(name, mode, c)]),
                             fmt(med(name, mode, c, "server_cpu_ms_per_request"), ".3f"),
                             fmt(med(name, mode, c, "throughput") * med(name, mode, c, "server_cpu_ms_per_request") / 1e3, ".2f"),
                             fmt(med(name, mode, c, "client_cpu_ms_per_request"), ".3f")])  # fmt: skip
        p = process[name]
        rows.append(["1", "in-process Retriever (no HTTP)", fmt(p["throughput"], ".0f"), fmt(p["p50_ms"], ".2f"),
                     fmt(p["p99_ms"], ".2f"), 0, fmt(p["single_cpu_ms"], ".3f"),
                     fmt(p["throughput"] * p["single_cpu_ms"] / 1e3, ".2f"), "-"])  # fmt: skip
        lines.append(markdown_table(
            ["clients", "serving", "requests/s", "p50 ms", "p99 ms", "errors", "server CPU ms/request",
             "server cores busy", "client CPU ms/request"], rows,
        ))  # fmt: skip
        lines.append("")
        top = max(clients)
        for mode in modes:
            if (
                mode == "one at a time"
                or (name, mode, top) not in results
                or (name, "one at a time", top) not in results
            ):
                continue
            ratios = [
                b["throughput"] / s["throughput"]
                for b, s in zip(results[(name, mode, top)], results[(name, "one at a time", top)])
            ]
            cpu_ratios = [
                s["server_cpu_ms_per_request"] / b["server_cpu_ms_per_request"]
                for b, s in zip(results[(name, mode, top)], results[(name, "one at a time", top)])
            ]
            lines.append(f"- Throughput at {top} clients, {mode} / one at a time: **{spread(ratios)}x** (target: 3x); "
                         f"server CPU per request, one at a time / {mode}: {spread(cpu_ratios)}x.")  # fmt: skip
            if mode == "micro-batching":
                targets.append((name, f"{top} clients: micro-batching >= 3x one at a time",
                                f"{statistics.median(ratios):.2f}x", statistics.median(ratios) >= 3))  # fmt: skip
        for mode in modes:
            if (name, mode, 8) in results and mode != "one at a time":
                p99 = med(name, mode, 8, "p99_ms")
                runs = spread(r["p99_ms"] for r in results[(name, mode, 8)])
                lines.append(f"- p99 at 8 clients, {mode}: **{runs} ms** (target: under 20 ms).")
                if mode == "micro-batching":
                    targets.append((name, "p99 < 20 ms at 8 clients", f"{p99:.2f} ms", p99 < 20))
        single = p["single_ms_per_user"]
        lines += [
            "",
            "In-process Retriever, cost per user (one BLAS thread unless said):",
            "",
            markdown_table(
                ["users per call", "ms per user", "vs one at a time"],
                [["1", f"{single:.3f}", "1.0x"]]
                + [
                    [f"{n:,}", f"{p[f'batch{n}_ms_per_user']:.3f}", f"{single / p[f'batch{n}_ms_per_user']:.1f}x less"]
                    for n in (8, 64, 1000)
                ]
                + [
                    [
                        "64, the libraries' default threads",
                        f"{p['batch64_default_threads_ms_per_user']:.3f}",
                        f"{single / p['batch64_default_threads_ms_per_user']:.1f}x less",
                    ]
                ],
            ),
            "",
        ]
    lines += ["## Targets", "", markdown_table(["index", "target", "measured", "reached"],
              [[n, t, m, "yes" if ok else "**no**"] for n, t, m, ok in targets]), ""]  # fmt: skip
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += [
        'How to read this page: "server cores busy" is requests/s times server CPU per request, the share of '
        "the machine the server actually got. On a dedicated 2-core machine a saturated one-worker server keeps "
        "about one core busy (its event loop) plus what numpy, faiss and onnxruntime do outside the GIL; well "
        "below that, the server was waiting for a CPU that other processes held, and its throughput and tail "
        f"latency measure the machine's load (load average {load:.1f} on {os.cpu_count()} cores at the end of this "
        "run) more than the server. Server CPU per request, and the ratios of it, are the numbers that carry "
        "over to another machine.",
        "",
    ]
    lines.append(f"Every server exited with code {sorted(set(exit_codes))} after SIGTERM. The whole run took "
                 f"{seconds / 60:.1f} minutes.")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
