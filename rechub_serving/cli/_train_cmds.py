"""``rechub-index train`` and ``rechub-index recommend`` (registered on the app by :func:`register`).

Nothing heavy is imported here at module level: torch and pandas load when
``train`` runs, onnxruntime when ``recommend`` runs.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import CliError, UsageProblem, parse_params, state

__all__ = ["example_features", "recommend_hint", "register"]

EXAMPLE_FILE = "example_request.json"  # written by `train` next to the towers (rechub_serving.train.artifacts)


def recommend_hint(model_dir: Path | str | None, example: Mapping[str, Any]) -> str:
    """A pasteable ``rechub-index recommend`` command line for one user's raw features."""
    target = shlex.quote(str(model_dir)) if model_dir is not None else "MODEL_DIR"
    return f"rechub-index recommend {target} --features {shlex.quote(json.dumps(example))}"


def example_features(model_dir: Path | None, user_tower: Path | None) -> dict[str, Any] | None:
    """The example request saved by `train`, or one made from the tower's metadata (first vocabulary values)."""
    if model_dir is not None and (Path(model_dir) / EXAMPLE_FILE).is_file():
        try:
            return json.loads((Path(model_dir) / EXAMPLE_FILE).read_text())
        except ValueError:
            pass
    tower = user_tower or (Path(model_dir) / "user_tower.onnx" if model_dir is not None else None)
    if tower is None or not Path(tower).is_file():
        return None
    try:
        from rechub_serving.retriever import read_tower_metadata

        meta = read_tower_metadata(tower)
    except Exception:  # an unreadable tower: the Retriever reports it properly later
        return None
    vocabs = meta.get("vocabularies", {})
    out: dict[str, Any] = {}
    for spec in meta.get("inputs", []):
        values = vocabs.get(spec.get("vocabulary") or "", {}).get("values", [])
        if spec["type"] == "dense":
            out[spec["name"]] = 0.0
        elif spec["type"] == "sequence":
            out[spec["name"]] = values[:3]
        else:
            out[spec["name"]] = values[0] if values else None
    return out


def _with_example(message: str, model_dir: Path | None, user_tower: Path | None) -> str:
    example = example_features(model_dir, user_tower)
    if example is None:
        return message + '; e.g. --features \'{"user_id": 1, "hist_movie_id": [1, 2]}\' with every feature of the tower'
    return f"{message}. A complete example for this model:\n  {recommend_hint(model_dir, example)}"


def _check_features(payload: Any, model_dir: Path | None, user_tower: Path) -> None:
    """Refuse a request that lacks a feature of the tower, with a complete example to paste."""
    if hasattr(payload, "columns"):
        present = set(map(str, payload.columns))
    elif isinstance(payload, Mapping):
        present = set(payload)
    elif isinstance(payload, Sequence) and payload and all(isinstance(r, Mapping) for r in payload):
        present = set.intersection(*(set(r) for r in payload))
    else:
        raise UsageProblem(
            _with_example(
                "the user features must be a JSON object (one user, or a dict of columns) or a list of objects",
                model_dir,
                user_tower,
            )
        )
    try:
        from rechub_serving.retriever import read_tower_metadata

        names = [spec["name"] for spec in read_tower_metadata(user_tower)["inputs"]]
    except Exception:  # the Retriever reports an unreadable tower with its own message
        return
    missing = [n for n in names if n not in present]
    if missing:
        raise UsageProblem(
            _with_example(f"the user features lack {missing}; the user tower takes {names}", model_dir, user_tower)
        )


