"""Serving with the Retriever: raw user features in, raw item ids out.

A ``Retriever`` joins the exported ONNX user tower and a saved item index. It
encodes raw features with the training vocabularies (unknown values map to the
"unknown" slot), runs the tower with onnxruntime (no torch at serving time),
excludes each user's history, and returns item ids with scores. It refuses an
index built from another model (dimension, metric, model hash).

Usage: ``python examples/serve_with_retriever.py [ARTIFACTS_DIR]``. ARTIFACTS_DIR is
what ``rechub-index train`` (or ``rechub_serving.train.write_artifacts``) writes:
``user_tower.onnx`` and ``items.index``; without it a tiny model is trained first
(needs ``pip install 'rechub-serving[train]'``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from rechub_serving import builder_factory, list_backends


def train_tiny_model(out: Path) -> Path:
    """Train a small DSSM on synthetic data and write the serving artifacts into ``out``."""
    from rechub_serving.train import make_synthetic, train_dssm, write_artifacts

    movielens = make_synthetic(n_users=200, n_items=150, n_interactions=4_000, seed=0)
    result = train_dssm(movielens, mode=2, n_epoch=2, embed_dim=16, batch_size=256, progress=False, ks=(10,))
    write_artifacts(result, out)
    return out


def serve(artifacts: Path) -> None:
    from rechub_serving.retriever import ModelMismatchError, Retriever, read_tower_metadata
    from rechub_serving.train import save_item_index

    with Retriever(artifacts / "user_tower.onnx", artifacts / "items.index", k=5) as retriever:
        print(retriever)
        print("user features the tower takes:", retriever.feature_names)

        # One user: a dict of raw values (the history is a list of raw item ids).
        alice = {"user_id": 1, "gender": "F", "age": 25, "occupation": 4, "zip": "10001", "hist_movie_id": [3, 17, 42]}
        recs = retriever.recommend(alice)
        print("one user:", [(i, round(s, 3)) for i, s in recs.to_lists()[0]])
        assert not {3, 17, 42} & set(recs.item_ids[0].tolist())  # the history is excluded

        # A batch: columns of raw values. Values never seen in training (user 99999, zip
        # "00000") map to the vocabulary's unknown slot instead of failing.
        batch = {
            "user_id": [1, 2, 99_999],
            "gender": ["F", "M", "M"],
            "age": [25, 35, 45],
            "occupation": [4, 7, 1],
            "zip": ["10001", "94105", "00000"],
            "hist_movie_id": [[3, 17, 42], [5], []],
        }
        seen_elsewhere = [[8], [], [1, 2]]  # e.g. items bought through another channel
        recs = retriever.recommend(batch, k=3, seen=seen_elsewhere)
        for user, row in zip(batch["user_id"], recs.to_lists()):
            print(f"user {user}: {[(i, round(s, 3)) for i, s in row]}")

        # What a web handler would do with a JSON request.
        def handle(request: str) -> str:
            body = json.loads(request)
            recs = retriever.recommend(body["user"], k=body.get("k", 5))
            return json.dumps({"items": [{"id": i, "score": round(s, 4)} for i, s in recs.to_lists()[0]]})

        print("handler:", handle(json.dumps({"user": alice, "k": 2})))

    # A faiss HNSW index of the same item vectors: search parameters per request.
    item_vectors = np.load(artifacts / "item_embeddings.npy")
    item_ids = json.loads((artifacts / "item_ids.json").read_text())
    if "faiss" in {b.name for b in list_backends()}:
        model_hash = read_tower_metadata(artifacts / "user_tower.onnx")["model_hash"]
        hnsw = save_item_index(
            item_vectors,
            item_ids,
            artifacts / "items-hnsw.index",
            model_hash=model_hash,
            backend="faiss",
            index_type="HNSW",
        )
        with Retriever(artifacts / "user_tower.onnx", hnsw, k=5) as retriever:
            fast = retriever.recommend(alice, ef_search=16)
            careful = retriever.recommend(alice, ef_search=256)
            print("faiss HNSW, ef_search 16 vs 256:", fast.item_ids[0].tolist(), careful.item_ids[0].tolist())

    # An index that does not belong to this tower is refused, with the reason.
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other.index"
        with builder_factory("numpy", metric="cosine").from_embeddings(np.eye(8, dtype=np.float32)) as index:
            index.save(other)
        try:
            Retriever(artifacts / "user_tower.onnx", other)
        except ModelMismatchError as exc:
            print("refused:", exc)


def main() -> None:
    if len(sys.argv) > 1:
        serve(Path(sys.argv[1]))
        return
    missing = [m for m in ("torch", "pandas", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"skipped: training the demo model needs {', '.join(missing)} (pip install 'rechub-serving[train]')")
        return
    with tempfile.TemporaryDirectory() as tmp:
        serve(train_tiny_model(Path(tmp) / "artifacts"))


if __name__ == "__main__":
    main()
