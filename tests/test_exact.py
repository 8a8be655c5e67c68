"""exact_search against an independent float64 brute force (a full sort of every score).

The reference is computed here, in float64, with a stable argsort over the
whole score matrix: it shares nothing with rechub_serving._exact (nor with
rechub_serving.evaluation, which calls it). Integer-valued vectors make
float32 and float64 agree exactly, so positions, distances and the order of
ties (lowest row position first) can be compared exactly; real-valued vectors
are compared within float32 rounding.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from rechub_serving import _exact
from rechub_serving._errors import InvalidParameterError
from rechub_serving._exact import exact_search
from rechub_serving._metrics import Metric

METRICS = [Metric.L2, Metric.IP, Metric.COSINE]
# default (one block), 1 query x 409 items per block, 8 queries x 1024 items per block
BLOCKS = [64 << 20, 4096, 81920]


def brute_force(items, queries, k, metric, excluded=None):
    """Top-k by float64 scores and a stable full sort: (positions, distances), -1 / worst for missing."""
    x = np.asarray(items, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    if metric is Metric.L2:
        dist = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        key = dist.copy()
    else:
        dist = q @ x.T
        key = -dist
    if excluded is not None:
        for i, cols in enumerate(excluded):
            key[i, np.asarray(cols, dtype=np.int64)] = np.inf
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    pos = order.copy()
    out = np.take_along_axis(dist, order, axis=1)
    missing = ~np.isfinite(np.take_along_axis(key, order, axis=1))
    pos[missing] = -1
    out[missing] = np.inf if metric is Metric.L2 else -np.inf
    return pos, out


def integer_data(n, nq, dim, seed, low=-3, high=4):
    """Small integers: every score is exact in float32, and many are tied."""
    rng = np.random.default_rng(seed)
    items = rng.integers(low, high, size=(n, dim)).astype(np.float32)
    queries = rng.integers(low, high, size=(nq, dim)).astype(np.float32)
    return items, queries


def real_data(n, nq, dim, seed, metric):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, dim)).astype(np.float32)
    queries = rng.normal(size=(nq, dim)).astype(np.float32)
    if metric is Metric.COSINE:  # cosine expects normalised vectors
        items /= np.linalg.norm(items, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return items, queries


def assert_same(got, want):
    """Positions and distances identical, row by row."""
    (pos, dist), (tpos, tdist) = got, want
    assert pos.shape == tpos.shape and dist.shape == tdist.shape
    assert pos.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_array_equal(pos, tpos)
    np.testing.assert_array_equal(dist, tdist.astype(np.float32))


def assert_close(got, want, items, queries, metric, tol=1e-4):
    """The same top-k up to float32 rounding: distances, what each position really scores, and no repeats."""
    (pos, dist), (tpos, tdist) = got, want
    assert pos.shape == tpos.shape
    np.testing.assert_allclose(dist, tdist, rtol=tol, atol=tol)
    x, q = items.astype(np.float64), queries.astype(np.float64)
    picked = x[pos]
    real = ((picked - q[:, None, :]) ** 2).sum(-1) if metric is Metric.L2 else (picked * q[:, None, :]).sum(-1)
    np.testing.assert_allclose(dist, real, rtol=tol, atol=tol)
    for row in pos:
        assert len(set(row.tolist())) == len(row)
    # positions agree wherever the true distances are not within rounding of a neighbour
    gaps = np.abs(np.diff(tdist, axis=1)) > tol * (1 + np.abs(tdist[:, 1:]))
    clear = np.ones_like(tpos, dtype=bool)
    clear[:, 1:] &= gaps
    clear[:, :-1] &= gaps
    np.testing.assert_array_equal(pos[clear], tpos[clear])


@pytest.fixture
def many_chunks(monkeypatch):
    """Split even tiny blocks over threads, so the thread pool path runs on test-sized data."""
    monkeypatch.setattr(_exact, "_MIN_SCORES_PER_THREAD", 1)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_bytes", BLOCKS)
@pytest.mark.parametrize("k", [1, 10, 600, 1249, 1250, 2500, 3000])
def test_integer_vectors_match_exactly(metric, block_bytes, k):
    """k under a block, k spanning blocks (600 > 409), both sides of the full-sort switch, k = n, k > n."""
    items, queries = integer_data(2500, 37, 6, seed=k)
    got = exact_search(items, queries, k, metric, block_bytes=block_bytes)
    assert_same(got, brute_force(items, queries, k, metric))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_bytes", BLOCKS)
@pytest.mark.parametrize("k", [1, 7, 300])
def test_real_vectors_match_within_rounding(metric, block_bytes, k):
    items, queries = real_data(3000, 29, 16, seed=k, metric=metric)
    got = exact_search(items, queries, k, metric, block_bytes=block_bytes)
    assert_close(got, brute_force(items, queries, k, metric), items, queries, metric)


def test_given_item_norms_are_used():
    items, queries = integer_data(500, 5, 4, seed=1)
    norms = np.einsum("ij,ij->i", items, items)
    got = exact_search(items, queries, 5, Metric.L2, item_norms=norms, block_bytes=4096)
    assert_same(got, brute_force(items, queries, 5, Metric.L2))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_bytes", BLOCKS)
@pytest.mark.parametrize("k", [3, 40, 999])
def test_ties_go_to_the_lowest_position(metric, block_bytes, k):
    """Many exact duplicates; the k-th value is shared by more items than fit, in every block."""
    rng = np.random.default_rng(k)
    base = rng.integers(-1, 2, size=(12, 3)).astype(np.float32)
    items = base[rng.integers(0, len(base), size=3000)]
    queries = rng.integers(-1, 2, size=(9, 3)).astype(np.float32)
    got = exact_search(items, queries, k, metric, block_bytes=block_bytes)
    assert_same(got, brute_force(items, queries, k, metric))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_bytes", BLOCKS)
def test_all_items_equal(metric, block_bytes):
    items = np.zeros((2000, 4), np.float32)
    queries = np.array([[1, -2, 0, 3], [0, 0, 0, 0]], np.float32)
    pos, dist = exact_search(items, queries, 15, metric, block_bytes=block_bytes)
    np.testing.assert_array_equal(pos, np.tile(np.arange(15), (2, 1)))
    assert_same((pos, dist), brute_force(items, queries, 15, metric))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_bytes", BLOCKS)
def test_each_block_better_than_the_last(metric, block_bytes):
    """Items in order of improving score for query 0: every block overturns the running top-k.

    Query 1 sees them in the opposite order, so within one block some rows need a partial
    sort and others do not.
    """
    n = 2000  # l2 values stay under 2**24: exact in float32
    t = np.arange(n, dtype=np.float32)
    items = np.stack([t, np.ones(n, np.float32)], axis=1)
    if metric is Metric.L2:
        queries = np.array([[n, 0], [-1, 0], [700, 1]], np.float32)
    else:
        queries = np.array([[1, 0], [-1, 0], [0, 1]], np.float32)
    for k in (1, 10, 500):
        got = exact_search(items, queries, k, metric, block_bytes=block_bytes)
        assert_same(got, brute_force(items, queries, k, metric))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_bytes", BLOCKS)
@pytest.mark.parametrize("k", [5, 900, 2600])
def test_excluded_columns(metric, block_bytes, k):
    """Random exclusions, none, all but a few (padding), all (every result missing), out of block order."""
    items, queries = integer_data(2500, 6, 5, seed=k)
    rng = np.random.default_rng(k)
    excluded = [
        rng.choice(2500, size=700, replace=False),
        np.array([], dtype=np.int64),
        np.arange(2500)[np.arange(2500) % 500 != 7],  # 5 items left
        np.arange(2500)[::-1],  # nothing left
        np.array([0, 1, 2, 2499]),
        rng.choice(2500, size=2490, replace=False),
    ]
    pos, dist = exact_search(items, queries, k, metric, block_bytes=block_bytes, excluded_cols=excluded)
    assert_same((pos, dist), brute_force(items, queries, k, metric, excluded))
    worst = np.inf if metric is Metric.L2 else -np.inf
    assert (pos[3] == -1).all() and (dist[3] == worst).all()
    assert (pos[2, 5:] == -1).all()
    for row, cols in zip(pos, excluded):
        assert not set(row.tolist()) & set(np.asarray(cols).tolist())


def test_l2_distances_never_negative():
    """A query equal to an item: rounding in |x|^2 - 2 q.x + |q|^2 must not give a negative distance."""
    items, _ = real_data(2000, 1, 32, seed=3, metric=Metric.L2)
    items *= 1000.0
    queries = items[::100].copy()
    pos, dist = exact_search(items, queries, 4, Metric.L2, block_bytes=4096)
    assert (dist >= 0).all()
    np.testing.assert_array_equal(pos[:, 0], np.arange(0, 2000, 100))


def test_signed_zeros_are_ties():
    """ip scores of +0.0 and -0.0 are equal: ordered by position like every tie."""
    items = np.array([[0, 0], [1, -1], [0, 0], [-1, 1], [2, 2], [0, 0]], np.float32)
    queries = np.array([[1, 1], [-1, -1], [-0.0, 0.0]], np.float32)
    got = exact_search(items, queries, 5, Metric.IP, block_bytes=4096)
    assert_same(got, brute_force(items, queries, 5, Metric.IP))
    items = np.tile(items, (400, 1))  # the blocked path too
    got = exact_search(items, queries, 700, Metric.IP, block_bytes=4096)
    assert_same(got, brute_force(items, queries, 700, Metric.IP))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_bytes", BLOCKS)
def test_threads_give_identical_results(metric, block_bytes, many_chunks):
    items, queries = real_data(3000, 41, 16, seed=5, metric=metric)
    excluded = [np.arange(i, 3000, 7) for i in range(41)]
    for k in (1, 10, 400):
        one = exact_search(items, queries, k, metric, block_bytes=block_bytes, threads=1, excluded_cols=excluded)
        for threads in (2, 5):
            many = exact_search(
                items, queries, k, metric, block_bytes=block_bytes, threads=threads, excluded_cols=excluded
            )
            np.testing.assert_array_equal(many[0], one[0])
            np.testing.assert_array_equal(many[1], one[1])
        assert_close(one, brute_force(items, queries, k, metric, excluded), items, queries, metric)


def test_threads_on_the_default_size_path():
    """Without forcing chunks: a block large enough to be split by the default rule (2 chunks)."""
    items, queries = real_data(40_000, 64, 8, seed=9, metric=Metric.L2)
    assert 64 * 40_000 // _exact._MIN_SCORES_PER_THREAD == 2
    one = exact_search(items, queries, 10, Metric.L2, threads=1)
    two = exact_search(items, queries, 10, Metric.L2, threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert_close(two, brute_force(items, queries, 10, Metric.L2), items, queries, Metric.L2)


def test_concurrent_callers_share_the_pool(many_chunks):
    from concurrent.futures import ThreadPoolExecutor

    items, queries = integer_data(3000, 20, 6, seed=11)
    want = brute_force(items, queries, 10, Metric.IP)
    with ThreadPoolExecutor(4) as callers:
        results = list(
            callers.map(lambda _: exact_search(items, queries, 10, Metric.IP, block_bytes=81920, threads=2), range(8))
        )
    for got in results:
        assert_same(got, want)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(threads):
    items, queries = integer_data(10, 2, 3, seed=0)
    with pytest.raises(InvalidParameterError, match="threads"):
        exact_search(items, queries, 3, Metric.L2, threads=threads)


def test_default_threads_is_the_usable_cores():
    assert _exact.default_threads() >= 1
    assert _exact._get_pool()._max_workers == _exact.default_threads()


def test_by_default_the_selection_runs_on_the_callers_thread_alone(monkeypatch):
    """A second thread made every batch slower on 2 cores (docs/benchmarks/core.md): none by default."""
    items, queries = real_data(40_000, 64, 8, seed=9, metric=Metric.IP)

    def no_pool():
        raise AssertionError("the default selection asked for the thread pool")

    monkeypatch.setattr(_exact, "_get_pool", no_pool)
    assert_close(exact_search(items, queries, 10, Metric.IP), brute_force(items, queries, 10, Metric.IP), items,
                 queries, Metric.IP)  # fmt: skip


def test_empty_results():
    items, queries = integer_data(50, 3, 4, seed=0)
    pos, dist = exact_search(items, queries, 0, Metric.L2)
    assert pos.shape == dist.shape == (3, 0)
    pos, dist = exact_search(items, queries[:0], 5, Metric.IP)
    assert pos.shape == dist.shape == (0, 5)


@pytest.mark.parametrize("data", ["real", "all tied"])
def test_memory_is_bounded_by_the_block_size(data):
    """Temporary memory stays about block_bytes (plus the results), far under a full score matrix.

    With every score tied, each block's rows hold far more than k candidates at the k-th value:
    they must be cut to k before they are listed.
    """
    items, queries = real_data(20_000, 100, 8, seed=1, metric=Metric.L2)
    if data == "all tied":
        items[:] = 1.0
    norms = np.einsum("ij,ij->i", items, items)
    block = 1 << 20
    exact_search(items, queries, 10, Metric.L2, block_bytes=block, item_norms=norms)  # the pool's threads exist
    tracemalloc.start()
    pos, _ = exact_search(items, queries, 10, Metric.L2, block_bytes=block, item_norms=norms)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    results = 100 * 10 * 12
    assert peak < 1.25 * block + 2 * results + queries.nbytes, peak
    if data == "all tied":
        np.testing.assert_array_equal(pos, np.tile(np.arange(10), (100, 1)))


@pytest.mark.parametrize("block_bytes", BLOCKS)
def test_nan_items_are_never_returned(block_bytes):
    """Scores that are not numbers (NaN vectors, overflow) count as missing, wherever they fall."""
    items, queries = integer_data(2000, 4, 3, seed=2)
    items[np.arange(2000) % 200 != 3] = np.nan  # 10 usable items, fewer than k in any block
    for metric in METRICS:
        pos, dist = exact_search(items, queries, 15, metric, block_bytes=block_bytes)
        assert_same((pos, dist), brute_force(items, queries, 15, metric))
        assert set(pos[:, :10].ravel().tolist()) == set(range(3, 2000, 200))
        assert (pos[:, 10:] == -1).all()


def test_the_merge_orders_ties_by_position_and_minus_zero_as_zero():
    """Kept entries before candidates on equal keys, -0.0 equal to 0.0, empty slots (+inf, -1) last."""
    best_key = np.array([[-0.0, 1.0, np.inf, np.inf], [0.5, 0.5, 0.5, 0.5]], np.float32)
    best_pos = np.array([[4, 9, -1, -1], [1, 2, 3, 5]])
    r = np.array([0, 0, 0, 1, 1])
    ck = np.array([0.0, 1.0, -2.0, 0.5, 0.25], np.float32)
    cp = np.array([10, 11, 12, 10, 11])
    _exact._merge(best_key, best_pos, r, ck, cp, 4)
    np.testing.assert_array_equal(best_pos, [[12, 4, 10, 9], [11, 1, 2, 3]])
    np.testing.assert_array_equal(best_key, np.array([[-2.0, 0.0, 0.0, 1.0], [0.25, 0.5, 0.5, 0.5]], np.float32))


def test_other_dtypes_are_converted():
    items, queries = integer_data(1000, 4, 5, seed=4)
    want = exact_search(items, queries, 10, Metric.L2)
    got = exact_search(items.astype(np.float64), queries.astype(np.int64), 10, Metric.L2)
    assert_same(got, want)


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize("n_queries", [1, 2, 7, 12, 13])
def test_few_query_batches_scored_by_item_chunks(metric, n_queries):
    """2-12 queries are scored chunk by chunk of items (the last chunk partial): the same answer."""
    items, queries = real_data(3 * _exact._ITEM_CHUNK + 5, n_queries, 16, seed=n_queries, metric=metric)
    np.testing.assert_allclose(_exact._scores(queries, items), queries @ items.T, rtol=1e-5, atol=1e-4)
    assert _exact._scores(queries, items).flags.c_contiguous
    got = exact_search(items, queries, 10, metric)
    assert_close(got, brute_force(items, queries, 10, metric), items, queries, metric)
