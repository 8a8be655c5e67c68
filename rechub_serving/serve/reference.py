"""The exact reference live recall is measured against: which vectors, and a check that they are the index's.

In order of preference: the vectors of ``--reference-vectors`` (with
``--reference-ids``, else positions), the serving index itself when its
backend is exact, the model directory's ``item_embeddings.npy`` and
``item_ids.json`` (written by ``rechub-index train``). The vectors go into the
core's numpy backend, the exact search every backend is tested against.
Before use, a sample of reference items is looked up in the serving index:
each must find itself, or the reference belongs to another index and recall
monitoring is off for that generation (with the reason in ``/v1/info``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import Indexer, RechubError, builder_factory
from .config import ModelPaths, RecallConfig

__all__ = ["ExactReference", "load_reference"]

logger = logging.getLogger("rechub_serving.serve")

SELF_CHECK_ITEMS = 32
SELF_CHECK_MIN_HITS = 0.5  # a poor approximate index still finds most items among its top few dozen


class ExactReference:
    """Exact top-k answers over the same items as a serving index."""

    def __init__(self, index: Indexer, source: str, *, owned: bool):
        self.index = index
        self.source = source
        self._owned = owned

    def top_ids(self, vectors: np.ndarray, k: int, exclude: list[list[Any]] | None) -> np.ndarray:
        """Exact top-``k`` ids per row (padding -1 or None), with the same exclusions the answer had."""
        return np.asarray(self.index.query(vectors, k, exclude=exclude).indices)

    def close(self) -> None:
        if self._owned:
            self.index.close()


def _load_ids(path: Path | None, n: int) -> Any:
    if path is None:
        return None
    ids = json.loads(path.read_text())
    if not isinstance(ids, list) or len(ids) != n:
        raise RechubError(f"{path.name} must be a JSON list of {n} item ids (one per vector)")
    if all(isinstance(i, str) for i in ids):
        return np.asarray(ids, dtype=object)
    return np.asarray(ids, dtype=np.int64)


def load_reference(paths: ModelPaths, config: RecallConfig, index: Indexer) -> tuple[ExactReference | None, str]:
    """An exact reference for ``index`` and where it came from, or None and why there is none."""
    if config.sample_rate <= 0:
        return None, "recall monitoring is off (sample rate 0)"
    if config.reference_vectors:
        vectors_path = Path(config.reference_vectors).expanduser()
        ids_path = Path(config.reference_ids).expanduser() if config.reference_ids else None
        source = "--reference-vectors"
    elif index.capabilities.exact:
        return ExactReference(index, f"the serving index ({index.backend}, exact)", owned=False), ""
    elif paths.embeddings is not None and paths.embeddings.is_file():
        vectors_path = paths.embeddings
        ids_path = paths.embedding_ids if paths.embedding_ids and paths.embedding_ids.is_file() else None
        source = "item_embeddings.npy of the model directory"
    else:
        return None, (
            "no exact reference: the index is approximate and there is no item_embeddings.npy beside it; "
            "give --reference-vectors to monitor recall"
        )
    try:
        vectors = np.load(vectors_path, allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[1] != index.dim:
            raise RechubError(f"{vectors_path.name} has shape {vectors.shape}; expected (n, {index.dim})")
        if len(vectors) != len(index):
            raise RechubError(f"{vectors_path.name} has {len(vectors)} vectors, the index {len(index)} items")
        ids = _load_ids(ids_path, len(vectors))
        if index.id_kind == "str" and (ids is None or ids.dtype != object):
            raise RechubError("the index has string ids; the reference ids must be strings too")
        ref = builder_factory("numpy", metric=index.metric.value).from_embeddings(vectors, ids=ids)
    except (OSError, ValueError, RechubError) as exc:
        return None, f"recall reference from {source} unusable: {exc}"
    problem = _self_check(ref, index, vectors, ids)
    if problem:
        ref.close()
        return None, f"recall reference from {source} does not match the index: {problem}"
    return ExactReference(ref, source, owned=True), ""


def _self_check(ref: Indexer, index: Indexer, vectors: np.ndarray, ids: Any) -> str:
    """A sample of reference items, used as queries, must mostly find themselves in the serving index.

    Each is looked for among the index's top ``k`` (a few dozen: wide enough
    for a poorly tuned approximate index, narrow enough that vectors of another
    catalogue find "themselves" only by chance, about k/n of the time).
    """
    n = len(vectors)
    if n == 0:
        return ""
    rng = np.random.default_rng(0)
    rows = rng.choice(n, size=min(SELF_CHECK_ITEMS, n), replace=False)
    want = ids[rows] if ids is not None else rows
    got = np.asarray(index.query(vectors[rows], min(n, 50, max(10, n // 20))).indices)
    hits = sum(want[i] in set(got[i].tolist()) for i in range(len(rows)))
    if hits < SELF_CHECK_MIN_HITS * len(rows):
        return f"only {hits} of {len(rows)} sampled reference items find themselves in the index"
    return ""
