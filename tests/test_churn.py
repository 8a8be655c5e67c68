"""Queries racing adds and removes: every answer is consistent with one state of the index.

Before 0.2 ``exclude`` was resolved against the id map outside any lock, so a
query running while another thread added or removed could return the very ids
it excluded (758 of 2,324 calls on faiss Flat), or an engine label the id map
did not know yet. The core now resolves ids, searches and maps labels back
under one shared lock.
"""

from __future__ import annotations

import threading
import time

import numpy as np

import rechub_serving as rs
from rechub_serving.evaluation import clustered_data


def test_exclusions_hold_while_ids_come_and_go():
    dim = 16
    base = clustered_data(500, dim, seed=0)
    churn = clustered_data(50, dim, seed=1)
    churn_ids = np.arange(10_000, 10_050)
    queries = churn[:8] + 0.01  # right next to the churning items: they are the best answers when present
    with rs.builder_factory("numpy").from_embeddings(base) as index:
        errors: list[str] = []
        calls = [0]
        stop = threading.Event()

        def reader() -> None:
            exclude = [churn_ids[:25].tolist()] * len(queries)
            while not stop.is_set():
                try:
                    found = np.asarray(index.query(queries, 10, exclude=exclude).indices)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                calls[0] += 1
                if np.isin(found, churn_ids[:25]).any():
                    errors.append("an excluded id came back")
                if (found < 0).any():
                    errors.append("a short row although 500 items remain")

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 2.0
        rounds = 0
        while time.monotonic() < deadline:
            index.add(churn, ids=churn_ids)
            index.remove(churn_ids)
            rounds += 1
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert rounds > 5 and calls[0] > 5
        assert len(index) == 500
