"""DSSM: two towers over feature embeddings, L2-normalised outputs, cosine / temperature logits.

User towers: ``"mlp"`` (pooled features through an MLP, the classic DSSM) and
``"sequence"`` (causal self-attention over the history with learned positions,
the last position's state joined with the other user features through the
same MLP). Both map a dict of encoded feature tensors to one vector per row,
so both export to the same ONNX signature and serve through the same
:class:`~rechub_serving.retriever.Retriever`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from rechub_serving import InvalidParameterError

from .features import DenseFeature, Feature, SequenceFeature, SparseFeature

__all__ = ["DSSM", "MLP", "USER_TOWERS", "EmbeddingLayer", "SequenceTower", "Tower"]

USER_TOWERS = ("mlp", "sequence")

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


_MLP_KEYS = {"dims", "activation", "dropout", "batch_norm"}
_SEQ_KEYS = {"n_layers", "n_heads", "attn_dropout", "sequence"}


def _check_params(params: Mapping[str, Any], allowed: set[str], tower: str) -> None:
    unknown = set(params) - allowed
    if unknown:
        raise InvalidParameterError(
            f"unknown {tower} tower parameters {sorted(unknown)}; use {', '.join(sorted(allowed))}"
        )


def _mlp(input_dim: int, params: Mapping[str, Any]) -> MLP:
    return MLP(
        input_dim,
        list(params.get("dims", [256, 128, 64])),
        activation=params.get("activation", "prelu"),
        dropout=float(params.get("dropout", 0.0)),
        batch_norm=bool(params.get("batch_norm", False)),
    )


class Tower(nn.Module):
    """Features -> embeddings (sequences pooled) -> MLP -> L2-normalised vector."""

    def __init__(self, features: Sequence[Feature], embedding: EmbeddingLayer, params: Mapping[str, Any]):
        super().__init__()
        _check_params(params, _MLP_KEYS, "mlp")
        self.features = list(features)
        self.embedding = embedding
        self.mlp = _mlp(sum(f.output_dim for f in self.features), params)
        self.output_dim = self.mlp.output_dim

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.mlp(self.embedding(x, self.features)), p=2.0, dim=-1)


class _Block(nn.Module):
    """A pre-norm transformer block: causal multi-head self-attention, then a position-wise feed-forward."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise InvalidParameterError(f"the history's embed_dim {dim} is not divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape[0], h.shape[1], h.shape[2]
        qkv = self.qkv(self.norm1(h)).reshape(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, L, head_dim)
        scores = (q @ k.transpose(-1, -2)) * (self.head_dim**-0.5)
        scores = scores.masked_fill(~allowed, float("-inf"))  # every row keeps its diagonal: never all -inf
        attn = self.drop(torch.softmax(scores, dim=-1))
        h = h + self.drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, d)))
        return h + self.drop(self.ff(self.norm2(h)))


