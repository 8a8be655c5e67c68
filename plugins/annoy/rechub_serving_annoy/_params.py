"""The Annoy backend's parameters and the defaults that scale with the catalogue.

The defaults are the fastest setting that reaches recall@10 >= 0.95 on the
benchmark data (100,000 x 64 clustered vectors, queries drawn like the
items); docs/backends/annoy.md has the recall-QPS curve they come from.
Every integer is bounded, so the schema refuses what would overflow Annoy's
C ``int`` arguments.
"""

from __future__ import annotations

import math

from rechub_serving import Metric, Param

__all__ = ["PARAMS", "TUNE_SEARCH_K", "default_n_trees", "default_search_k", "resolve_threads"]

MAX_C_INT = 2**31 - 1  # Annoy takes search_k, n_trees, n_jobs and the seed as C ints
MAX_TREES = 10_000
MAX_THREADS = 1024

#: Defaults measured on the benchmark data (docs/backends/annoy.md): trees per metric, and the
#: search_k that reaches recall@10 0.95 there at 100,000 items (with a few percent to spare for
#: other seeds and build thread counts), growing as n ** N_EXPONENT and as max(k, 10) ** K_EXPONENT.
DEFAULT_TREES: dict[Metric, int] = {Metric.L2: 20, Metric.COSINE: 20, Metric.IP: 5}
SEARCH_K_AT_100K: dict[Metric, int] = {Metric.L2: 3400, Metric.COSINE: 3200, Metric.IP: 7800}
N_EXPONENT: dict[Metric, float] = {Metric.L2: 0.79, Metric.COSINE: 0.79, Metric.IP: 1.0}
K_EXPONENT = 0.16
#: what ``rechub-index tune`` sweeps (and the conformance suite uses to check per-call values)
TUNE_SEARCH_K = (100, 200, 500, 1000, 2000, 3000, 5000, 10_000, 20_000, 50_000, 100_000)


def _not_zero(value: int) -> None:
    if value == 0:
        raise ValueError("0 is not allowed; use -1 (automatic) or a positive number")


PARAMS: tuple[Param, ...] = (
    Param(
        "n_trees",
        int,
        None,
        "trees in the forest: a bigger index and a longer build; recall comes from search_k "
        "(default: 20 for l2 and cosine, 5 for ip: the fastest forests on the benchmark data)",
        minimum=1,
        maximum=MAX_TREES,
    ),
    Param(
        "search_k",
        int,
        None,
        "candidates inspected per query: larger is slower with better recall. -1: Annoy's own default "
        "n_trees * k (low recall); default: what reaches recall@10 0.95 on the benchmark data, growing with "
        "the catalogue and slowly with k (shown in index.params for k = 10)",
        aliases=("searchk",),
        minimum=-1,
        maximum=MAX_C_INT,
        search=True,
        check=_not_zero,
    ),
    Param(
        "seed",
        int,
        None,
        "random seed of the build (same seed, data and n_jobs: identical index)",
        minimum=0,
        maximum=MAX_C_INT,
    ),
    Param(
        "threads",
        int,
        None,
        "threads a query batch fans out over (and the build default); default or -1: every usable core",
        minimum=-1,
        maximum=MAX_THREADS,
        runtime=True,
        check=_not_zero,
    ),
    Param(
        "n_jobs",
        int,
        None,
        "threads building the trees; default: threads; -1: every usable core",
        minimum=-1,
        maximum=MAX_THREADS,
        runtime=True,
        check=_not_zero,
    ),
    Param(
        "on_disk_build",
        str,
        None,
        "build the index directly in this file instead of memory (catalogues larger than RAM); "
        "the file is overwritten and stays a valid bare Annoy file",
        runtime=True,
    ),
    Param(
        "prefault",
        bool,
        False,
        "read the whole index file into the page cache when loading (MAP_POPULATE) instead of on first use",
        runtime=True,
    ),
)


def default_n_trees(metric: Metric) -> int:
    """Trees of a forest built with the defaults."""
    return DEFAULT_TREES[metric]


def default_search_k(n_trees: int, n_items: int, k: int, metric: Metric) -> int:
    """Candidates to inspect for ``k`` results by default; never below Annoy's own ``n_trees * k``.

    Measured on clustered data, the search_k that reaches recall@10 0.95
    grows almost in proportion to the catalogue (``n ** 0.79``; ``n ** 1`` for
    Annoy's ``dot`` forest) and hardly with k (``k ** 0.16``): Annoy's own
    ``n_trees * k`` is far too few for a large catalogue and too many for a
    large k.
    """
    wanted = (
        SEARCH_K_AT_100K[metric] * (max(n_items, 1) / 100_000) ** N_EXPONENT[metric] * (max(k, 10) / 10) ** K_EXPONENT
    )
    return min(MAX_C_INT, max(n_trees * k, math.ceil(float(wanted))))


def resolve_threads(value: int | None, fallback: int) -> int:
    """A thread count: None or -1 -> ``fallback``."""
    return fallback if value is None or value == -1 else int(value)