def _load_features(
    features: str | None, features_file: Path | None, model_dir: Path | None = None, user_tower: Path | None = None
) -> Any:
    if (features is None) == (features_file is None):
        raise UsageProblem(
            _with_example(
                "give the user features with exactly one of --features JSON or --features-file FILE",
                model_dir,
                user_tower,
            )
        )
    if features is not None:
        try:
            return json.loads(features)
        except ValueError as exc:
            raise UsageProblem(_with_example(f"--features is not valid JSON ({exc})", model_dir, user_tower)) from None
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
        download: Annotated[
            str | None,
            typer.Option(
                "--download",
                help="Download a MovieLens data set (ml-100k or ml-1m) into the cache and train on it.",
                show_default=False,
            ),
        ] = None,
        download_url: Annotated[
            str | None, typer.Option("--download-url", help="A mirror of the --download archive.", show_default=False)
        ] = None,
        download_sha256: Annotated[
            str | None,
            typer.Option(
                "--download-sha256", help="sha256 of the mirror's archive (with --download-url).", show_default=False
            ),
        ] = None,
        cache_dir: Annotated[
            Path | None,
            typer.Option(
                "--cache-dir", help="Download cache (default $RECHUB_SERVING_CACHE or ~/.cache/rechub-serving)."
            ),
        ] = None,
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Directory for the towers, vocabularies, embeddings and index.")
        ] = Path("rechub-model"),
        user_tower: Annotated[
            str,
            typer.Option("--user-tower", help="sequence (self-attention over the history) or mlp (pooled history)."),
        ] = "sequence",
        mode: Annotated[
            int, typer.Option("--mode", help="0 point-wise BCE, 1 pair-wise BPR, 2 list-wise in-batch softmax.")
        ] = 2,
        epochs: Annotated[
            int, typer.Option("--epochs", help="Maximum epochs (early stopping on validation recall@10).")
        ] = 100,
        patience: Annotated[
            int, typer.Option("--patience", help="Stop after this many epochs without a better validation recall.")
        ] = 5,
        embed_dim: Annotated[int, typer.Option("--embed-dim", help="Embedding size of every feature.")] = 32,
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
        threads: Annotated[
            int | None,
            typer.Option("--threads", help="torch threads while training (default 1, or $RECHUB_TRAIN_THREADS)."),
        ] = None,
        checkpoint: Annotated[
            Path | None,
            typer.Option(
                "--checkpoint", help="Write a training checkpoint here after every epoch.", show_default=False
            ),
        ] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue the training saved in --checkpoint.")] = False,
        device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty --output.")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    ) -> None:
        """Train a DSSM two-tower model; write ONNX towers, vocabularies, item embeddings and a saved index."""
        state.update(json=json_out, quiet=quiet, debug=debug)
        if sum([data is not None, synthetic, download is not None]) != 1:
            raise UsageProblem("give exactly one of a DATA path, --synthetic or --download ml-100k|ml-1m")
        if user_tower not in ("sequence", "mlp"):
            raise UsageProblem(f"--user-tower must be sequence or mlp, got {user_tower!r}")
        if resume and checkpoint is None:
            raise UsageProblem("--resume continues the training in --checkpoint DIR; give --checkpoint")
        if (download_url is None) != (download_sha256 is None):
            raise UsageProblem("--download-url and --download-sha256 go together (the archive is checked before use)")
        if output.exists() and any(output.iterdir()) and not overwrite:
            raise CliError(f"{output} exists and is not empty; pass --overwrite or choose another --output")
        index_params = parse_params(param)
        try:
            from rechub_serving.train import make_synthetic, read_movielens, train_dssm
            from rechub_serving.train.artifacts import example_request, write_artifacts
        except ImportError as exc:
            raise CliError(
                f"rechub-index train needs the train extra ({exc}): pip install 'rechub-serving[train]'"
            ) from None
        if download is not None:
            data = _download(download, download_url, download_sha256, cache_dir)
        if synthetic:
            state.note(f"generating {n_interactions} synthetic interactions ({n_users} users, {n_items} items) ...")
            movielens = make_synthetic(n_users, n_items, n_interactions, seed=seed)
        else:
            state.note(f"reading {data} ...")
            movielens = read_movielens(data)
        state.note(
            f"training DSSM ({user_tower} user tower, mode {mode}) on {len(movielens.ratings)} interactions, "
            f"up to {epochs} epochs with early stopping ..."
        )
        result = train_dssm(
            movielens, mode=mode, user_tower=user_tower, seq_max_len=seq_max_len, neg_ratio=neg_ratio,
            sample_method=sample_method, embed_dim=embed_dim, temperature=temperature, n_epoch=epochs,
            earlystop_patience=patience, batch_size=batch_size, lr=lr, device=device, seed=seed, threads=threads,
            progress=not (quiet or json_out), model_path=str(checkpoint) if checkpoint else None, resume=resume,
        )  # fmt: skip
        paths = write_artifacts(result, output, backend=backend, index_params=index_params)
        example = example_request(result.data)
        hint = recommend_hint(output, example)
        seconds = sum(h.get("seconds", 0.0) for h in result.history)
        summary = {
            "output": str(output),
            "files": {k: str(v) for k, v in paths.items()},
            "user_tower": user_tower,
            "test": result.metrics,
            "most_popular": result.baseline,
            "epochs": len(result.history),
            "train_seconds": seconds,
            "example_request": example,
            "next": hint,
        }
        if state.json:
            state.emit_json(summary)
            return
        if state.quiet:
            return
        from rich.table import Table

        table = Table(
            title=f"DSSM ({user_tower} user tower, mode {mode}): test split (leave-last-out), seen items excluded"
        )
        for col in ("metric", "DSSM", "most popular"):
            table.add_column(col, justify="right" if col != "metric" else "left")
        for key, value in result.metrics.items():
            table.add_row(key, f"{value:.4f}", f"{result.baseline.get(key, float('nan')):.4f}")
        state.out().print(table)
        state.out().print(
            f"{len(result.history)} epochs, {seconds:.0f} s of training. wrote {output}: user_tower.onnx, "
            f"item_tower.onnx, vocabularies.json, item_embeddings.npy, items.index/, {EXAMPLE_FILE}",
            highlight=False,
        )
        state.out().print(f"next (the first user of the data):\n{hint}", highlight=False, markup=False, soft_wrap=True)

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
        payload = _load_features(features, features_file, model_dir, user_tower)
        _check_features(payload, model_dir, user_tower)
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


def _download(name: str, url: str | None, sha256: str | None, cache_dir: Path | None) -> Path:
    """Download (or reuse from the cache) a MovieLens archive; a failure says how to get the data by hand."""
    from rechub_serving import RechubError
    from rechub_serving.train.movielens import DATASETS, download_movielens

    if name not in DATASETS:
        raise UsageProblem(f"--download {name!r} is not a known data set; use one of {', '.join(DATASETS)}")
    official = DATASETS[name]["url"]
    state.note(f"fetching {name} (cached after the first time) ...")
    try:
        return download_movielens(name, cache_dir, url=url, sha256=sha256)
    except RechubError as exc:
        raise CliError(
            f"{exc}\nWithout network access: download {official} on a machine that has it, unzip it here and "
            f"run `rechub-index train {name}/ -o MODEL_DIR` (or pass a mirror with --download-url and "
            "--download-sha256)."
        ) from None
