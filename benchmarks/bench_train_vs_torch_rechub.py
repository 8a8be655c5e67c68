"""Side by side: rechub-serving's trainer against torch-rechub 0.9.0 (DSSM, MovieLens-shaped data).

Run: ``python benchmarks/bench_train_vs_torch_rechub.py [--quick] [--out report.md]``.
Needs ``torch-rechub==0.9.0`` and ``scikit-learn`` (not dependencies of this project).
Writes docs/benchmarks/train-vs-torch-rechub.md (or ``--out``).

Both libraries read the SAME file: synthetic data from
:func:`rechub_serving.train.make_synthetic`, written in the joined-CSV layout that
torch-rechub's MovieLens examples read. torch-rechub is called through its public
API with the settings of its DSSM tutorial (``examples/matching/run_ml_dssm.py``):
label-encoded sparse features, ``generate_seq_feature_match(mode=0, neg_ratio=3,
sample_method=1)`` (popularity**0.75 negatives), ``gen_model_input(seq_max_len=50)``,
embeddings of 16, towers [256, 128, 64] (Linear, BatchNorm, PReLU), batch 4096, lr 1e-4.

1. Data preparation (each run in a fresh subprocess: wall time and peak RSS).
   torch-rechub's runs are capped by ``--trh-timeout``; sizes it cannot finish are
   reported as such, with the scaling measured at smaller sizes.
2. Training throughput (samples/s, forward + backward + Adam) for the same DSSM,
   the same sampled training rows, one torch thread on both sides.
3. Recall@10 / NDCG@10 after the same number of epochs on the same leave-last-out
   split, both scored by the same exact evaluator (the user's earlier items excluded).

Sections 1-3 compare like with like: our DSSM with the MLP user tower and the
tutorial's item features. Quality with our defaults (sequence tower, genres and
year, early stopping) against the same torch-rechub DSSM is in
bench_train_quality.py (docs/benchmarks/train-quality.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS, markdown_table

# torch-rechub tutorial settings (examples/matching/run_ml_dssm.py).
TUTORIAL = {
    "mode": 0,
    "neg_ratio": 3,
    "sample_method": 1,
    "seq_max_len": 50,
    "embed_dim": 16,
    "dims": [256, 128, 64],
    "activation": "prelu",
    "batch_size": 4096,
    "lr": 1e-4,
    "weight_decay": 1e-6,
}
USER_COLS = ["user_id", "gender", "age", "occupation", "zip"]
ITEM_COLS = ["movie_id", "cate_id"]


# -- data -------------------------------------------------------------------------------------
def write_csv(directory: Path, n_interactions: int, *, n_users: int = 6040, n_items: int = 3706, **kw) -> Path:
    """Synthetic MovieLens-shaped data (ML-1M-sized catalogue by default) as torch-rechub's joined CSV."""
    from rechub_serving.train import make_synthetic, write_synthetic

    data = make_synthetic(n_users, n_items, n_interactions, seed=0, **kw)
    path = write_synthetic(directory / f"synthetic-{n_interactions}", "csv", data=data)
    return path


def ours_prepare(path: Path, *, validation: bool = True, mode: int = TUTORIAL["mode"]):
    """Read the CSV and run prepare_match_data with the tutorial's settings; returns (data, read_s, prep_s)."""
    from rechub_serving.train import prepare_match_data, read_joined_csv

    t0 = time.perf_counter()
    movielens = read_joined_csv(path)
    t1 = time.perf_counter()
    data = prepare_match_data(
        movielens,
        mode=mode,
        seq_max_len=TUTORIAL["seq_max_len"],
        neg_ratio=TUTORIAL["neg_ratio"],
        sample_method="popularity",
        validation=validation,
        item_features=ITEM_COLS,  # the tutorial's item side (first genre only), not our default genres + year
        seed=0,
    )
    return data, t1 - t0, time.perf_counter() - t1


@dataclasses.dataclass
class TrhData:
    """torch-rechub's prepared inputs, as its tutorial builds them."""

    x_train: dict
    y_train: np.ndarray
    x_test: dict
    hist_test: list  # full (unpadded) history of each test row: the items to exclude at evaluation
    all_item: dict
    feature_max_idx: dict
    stages: dict


