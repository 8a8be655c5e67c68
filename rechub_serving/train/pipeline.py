"""The whole recipe in a few calls: data -> MatchData -> DSSM -> trained towers -> metrics.

Used by ``rechub-index train``, :func:`quick_embeddings`, the benchmarks and
the tests; every step is also callable on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .features import SequenceFeature, SparseFeature
from .movielens import MovieLens
from .preprocess import MatchData, prepare_match_data

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DEFAULT_USER_TOWER",
    "QuickEmbeddings",
    "TrainResult",
    "build_dssm",
    "quick_embeddings",
    "train_dssm",
]

logger = logging.getLogger("rechub_serving.train")

# Per training mode: the temperature that works for cosine logits with that loss.
DEFAULT_TEMPERATURE = {0: 0.1, 1: 0.1, 2: 0.2}
# Defaults chosen by the sweeps in docs/benchmarks/train-sweep.md.
DEFAULT_USER_TOWER = "sequence"
DEFAULT_EMBED_DIM = 32
DEFAULT_LR = 1e-3
DEFAULT_MAX_EPOCHS = 100  # the same as trainer.DEFAULT_MAX_EPOCHS (the trainer module needs torch)
DEFAULT_PATIENCE = 5
DEFAULT_TOWER_PARAMS: dict[str, Any] = {"dims": [128, 64, 32], "activation": "prelu"}


def build_dssm(
    data: MatchData,
    *,
    embed_dim: int = DEFAULT_EMBED_DIM,
    user_params: Mapping[str, Any] | None = None,
    item_params: Mapping[str, Any] | None = None,
    temperature: float | None = None,
    pooling: str = "mean",
    user_tower: str = DEFAULT_USER_TOWER,
):
    """A DSSM over the features of ``data`` (the history shares the item id's embedding table).

    Multi-valued item features (``genres``) become mean-pooled sequence
    features of the item tower. ``user_tower``: ``"sequence"`` (self-attention
    over the history) or ``"mlp"`` (mean-pooled history).
    """
    from .model import DSSM

    sizes = data.feature_sizes()
    user_features: list = [SparseFeature(f, sizes[f], embed_dim) for f in data.user_features]
    user_features.append(
        SequenceFeature(data.hist_col, sizes[data.item_col], embed_dim, shared_with=data.item_col, pooling=pooling)
    )
    item_features: list = []
    for f in data.item_features:
        if np.ndim(data.item_table[f]) == 2:
            item_features.append(SequenceFeature(f, sizes[f], embed_dim, pooling="mean"))
        else:
            item_features.append(SparseFeature(f, sizes[f], embed_dim))
    params = dict(DEFAULT_TOWER_PARAMS)
    return DSSM(
        user_features,
        item_features,
        user_params=dict(user_params or params),
        item_params=dict(item_params or params),
        temperature=temperature if temperature is not None else DEFAULT_TEMPERATURE[data.mode],
        user_tower=user_tower,
        seq_max_len=data.seq_max_len,
    )


@dataclass
class TrainResult:
    """A trained model with its data, trainer, metrics and the popularity baseline."""

    data: MatchData
    model: Any
    trainer: Any
    metrics: dict[str, float]
    baseline: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)

    def item_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(raw item ids, item vectors) of the whole catalogue."""
        vectors = self.trainer.inference_embedding("item", self.data)
        return self.data.raw_item_ids(self.data.catalog), vectors


def train_dssm(
    movielens: MovieLens,
    *,
    mode: int = 2,
    user_tower: str = DEFAULT_USER_TOWER,
    seq_max_len: int = 50,
    neg_ratio: int = 3,
    sample_method: str = "uniform",
    embed_dim: int = DEFAULT_EMBED_DIM,
    user_params: Mapping[str, Any] | None = None,
    item_params: Mapping[str, Any] | None = None,
    temperature: float | None = None,
    n_epoch: int = DEFAULT_MAX_EPOCHS,
    batch_size: int = 1024,
    lr: float = DEFAULT_LR,
    weight_decay: float = 1e-6,
    earlystop_patience: int = DEFAULT_PATIENCE,
    logq_correction: bool | None = None,
    ks: Sequence[int] = (10, 50),
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
    model_path: str | None = None,
    resume: bool = False,
    item_features: Sequence[str] | None = None,
) -> TrainResult:
    """Prepare the data, build and train a DSSM, and evaluate it against most-popular on the test split.

    ``logq_correction`` defaults to on for the list-wise mode: without it the
    in-batch softmax over-penalises popular items and loses to most-popular.
    The defaults (sequence user tower, embeddings of 32, lr 1e-3, up to 100
    epochs with early stopping after 5 without a better validation recall)
    come from the sweeps in ``docs/benchmarks/train-sweep.md``.
    ``model_path``: a checkpoint directory written after every epoch;
    ``resume=True`` continues the training saved there.
    """
    import torch

    from .trainer import MatchTrainer, popularity_baseline

    data = prepare_match_data(
        movielens,
        mode=mode,
        seq_max_len=seq_max_len,
        neg_ratio=neg_ratio,
        sample_method=sample_method,
        seed=seed,
        item_features=item_features,
    )
    torch.manual_seed(seed)
    model = build_dssm(
        data,
        embed_dim=embed_dim,
        user_params=user_params,
        item_params=item_params,
        temperature=temperature,
        user_tower=user_tower,
    )
    trainer = MatchTrainer(
        model,
        mode=mode,
        optimizer_params={"lr": lr, "weight_decay": weight_decay},
        n_epoch=n_epoch,
        batch_size=batch_size,
        earlystop_patience=earlystop_patience,
        logq_correction=(mode == 2) if logq_correction is None else logq_correction,
        device=device,
        seed=seed,
        progress=progress,
        threads=threads,
        model_path=model_path,
    )
    history = trainer.fit(data, resume=resume)
    metrics = trainer.evaluate(data, "test", ks=ks)
    baseline = popularity_baseline(data, "test", ks=ks)
    return TrainResult(data, model, trainer, metrics, baseline, history)


@dataclass
class QuickEmbeddings:
    """Small trained embeddings for demos: raw ids, L2-normalised vectors and each user's seen items."""

    item_vectors: np.ndarray
    item_ids: np.ndarray
    user_vectors: np.ndarray
    user_ids: np.ndarray
    seen: list[list[Any]]
    metrics: dict[str, float] = field(default_factory=dict)

    def __iter__(self):
        """Unpacks as ``item_vectors, item_ids, user_vectors, user_ids, seen``."""
        return iter((self.item_vectors, self.item_ids, self.user_vectors, self.user_ids, self.seen))


def quick_embeddings(
    seed: int = 0,
    *,
    n_users: int = 500,
    n_items: int = 300,
    n_interactions: int = 15_000,
    n_epoch: int = 4,
    embed_dim: int = 16,
    progress: bool = False,
) -> QuickEmbeddings:
    """Train a tiny DSSM (list-wise) on synthetic data in a few seconds on CPU.

    User vectors encode each user's full training history (the input of the
    test split); ``seen`` lists the raw item ids the user already interacted
    with (exclude them when querying).
    """
    from .synthetic import make_synthetic

    movielens = make_synthetic(n_users, n_items, n_interactions, in_cluster=0.9, seed=seed)
    result = train_dssm(
        movielens,
        mode=2,
        n_epoch=n_epoch,
        embed_dim=embed_dim,
        batch_size=256,
        lr=3e-3,
        seed=seed,
        progress=progress,
        ks=(10,),
    )
    data, trainer = result.data, result.trainer
    item_ids, item_vectors = result.item_embeddings()
    users = trainer.inference_embedding("user", data, "test")
    raw_users = data.vocabularies[data.user_col].decode(data.test.user)
    item_vocab = data.vocabularies[data.item_col]
    seen = [item_vocab.decode(s).tolist() for s in data.test.seen(data.sorted_items)]
    return QuickEmbeddings(
        item_vectors=item_vectors,
        item_ids=item_ids.astype(np.int64) if all(isinstance(i, (int, np.integer)) for i in item_ids) else item_ids,
        user_vectors=users,
        user_ids=raw_users.astype(np.int64) if all(isinstance(i, (int, np.integer)) for i in raw_users) else raw_users,
        seen=seen,
        metrics=result.metrics,
    )
