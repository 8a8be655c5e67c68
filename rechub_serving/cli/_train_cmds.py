"""``rechub-index train`` and ``rechub-index recommend`` (registered on the app by :func:`register`).

Nothing heavy is imported here at module level: torch and pandas load when
``train`` runs, onnxruntime when ``recommend`` runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import CliError, UsageProblem, parse_params, state

__all__ = ["register"]


def _load_features(features: str | None, features_file: Path | None) -> Any:
    if (features is None) == (features_file is None):
        raise UsageProblem("give the user features with exactly one of --features JSON or --features-file FILE")
    if features is not None:
        try:
            return json.loads(features)
        except ValueError as exc:
            raise UsageProblem(
                f'--features is not valid JSON ({exc}); e.g. --features \'{{"user_id": 1, "hist_movie_id": [1, 2]}}\''
            ) from None
    path = Path(features_file)
    if not path.is_file():
        raise CliError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return json.loads(path.read_text())
    if suffix in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if suffix in (".csv", ".tsv", ".parquet"):
        try:
            import pandas as pd
        except ImportError:
            raise CliError(f"reading {suffix} needs pandas: pip install 'rechub-serving[io]'") from None
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise UsageProblem(f"{path}: use a .json, .jsonl, .csv, .tsv or .parquet file of user features")


def register(app: typer.Typer) -> None:
    """Add the ``train`` and ``recommend`` commands to ``app``."""

    @app.command()
    def train(
        data: Annotated[
            Path | None,
            typer.Argument(
                help="MovieLens data: an ML-1M or ML-100K directory, or torch-rechub's joined CSV.", show_default=False
            ),
        ] = None,
        synthetic: Annotated[
            bool, typer.Option("--synthetic", help="Train on generated MovieLens-shaped data instead.")
        ] = False,
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Directory for the towers, vocabularies, embeddings and index.")
        ] = Path("rechub-model"),
        mode: Annotated[
            int, typer.Option("--mode", help="0 point-wise BCE, 1 pair-wise BPR, 2 list-wise in-batch softmax.")
        ] = 2,
        epochs: Annotated[
            int, typer.Option("--epochs", help="Maximum epochs (early stopping on validation recall@10).")
        ] = 5,
        embed_dim: Annotated[int, typer.Option("--embed-dim", help="Embedding size of every feature.")] = 16,
        batch_size: Annotated[int, typer.Option("--batch-size")] = 1024,
        lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
        seq_max_len: Annotated[int, typer.Option("--seq-max-len", help="History length (left-padded).")] = 50,
        neg_ratio: Annotated[int, typer.Option("--neg-ratio", help="Negatives per positive (modes 0 and 1).")] = 3,
        sample_method: Annotated[
            str, typer.Option("--sample-method", help="Negative sampling: uniform or popularity.")
        ] = "uniform",
        temperature: Annotated[
            float | None, typer.Option("--temperature", help="Divides the cosine logits (default per mode).")
        ] = None,
        backend: Annotated[str, typer.Option("--backend", "-b", help="Backend of the saved item index.")] = "numpy",
        param: Annotated[
            list[str] | None, typer.Option("--param", "-p", help="Index parameter key=value (repeatable).")
        ] = None,
        n_users: Annotated[int, typer.Option("--n-users", help="Synthetic users.")] = 2000,
        n_items: Annotated[int, typer.Option("--n-items", help="Synthetic items.")] = 1000,
        n_interactions: Annotated[int, typer.Option("--n-interactions", help="Synthetic interactions.")] = 100_000,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        threads: Annotated[int | None, typer.Option("--threads", help="torch threads while training.")] = None,
        device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty --output.")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    ) -> None:
        """Train a DSSM two-tower model; write ONNX towers, vocabularies, item embeddings and a saved index."""
        state.update(json=json_out, quiet=quiet, debug=debug)
        if (data is None) == (not synthetic):
            raise UsageProblem("give a DATA path or --synthetic (not both)")
        if output.exists() and any(output.iterdir()) and not overwrite:
            raise CliError(f"{output} exists and is not empty; pass --overwrite or choose another --output")
        index_params = parse_params(param)
        try:
            from rechub_serving.train import make_synthetic, read_movielens, train_dssm
            from rechub_serving.train.artifacts import write_artifacts
        except ImportError as exc:
            raise CliError(
                f"rechub-index train needs the train extra ({exc}): pip install 'rechub-serving[train]'"
            ) from None
        if synthetic:
            state.note(f"generating {n_interactions} synthetic interactions ({n_users} users, {n_items} items) ...")
            movielens = make_synthetic(n_users, n_items, n_interactions, seed=seed)
        else:
            state.note(f"reading {data} ...")
            movielens = read_movielens(data)
        state.note(f"training DSSM (mode {mode}) on {len(movielens.ratings)} interactions ...")
        result = train_dssm(
            movielens, mode=mode, seq_max_len=seq_max_len, neg_ratio=neg_ratio, sample_method=sample_method,
            embed_dim=embed_dim, temperature=temperature, n_epoch=epochs, batch_size=batch_size, lr=lr,
            device=device, seed=seed, threads=threads, progress=not (quiet or json_out),
        )  # fmt: skip
        paths = write_artifacts(result, output, backend=backend, index_params=index_params)
        summary = {
            "output": str(output),
            "files": {k: str(v) for k, v in paths.items()},
            "test": result.metrics,
            "most_popular": result.baseline,
            "epochs": len(result.history),
        }
        if state.json:
            state.emit_json(summary)
            return
        if state.quiet:
            return
        from rich.table import Table

        table = Table(title=f"DSSM mode {mode}: test split (leave-last-out), seen items excluded")
        for col in ("metric", "DSSM", "most popular"):
            table.add_column(col, justify="right" if col != "metric" else "left")
        for key, value in result.metrics.items():
            table.add_row(key, f"{value:.4f}", f"{result.baseline.get(key, float('nan')):.4f}")
        state.out().print(table)
        state.out().print(
            f"wrote {output}: user_tower.onnx, item_tower.onnx, vocabularies.json, item_embeddings.npy, items.index/"
        )
        state.note(f"next: rechub-index recommend {output} --features '{{\"user_id\": 1, ...}}'")

    @app.command()
    def recommend(
        model_dir: Annotated[
            Path | None, typer.Argument(help="The --output directory of `rechub-index train`.", show_default=False)
        ] = None,
        features: Annotated[
            str | None,
            typer.Option("--features", "-f", help="User features as JSON: one user's dict or a dict of columns."),
        ] = None,
        features_file: Annotated[
            Path | None, typer.Option("--features-file", help="User features: .json, .jsonl, .csv or .parquet.")
        ] = None,
        user_tower: Annotated[
            Path | None, typer.Option("--user-tower", help="ONNX user tower (default MODEL_DIR/user_tower.onnx).")
        ] = None,
        index: Annotated[
            Path | None, typer.Option("--index", help="Saved item index (default MODEL_DIR/items.index).")
        ] = None,
        k: Annotated[int, typer.Option("-k", "--k", help="Items per user.")] = 10,
        include_seen: Annotated[
            bool, typer.Option("--include-seen", help="Do not exclude the items in the user's history.")
        ] = False,
        param: Annotated[
            list[str] | None, typer.Option("--param", "-p", help="Search parameter key=value (repeatable).")
        ] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    ) -> None:
        """Recommend items: raw user features -> ONNX user tower -> saved index -> item ids (seen items excluded)."""
        state.update(json=json_out, quiet=quiet, debug=debug)
        if model_dir is None and (user_tower is None or index is None):
            raise UsageProblem("give MODEL_DIR, or both --user-tower and --index")
        user_tower = user_tower or model_dir / "user_tower.onnx"
        index = index or model_dir / "items.index"
        payload = _load_features(features, features_file)
        from rechub_serving.retriever import Retriever

        with Retriever(user_tower, index, k=k, **parse_params(param)) as retriever:
            recs = retriever.recommend(payload, k=k, exclude_seen=not include_seen)
        rows = recs.to_lists()
        if state.json:
            state.emit_json([[{"item_id": i, "score": s} for i, s in row] for row in rows])
            return
        from rich.table import Table

        table = Table(title=f"top {k} items per user")
        for col in ("user", "rank", "item_id", "score"):
            table.add_column(col, justify="right")
        for u, row in enumerate(rows):
            for r, (item, score) in enumerate(row):
                table.add_row(str(u), str(r + 1), str(item), f"{score:.4f}")
        state.out().print(table)
