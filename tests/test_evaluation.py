"""rechub_serving.evaluation: recall on its own, ground truth against an independent float64 brute force, data helpers."""

from __future__ import annotations

import numpy as np
import pytest

from rechub_serving.evaluation import (
    clustered_data,
    ground_truth,
    holdout,
    recall_at_k,
    synthetic_catalogue,
    true_distances,
)


def brute_force(items: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Every query's metric-table number to every item, float64 (higher-is-better metrics negated: lower is better)."""
    x = np.asarray(items, np.float64)
    q = np.asarray(queries, np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return -(q @ x.T)


# -- recall ----------------------------------------------------------------------------------------
def test_recall_counts_hits_over_true_ids():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(truth, truth) == 1.0
    assert recall_at_k(np.array([[4, 3, 9, 9], [0, 0, 0, 0]]), truth) == 2 / 8
    assert recall_at_k(np.array([[10, 11, 12, 13], [14, 15, 16, 17]]), truth) == 0.0
    # order inside the top-k does not matter; an id found twice counts once
    assert recall_at_k(np.array([[4, 3, 2, 1], [5, 5, 5, 5]]), truth) == 5 / 8


def test_recall_ignores_padding_on_both_sides():
    assert recall_at_k(np.array([[1, 2, -1]]), np.array([[1, 3, -1]])) == 0.5
    assert recall_at_k(np.array([[-1, -1, -1]]), np.array([[-1, 3, -1]])) == 0.0
    found = np.array([["a", None]], dtype=object)
    assert recall_at_k(found, np.array([["a", "b"]], dtype=object)) == 0.5
    assert recall_at_k(found, np.array([["a", None]], dtype=object)) == 1.0


def test_recall_pools_over_queries_and_skips_empty_truth():
    # 1 of 1 true id in the first row, 0 of 3 in the second: pooled 1/4, not the mean of 1.0 and 0.0
    truth = np.array([[1, -1, -1], [4, 5, 6]])
    assert recall_at_k(np.array([[1, -1, -1], [7, 8, 9]]), truth) == 0.25
    # a query with nothing to find adds nothing; when none has anything to find, nothing was missed
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[1, 9], [-1, -1]])) == 0.5
    assert recall_at_k(np.array([[1, 2]]), np.array([[-1, -1]])) == 1.0


def test_recall_only_the_first_k_columns_count():
    truth = np.array([[1, 2, 3, 4]])
    assert recall_at_k(np.array([[9, 9, 1, 2]]), truth, k=2) == 0.0
    assert recall_at_k(np.array([[1, 9, 9, 9]]), truth, k=2) == 0.5
    assert recall_at_k(np.array([1, 2]), np.array([2, 7])) == 0.5  # one query as a 1-D row


def test_recall_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="rows"):
        recall_at_k(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="k must"):
        recall_at_k(np.zeros((2, 3)), np.zeros((2, 3)), k=0)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_recall_of_random_results_matches_a_written_out_count(metric):
    rng = np.random.default_rng(3)
    truth = np.stack([rng.choice(1000, 10, replace=False) for _ in range(50)])
    found = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(1000, 2000, truth.shape))
    expected = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])
    assert recall_at_k(found, truth) == pytest.approx(expected)


# -- ground truth ------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("k", [1, 10, 257])
def test_ground_truth_matches_float64_brute_force(metric, k):
    items = clustered_data(3000, 16, seed=1)
    queries = clustered_data(40, 16, seed=2, centres_seed=1)
    pos, dist = ground_truth(items, queries, k, metric)
    assert pos.shape == dist.shape == (40, k)
    scores = brute_force(items, queries, metric)
    exact = np.sort(scores, axis=1)[:, :k]
    got = np.take_along_axis(scores, pos, axis=1)
    # the same k items up to float32 rounding: each returned item is as good as the true k-th one
    tol = 1e-4 * np.abs(exact).max()
    assert np.all(got <= exact[:, -1:] + tol)
    assert np.allclose(got, exact, atol=tol)  # best first, in order
    table = scores if metric == "l2" else -scores
    assert np.allclose(dist, np.take_along_axis(table, pos, axis=1), atol=tol)
    # ... and with ties unlikely, the very same positions in most rows
    assert np.mean(np.sort(pos, 1) == np.sort(np.argsort(scores, 1, kind="stable")[:, :k], 1)) > 0.99


def test_ground_truth_with_exclusions_and_short_rows():
    items = clustered_data(50, 8, seed=4)
    queries = clustered_data(3, 8, seed=5, centres_seed=4)
    exclude = [[0, 1, 2], None, list(range(45))]
    pos, _ = ground_truth(items, queries, 10, "l2", exclude=exclude)
    scores = brute_force(items, queries, "l2")
    for i, banned in enumerate(exclude):
        banned = set(banned or [])
        allowed = [j for j in np.argsort(scores[i], kind="stable") if j not in banned]
        expected = allowed[:10] + [-1] * (10 - len(allowed[:10]))
        assert pos[i].tolist() == expected
    with pytest.raises(ValueError, match="one per query"):
        ground_truth(items, queries, 10, "l2", exclude=[[0]])


def test_true_distances_padding_is_nan():
    items = clustered_data(20, 4, seed=0)
    out = true_distances(items, items[:2], np.array([[0, -1], [1, 0]]), "l2")
    assert out[0, 0] == 0.0 and np.isnan(out[0, 1]) and out[1, 0] == 0.0


# -- data helpers --------------------------------------------------------------------------------------
def test_holdout_splits_rows():
    base, queries = holdout(100, 30, seed=1)
    assert len(queries) == 20  # at most a fifth
    assert sorted(np.concatenate([base, queries]).tolist()) == list(range(100))
    assert holdout(100, 30, seed=1)[1].tolist() == queries.tolist()
    assert len(holdout(100, 5, seed=1)[1]) == 5
    with pytest.raises(ValueError, match="at least 2"):
        holdout(1, 1)


def test_synthetic_catalogue_shapes_and_seen_items():
    cat = synthetic_catalogue(200, 8, 10, seed=3, seen_per_user=4)
    assert cat.items.shape == (200, 8) and cat.users.shape == (10, 8)
    assert cat.items.dtype == np.float32 and np.allclose(np.linalg.norm(cat.items, axis=1), 1, atol=1e-5)
    assert len(cat.seen) == 10 and all(len(s) == 4 and set(s) <= set(cat.item_ids.tolist()) for s in cat.seen)
    assert cat.item_ids.min() >= 100000
    again = synthetic_catalogue(200, 8, 10, seed=3, seen_per_user=4)
    assert np.array_equal(cat.items, again.items) and cat.seen == again.seen