def trh_prepare(path: Path) -> tuple[TrhData, float]:
    """torch-rechub's tutorial pipeline through its public API; returns (data, read_s)."""
    import pandas as pd
    from sklearn.preprocessing import LabelEncoder
    from torch_rechub.utils.data import df_to_dict
    from torch_rechub.utils.match import gen_model_input, generate_seq_feature_match

    t0 = time.perf_counter()
    frame = pd.read_csv(path)
    read_s = time.perf_counter() - t0
    stages = {}
    t0 = time.perf_counter()
    frame["cate_id"] = frame["genres"].apply(lambda g: g.split("|")[0])
    feature_max_idx = {}
    for col in USER_COLS + ITEM_COLS:  # the tutorial's LabelEncoder + 1 (0 is padding)
        frame[col] = LabelEncoder().fit_transform(frame[col]) + 1
        feature_max_idx[col] = int(frame[col].max()) + 1
    user_profile = frame[USER_COLS].drop_duplicates("user_id")
    item_profile = frame[ITEM_COLS].drop_duplicates("movie_id")
    stages["encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        df_train, df_test = generate_seq_feature_match(
            frame,
            "user_id",
            "movie_id",
            time_col="timestamp",
            item_attribute_cols=[],
            sample_method=TUTORIAL["sample_method"],
            mode=TUTORIAL["mode"],
            neg_ratio=TUTORIAL["neg_ratio"],
            min_item=0,
        )
    stages["generate_seq_feature_match"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x_train = gen_model_input(
        df_train, user_profile, "user_id", item_profile, "movie_id", seq_max_len=TUTORIAL["seq_max_len"]
    )
    x_test = gen_model_input(
        df_test, user_profile, "user_id", item_profile, "movie_id", seq_max_len=TUTORIAL["seq_max_len"]
    )
    stages["gen_model_input"] = time.perf_counter() - t0
    data = TrhData(
        x_train=x_train,
        y_train=x_train["label"],
        x_test=x_test,
        hist_test=df_test["hist_movie_id"].tolist(),
        all_item=df_to_dict(item_profile),
        feature_max_idx=feature_max_idx,
        stages=stages,
    )
    return data, read_s


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _worker(kind: str, csv: Path, repeats: int, result: Path) -> None:
    """Subprocess body: time one library's preparation of ``csv``; write JSON to ``result``."""
    totals, reads, stages = [], [], []
    for _ in range(repeats):
        if kind == "ours":
            data, read_s, prep_s = ours_prepare(csv)
            stages.append(dict(data.timings))
            rows = len(data.train["item"])
        else:
            data, read_s = trh_prepare(csv)
            prep_s = sum(data.stages.values())
            stages.append(dict(data.stages))
            rows = len(data.y_train)
        totals.append(prep_s)
        reads.append(read_s)
        del data
    median = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    result.write_text(
        json.dumps(
            {
                "prep_s": statistics.median(totals),
                "read_s": statistics.median(reads),
                "stages": median,
                "rows": rows,
                "peak_rss_mb": _peak_rss_mb(),
                "runs": repeats,
            }
        )
    )


def run_prep(kind: str, csv: Path, repeats: int, timeout: float, max_rss_mb: float) -> dict[str, Any]:
    """Run :func:`_worker` in a fresh interpreter (peak memory per run).

    The run is killed past ``timeout`` seconds or ``max_rss_mb`` of resident memory
    (the machine is shared: torch-rechub's preparation holds every history as Python lists).
    """
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        cmd = [sys.executable, __file__, "--_worker", kind, "--_csv", str(csv), "--repeats", str(repeats)]
        cmd += ["--_result", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
        start = time.perf_counter()
        with open(err, "w") as stderr:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            watch, killed = psutil.Process(proc.pid), None
            while proc.poll() is None:
                try:
                    rss = watch.memory_info().rss / 2**20
                except psutil.Error:
                    rss = 0.0
                if time.perf_counter() - start > timeout:
                    killed = {"timeout": True}
                elif rss > max_rss_mb:
                    killed = {"memory": True, "rss_mb": rss}
                if killed:
                    proc.kill()
                    proc.wait()
                    return killed | {"wall_s": time.perf_counter() - start}
                time.sleep(0.2)
        if proc.returncode != 0 or not out.exists():
            return {"error": err.read_text().strip().splitlines()[-3:], "wall_s": time.perf_counter() - start}
        return json.loads(out.read_text())


# -- models -------------------------------------------------------------------------------------
def ours_model(data, temperature: float | None = None):
    from rechub_serving.train import build_dssm

    # torch-rechub's MLP always puts BatchNorm1d after each Linear layer: the same architecture here.
    params = {"dims": TUTORIAL["dims"], "activation": TUTORIAL["activation"], "batch_norm": True}
    return build_dssm(
        data,
        embed_dim=TUTORIAL["embed_dim"],
        user_params=params,
        item_params=params,
        temperature=temperature,
        user_tower="mlp",  # the same DSSM as the tutorial's (our default is the sequence tower)
    )


def trh_model(data: TrhData):
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.matching import DSSM

    dim, sizes = TUTORIAL["embed_dim"], data.feature_max_idx
    user_features = [SparseFeature(c, vocab_size=sizes[c], embed_dim=dim) for c in USER_COLS]
    user_features += [
        SequenceFeature(
            "hist_movie_id", vocab_size=sizes["movie_id"], embed_dim=dim, pooling="mean", shared_with="movie_id"
        )
    ]
    item_features = [SparseFeature(c, vocab_size=sizes[c], embed_dim=dim) for c in ITEM_COLS]
    params = {"dims": TUTORIAL["dims"], "activation": TUTORIAL["activation"]}
    return DSSM(user_features, item_features, temperature=0.02, user_params=dict(params), item_params=dict(params))


def ours_trainer(model, *, lr: float, batch_size: int, n_epoch: int = 1):
    from rechub_serving.train import MatchTrainer

    return MatchTrainer(
        model,
        mode=TUTORIAL["mode"],
        optimizer_params={"lr": lr, "weight_decay": TUTORIAL["weight_decay"]},
        n_epoch=n_epoch,
        batch_size=batch_size,
        progress=False,
        threads=1,
        earlystop_patience=0,
    )


def trh_trainer(model, model_dir: str, *, lr: float, n_epoch: int = 1):
    from torch_rechub.trainers import MatchTrainer

    return MatchTrainer(
        model,
        mode=TUTORIAL["mode"],
        optimizer_params={"lr": lr, "weight_decay": TUTORIAL["weight_decay"]},
        n_epoch=n_epoch,
        device="cpu",
        model_path=model_dir,
    )


def trh_loaders(data: TrhData, rows: np.ndarray | None, batch_size: int, workers: int):
    from torch_rechub.utils.data import MatchDataGenerator

    x = data.x_train if rows is None else {k: v[rows] for k, v in data.x_train.items()}
    dg = MatchDataGenerator(x=x, y=x["label"])
    return dg.generate_dataloader(data.x_test, data.all_item, batch_size=batch_size, num_workers=workers)


# -- throughput -------------------------------------------------------------------------------
def throughput(
    ours_data, trh_data: TrhData, n_samples: int, batch: int, repeats: int, workers: tuple[int, ...]
) -> dict[str, list[float]]:
    """samples/s of one pass over the same number of randomly drawn training rows, per library."""
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {"ours": []}
    for w in workers:
        rates[f"trh{w}"] = []
    n_ours = len(ours_data.train["item"])
    n_trh = len(trh_data.y_train)
    n_samples = min(n_samples, n_ours, n_trh)
    torch.manual_seed(0)
    model = ours_model(ours_data)
    trainer = ours_trainer(model, lr=TUTORIAL["lr"], batch_size=batch)
    torch.manual_seed(0)
    tmodel = trh_model(trh_data)
    with tempfile.TemporaryDirectory() as model_dir:
        ttrainer = trh_trainer(tmodel, model_dir, lr=TUTORIAL["lr"])
        for _ in range(repeats):  # interleaved, so both sides see the same machine load
            rows = rng.choice(n_ours, n_samples, replace=False)
            sub = dataclasses.replace(ours_data, train={k: v[rows] for k, v in ours_data.train.items()}, val=None)
            start = time.perf_counter()
            trainer.fit(sub)
            rates["ours"].append(n_samples / (time.perf_counter() - start))
            for w in workers:
                rows = rng.choice(n_trh, n_samples, replace=False)
                train_dl, _, _ = trh_loaders(trh_data, rows, batch, w)
                with contextlib.redirect_stdout(sys.stderr), contextlib.redirect_stderr(open(os.devnull, "w")):
                    start = time.perf_counter()
                    ttrainer.fit(train_dl)
                    rates[f"trh{w}"].append(n_samples / (time.perf_counter() - start))
    return {k: v for k, v in rates.items()} | {"n_samples": [n_samples]}


# -- quality ------------------------------------------------------------------------------------
def quality(csv: Path, epochs: int, batch: int, lr: float, workers: int) -> dict[str, Any]:
    """Train both for ``epochs`` epochs on the same leave-last-out split; score both with the same evaluator."""
    import torch

    from rechub_serving.train import evaluate_retrieval, popularity_baseline

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    data, _, _ = ours_prepare(csv, validation=False)  # train on all but the last item, like torch-rechub
    out["baseline"] = popularity_baseline(data, "test", ks=(10,))
    for label, temperature in (("ours", None), ("ours_t1", 1.0)):
        torch.manual_seed(0)
        model = ours_model(data, temperature)
        trainer = ours_trainer(model, lr=lr, batch_size=batch, n_epoch=epochs)
        start = time.perf_counter()
        trainer.fit(data)
        out[label] = trainer.evaluate(data, "test", ks=(10,)) | {
            "train_s": time.perf_counter() - start,
            "temperature": model.temperature,
        }
    tdata, _ = trh_prepare(csv)
    torch.manual_seed(0)
    tmodel = trh_model(tdata)
    with tempfile.TemporaryDirectory() as model_dir:
        ttrainer = trh_trainer(tmodel, model_dir, lr=lr, n_epoch=epochs)
        train_dl, test_dl, item_dl = trh_loaders(tdata, None, batch, workers)
        with contextlib.redirect_stdout(sys.stderr), contextlib.redirect_stderr(open(os.devnull, "w")):
            start = time.perf_counter()
            ttrainer.fit(train_dl)
            train_s = time.perf_counter() - start
            users = ttrainer.inference_embedding(tmodel, "user", test_dl, model_dir).numpy()
            items = ttrainer.inference_embedding(tmodel, "item", item_dl, model_dir).numpy()
    out["trh"] = evaluate_retrieval(
        users,
        items,
        np.asarray(tdata.x_test["movie_id"]),
        item_ids=np.asarray(tdata.all_item["movie_id"]),
        exclude=[np.asarray(h, dtype=np.int64) for h in tdata.hist_test],
        ks=(10,),
    ) | {"train_s": train_s}
    # Same split? Compare each user's test target (raw ids) between the two preparations.
    ours_targets = dict(
        zip(
            data.vocabularies["user_id"].decode(data.test.user).tolist(),
            data.vocabularies["movie_id"].decode(data.test.target).tolist(),
        )
    )
    out["n_test"] = (len(data.test), len(tdata.hist_test))
    out["train_rows"] = (len(data.train["item"]), len(tdata.y_train))
    out["same_targets"] = _same_targets(csv, tdata, ours_targets)
    return out


def _same_targets(csv: Path, tdata: TrhData, ours_targets: dict) -> float:
    """Share of test users whose held-out item is the same in both preparations (raw ids)."""
    import pandas as pd

    raw = pd.read_csv(csv, usecols=["user_id", "movie_id"])
    users = np.sort(raw["user_id"].unique())  # LabelEncoder codes are sorted-order + 1
    items = np.sort(raw["movie_id"].unique())
    trh = dict(
        zip(
            users[np.asarray(tdata.x_test["user_id"]) - 1].tolist(),
            items[np.asarray(tdata.x_test["movie_id"]) - 1].tolist(),
        )
    )
    common = [u for u in trh if u in ours_targets]
    return sum(trh[u] == ours_targets[u] for u in common) / max(len(common), 1)


NOTES = """## What differs between the two pipelines (read before the numbers)

- torch-rechub's `generate_seq_feature_match` loops over users and rows in Python and keeps every history as a
  Python list; `gen_model_input` then pads each list and converts the padded rows back to lists of Python ints
  before `df_to_dict` turns them into arrays. That last step dominates at 1M interactions, and memory grows with it.
  Ours works on int64 arrays only (sort, `bincount`, fancy indexing, chunked history gather).
- Split: both hold out each user's last interaction. Ours also holds out the one before it as a validation row
  (for early stopping) in sections 1 and 2, so it trains on one row fewer per user; section 3 switches that off.
- Negatives: both draw 3 per positive with probability proportional to count**0.75; ours never draws one of the
  user's own positives, torch-rechub does not check.
- torch-rechub 0.9.0's `DSSM.forward` returns `sigmoid(cos)`: the `temperature` argument (0.02 in its tutorial) is
  stored but the division is commented out, so its point-wise logits live in [-1, 1]. Ours divides by the
  temperature (0.1 by default for mode 0); section 3 also shows ours at temperature 1.0.
- torch-rechub's `MLP` always adds `BatchNorm1d` after each linear layer; ours is configured the same here
  (`batch_norm=True`), so the two models have the same layers and parameter count.
- torch-rechub trains through a `DataLoader` that collates one dict per sample; its tutorial uses
  `num_workers=8` (on this 2-core machine that is over-subscribed; torch warns). Ours gathers each batch by
  tensor indexing in the training process."""


# -- report -------------------------------------------------------------------------------------
def _fmt_s(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (under a minute): a smoke run, not a benchmark"
    )
    parser.add_argument("--interactions", type=int, default=1_000_000, help="full size of the preparation benchmark")
    parser.add_argument("--scaling", default="100000,200000,400000", help="smaller sizes timed for both libraries")
    parser.add_argument("--trh-timeout", type=float, default=300.0, help="cap (s) of one torch-rechub preparation run")
    parser.add_argument("--max-rss-mb", type=float, default=12_000, help="kill a preparation run above this memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--throughput-interactions", type=int, default=200_000)
    parser.add_argument("--samples", type=int, default=40 * 4096, help="training rows per throughput run")
    parser.add_argument("--workers", default="0,8", help="torch-rechub DataLoader workers to time (tutorial: 8)")
    parser.add_argument("--quality-interactions", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quality-batch", type=int, default=1024)
    parser.add_argument("--quality-lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=DOCS / "train-vs-torch-rechub.md")
    parser.add_argument("--_worker", choices=("ours", "trh"), help=argparse.SUPPRESS)
    parser.add_argument("--_csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        _worker(args._worker, args._csv, args.repeats, args._result)
        return args._result
    if args.quick:
        args.interactions, args.scaling, args.repeats = 20_000, "10000", 1
        args.throughput_interactions, args.samples, args.workers = 20_000, 4 * 1024, "0"
        args.quality_interactions, args.epochs, args.quality_batch = 10_000, 1, 512
    from importlib.metadata import version

    import torch
    import torch_rechub  # noqa: F401  (fail early when it is missing)

    started = time.perf_counter()
    sizes = sorted({int(s) for s in args.scaling.split(",") if s} | {args.interactions})
    workers = tuple(int(w) for w in args.workers.split(",") if w)
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        # 1. preparation
        prep_rows, trh_failed = [], False
        for n in sizes:
            csv = write_csv(tmpdir, n)
            ours = run_prep("ours", csv, args.repeats, max(args.trh_timeout, 120), args.max_rss_mb)
            if trh_failed:
                trh = {"skipped": True}
            else:
                trh = run_prep("trh", csv, 1, args.trh_timeout, args.max_rss_mb)
                if "prep_s" in trh and trh["prep_s"] < 20 and args.repeats > 1:  # cheap enough: median of repeats
                    trh = run_prep("trh", csv, args.repeats, args.trh_timeout, args.max_rss_mb)
                trh_failed = "prep_s" not in trh
            prep_rows.append((n, ours, trh))
            print(n, json.dumps(ours), json.dumps(trh), flush=True)
            csv.unlink()
        table = []
        for n, ours, trh in prep_rows:
            if "prep_s" in trh:
                trh_cells = [
                    _fmt_s(trh["prep_s"]),
                    _fmt_s(trh["read_s"]),
                    f"{trh['peak_rss_mb']:,.0f}",
                    f"{trh['rows']:,}",
                    f"**{trh['prep_s'] / ours['prep_s']:.0f}x**",
                    trh["runs"],
                ]
            else:
                if trh.get("timeout"):
                    why = f"killed after {args.trh_timeout:.0f} s"
                elif trh.get("memory"):
                    why = f"killed at {trh['rss_mb']:,.0f} MB RSS after {trh['wall_s']:.0f} s"
                elif trh.get("skipped"):
                    why = "not run (a smaller size did not finish)"
                else:
                    why = f"failed: {trh.get('error')}"
                trh_cells = [why, "", "", "", "", ""]
            table.append(
                [
                    f"{n:,}",
                    _fmt_s(ours["prep_s"]),
                    _fmt_s(ours["read_s"]),
                    f"{ours['peak_rss_mb']:,.0f}",
                    f"{ours['rows']:,}",
                    ours["runs"],
                    *trh_cells,
                ]
            )
        stage_lines = []
        both = [(n, o, t) for n, o, t in prep_rows if "prep_s" in t]
        for n, ours, trh in both[-1:]:  # the largest size both finished
            stage_lines.append(
                f"Stages at {n:,} interactions — ours: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in ours["stages"].items())
                + "; torch-rechub: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in trh["stages"].items())
                + "."
            )
        done = [(n, t["prep_s"]) for n, _, t in prep_rows if "prep_s" in t]
        scaling = ""
        if len(done) >= 2:
            (n0, t0), (n1, t1) = done[-2], done[-1]
            exponent = np.log(t1 / t0) / np.log(n1 / n0)
            scaling = (
                f"torch-rechub's preparation time grows as n^{exponent:.2f} between {n0:,} and {n1:,} "
                f"interactions (fixed 6,040 users, so histories get longer as n grows)."
            )
            if done[-1][0] < args.interactions:
                est = t1 * (args.interactions / n1) ** exponent
                scaling += (
                    f" Extrapolated to {args.interactions:,}: about {est:,.0f} s (an estimate, not a measurement)."
                )
        sections.append(
            f"## 1. Data preparation\n\nSame CSV for both, 6,040 users and 3,706 items (ML-1M-sized). "
            f"**ours** = `read_joined_csv` + `prepare_match_data(mode=0, seq_max_len=50, neg_ratio=3, "
            f'sample_method="popularity")` (encoding, leave-last-out split with a validation row, histories, '
            f"negatives excluding the user's positives), median of {args.repeats}. **torch-rechub** = `pd.read_csv` + "
            f"the tutorial's `LabelEncoder` on the 7 sparse features + `generate_seq_feature_match(mode=0, neg_ratio=3, "
            f"sample_method=1)` + `gen_model_input(seq_max_len=50)` for train and test; one run unless it takes under "
            f'20 s; capped at {args.trh_timeout:.0f} s. Each run in a fresh process; "prep s" excludes reading the CSV; '
            f"peak RSS is the whole process (CSV, torch import included).\n\n"
            + markdown_table(
                [
                    "interactions",
                    "ours prep s",
                    "ours read s",
                    "ours peak MB",
                    "ours train rows",
                    "ours runs",
                    "trh prep s",
                    "trh read s",
                    "trh peak MB",
                    "trh train rows",
                    "trh / ours",
                    "trh runs",
                ],
                table,
            )
            + "\n\n"
            + " ".join(stage_lines)
            + ("\n\n" + scaling if scaling else "")
        )
        # 2. throughput
        csv = write_csv(tmpdir, args.throughput_interactions)
        ours_data, _, _ = ours_prepare(csv)
        trh_data, _ = trh_prepare(csv)
        rates = throughput(ours_data, trh_data, args.samples, TUTORIAL["batch_size"], args.repeats, workers)
        n_samples = rates.pop("n_samples")[0]
        med = {k: statistics.median(v) for k, v in rates.items()}
        rows = [
            [
                "rechub-serving `MatchTrainer.fit` (tensor-indexed batches)",
                f"{med['ours']:,.0f}",
                "1.00x",
                ", ".join(f"{r:,.0f}" for r in rates["ours"]),
            ]
        ]
        for w in workers:
            label = f"torch-rechub `MatchTrainer.fit` (DataLoader, num_workers={w}{' = tutorial' if w == 8 else ''})"
            rows.append(
                [
                    label,
                    f"{med[f'trh{w}']:,.0f}",
                    f"{med[f'trh{w}'] / med['ours']:.2f}x",
                    ", ".join(f"{r:,.0f}" for r in rates[f"trh{w}"]),
                ]
            )
        ratio = " ".join(
            f"ours / torch-rechub (workers={w}): **{med['ours'] / med[f'trh{w}']:.1f}x**." for w in workers
        )
        sections.append(
            f"## 2. Training throughput\n\nDSSM, mode 0 (point-wise BCE), embeddings 16, towers [256, 128, 64] (Linear, BatchNorm, PReLU, as torch-rechub's MLP), "
            f"batch {TUTORIAL['batch_size']}, Adam lr {TUTORIAL['lr']}, one torch thread in the main process, "
            f"{n_samples:,} training rows drawn at random from each library's own preparation of the same "
            f"{args.throughput_interactions:,}-interaction CSV; one epoch over them, wall time of `fit` "
            f"(our validation is switched off so neither side evaluates); {args.repeats} runs interleaved.\n\n"
            + markdown_table(["trainer", "samples/s (median)", "relative", "runs"], rows)
            + f"\n\n{ratio}"
        )
        del ours_data, trh_data
        # 3. quality
        csv = write_csv(tmpdir, args.quality_interactions, n_users=5000, n_items=2000, in_cluster=0.9)
        q = quality(csv, args.epochs, args.quality_batch, args.quality_lr, workers=0)
        qrows = [
            [
                f"rechub-serving (temperature {q['ours']['temperature']})",
                f"{q['ours']['recall@10']:.4f}",
                f"{q['ours']['ndcg@10']:.4f}",
                f"{q['ours']['train_s']:.0f}",
            ],
            [
                "rechub-serving (temperature 1.0, what torch-rechub effectively uses)",
                f"{q['ours_t1']['recall@10']:.4f}",
                f"{q['ours_t1']['ndcg@10']:.4f}",
                f"{q['ours_t1']['train_s']:.0f}",
            ],
            [
                "torch-rechub 0.9.0 (its DSSM ignores `temperature`)",
                f"{q['trh']['recall@10']:.4f}",
                f"{q['trh']['ndcg@10']:.4f}",
                f"{q['trh']['train_s']:.0f}",
            ],
            ["most popular (unseen)", f"{q['baseline']['recall@10']:.4f}", f"{q['baseline']['ndcg@10']:.4f}", ""],
        ]
        sections.append(
            f"## 3. Quality after {args.epochs} epochs (same split, same evaluator)\n\n"
            f"{args.quality_interactions:,} interactions, 5,000 users, 2,000 items (`in_cluster=0.9`). Both train on "
            f"every interaction but each user's last (ours with `validation=False`, so no early stopping) and are "
            f"tested on the last one; same test item for {q['same_targets']:.1%} of users (timestamp ties may order "
            f"differently); training rows ours / torch-rechub {q['train_rows'][0]:,} / {q['train_rows'][1]:,}. "
            f"Mode 0, neg_ratio 3, popularity negatives, the tutorial's model, batch {args.quality_batch}, Adam lr "
            f"{args.quality_lr} (the tutorial's 1e-4 barely moves in {args.epochs} epochs), one thread. Both scored by "
            f"`rechub_serving.train.evaluate_retrieval` (exact cosine over all items, the user's earlier items "
            f"excluded), {q['n_test'][0]:,} / {q['n_test'][1]:,} test users.\n\n"
            + markdown_table(["model", "recall@10", "ndcg@10", "train s"], qrows)
        )
    header = (
        f"Generated by `python benchmarks/bench_train_vs_torch_rechub.py{' --quick' if args.quick else ''}` in "
        f"{time.perf_counter() - started:,.0f} s. rechub-serving vs torch-rechub {version('torch-rechub')}, "
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} cores. **The machine is shared with other jobs and noisy: absolute numbers move between "
        f"runs; the ratios (measured side by side in one run) are the result.**"
        + ("\n\n**Quick mode: tiny sizes, a smoke run — not a benchmark.**" if args.quick else "")
    )
    sections.append(NOTES)
    body = header + "\n\n" + "\n\n".join(sections) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Trainer: rechub-serving vs torch-rechub\n\n" + body)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
