"""The seed recipe: train a DSSM, export its towers, build Faiss / Annoy / Milvus indexes, recommend.

1. synthetic interactions in MovieLens' format (``rechub_serving.train.make_synthetic``);
2. a two-tower DSSM trained list-wise (in-batch softmax), evaluated against most-popular;
3. both towers exported to ONNX (checked against torch with onnxruntime), with the
   vocabularies, the item vectors and an exact index (``write_artifacts``);
4. the item vectors indexed on every installed engine among faiss, annoy and milvus
   (milvus-lite, embedded: no server), each index tagged with the model's hash;
5. raw user features in, raw item ids out: a ``Retriever`` (ONNX user tower + index)
   per engine recommends 10 items per user, each user's history excluded, compared with
   the exact index.

The data is tiny so that the script runs in seconds: at this size the model is about as good
as most-popular. ``docs/benchmarks/train.md`` shows quality at a realistic size.

Needs the trainer extra (``pip install 'rechub-serving[train]'``: torch, pandas, onnx,
onnxruntime). Run: ``python examples/seed_recipe.py`` (about 10-20 s on a laptop CPU).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np

from rechub_serving import list_backends

NEEDED = ("torch", "pandas", "onnx", "onnxruntime")
ENGINES = {  # backend -> build parameters for a small catalogue
    "faiss": {"index_type": "HNSW", "m": 16},
    "annoy": {"n_trees": 20},
    "milvus": {"index_type": "HNSW"},
}


def main() -> None:
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"skipped: the trainer needs {', '.join(missing)} (pip install 'rechub-serving[train]')")
        return
    from rechub_serving.retriever import Retriever
    from rechub_serving.train import make_synthetic, model_hash, save_item_index, train_dssm, write_artifacts

    started = time.perf_counter()

    # 1-2. Data and training.
    movielens = make_synthetic(n_users=300, n_items=200, n_interactions=6_000, seed=0)
    result = train_dssm(movielens, mode=2, n_epoch=3, embed_dim=16, batch_size=256, progress=False, ks=(10,))
    print(f"trained DSSM: test {_fmt(result.metrics)}; most-popular baseline {_fmt(result.baseline)}")

    with tempfile.TemporaryDirectory() as tmp:
        # 3. Towers to ONNX, vocabularies, item vectors and an exact (numpy) index of them.
        artifacts = write_artifacts(result, Path(tmp) / "model")
        print("exported:", ", ".join(sorted(p.name for p in artifacts.values())))
        item_ids, item_vectors = result.item_embeddings()
        digest = model_hash(result.model)

        # 4. One index per installed engine, tagged with the model hash (the Retriever checks it).
        installed = {b.name for b in list_backends()}
        indexes = {"numpy (exact)": artifacts["index"]}
        for backend, params in ENGINES.items():
            if backend not in installed:
                print(f"{backend}: not installed (pip install 'rechub-serving[{backend}]'), skipped")
                continue
            path = Path(tmp) / f"items-{backend}.index"
            indexes[backend] = save_item_index(
                item_vectors, item_ids, path, model_hash=digest, backend=backend, metric="cosine", **params
            )

        # 5. Recommend from raw user features: profile columns plus the watch history.
        users = movielens.users.head(50)
        ratings = movielens.ratings.sort_values("timestamp")
        histories = ratings.groupby("user_id")["movie_id"].apply(list)
        features = {**{c: users[c].tolist() for c in users.columns}, "hist_movie_id": histories[users.user_id].tolist()}

        exact = None
        for name, path in indexes.items():
            with Retriever(artifacts["user_tower"], path, k=10) as retriever:
                recs = retriever.recommend(features)
            top = recs.item_ids.tolist()
            exact = exact or top
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, exact)])
            seen_ok = all(not set(row) & set(h) for row, h in zip(top, features["hist_movie_id"]))
            print(
                f"{name}: user 1 -> movies {top[0][:5]}, recall@10 vs exact {recall:.2f}, history excluded: {seen_ok}"
            )
            assert seen_ok and recall >= 0.8

    print(f"done in {time.perf_counter() - started:.1f} s")


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())


if __name__ == "__main__":
    main()
