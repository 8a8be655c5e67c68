"""Write everything serving needs after training: ONNX towers, vocabularies, item embeddings, a saved index."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .export import export_towers, save_item_index
from .pipeline import TrainResult

__all__ = ["write_artifacts"]


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
    (its manifest's metadata records the model hash), ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.data
    catalog = data.catalog
    sample_users = data.user_inputs(data.test.user[:512], data.test.hist[:512])
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
            },
            indent=2,
        )
    )
    return {
        "user_tower": exported.user_tower,
        "item_tower": exported.item_tower,
        "vocabularies": exported.vocabularies or out / "vocabularies.json",
        "item_embeddings": out / "item_embeddings.npy",
        "item_ids": out / "item_ids.json",
        "index": index_path,
        "metrics": out / "metrics.json",
    }
