"""Checkpoints: a trained model with its vocabularies, and the trainer state to resume training.

A checkpoint is a directory:

``config.json``        the architecture (``DSSM.config()``) and the format version
``best.pt``            the weights to serve (the best validation epoch so far)
``last.pt``            the weights after the last finished epoch (what training resumes from)
``trainer.pt``         optimizer state, epochs done, history, early-stopping counters
``vocabularies.json``  raw value <-> index maps of every feature (when given)

Weights are plain ``state_dict`` tensors read back with
``torch.load(weights_only=True)``: no arbitrary objects are unpickled. A
checkpoint is written into a temporary sibling directory and renamed into
place, so a crash leaves the previous checkpoint or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rechub_serving import InvalidInputError

from .features import DenseFeature, SequenceFeature, SparseFeature
from .model import DSSM
from .preprocess import Vocabulary, load_vocabularies, save_vocabularies

__all__ = ["FORMAT", "Checkpoint", "load_checkpoint", "model_from_config", "save_checkpoint"]

FORMAT = "rechub-serving-checkpoint"
FORMAT_VERSION = 1


def _feature(spec: Mapping[str, Any]):
    kind = spec["type"]
    if kind == "dense":
        return DenseFeature(spec["name"], spec["embed_dim"])
    common = dict(
        name=spec["name"],
        vocab_size=spec["vocab_size"],
        embed_dim=spec["embed_dim"],
        shared_with=spec.get("shared_with"),
        padding_idx=spec.get("padding_idx", 0),
    )
    if kind == "sequence":
        return SequenceFeature(**common, pooling=spec.get("pooling", "mean"))
    return SparseFeature(**common)


def model_from_config(config: Mapping[str, Any]) -> DSSM:
    """A fresh (untrained) :class:`DSSM` with the architecture recorded by ``DSSM.config()``."""
    if config.get("model") != "DSSM":
        raise InvalidInputError(f"the checkpoint holds a {config.get('model')!r} model; only DSSM is supported")
    return DSSM(
        [_feature(s) for s in config["user_features"]],
        [_feature(s) for s in config["item_features"]],
        user_params=config.get("user_params"),
        item_params=config.get("item_params"),
        temperature=config.get("temperature", 1.0),
        user_tower=config.get("user_tower", "mlp"),
        seq_max_len=config.get("seq_max_len", 50),
    )


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: the model (best weights), vocabularies and trainer state."""

    path: Path
    model: DSSM
    vocabularies: dict[str, Vocabulary] = field(default_factory=dict)
    trainer_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_checkpoint(
    directory: str | Path,
    model: DSSM,
    *,
    vocabularies: Mapping[str, Vocabulary] | None = None,
    trainer_state: Mapping[str, Any] | None = None,
    best_state: Mapping[str, torch.Tensor] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and optionally vocabularies and a trainer state) as a checkpoint directory.

    ``best_state`` is the state dict to serve (default: the model's current
    weights); the current weights are always kept as ``last.pt`` for resuming.
    ``extra`` is JSON stored in ``config.json`` (e.g. the data's column names).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config(), **dict(extra or {})}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        last = _state(model)
        torch.save(last, tmp / "last.pt")
        torch.save(dict(best_state) if best_state is not None else last, tmp / "best.pt")
        if trainer_state is not None:
            torch.save(dict(trainer_state), tmp / "trainer.pt")
        if vocabularies:
            save_vocabularies(vocabularies, tmp / "vocabularies.json")
        if directory.exists():
            if not (directory / "config.json").is_file() and any(directory.iterdir()):
                raise InvalidInputError(
                    f"{directory} exists and is not a checkpoint; give an empty or new directory for model_path"
                )
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / "x")
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint, checked."""
    directory = Path(directory)
    file = directory / "config.json"
    if not file.is_file():
        raise InvalidInputError(
            f"{directory} is not a checkpoint (no config.json); save one with save_checkpoint() or "
            "MatchTrainer(model_path=...)"
        )
    config = json.loads(file.read_text())
    if config.get("format") != FORMAT:
        raise InvalidInputError(f"{file} is not a rechub-serving checkpoint (format {config.get('format')!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise InvalidInputError(
            f"{directory} was written by a newer rechub-serving (format {config['format_version']}); upgrade"
        )
    return config


def load_weights(directory: str | Path, which: str = "best") -> dict[str, torch.Tensor]:
    """The ``best`` or ``last`` state dict of a checkpoint (tensors only: ``weights_only=True``)."""
    file = Path(directory) / f"{which}.pt"
    if not file.is_file():
        raise InvalidInputError(f"{file} is missing; the checkpoint is incomplete")
    return torch.load(file, map_location="cpu", weights_only=True)


def load_checkpoint(directory: str | Path, *, weights: str = "best") -> Checkpoint:
    """Rebuild the model of a checkpoint with its ``best`` (default) or ``last`` weights, and its vocabularies."""
    directory = Path(directory)
    config = read_config(directory)
    model = model_from_config(config["model"])
    model.load_state_dict(load_weights(directory, weights))
    model.eval()
    vocab_file = directory / "vocabularies.json"
    vocabularies = load_vocabularies(vocab_file) if vocab_file.is_file() else {}
    state_file = directory / "trainer.pt"
    state = torch.load(state_file, map_location="cpu", weights_only=True) if state_file.is_file() else None
    extra = {k: v for k, v in config.items() if k not in ("format", "format_version", "model")}
    return Checkpoint(directory, model, vocabularies, state, extra)
