"""Feature descriptions for the towers (names follow torch-rechub, so its recipes port as they are).

Feature values reaching a model are encoded indices (see
:mod:`rechub_serving.train.preprocess`): ``0`` is padding, ``1`` unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

from rechub_serving import InvalidParameterError

__all__ = ["DenseFeature", "Feature", "SequenceFeature", "SparseFeature"]


def _check_name(name: str) -> None:
    if not name or not name.replace("_", "").isalnum():
        raise InvalidParameterError(
            f"feature name {name!r} must be letters, digits and underscores (it names an ONNX input)"
        )


@dataclass(frozen=True)
class SparseFeature:
    """A categorical feature: one index per sample, looked up in an embedding table.

    ``shared_with`` names another feature whose table this one uses (then
    ``vocab_size`` and ``embed_dim`` must match it).
    """

    name: str
    vocab_size: int
    embed_dim: int = 16
    shared_with: str | None = None
    padding_idx: int | None = 0

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.vocab_size < 1 or self.embed_dim < 1:
            raise InvalidParameterError(f"feature {self.name!r}: vocab_size and embed_dim must be >= 1")

    @property
    def table(self) -> str:
        """The name of the embedding table this feature reads."""
        return self.shared_with or self.name

    @property
    def output_dim(self) -> int:
        return self.embed_dim


@dataclass(frozen=True)
class SequenceFeature(SparseFeature):
    """A variable-length list of indices (a history), left-padded with ``padding_idx``.

    ``pooling`` is ``"mean"`` or ``"sum"``; padding positions are masked out
    (the mean divides by the number of real items, an all-padding row pools to zeros).
    """

    pooling: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("mean", "sum"):
            raise InvalidParameterError(f"feature {self.name!r}: pooling must be 'mean' or 'sum', got {self.pooling!r}")
        if self.padding_idx is None:
            raise InvalidParameterError(f"feature {self.name!r}: a sequence needs a padding_idx")


@dataclass(frozen=True)
class DenseFeature:
    """A real-valued feature of ``embed_dim`` numbers per sample (fed to the MLP as is)."""

    name: str
    embed_dim: int = 1

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.embed_dim < 1:
            raise InvalidParameterError(f"feature {self.name!r}: embed_dim must be >= 1")

    @property
    def output_dim(self) -> int:
        return self.embed_dim


Feature = SparseFeature | SequenceFeature | DenseFeature


def feature_spec(feature: Feature) -> dict:
    """A JSON description of a feature (stored in the ONNX metadata)."""
    if isinstance(feature, SequenceFeature):
        kind = "sequence"
    elif isinstance(feature, SparseFeature):
        kind = "sparse"
    else:
        kind = "dense"
    spec = {"name": feature.name, "type": kind, "embed_dim": feature.embed_dim}
    if kind != "dense":
        spec.update(vocab_size=feature.vocab_size, shared_with=feature.shared_with, padding_idx=feature.padding_idx)
    if kind == "sequence":
        spec["pooling"] = feature.pooling
    return spec
