"""DSSM: two MLP towers over feature embeddings, L2-normalised outputs, cosine / temperature logits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._errors import InvalidParameterError
from .features import DenseFeature, Feature, SequenceFeature, SparseFeature

__all__ = ["DSSM", "MLP", "EmbeddingLayer", "Tower"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "prelu": nn.PReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "dice": None,
}


def _activation(name: str) -> nn.Module:
    key = name.lower()
    if key not in _ACTIVATIONS or _ACTIVATIONS[key] is None:
        raise InvalidParameterError(f"unknown activation {name!r}; use one of relu, prelu, tanh, sigmoid, gelu")
    return _ACTIVATIONS[key]()


class MLP(nn.Module):
    """Linear layers with optional batch norm, an activation and dropout after each."""

    def __init__(
        self,
        input_dim: int,
        dims: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        if not dims:
            raise InvalidParameterError("an MLP tower needs at least one layer in dims")
        layers: list[nn.Module] = []
        for dim in dims:
            layers.append(nn.Linear(input_dim, dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(dim))
            layers.append(_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            input_dim = dim
        self.net = nn.Sequential(*layers)
        self.output_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EmbeddingLayer(nn.Module):
    """One embedding table per feature (or per ``shared_with`` group) for all towers."""

    def __init__(self, features: Sequence[Feature], init_std: float = 0.05):
        super().__init__()
        self.tables = nn.ModuleDict()
        owners: dict[str, SparseFeature] = {}
        for f in features:
            if isinstance(f, SparseFeature) and f.shared_with is None:
                owners[f.name] = f
        for f in features:
            if not isinstance(f, SparseFeature):
                continue
            owner = owners.get(f.table)
            if owner is None:
                raise InvalidParameterError(
                    f"feature {f.name!r} is shared_with {f.shared_with!r}, which is not a feature of the model"
                )
            if (owner.vocab_size, owner.embed_dim) != (f.vocab_size, f.embed_dim):
                raise InvalidParameterError(
                    f"feature {f.name!r} shares {owner.name!r}'s table but has vocab_size/embed_dim "
                    f"{f.vocab_size}/{f.embed_dim}, not {owner.vocab_size}/{owner.embed_dim}"
                )
        for name, f in owners.items():
            table = nn.Embedding(f.vocab_size, f.embed_dim, padding_idx=f.padding_idx)
            nn.init.normal_(table.weight, 0.0, init_std)
            if f.padding_idx is not None:
                with torch.no_grad():
                    table.weight[f.padding_idx].zero_()
            self.tables[name] = table

    def forward(self, x: Mapping[str, torch.Tensor], features: Sequence[Feature]) -> torch.Tensor:
        parts = []
        for f in features:
            value = x[f.name]
            if isinstance(f, SequenceFeature):
                emb = self.tables[f.table](value)  # (B, L, D)
                mask = (value != f.padding_idx).unsqueeze(-1).to(emb.dtype)
                pooled = (emb * mask).sum(dim=1)
                if f.pooling == "mean":
                    pooled = pooled / mask.sum(dim=1).clamp(min=1.0)
                parts.append(pooled)
            elif isinstance(f, SparseFeature):
                parts.append(self.tables[f.table](value))
            else:
                v = value.to(torch.float32)
                parts.append(v.unsqueeze(-1) if v.dim() == 1 else v)
        return torch.cat(parts, dim=-1)


class Tower(nn.Module):
    """Features -> embeddings -> MLP -> L2-normalised vector."""

    def __init__(self, features: Sequence[Feature], embedding: EmbeddingLayer, params: Mapping[str, Any]):
        super().__init__()
        unknown = set(params) - {"dims", "activation", "dropout", "batch_norm"}
        if unknown:
            raise InvalidParameterError(
                f"unknown tower parameters {sorted(unknown)}; use dims, activation, dropout, batch_norm"
            )
        self.features = list(features)
        self.embedding = embedding
        input_dim = sum(f.output_dim for f in self.features)
        self.mlp = MLP(
            input_dim,
            list(params.get("dims", [256, 128, 64])),
            activation=params.get("activation", "prelu"),
            dropout=float(params.get("dropout", 0.0)),
            batch_norm=bool(params.get("batch_norm", False)),
        )
        self.output_dim = self.mlp.output_dim

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.mlp(self.embedding(x, self.features)), p=2.0, dim=-1)


class DSSM(nn.Module):
    """Deep Structured Semantic Model: a user tower and an item tower scored by cosine / temperature.

    ``user_params`` / ``item_params``: ``dims`` (layer sizes, the last is the
    embedding dimension; both towers must end with the same size),
    ``activation`` (relu, prelu, tanh, sigmoid, gelu), ``dropout``, ``batch_norm``.
    ``temperature`` divides the cosine: ``forward`` returns the logits
    ``cos(u, i) / temperature``.
    """

    def __init__(
        self,
        user_features: Sequence[Feature],
        item_features: Sequence[Feature],
        user_params: Mapping[str, Any] | None = None,
        item_params: Mapping[str, Any] | None = None,
        temperature: float = 1.0,
    ):
        super().__init__()
        if temperature <= 0:
            raise InvalidParameterError(f"temperature must be > 0, got {temperature}")
        names = [f.name for f in [*user_features, *item_features]]
        if len(set(names)) != len(names):
            raise InvalidParameterError(f"feature names must be unique across towers, got {names}")
        self.user_features = list(user_features)
        self.item_features = list(item_features)
        self.user_params = dict(user_params or {})
        self.item_params = dict(item_params or {})
        self.temperature = float(temperature)
        self.embedding = EmbeddingLayer([*self.user_features, *self.item_features])
        self.user_tower = Tower(self.user_features, self.embedding, self.user_params)
        self.item_tower = Tower(self.item_features, self.embedding, self.item_params)
        if self.user_tower.output_dim != self.item_tower.output_dim:
            raise InvalidParameterError(
                f"the towers end with different sizes ({self.user_tower.output_dim} vs {self.item_tower.output_dim}); "
                "make the last entries of user_params['dims'] and item_params['dims'] equal"
            )
        self.embed_dim = self.user_tower.output_dim
        self.mode: str | None = None  # torch-rechub compatibility: "user" / "item" make forward return one tower

    def user_embedding(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.user_tower(x)

    def item_embedding(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.item_tower(x)

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.mode == "user":
            return self.user_embedding(x)
        if self.mode == "item":
            return self.item_embedding(x)
        u, i = self.user_embedding(x), self.item_embedding(x)
        return (u * i).sum(dim=-1) / self.temperature

    def config(self) -> dict[str, Any]:
        """A JSON description of the architecture (recorded in the ONNX metadata and the model hash)."""
        from .features import feature_spec

        return {
            "model": "DSSM",
            "user_features": [feature_spec(f) for f in self.user_features],
            "item_features": [feature_spec(f) for f in self.item_features],
            "user_params": self.user_params,
            "item_params": self.item_params,
            "temperature": self.temperature,
            "embed_dim": self.embed_dim,
        }


def check_features(features: Sequence[Feature]) -> None:
    for f in features:
        if not isinstance(f, (SparseFeature, DenseFeature)):
            raise InvalidParameterError(f"{f!r} is not a SparseFeature, SequenceFeature or DenseFeature")
