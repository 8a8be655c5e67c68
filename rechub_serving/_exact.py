"""Exact top-k by blocked matrix product: the reference search every backend is checked against.

Scores are computed block by block (one matrix product over at most
``block_bytes`` of scores at a time, in BLAS's own threads), so memory is
bounded by the block size, not by n_queries x n_items. Each block is then
reduced into a running top-k per query, by row chunks on a module-level thread
pool (numpy releases the GIL in these loops):

* a row whose running k-th best is known keeps only the scores strictly
  better than it: one comparison per score, and a handful of candidates;
* a row with too many candidates for that (its first block, or a block much
  better than anything seen) is partially sorted once to find its k-th value
  in the block, which caps its candidates at k;
* the few candidates are merged into the running top-k, which stays sorted.

The selection is therefore about one comparison per score instead of a partial
sort per score. It runs on the caller's thread unless ``threads`` asks for
more: on the 2-core machine of docs/benchmarks/core.md a second selection
thread made every batch size slower (numpy's small calls contend for the GIL),
twice as slow for the 8-query batches a server makes. Order: best first, equal scores by row
position (blocks come in position order and every merge keeps that order), the
same for any number of threads or block size. When k is of the order of the
number of items, whole rows are sorted instead.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from ._errors import InvalidParameterError
from ._metrics import Metric

__all__ = ["DEFAULT_THREADS", "default_threads", "exact_search"]

# Bytes of temporary memory per score of a block: the float32 score, its
# candidate mask, and for rows that need a partial sort their float32 copy and
# one more comparison. The running top-k comes on top (12 bytes per result).
_BYTES_PER_SCORE = 10
#: Selection threads when none are given (measured: see the module docstring).
DEFAULT_THREADS = 1
# Scores per row chunk at the least when threads > 1: each chunk pays the fixed
# cost of its own ramp of partial sorts and merges (8 queries x 100,000 items
# in 1.3-row chunks took twice as long as in one).
_MIN_SCORES_PER_THREAD = 1 << 20
# Query batches that _scores computes by item chunks, and the rows of one chunk.
_FEW_QUERIES = 12
_ITEM_CHUNK = 4096
# Scores in one slice of a block that the selection goes through while it is in cache.
_CACHE_SCORES = 1 << 16

_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def default_threads() -> int:
    """The cores this process may run on: the size of the selection thread pool."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _get_pool() -> ThreadPoolExecutor:
    """The shared pool, sized to the usable cores; made anew in a forked child."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=default_threads(), thread_name_prefix="rechub-exact")
            _pool_pid = os.getpid()
        return _pool


def exact_search(
    items: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: Metric,
    *,
    block_bytes: int = 64 << 20,
    item_norms: np.ndarray | None = None,
    excluded_cols: list[np.ndarray] | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` over ``items``: (row positions, distances), best first.

    ``metric`` l2 gives squared distances (clamped at 0), ip and cosine give
    inner products (cosine expects normalised inputs). ``excluded_cols[i]``
    lists item rows that query ``i`` must not get; missing results are
    position -1 with the worst distance (+inf for l2, -inf otherwise).
    Vectors are float32 (other dtypes are converted, which copies them).

    Equal scores are ordered by row position. For l2 the ranking score is
    |x|^2 - 2 q.x and |q|^2 is added afterwards, so two results whose scores
    differ by less than its rounding show the same distance, in score order.

    ``block_bytes`` bounds the temporary memory (about that much, plus the
    results). ``threads`` is the number of threads of the selection (default
    1, the caller's; more are worth trying only on many cores with large
    batches, see docs/benchmarks/core.md); the matrix product runs in BLAS's
    own threads.
    """
    if threads is None:
        threads = DEFAULT_THREADS
    elif isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise InvalidParameterError(f"threads must be a whole number >= 1, got {threads!r}; omit it for one")
    items = np.asarray(items, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    n_items, n_q = len(items), len(queries)
    k = max(0, min(k, n_items))
    l2 = metric is Metric.L2
    if not l2:
        item_norms = None
    elif item_norms is None:
        item_norms = np.einsum("ij,ij->i", items, items)
    # Scores are computed as "lower is better" by scaling the queries, which is
    # exact in floating point: -2 q.x (+ |x|^2 later) for l2, -q.x otherwise.
    scaled = np.multiply(queries, -2.0 if l2 else -1.0, dtype=np.float32)
    if k == 0:
        out_pos, out_key = np.empty((n_q, 0), np.int64), np.empty((n_q, 0), np.float32)
    elif 2 * k >= n_items:
        out_pos, out_key = _full_sort(items, scaled, k, item_norms, excluded_cols, block_bytes)
    else:
        out_pos, out_key = _blocked_topk(items, scaled, k, item_norms, excluded_cols, block_bytes, int(threads))
    missing = ~np.isfinite(out_key)
    if l2:
        out_key += np.einsum("ij,ij->i", queries, queries)[:, None]
        np.maximum(out_key, 0.0, out=out_key)  # rounding can dip below zero
    else:
        np.negative(out_key, out=out_key)
    if missing.any():
        out_pos[missing] = -1
    return out_pos, out_key


def _blocked_topk(items, scaled, k, item_norms, excluded_cols, block_bytes, threads):
    """Top-k keys (lower is better) and positions, sorted, for k well under n_items."""
    n_items, n_q = len(items), len(scaled)
    budget = max(1, block_bytes // _BYTES_PER_SCORE)
    # All queries at once when they fit, so each product is one large BLAS call;
    # item blocks of at least ~1024 columns keep the product efficient.
    q_block = max(1, min(n_q, budget // max(k * 4, 1024)))
    i_block = max(1, min(n_items, budget // q_block))
    out_pos = np.full((n_q, k), -1, dtype=np.int64)
    out_key = np.full((n_q, k), np.inf, dtype=np.float32)
    for qs in range(0, n_q, q_block):
        q = scaled[qs : qs + q_block]
        best_key, best_pos = out_key[qs : qs + len(q)], out_pos[qs : qs + len(q)]  # views, updated in place
        banned = _banned_pairs(excluded_cols, qs, len(q))
        for start in range(0, n_items, i_block):
            key = _scores(q, items[start : start + i_block])
            if banned is not None:
                _ban(key, banned, start)
            norms = item_norms[start : start + key.shape[1]] if item_norms is not None else None
            # The first block's columns go in a ramp: see _select_ramp.
            first = max(8 * k, 512) if start == 0 else key.shape[1]
            _select_in_chunks(key, norms, best_key, best_pos, start, k, threads, first)
            del key
    return out_pos, out_key


def _scores(q: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``q @ items.T`` (float32, C order); for a few queries, in item chunks of ``items @ q.T``.

    OpenBLAS multiplies 2-12 query rows by a long transposed item matrix
    1.3-2.2x slower at one BLAS thread (as ``rechub-index serve`` runs), and
    1.2-1.3x at two, than it multiplies item chunks by the queries' columns,
    each chunk transposed into place while in cache (100,000 x 64,
    docs/benchmarks/core.md). One query goes to BLAS's matrix-vector product.
    """
    if not 2 <= len(q) <= _FEW_QUERIES:
        return q @ items.T
    return _scores_by_chunks(q, items)


def _scores_by_chunks(q: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``q @ items.T`` computed as chunks of ``items @ q.T``, each transposed into place."""
    key = np.empty((len(q), len(items)), np.float32)
    q_t = np.ascontiguousarray(q.T)
    part = np.empty((min(_ITEM_CHUNK, len(items)), len(q)), np.float32)
    for a in range(0, len(items), _ITEM_CHUNK):
        n = min(_ITEM_CHUNK, len(items) - a)
        np.matmul(items[a : a + n], q_t, out=part[:n])
        key[:, a : a + n] = part[:n].T
    return key


def _select_in_chunks(key, norms, best_key, best_pos, start, k, threads, first) -> None:
    """Run :func:`_select_ramp` over row chunks of the block on ``threads`` threads (the caller is one).

    A few chunks per thread, taken from a shared queue, so that a thread slowed by
    the machine's other work does not hold the others up.
    """
    rows = len(key)
    n_chunks = min(rows, 4 * threads, max(1, key.size // _MIN_SCORES_PER_THREAD))
    workers = min(threads, n_chunks)
    if workers == 1:
        _select_ramp(key, norms, best_key, best_pos, start, k, first)
        return
    todo: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for cut in itertools.pairwise(np.linspace(0, rows, n_chunks + 1).astype(int).tolist()):
        todo.put(cut)

    def work() -> None:
        while True:
            try:
                a, b = todo.get_nowait()
            except queue.Empty:
                return
            _select_ramp(key[a:b], norms, best_key[a:b], best_pos[a:b], start, k, first)

    pool = _get_pool()
    helpers = [pool.submit(work) for _ in range(workers - 1)]
    try:
        work()
    finally:
        wait(helpers)  # they write into the caller's arrays: never leave them running
    for helper in helpers:
        helper.result()  # re-raises a helper's error


def _select_ramp(key, norms, best_key, best_pos, start, k, first) -> None:
    """:func:`_select` over column ranges doubling from ``first`` (one range if ``first`` covers the block).

    A row's first columns have no k-th best yet and need a partial sort: done on a
    narrow range it is cheap, and each next range (at most as wide as all before it)
    then adds only about k candidates per row.
    """
    a, width, nb = 0, first, key.shape[1]
    while a < nb:
        b = min(nb, a + width)
        part_norms = norms[a:b] if norms is not None else None
        _select(key[:, a:b], part_norms, best_key, best_pos, start + a, k)
        a, width = b, 2 * width


def _select(key, norms, best_key, best_pos, start, k) -> None:
    """Merge one block's keys (rows x block, lower is better) into the running top-k, in place."""
    rows, nb = key.shape
    mask = np.empty(key.shape, dtype=bool)
    bound = best_key[:, -1:]
    limit = max(k, nb // 16)  # more candidates than this in a row: cheaper to partially sort it
    # Row slices that fit in cache: the norms, the comparison and the listing read each score once.
    step = max(1, _CACHE_SCORES // nb)
    found: list[np.ndarray] | None = []
    total = 0
    for a in range(0, rows, step):
        part = key[a : a + step]
        if norms is not None:
            part += norms
        # strictly better than the k-th best so far (never inf or NaN)
        part_mask = np.less(part, bound[a : a + step], out=mask[a : a + step])
        if found is not None:
            listed = np.flatnonzero(part_mask)
            total += len(listed)
            if total > 4 * k * rows:
                found = None  # too many to list: count them by row below
            elif len(listed):
                found.append(listed + a * nb)
    if total == 0:
        return
    if found is not None:
        flat = np.concatenate(found)
        counts = np.bincount(flat // nb, minlength=rows)
    else:
        flat, counts = None, mask.sum(axis=1)
    heavy = np.flatnonzero(counts > limit)
    if len(heavy):
        _cap_at_kth(key, mask, heavy, k)
        flat = None
    if flat is None:
        flat = np.flatnonzero(mask)
    r = flat // nb
    c = flat - r * nb
    _merge(best_key, best_pos, r, key[r, c], c + start, k)


def _cap_at_kth(key, mask, heavy, k) -> None:
    """Keep in ``mask`` only the k best of each ``heavy`` row (ties: lowest positions first).

    A heavy row has more than k candidates, all numbers (NaN is never a candidate), so its
    k-th value after the partial sort is a number.
    """
    whole = len(heavy) == len(key)
    sub = key.copy() if whole else key[heavy]
    sub.partition(k - 1, axis=1)
    kth = sub[:, k - 1 : k].copy()
    del sub
    if whole:
        mask &= key <= kth
        counts = np.count_nonzero(mask, axis=1)
    else:
        mask[heavy] &= key[heavy] <= kth
        counts = np.count_nonzero(mask[heavy], axis=1)
    for i in np.flatnonzero(counts > k):  # ties at the k-th value
        row = heavy[i]
        at_kth = np.flatnonzero(mask[row] & (key[row] == kth[i, 0]))
        mask[row, at_kth[k - (counts[i] - len(at_kth)) :]] = False


def _merge(best_key, best_pos, r, ck, cp, k) -> None:
    """Insert candidates (row r, key ck, position cp) into the sorted running top-k, in place.

    The rows hit are re-sorted whole, kept entries and candidates together, by
    (row, key, position): equal keys stay in position order, and as every
    candidate's position is above every kept one (blocks come in position
    order), kept entries stay before candidates. Empty slots (+inf, position
    -1) sort last, as no candidate is +inf or NaN. One ``lexsort`` of a few
    hundred entries costs half of an insertion by ranks in numpy calls.
    """
    rows_hit, local, counts = np.unique(r, return_inverse=True, return_counts=True)
    m = len(rows_hit)
    keys = np.concatenate([best_key[rows_hit].ravel(), ck])
    pos = np.concatenate([best_pos[rows_hit].ravel(), cp])
    row = np.concatenate([np.repeat(np.arange(m), k), local])
    order = np.lexsort((pos, keys, row))  # np.lexsort orders -0.0 and 0.0 as equal
    sizes = counts + k
    take = order[((np.cumsum(sizes) - sizes)[:, None] + np.arange(k)).ravel()]  # the k first of each row
    best_key[rows_hit] = keys[take].reshape(m, k)
    best_pos[rows_hit] = pos[take].reshape(m, k)


def _full_sort(items, scaled, k, item_norms, excluded_cols, block_bytes):
    """Top-k by a stable sort of whole rows: for k of the order of n_items."""
    n_items, n_q = len(items), len(scaled)
    rows = max(1, min(n_q, block_bytes // (12 * n_items)))  # float32 score + int64 sort index
    out_pos = np.empty((n_q, k), dtype=np.int64)
    out_key = np.empty((n_q, k), dtype=np.float32)
    for qs in range(0, n_q, rows):
        key = scaled[qs : qs + rows] @ items.T
        if item_norms is not None:
            key += item_norms
        banned = _banned_pairs(excluded_cols, qs, len(key))
        if banned is not None:
            _ban(key, banned, 0)
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        out_pos[qs : qs + len(key)] = order
        out_key[qs : qs + len(key)] = np.take_along_axis(key, order, axis=1)
    return out_pos, out_key


def _ban(key: np.ndarray, banned: tuple[np.ndarray, np.ndarray], start: int) -> None:
    """Set the banned (row, column) pairs that fall in this block to +inf (never selected)."""
    rows, cols = banned
    sel = (cols >= start) & (cols < start + key.shape[1])
    key[rows[sel], cols[sel] - start] = np.inf


def _banned_pairs(excluded: list[np.ndarray] | None, offset: int, n: int):
    if excluded is None:
        return None
    rows = [np.full(len(c), i, np.int64) for i, c in enumerate(excluded[offset : offset + n]) if len(c)]
    if not rows:
        return None
    cols = [np.asarray(c, dtype=np.int64) for c in excluded[offset : offset + n] if len(c)]
    return np.concatenate(rows), np.concatenate(cols)
