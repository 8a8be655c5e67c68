"""Quickstart: build an exact index over item vectors, recommend, save, reopen.

Needs only the core (numpy). Run: ``python examples/01_quickstart_numpy.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from rechub_serving import builder_factory, open_index


def main() -> None:
    rng = np.random.default_rng(0)
    n_items, dim = 20_000, 32
    item_vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
    item_ids = [f"item-{i}" for i in range(n_items)]

    # Three users, each close to one item, each having already seen some items.
    user_vectors = item_vectors[[11, 222, 3333]] + 0.1 * rng.normal(size=(3, dim)).astype(np.float32)
    seen = [["item-11"], ["item-5", "item-6"], None]

    builder = builder_factory("numpy", metric="cosine")
    with builder.from_embeddings(item_vectors, ids=item_ids) as index:
        res = index.query(user_vectors, k=5, exclude=seen)
        for user, row in enumerate(res.to_lists()):
            print(f"user {user}: " + ", ".join(f"{item} ({score:.3f})" for item, score in row))
        assert "item-11" not in res.indices[0]  # seen: excluded
        assert res.indices[1, 0] == "item-222"  # the nearest item comes first

        with tempfile.TemporaryDirectory() as tmp:
            path = index.save(Path(tmp) / "items.index")
            with open_index(path) as reopened:  # the backend is read from the manifest
                again = reopened.query(user_vectors, k=5, exclude=seen)
                print(f"saved and reopened {path.name}: {reopened!r}")
            assert (again.indices == res.indices).all()


if __name__ == "__main__":
    main()
