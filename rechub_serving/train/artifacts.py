"""Write everything serving needs after training: ONNX towers, vocabularies, item embeddings, a saved index."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .export import export_towers, save_item_index
from .pipeline import TrainResult
from .preprocess import PAD, MatchData

__all__ = ["EXAMPLE_FILE", "example_request", "write_artifacts"]

EXAMPLE_FILE = "example_request.json"
EXAMPLE_HISTORY = 20  # most recent items shown in the example request


def _native(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def example_request(data: MatchData, *, max_history: int = EXAMPLE_HISTORY) -> dict[str, Any]:
    """One user's raw features, as ``rechub-index recommend --features`` takes them.

    The first user of ``data`` (the smallest user id) with every feature of
    the user tower: the user's own features and the most recent
    ``max_history`` items of the user's history (all interactions, oldest
    first), as raw values.
    """
    if not len(data.test):
        raise ValueError("the data has no user with two interactions to build an example from")
    u = int(data.test.user[0])
    out: dict[str, Any] = {}
    for f in data.user_features:
        out[f] = _native(data.vocabularies[f].decode(np.asarray([data.user_table[f][u]]))[0])
    start, stop = int(data.test.seen_start[0]), int(data.test.seen_stop[0])
    items = data.sorted_items[start : stop + 1][-min(max_history, data.seq_max_len) :]  # the test item included
    out[data.hist_col] = [_native(v) for v in data.vocabularies[data.item_col].decode(items)]
    return out


def write_artifacts(
    result: TrainResult,
    out_dir: str | Path,
    *,
    backend: str = "numpy",
    index_params: Mapping[str, Any] | None = None,
    metric: str = "cosine",
    embed_vocabularies: bool = True,
) -> dict[str, Path]:
    """Export and save a training run into ``out_dir``; returns the paths written.

    Files: ``user_tower.onnx``, ``item_tower.onnx``, ``vocabularies.json``,
    ``item_embeddings.npy`` with ``item_ids.json``, the index ``items.index/``
    (its manifest's metadata records the model hash), ``metrics.json`` and
    ``example_request.json`` (one user's raw features: a valid
    ``rechub-index recommend --features-file``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.data
    catalog = data.catalog
    # Real users, plus one with an empty history and one with a short one: the export check covers them.
    users, hist = data.test.user[:510], data.test.hist[:510]
    short = hist[:1].copy()
    short[:, : max(short.shape[1] - 3, 0)] = PAD
    sample_users = data.user_inputs(
        np.concatenate([users, users[:2]]), np.concatenate([hist, np.full_like(hist[:1], PAD), short])
    )
    sample_items = data.item_inputs(catalog[:512])
    extra = {
        "item_id_feature": data.item_col,
        "user_id_feature": data.user_col,
        "history_feature": data.hist_col,
        "seq_max_len": data.seq_max_len,
    }
    exported = export_towers(
        result.model,
        out,
        user_inputs=sample_users,
        item_inputs=sample_items,
        vocabularies=data.vocabularies,
        embed_vocabularies=embed_vocabularies,
        metric=metric,
        extra=extra,
    )
    item_ids, item_vectors = result.item_embeddings()
    ids = item_ids.tolist()
    np.save(out / "item_embeddings.npy", item_vectors.astype(np.float32))
    (out / "item_ids.json").write_text(json.dumps(ids))
    index_path = save_item_index(
        item_vectors, np.asarray(ids) if all(isinstance(i, int) for i in ids) else np.asarray(ids, dtype=object),
        out / "items.index", model_hash=exported.model_hash, backend=backend, metric=metric, **dict(index_params or {}),
    )  # fmt: skip
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "model": result.metrics,
                "most_popular": result.baseline,
                "history": result.history,
                "model_hash": exported.model_hash,
                "user_tower": getattr(result.model, "user_tower_kind", "mlp"),
            },
            indent=2,
        )
    )
    (out / EXAMPLE_FILE).write_text(json.dumps(example_request(data)))
    return {
        "example_request": out / EXAMPLE_FILE,
        "user_tower": exported.user_tower,
        "item_tower": exported.item_tower,
        "vocabularies": exported.vocabularies or out / "vocabularies.json",
        "item_embeddings": out / "item_embeddings.npy",
        "item_ids": out / "item_ids.json",
        "index": index_path,
        "metrics": out / "metrics.json",
    }
