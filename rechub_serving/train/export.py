"""ONNX export of the two towers, verified with onnxruntime right after export.

Each tower becomes one ONNX file with one input per feature (named after the
feature, batch axis dynamic, sequence length dynamic) and one output
``embedding`` (L2-normalised). The metadata entry ``rechub_serving`` (JSON)
carries what serving needs: the features in input order with their
vocabularies (embedded, or the name and sha256 of a JSON file), the
dimension, metric and normalisation, and ``model_hash``, a sha256 of the
architecture and weights shared by both towers and recorded next to the item
index built from the item tower, so a server can refuse a mismatched pair.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rechub_serving import RechubError

from .features import DenseFeature, SequenceFeature, feature_spec
from .preprocess import Vocabulary, save_vocabularies

__all__ = ["METADATA_KEY", "ExportError", "ExportResult", "export_towers", "model_hash", "save_item_index"]

logger = logging.getLogger("rechub_serving.train")

METADATA_KEY = "rechub_serving"


class ExportError(RechubError, RuntimeError):
    """The exported ONNX tower does not reproduce the torch tower."""


def model_hash(model: nn.Module) -> str:
    """sha256 of the model's configuration and every weight (sorted by name)."""
    digest = hashlib.sha256()
    config = model.config() if hasattr(model, "config") else {}
    digest.update(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Tower(nn.Module):
    """Positional inputs (ONNX) -> the tower's dict input."""

    def __init__(self, tower: nn.Module, names: list[str]):
        super().__init__()
        self.tower = tower
        self.names = names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.tower(dict(zip(self.names, args)))


@dataclass
class ExportResult:
    user_tower: Path
    item_tower: Path
    vocabularies: Path | None
    model_hash: str
    max_abs_diff: dict[str, float]


def _vocab_name(feature: Any, vocabularies: Mapping[str, Vocabulary]) -> str | None:
    if isinstance(feature, DenseFeature):
        return None
    for name in (feature.name, feature.shared_with):
        if name and name in vocabularies:
            return name
    return None


def _as_inputs(features: list, sample: Mapping[str, Any]) -> list[torch.Tensor]:
    out = []
    for f in features:
        if f.name not in sample:
            raise ExportError(f"the sample inputs lack feature {f.name!r}; give every feature of the tower")
        dtype = torch.float32 if isinstance(f, DenseFeature) else torch.int64
        out.append(torch.as_tensor(np.asarray(sample[f.name]), dtype=dtype))
    return out


def _export_one(
    tower: nn.Module,
    features: list,
    sample: Mapping[str, Any],
    path: Path,
    metadata: dict[str, Any],
    opset: int,
    atol: float,
) -> float:
    names = [f.name for f in features]
    wrapper = _Tower(tower, names).eval()
    inputs = _as_inputs(features, sample)
    export_args = tuple(x[:2] for x in inputs)  # a small batch: the batch axis is dynamic
    dynamic = {}
    for f in features:
        axes = {0: "batch"}
        if isinstance(f, SequenceFeature):
            axes[1] = f"{f.name}_len"
        dynamic[f.name] = axes
    dynamic["embedding"] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: fast, no extra dependency, exact for these ops
            torch.onnx.export(
                wrapper, export_args, str(path), input_names=names, output_names=["embedding"],
                dynamic_axes=dynamic, opset_version=opset, dynamo=False,
            )  # fmt: skip
        except (TypeError, RuntimeError) as exc:  # a torch without it: the dynamo exporter
            logger.info("TorchScript ONNX export unavailable (%s); using the dynamo exporter", exc)
            torch.onnx.export(
                wrapper, export_args, str(path), input_names=names, output_names=["embedding"],
                dynamic_axes=dynamic, opset_version=max(opset, 18), dynamo=True,
            )  # fmt: skip
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(metadata)
    onnx.save(model, str(path))

    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: x.numpy() for n, x in zip(names, inputs)}
    got = session.run(["embedding"], feeds)[0]
    with torch.no_grad():
        want = wrapper(*inputs).float().numpy()
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if got.shape != want.shape or not diff <= atol:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"the exported {metadata['tower']} tower differs from torch by {diff:.3g} (allowed {atol:g}) on "
            f"{len(want)} real inputs; the ONNX file was removed. Check for ops the exporter does not support"
        )
    logger.info("exported %s tower to %s (max abs diff vs torch %.2e)", metadata["tower"], path, diff)
    return diff


