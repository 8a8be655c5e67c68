"""Sweep of the trainer's defaults: learning rate and embedding size per user tower, on real and synthetic data.

Run: ``python benchmarks/bench_train_sweep.py [--jobs 2] [--quick]``. Writes
docs/benchmarks/train-sweep.md. Each configuration trains in its own
subprocess with one torch thread (``--jobs`` run side by side, so the times
here are for comparing configurations, not absolute: the quality benchmark
times the defaults alone). Defaults are chosen on the validation recall
(each user's second-to-last interaction), never on the test split.

Data: MovieLens-100K (the real data set RecBole ships, see bench_train_data.py)
and the synthetic MovieLens-shaped data of ``rechub-index train --synthetic``.
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
EXTRA = {"sequence": [{"lr": 1e-3, "embed_dim": 32, "user_params": {"dims": [128, 64, 32], "n_layers": 1}}]}


def run_one(spec: dict) -> dict:
    """Train one configuration (in this process) and return its numbers."""
    import bench_train_data
    import torch

    from rechub_serving.train import train_dssm

    torch.set_num_threads(1)
    data = bench_train_data.DATASETS[spec["data"]]()
    kw = {k: v for k, v in spec.items() if k not in ("data",)}
    start = time.perf_counter()
    result = train_dssm(data, progress=False, ks=(10,), threads=1, **kw)
    seconds = time.perf_counter() - start
    val = [h.get("val_recall@10", 0.0) for h in result.history]
    return {
        **spec,
        "seconds": seconds,
        "epochs": len(result.history),
        "best_epoch": int(max(range(len(val)), key=val.__getitem__)) + 1 if val else 0,
        "val_recall@10": max(val) if val else float("nan"),
        "test": result.metrics,
        "most_popular": result.baseline,
    }


def _subprocess(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--_one", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {**spec, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _label(spec: dict) -> str:
    extra = spec.get("user_params", {})
    return f"{spec['user_tower']}" + (f", {extra['n_layers']} layer" if "n_layers" in extra else "")


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--datasets", default="ml-100k,synthetic")
    parser.add_argument("--quick", action="store_true", help="two configurations, few epochs: a smoke run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        print(json.dumps(run_one(json.loads(args._one))))
        return None
    specs = []
    for data in args.datasets.split(","):
        for tower in ("sequence", "mlp"):
            for cfg in CONFIGS[:2] if args.quick else CONFIGS + EXTRA.get(tower, []):
                spec = {"data": data, "user_tower": tower, **cfg}
                if args.quick:
                    spec["n_epoch"] = 2
                specs.append(spec)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_subprocess, specs))
    for r in results:
        print(json.dumps(r))
    sections = [
        f"{len(specs)} trainings, {args.jobs} side by side, one torch thread each, in "
        f"{time.perf_counter() - started:,.0f} s. Everything else at the defaults of `train_dssm` (list-wise mode 2, "
        "in-batch softmax with log-popularity correction, up to 100 epochs, early stopping after 5 epochs without a "
        "better validation recall@10, best epoch restored). **val** is recall@10 on each user's second-to-last "
        "interaction (what early stopping and this sweep choose on); **test** is the held-out last interaction "
        "(full catalogue, the user's earlier items excluded). Times are with two trainings sharing the 2 cores."
    ]
    for data in args.datasets.split(","):
        rows = []
        subset = [r for r in results if r["data"] == data]
        for r in subset:
            if "error" in r:
                rows.append([_label(r), r["lr"], r["embed_dim"], "failed", r["error"], "", "", "", ""])
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
                ]
            )
        ok = [r for r in subset if "error" not in r]
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
                ["user tower", "lr", "embed", "val recall@10", "test recall@10", "test ndcg@10", "epochs", "s"], rows
            )
        )
    body = "\n\n".join(sections)
    if args.quick:
        body = "**Quick mode: a smoke run, not a measurement.**\n\n" + body
    out = write_report("train-sweep", "Trainer defaults: learning rate and embedding size", body, args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
