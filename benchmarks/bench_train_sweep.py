"""Sweep of the trainer's defaults: learning rate and embedding size per user tower, on real and synthetic data.

Run: ``python benchmarks/bench_train_sweep.py [--jobs 2] [--quick]``. Writes
docs/benchmarks/train-sweep.md. Each configuration trains in its own
subprocess with one torch thread (``--jobs`` run side by side, so the times
here are for comparing configurations, not absolute: the quality benchmark
times the defaults alone). Defaults are chosen on the validation recall
(each user's second-to-last interaction), never on the test split.

Data: MovieLens-100K (the real data set RecBole ships, see bench_train_data.py),
where both towers are swept, and the synthetic MovieLens-shaped data of
``rechub-index train --synthetic``, where the learning rate of the default
(sequence) tower is checked. Each finished training is appended to
``--results`` (JSON lines), and a rerun skips what is there, so an
interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_report

BASE = {"lr": 1e-3, "embed_dim": 32}
CONFIGS = [
    {"lr": 3e-4, "embed_dim": 32},
    {"lr": 1e-3, "embed_dim": 32},
    {"lr": 3e-3, "embed_dim": 32},
    {"lr": 1e-3, "embed_dim": 16},
    {"lr": 1e-3, "embed_dim": 64},
]
# (data set, tower) -> configurations
PLAN = {
    ("ml-100k", "sequence"): CONFIGS,
    ("ml-100k", "mlp"): CONFIGS,
    ("synthetic", "sequence"): CONFIGS[:3],
}


def run_one(spec: dict) -> dict:
    """Train one configuration (in this process) and return its numbers."""
    import bench_train_data
    import torch

    from rechub_serving.train import train_dssm

    torch.set_num_threads(1)
    data = bench_train_data.DATASETS[spec["data"]]()
    kw = {k: v for k, v in spec.items() if k not in ("data",)}
    start, cpu = time.perf_counter(), time.process_time()
    result = train_dssm(data, progress=False, ks=(10,), threads=1, **kw)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    val = [h.get("val_recall@10", 0.0) for h in result.history]
    return {
        **spec,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "epochs": len(result.history),
        "best_epoch": int(max(range(len(val)), key=val.__getitem__)) + 1 if val else 0,
        "val_recall@10": max(val) if val else float("nan"),
        "test": result.metrics,
        "most_popular": result.baseline,
    }


def _key(spec: dict) -> str:
    return json.dumps({k: spec[k] for k in sorted(spec) if k in ("data", "user_tower", "lr", "embed_dim", "n_epoch")})


def _subprocess(spec: dict, results: Path) -> dict:
    cmd = [sys.executable, __file__, "--_one", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {**spec, "error": proc.stderr.strip().splitlines()[-1:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(results, "a") as fh:
        fh.write(json.dumps(out) + "\n")
    return out


def _label(spec: dict) -> str:
    extra = spec.get("user_params", {})
    return f"{spec['user_tower']}" + (f", {extra['n_layers']} layer" if "n_layers" in extra else "")


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--datasets", default="ml-100k,synthetic")
    parser.add_argument("--quick", action="store_true", help="two configurations, few epochs: a smoke run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=Path("train-sweep-results.jsonl"), help="JSON lines cache")
    parser.add_argument("--note", default="", help="a paragraph added to the page (e.g. why a sweep is partial)")
    parser.add_argument(
        "--report-only", action="store_true", help="write the page from --results without training what is missing"
    )
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        print(json.dumps(run_one(json.loads(args._one))))
        return None
    specs = []
    for (data, tower), configs in PLAN.items():
        if data not in args.datasets.split(","):
            continue
        for cfg in configs[:2] if args.quick else configs:
            spec = {"data": data, "user_tower": tower, **cfg}
            if args.quick:
                spec["n_epoch"] = 2
            specs.append(spec)
    done = {}
    if args.results.is_file():
        for line in args.results.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[_key(r)] = r
    todo = [] if args.report_only else [s for s in specs if _key(s) not in done]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        fresh = {_key(r): r for r in pool.map(lambda s: _subprocess(s, args.results), todo)}
    results = [done.get(_key(s)) or fresh.get(_key(s)) or {**s, "error": "not run"} for s in specs]
    for r in results:
        print(json.dumps(r))
    sections = [
        f"{sum('error' not in r for r in results)} of {len(specs)} planned trainings done "
        f"({len(todo)} in this run, {time.perf_counter() - started:,.0f} s), {args.jobs} side by "
        "side, one torch thread each. Everything else at the defaults of `train_dssm` (list-wise mode 2, "
        "in-batch softmax with log-popularity correction, up to 100 epochs, early stopping after 5 epochs without a "
        "better validation recall@10, best epoch restored). **val** is recall@10 on each user's second-to-last "
        "interaction (what early stopping and this sweep choose on); **test** is the held-out last interaction "
        "(full catalogue, the user's earlier items excluded). Wall times (s) are with two trainings sharing the 2 "
        "cores with whatever else the machine ran (see the load averages); CPU s is the training's own CPU time "
        "(one thread), recorded from the third training on."
    ]
    for data in dict.fromkeys(s["data"] for s in specs):
        rows = []
        subset = [r for r in results if r["data"] == data]
        for r in subset:
            if "error" in r:
                rows.append([_label(r), f"{r['lr']:g}", r["embed_dim"], r["error"], "", "", "", "", ""])
                continue
            mp = r["most_popular"]
            rows.append(
                [
                    _label(r),
                    f"{r['lr']:g}",
                    r["embed_dim"],
                    f"{r['val_recall@10']:.4f}",
                    f"{r['test']['recall@10']:.4f} ({r['test']['recall@10'] / mp['recall@10']:.2f}x)",
                    f"{r['test']['ndcg@10']:.4f} ({r['test']['ndcg@10'] / mp['ndcg@10']:.2f}x)",
                    f"{r['epochs']} (best {r['best_epoch']})",
                    f"{r['seconds']:.0f}",
                    f"{r['cpu_seconds']:.0f}" if "cpu_seconds" in r else "",
                ]
            )
        ok = [r for r in subset if "error" not in r]
        if not ok:
            sections.append(f"## {data}\n\nNot run.")
            continue
        mp = ok[0]["most_popular"] if ok else {"recall@10": float("nan"), "ndcg@10": float("nan")}
        best = {t: max((r for r in ok if r["user_tower"] == t), key=lambda r: r["val_recall@10"], default=None)
                for t in ("sequence", "mlp")}  # fmt: skip
        choice = "; ".join(
            f"best {t} by validation: lr {b['lr']:g}, embeddings {b['embed_dim']}" for t, b in best.items() if b
        )
        sections.append(
            f"## {data}\n\nMost popular (unseen): recall@10 {mp['recall@10']:.4f}, ndcg@10 {mp['ndcg@10']:.4f}. "
            f"{choice}.\n\n"
            + markdown_table(
                [
                    "user tower",
                    "lr",
                    "embed",
                    "val recall@10",
                    "test recall@10",
                    "test ndcg@10",
                    "epochs",
                    "s",
                    "CPU s",
                ],
                rows,
            )
        )
    if args.note:
        sections.insert(1, args.note)
    body = "\n\n".join(sections)
    if args.quick:
        body = "**Quick mode: a smoke run, not a measurement.**\n\n" + body
    out = write_report("train-sweep", "Trainer defaults: learning rate and embedding size", body, args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
