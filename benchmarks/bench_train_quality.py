"""Quality and training time with the defaults: both user towers, most-popular and torch-rechub 0.9.0's DSSM.

Run: ``python benchmarks/bench_train_quality.py [--datasets ml-100k,synthetic] [--no-trh]``.
Writes docs/benchmarks/train-quality.md. torch-rechub's rows need
``torch-rechub==0.9.0`` and scikit-learn in the running interpreter (they are
left out, with a note, when it is missing).

Protocol (the same for every row): each user's last interaction by time
(ties keep the file order) is the test item; the model recommends 10 items
over the full catalogue, the user's earlier items excluded; Recall@10 (= Hit@10,
one test item per user) and NDCG@10 are averaged over users. Ours train
through ``train_dssm`` with nothing but its defaults (the second-to-last
interaction is the validation row for early stopping). torch-rechub trains
with its tutorial's pipeline and model (``generate_seq_feature_match`` mode 0,
3 popularity negatives, ``gen_model_input(seq_max_len=50)``, DSSM [256, 128,
64]) at lr 1e-3 for 5 epochs on every interaction but the last (the tutorial's
1e-4 barely moves), and is scored by the same evaluator on its own test split,
whose test items match ours for the share of users given in the table (the
rest are timestamp ties it orders differently).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_data
from _common import markdown_table, write_report

TRH_EPOCHS = 5
TRH_LR = 1e-3
TRH_BATCH = 1024


def ours(movielens, tower: str) -> dict:
    from rechub_serving.train import train_dssm

    start, cpu = time.perf_counter(), time.process_time()
    result = train_dssm(movielens, user_tower=tower, progress=False, ks=(10,))
    total = time.perf_counter() - start
    return {
        **result.metrics,
        "seconds": total,
        "cpu_seconds": time.process_time() - cpu,
        "fit_seconds": sum(h["seconds"] for h in result.history),
        "epochs": len(result.history),
        "baseline": result.baseline,
        "targets": dict(
            zip(
                result.data.vocabularies["user_id"].decode(result.data.test.user).tolist(),
                result.data.vocabularies["movie_id"].decode(result.data.test.target).tolist(),
            )
        ),
    }


def trh(movielens, ours_targets: dict) -> dict:
    """torch-rechub 0.9.0's DSSM (tutorial pipeline and model) on the same data, scored by our evaluator."""
    import bench_train_vs_torch_rechub as vs
    import torch

    from rechub_serving.train import evaluate_retrieval

    torch.set_num_threads(1)  # the same single thread as ours
    with tempfile.TemporaryDirectory() as tmp:
        csv = movielens.write_joined_csv(Path(tmp) / "data.csv")
        start, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            tdata, _ = vs.trh_prepare(csv)
        prep_s = time.perf_counter() - start
        torch.manual_seed(0)
        model = vs.trh_model(tdata)
        trainer = vs.trh_trainer(model, tmp, lr=TRH_LR, n_epoch=TRH_EPOCHS)
        train_dl, test_dl, item_dl = vs.trh_loaders(tdata, None, TRH_BATCH, 0)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            start = time.perf_counter()
            trainer.fit(train_dl)
            fit_s = time.perf_counter() - start
            users = trainer.inference_embedding(model, "user", test_dl, tmp).numpy()
            items = trainer.inference_embedding(model, "item", item_dl, tmp).numpy()
        metrics = evaluate_retrieval(
            users,
            items,
            np.asarray(tdata.x_test["movie_id"]),
            item_ids=np.asarray(tdata.all_item["movie_id"]),
            exclude=[np.asarray(h, dtype=np.int64) for h in tdata.hist_test],
            ks=(10,),
        )
        cpu_s = time.process_time() - cpu
        same = vs._same_targets(csv, tdata, ours_targets)
    return {
        **metrics,
        "seconds": prep_s + fit_s,
        "cpu_seconds": cpu_s,
        "fit_seconds": fit_s,
        "epochs": TRH_EPOCHS,
        "same": same,
    }


