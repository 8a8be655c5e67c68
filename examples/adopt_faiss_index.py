"""Adopt an existing ``faiss.write_index`` file, then save it as a rechub-serving index.

Teams often have Faiss files written by earlier code (torch-rechub's serving
module wrote exactly these). ``builder_factory("faiss").from_index_file(path)``
reads such a bare file: the metric comes from the file, the ids from its
``IndexIDMap`` (or positions 0..n-1). Run: ``python examples/adopt_faiss_index.py``.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

from rechub_serving import builder_factory, open_index


def main() -> None:
    if importlib.util.find_spec("faiss") is None or importlib.util.find_spec("rechub_serving_faiss") is None:
        print("skipped: needs faiss and the faiss plugin (pip install 'rechub-serving[faiss]')")
        return
    import faiss

    rng = np.random.default_rng(0)
    items = rng.normal(size=(5_000, 32)).astype(np.float32)
    users = items[:3] + 0.01
    item_ids = np.arange(100_000, 100_000 + len(items), dtype=np.int64)  # the catalogue's own ids

    with tempfile.TemporaryDirectory() as tmp:
        # 1. An index written by someone else's code: inner product, HNSW, the ids kept in an IDMap.
        legacy = faiss.IndexIDMap2(faiss.index_factory(32, "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT))
        legacy.add_with_ids(items, item_ids)
        native_file = Path(tmp) / "legacy.faiss"
        faiss.write_index(legacy, str(native_file))

        # 2. Adopt it: no rebuild; metric and ids come from the file.
        with builder_factory("faiss", ef_search=128).from_index_file(native_file) as index:
            print(f"adopted {native_file.name}: {index!r}")
            ids, scores = index.query(users, k=5)
            print("top-5 ids of user 0:", ids[0].tolist(), "inner products:", [round(float(s), 2) for s in scores[0]])
            assert index.metric == "ip"
            assert ids[0, 0] == item_ids[0]
            # Raw faiss and the adopted index agree (distances follow the metric table: ip = inner product).
            _, raw_ids = legacy.search(users, 5)
            assert (raw_ids == ids).mean() > 0.9

            # 3. Save it once as a rechub-serving index: manifest, checksums, id map.
            saved = index.save(Path(tmp) / "items.index")

        with open_index(saved) as index:
            assert index.backend == "faiss"
            assert (index.query(users, k=5).indices == ids).all()
            print(f"saved as {saved.name} and reopened with open_index: {index!r}")


if __name__ == "__main__":
    sys.exit(main())
