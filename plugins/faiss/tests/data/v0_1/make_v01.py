"""How data/v0_1 was made: saved faiss indexes written by rechub-serving 0.1 (commit b8be4d6).

Run with the 0.1 code first on the path (a checkout of b8be4d6 and its plugins/faiss):
``python make_v01.py OUT_DIR``. The 0.2 loader's test reads the directories and expected.json.
"""

import json
import sys

import faiss
import numpy as np

from rechub_serving import builder_factory
from rechub_serving.testing import clustered_data

faiss.omp_set_num_threads(1)
out = sys.argv[1]
queries = clustered_data(5, 8, seed=1, centres_seed=0)
cases = {
    "flat-l2-str": (60, {"index_type": "Flat", "metric": "l2"}, [f"item-{i}" for i in range(60)]),
    "ivf-ip-int": (400, {"index_type": "IVF", "metric": "ip", "nprobe": 2}, list(range(1000, 1400))),
    "hnsw-cosine": (60, {"index_type": "HNSW", "metric": "cosine", "m": 8, "ef_search": 20}, None),
}
expected = {}
for name, (n, params, ids) in cases.items():
    items = clustered_data(n, 8, seed=0)
    with builder_factory("faiss", **params).from_embeddings(items, ids=ids) as index:
        if name == "flat-l2-str":
            index.remove(["item-3"])
        index.save(f"{out}/{name}", metadata={"made_by": "rechub-serving 0.1"})
        res = index.query(queries, 5)
        expected[name] = {
            "n": n,
            "params": index.params,
            "ids": np.asarray(res.indices).tolist(),
            "distances": np.asarray(res.distances).tolist(),
        }
with open(f"{out}/expected.json", "w") as fh:
    json.dump(expected, fh, indent=1)