def export_towers(
    model: nn.Module,
    directory: str | Path,
    *,
    user_inputs: Mapping[str, Any],
    item_inputs: Mapping[str, Any],
    vocabularies: Mapping[str, Vocabulary] | None = None,
    embed_vocabularies: bool = True,
    metric: str = "cosine",
    opset: int = 17,
    atol: float = 1e-5,
    extra: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Export ``model.user_tower`` and ``model.item_tower`` to ``directory`` and verify them.

    ``user_inputs`` / ``item_inputs`` are real encoded inputs (feature name ->
    array, at least 2 rows) used for the export and the onnxruntime check
    (max abs diff <= ``atol``, else :class:`ExportError`). Vocabularies are
    written to ``vocabularies.json`` and, with ``embed_vocabularies``, also
    embedded in the metadata. ``extra`` adds entries (e.g. ``item_id_feature``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    vocabularies = dict(vocabularies or {})
    digest = model_hash(model)
    vocab_file = None
    vocab_ref: dict[str, Any] = {}
    if vocabularies:
        vocab_file = save_vocabularies(vocabularies, directory / "vocabularies.json")
        vocab_ref = {
            "vocabularies_file": vocab_file.name,
            "vocabularies_sha256": hashlib.sha256(vocab_file.read_bytes()).hexdigest(),
        }
    paths, diffs = {}, {}
    for kind, features, sample in (
        ("user", model.user_features, user_inputs),
        ("item", model.item_features, item_inputs),
    ):
        inputs = []
        for f in features:
            spec = feature_spec(f)
            spec["dtype"] = "float32" if isinstance(f, DenseFeature) else "int64"
            spec["vocabulary"] = _vocab_name(f, vocabularies)
            inputs.append(spec)
        used = {s["vocabulary"] for s in inputs if s["vocabulary"]}
        meta = {
            "format": "rechub-serving-tower",
            "format_version": 1,
            "tower": kind,
            "model": type(model).__name__,
            "inputs": inputs,
            "output": "embedding",
            "dim": int(model.embed_dim),
            "metric": metric,
            "normalized": True,
            "model_hash": digest,
            "temperature": getattr(model, "temperature", None),
            "torch_version": torch.__version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **vocab_ref,
            **dict(extra or {}),
        }
        if embed_vocabularies:
            meta["vocabularies"] = {name: vocabularies[name].to_dict() for name in sorted(used)}
        path = directory / f"{kind}_tower.onnx"
        diffs[kind] = _export_one(getattr(model, f"{kind}_tower"), features, sample, path, meta, opset, atol)
        paths[kind] = path
    return ExportResult(paths["user"], paths["item"], vocab_file, digest, diffs)


def save_item_index(
    item_vectors: np.ndarray,
    item_ids: Any,
    path: str | Path,
    *,
    model_hash: str,
    backend: str = "numpy",
    metric: str = "cosine",
    **params: Any,
) -> Path:
    """Build an index of the item vectors and save it with the model hash in its manifest.

    The manifest's ``metadata`` holds ``{"model_hash", "normalized"}``, so the
    :class:`~rechub_serving.retriever.Retriever` can refuse an index built from
    another model.
    """
    from .. import builder_factory

    path = Path(path)
    with builder_factory(backend, metric=metric, **params).from_embeddings(item_vectors, ids=item_ids) as index:
        index.save(path, metadata={"model_hash": model_hash, "normalized": True})
    return path
