"""Trainer benchmark: data preparation for 1,000,000 interactions, training throughput, quality vs most-popular.

Run: ``python benchmarks/bench_train.py [--interactions 1000000] [--repeats 3] [--threads 1]``.
Writes docs/benchmarks/train.md. All numbers come from one run of this script
(medians of ``--repeats`` runs for timings). Every step is an importable
function so a comparison script can call the same pipeline side by side.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

# This page compares the training modes with the MLP user tower and torch-rechub's item features, at fixed
# epochs; the defaults (sequence tower, genres and year, early stopping) are in bench_train_quality.py.
ITEMS = ("movie_id", "cate_id")


def prep_timing(data, mode: int, repeats: int) -> tuple[float, dict]:
    from rechub_serving.train import prepare_match_data

    times, last = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        last = prepare_match_data(data, mode=mode, seq_max_len=50, neg_ratio=3, item_features=ITEMS)
        times.append(time.perf_counter() - start)
    return statistics.median(times), last


def throughput(data, mode: int, batch_size: int, n_batches: int, threads: int | None, repeats: int) -> float:
    """Training samples per second (forward + backward + Adam step), median over repeats."""
    import torch

    from rechub_serving.train import MatchTrainer, build_dssm

    torch.manual_seed(0)
    model = build_dssm(
        data,
        embed_dim=16,
        user_params={"dims": [256, 128, 64]},
        item_params={"dims": [256, 128, 64]},
        user_tower="mlp",
    )
    trainer = MatchTrainer(model, mode=mode, batch_size=batch_size, progress=False, threads=threads)
    if threads:
        torch.set_num_threads(threads)
    t = trainer._tensors(data)
    n = len(data.train["item"])
    rates = []
    for _ in range(repeats):
        perm = torch.randperm(n)
        start = time.perf_counter()
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            loss = trainer._loss(data, t, idx)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()
        rates.append(n_batches * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--quality-interactions", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "train.md"
    )
    args = parser.parse_args()

    from rechub_serving.train import make_synthetic, train_dssm

    lines = ["# Trainer benchmark", "", f"Machine: {platform.processor() or platform.machine()}, "
             f"python {platform.python_version()}; torch threads {args.threads}. Command: `python benchmarks/bench_train.py`.", ""]  # fmt: skip
    data = make_synthetic(6040, 3706, args.interactions, seed=0)  # ML-1M-sized
    lines += [f"## Data preparation ({len(data.ratings):,} interactions, 6,040 users, 3,706 items; median of {args.repeats})", "",
              "Encoding, leave-last-out split, histories (max length 50) and negatives (3 per positive).", "",
              "| mode | seconds | encode | split | histories | negatives | training rows |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    prepared = {}
    for mode in (0, 1, 2):
        seconds, prep = prep_timing(data, mode, args.repeats)
        prepared[mode] = prep
        t = prep.timings
        lines.append(
            f"| {mode} | {seconds:.2f} | {t['encode']:.2f} | {t['split']:.2f} | {t['histories']:.2f} | {t['negatives']:.2f} | {len(prep.train['item']):,} |"
        )
        print(lines[-1], flush=True)
    lines += ["", f"## Training throughput (DSSM, embed 16, towers [256, 128, 64], {args.batches} batches, median of {args.repeats})", "",
              "| mode | batch | samples/s |", "|---|---|---|"]  # fmt: skip
    for mode, batch in ((0, 2048), (1, 2048), (2, 2048)):
        rate = throughput(prepared[mode], mode, batch, args.batches, args.threads, args.repeats)
        lines.append(f"| {mode} | {batch} | {rate:,.0f} |")
        print(lines[-1], flush=True)
    quality = make_synthetic(5000, 2000, args.quality_interactions, in_cluster=0.9, seed=0)
    lines += ["", f"## Quality on synthetic data ({len(quality.ratings):,} interactions, 5,000 users, 2,000 items; test = each user's last item, seen items excluded)", "",
              "| mode | recall@10 | ndcg@10 | recall@50 | most-popular recall@10 | most-popular ndcg@10 | ratio recall@10 | ratio ndcg@10 | epochs | train s |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for mode in (0, 1, 2):
        start = time.perf_counter()
        r = train_dssm(
            quality, mode=mode, n_epoch=args.epochs, batch_size=512, lr=3e-3, progress=False, threads=args.threads,
            user_tower="mlp", embed_dim=16, item_features=ITEMS,
        )  # fmt: skip
        secs = time.perf_counter() - start
        m, b = r.metrics, r.baseline
        lines.append(
            f"| {mode} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {m['recall@50']:.4f} | {b['recall@10']:.4f} | {b['ndcg@10']:.4f} | "
            f"{m['recall@10'] / b['recall@10']:.2f}x | {m['ndcg@10'] / b['ndcg@10']:.2f}x | {len(r.history)} | {secs:.0f} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "Side-by-side numbers against torch-rechub 0.9.0 are added by the comparison script (same data, same settings).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