def section(name: str, with_trh: bool) -> str:
    """The report section of one data set (run in its own process)."""
    movielens = bench_train_data.DATASETS[name]()
    shape = (
        f"{len(movielens.ratings):,} interactions, {movielens.ratings['user_id'].nunique():,} users, "
        f"{movielens.ratings['movie_id'].nunique():,} items"
    )
    results = {t: ours(movielens, t) for t in ("sequence", "mlp")}
    print(name, {t: {k: v for k, v in r.items() if k not in ("targets", "baseline")} for t, r in results.items()})
    mp = results["sequence"]["baseline"]
    rows = []
    for tower, r in results.items():
        rows.append(
            [
                f"rechub-serving, {tower} user tower{' (default)' if tower == 'sequence' else ''}",
                f"{r['recall@10']:.4f}",
                f"**{r['recall@10'] / mp['recall@10']:.2f}x**",
                f"{r['ndcg@10']:.4f}",
                f"**{r['ndcg@10'] / mp['ndcg@10']:.2f}x**",
                r["epochs"],
                f"{r['fit_seconds']:.0f}",
                f"{r['seconds']:.0f}",
                f"{r['cpu_seconds']:.0f}",
            ]
        )
    note = ""
    if with_trh:
        t = trh(movielens, results["sequence"]["targets"])
        print(name, "trh", t)
        rows.append(
            [
                f"torch-rechub 0.9.0 DSSM (tutorial model, lr 1e-3, {TRH_EPOCHS} epochs)",
                f"{t['recall@10']:.4f}",
                f"{t['recall@10'] / mp['recall@10']:.2f}x",
                f"{t['ndcg@10']:.4f}",
                f"{t['ndcg@10'] / mp['ndcg@10']:.2f}x",
                t["epochs"],
                f"{t['fit_seconds']:.0f}",
                f"{t['seconds']:.0f}",
                f"{t['cpu_seconds']:.0f}",
            ]
        )
        note = f" torch-rechub's test item is the same as ours for {t['same']:.1%} of users."
    else:
        note = " No torch-rechub row here (not installed, or not asked for with --trh-datasets)."
    rows.append(
        [
            "most popular (unseen)",
            f"{mp['recall@10']:.4f}",
            "1.00x",
            f"{mp['ndcg@10']:.4f}",
            "1.00x",
            "",
            "",
            "",
            "",
        ]
    )
    return (
        f"## {name}: {shape}\n\n"
        + markdown_table(
            [
                "model",
                "recall@10",
                "vs most popular",
                "ndcg@10",
                "vs most popular",
                "epochs",
                "fit s",
                "total s",
                "CPU s",
            ],
            rows,
        )
        + "\n\n**fit s** is the wall time of the training loop (with the per-epoch validation); **total s** adds "
        "preparing the data, evaluating and the most-popular baseline (for torch-rechub: its data preparation and "
        "training); **CPU s** is the CPU time of the whole call. Training runs on one thread, so on an otherwise "
        "idle core the wall time is about the CPU time: on a shared, loaded machine (see the load averages "
        f"below) the CPU time is the number to read.{note}"
    )


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,synthetic")
    parser.add_argument("--no-trh", action="store_true", help="leave torch-rechub out")
    parser.add_argument("--trh-datasets", default="ml-100k", help="data sets with a torch-rechub row")
    parser.add_argument("--out", type=Path, default=None, help="directory of the report (default docs/benchmarks)")
    parser.add_argument("--name", default="train-quality", help="report name")
    parser.add_argument("--_section", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._section:
        with_trh = not args.no_trh and importlib.util.find_spec("torch_rechub") is not None
        with_trh = with_trh and args._section in args.trh_datasets.split(",")
        print(json.dumps(section(args._section, with_trh)))
        return None
    from rechub_serving.train.trainer import default_threads

    with_trh = not args.no_trh and importlib.util.find_spec("torch_rechub") is not None
    started = time.perf_counter()
    names = args.datasets.split(",")
    cmd = [sys.executable, __file__, "--trh-datasets", args.trh_datasets, *(["--no-trh"] if not with_trh else [])]
    with ThreadPoolExecutor(len(names)) as pool:  # one process per data set, side by side
        runs = list(pool.map(lambda n: subprocess.run([*cmd, "--_section", n], capture_output=True, text=True), names))
    sections = []
    for name, run in zip(names, runs):
        if run.returncode != 0:
            raise RuntimeError(f"{name} failed: {run.stderr[-2000:]}")
        sections.append(json.loads(run.stdout.strip().splitlines()[-1]))
    body = (
        "**Data.** *ml-100k*: the real GroupLens MovieLens-100K ratings (943 users, 1,682 movies, genres and "
        "release years) as RecBole 1.2.1 ships them in its wheel, fetched with pip and sha256-checked "
        "(`benchmarks/bench_train_data.py`; used here only, never committed). *synthetic*: what "
        "`rechub-index train --synthetic` generates (2,000 users, 1,000 items, 100,000 interactions).\n\n"
        f"{__doc__.split(chr(10) + chr(10))[2]}\n\n"
        f"Defaults of `train_dssm` / `rechub-index train`: list-wise mode 2, embeddings 32, lr 1e-3, up to 100 epochs "
        f"with early stopping after 5 without a better validation recall@10, {default_threads()} torch thread(s). "
        f"Each data set in its own process, side by side; within one, the trainings run one after another "
        f"({time.perf_counter() - started:,.0f} s in all).\n\n" + "\n\n".join(sections)
    )
    out = write_report(args.name, "Trainer quality with the defaults", body, args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
