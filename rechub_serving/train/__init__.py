"""The trainer: MovieLens data, DSSM two-tower models, ONNX towers (extra ``[train]``: torch, pandas).

The recipe of torch-rechub's DSSM tutorial, in a few lines::

    from rechub_serving.train import read_movielens, train_dssm
    result = train_dssm(read_movielens("ml-1m/"))  # sequence user tower, early stopping
    result.metrics, result.baseline

Data modules need numpy and pandas only; the model, trainer and export need
torch and are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from .features import DenseFeature, SequenceFeature, SparseFeature
from .movielens import MovieLens, download_movielens, read_joined_csv, read_ml1m, read_ml100k, read_movielens
from .preprocess import (
    PAD,
    UNK,
    EvalSplit,
    MatchData,
    Vocabulary,
    build_histories,
    leave_last_out,
    load_vocabularies,
    prepare_match_data,
    sample_negatives,
    save_vocabularies,
    sequence_windows,
)
from .synthetic import make_synthetic, write_synthetic

_LAZY = {
    "DSSM": ".model",
    "MLP": ".model",
    "MatchTrainer": ".trainer",
    "popularity_baseline": ".trainer",
    "ExportError": ".export",
    "ExportResult": ".export",
    "export_towers": ".export",
    "model_hash": ".export",
    "save_item_index": ".export",
    "most_popular_baseline": ".evaluate",
    "ranking_metrics": ".evaluate",
    "QuickEmbeddings": ".pipeline",
    "TrainResult": ".pipeline",
    "build_dssm": ".pipeline",
    "quick_embeddings": ".pipeline",
    "train_dssm": ".pipeline",
    "plot_model": ".viz",
    "VizUnavailableError": ".viz",
    "write_artifacts": ".artifacts",
    "example_request": ".artifacts",
    "Checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "SequenceTower": ".model",
    "evaluate_retrieval": ".evaluate",
}

__all__ = [
    "PAD",
    "UNK",
    "DenseFeature",
    "EvalSplit",
    "MatchData",
    "MovieLens",
    "SequenceFeature",
    "SparseFeature",
    "Vocabulary",
    "build_histories",
    "download_movielens",
    "leave_last_out",
    "load_vocabularies",
    "make_synthetic",
    "prepare_match_data",
    "read_joined_csv",
    "read_ml1m",
    "read_ml100k",
    "read_movielens",
    "sample_negatives",
    "save_vocabularies",
    "sequence_windows",
    "write_synthetic",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