class SequenceTower(nn.Module):
    """Causal self-attention over the history (SASRec-style), joined with the other user features.

    The history (left-padded, most recent item last) is embedded with the item
    id's table plus a learned position counted from the most recent item, run
    through ``n_layers`` pre-norm transformer blocks with a causal mask (a
    position sees itself and earlier items, padding never), and the state at
    the last position is the summary of the history. It is concatenated with
    the embeddings of the other user features and mapped by the same MLP as the
    ``"mlp"`` tower to an L2-normalised vector. Histories longer than
    ``seq_max_len`` keep their last ``seq_max_len`` items; an empty history
    gives a vector that depends on the other features only.

    :meth:`states` returns the vector of every position (the user after each
    prefix of the history), which the trainer uses to learn from every
    position of a sequence in one pass.
    """

    def __init__(
        self, features: Sequence[Feature], embedding: EmbeddingLayer, params: Mapping[str, Any], seq_max_len: int
    ):
        super().__init__()
        _check_params(params, _MLP_KEYS | _SEQ_KEYS, "sequence")
        self.features = list(features)
        self.embedding = embedding
        sequences = [f for f in self.features if isinstance(f, SequenceFeature)]
        name = params.get("sequence") or (sequences[0].name if sequences else None)
        found = [f for f in sequences if f.name == name]
        if not found:
            raise InvalidParameterError(
                f"the sequence tower needs a SequenceFeature to attend over (asked for {name!r}); "
                f"the user features are {[f.name for f in self.features]}"
            )
        self.sequence = found[0]
        self.others = [f for f in self.features if f is not self.sequence]
        if seq_max_len < 1:
            raise InvalidParameterError(f"seq_max_len must be >= 1, got {seq_max_len}")
        self.seq_max_len = int(seq_max_len)
        dim = self.sequence.embed_dim
        self.position = nn.Embedding(self.seq_max_len, dim)
        nn.init.normal_(self.position.weight, 0.0, 0.05)
        dropout = float(params.get("attn_dropout", 0.1))
        self.blocks = nn.ModuleList(
            _Block(dim, int(params.get("n_heads", 1)), dropout) for _ in range(int(params.get("n_layers", 2)))
        )
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.mlp = _mlp(dim + sum(f.output_dim for f in self.others), params)
        self.output_dim = self.mlp.output_dim

    def _hidden(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        seq = x[self.sequence.name][:, -self.seq_max_len :]
        # Positions and masks are derived from the input tensor (not from Python ints), so the
        # ONNX graph keeps the history length dynamic.
        step = torch.ones_like(seq[0]).cumsum(0)  # 1..L
        emb = self.embedding.tables[self.sequence.table](seq)
        pos = self.position(step - step[-1] + (self.seq_max_len - 1))  # right-aligned: the last column is the newest
        h = self.drop(emb * (self.sequence.embed_dim**0.5) + pos.unsqueeze(0))
        valid = seq != self.sequence.padding_idx  # (B, L)
        causal = step.unsqueeze(1) >= step.unsqueeze(0)  # query i sees keys j <= i
        diagonal = step.unsqueeze(1) == step.unsqueeze(0)
        allowed = ((causal.unsqueeze(0) & valid.unsqueeze(1)) | diagonal.unsqueeze(0)).unsqueeze(1)  # (B, 1, L, L)
        for block in self.blocks:
            h = block(h, allowed)
        return self.norm(h)

    def _head(self, h: torch.Tensor, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.others:
            other = self.embedding(x, self.others)
            if h.dim() == 3:
                other = other.unsqueeze(1).expand(-1, h.shape[1], -1)
            h = torch.cat([h, other], dim=-1)
        shape = h.shape
        out = self.mlp(h.reshape(-1, shape[-1]))
        return F.normalize(out.reshape(*shape[:-1], out.shape[-1]), p=2.0, dim=-1)

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._head(self._hidden(x)[:, -1], x)

    def states(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, L, dim): the user vector after each prefix of the history (position j sees items 0..j)."""
        return self._head(self._hidden(x), x)


class DSSM(nn.Module):
    """Deep Structured Semantic Model: a user tower and an item tower scored by cosine / temperature.

    ``user_params`` / ``item_params``: ``dims`` (layer sizes, the last is the
    embedding dimension; both towers must end with the same size),
    ``activation`` (relu, prelu, tanh, sigmoid, gelu), ``dropout``, ``batch_norm``.
    ``temperature`` divides the cosine: ``forward`` returns the logits
    ``cos(u, i) / temperature``. ``user_tower``: ``"mlp"`` (pooled history) or
    ``"sequence"`` (:class:`SequenceTower`, which also takes ``n_layers``,
    ``n_heads``, ``attn_dropout`` and ``sequence`` in ``user_params``; its
    positions cover ``seq_max_len`` items).
    """

    def __init__(
        self,
        user_features: Sequence[Feature],
        item_features: Sequence[Feature],
        user_params: Mapping[str, Any] | None = None,
        item_params: Mapping[str, Any] | None = None,
        temperature: float = 1.0,
        user_tower: str = "mlp",
        seq_max_len: int = 50,
    ):
        super().__init__()
        if user_tower not in USER_TOWERS:
            raise InvalidParameterError(f"user_tower must be one of {', '.join(USER_TOWERS)}, got {user_tower!r}")
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
        self.user_tower_kind = user_tower
        self.seq_max_len = int(seq_max_len)
        self.user_tower: nn.Module
        if user_tower == "sequence":
            self.user_tower = SequenceTower(self.user_features, self.embedding, self.user_params, self.seq_max_len)
        else:
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

    def user_states(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, L, dim) user vectors after each prefix of the history (sequence tower only)."""
        if not isinstance(self.user_tower, SequenceTower):
            raise InvalidParameterError("user_states needs user_tower='sequence'")
        return self.user_tower.states(x)

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
            "user_tower": self.user_tower_kind,
            "seq_max_len": self.seq_max_len,
        }


def check_features(features: Sequence[Feature]) -> None:
    for f in features:
        if not isinstance(f, (SparseFeature, DenseFeature)):
            raise InvalidParameterError(f"{f!r} is not a SparseFeature, SequenceFeature or DenseFeature")
