"""The ``usearch`` backend: USearch (HNSW) behind the engine protocol.

========  ======================================  ==========================
metric    USearch metric: what ``search`` returns  ``Engine.distance``
========  ======================================  ==========================
l2        ``L2sq``: squared distance               ``SQUARED_L2``
ip        ``IP``: ``1 - <q, x>``                   ``ONE_MINUS_IP``
cosine    ``IP`` on the core's unit vectors (f32)  ``ONE_MINUS_IP``
          ``Cos``: ``1 - cos`` (f16, bf16, i8)
========  ======================================  ==========================

USearch's ``Cos`` recomputes both norms at every distance: on f32 vectors the
core has already normalised, ``IP`` gives the same ranking for about a fifth
less CPU per query. Rounded storage changes the norms, so f16 and bf16 keep
``Cos`` (recall@10 0.994 / 0.982 against 0.988 / 0.957 with ``IP``, measured
at 100,000 x 64), and ``i8`` is made for ``Cos``.

* ``dtype``: ``f32``, ``f16``, ``bf16`` (half the memory) or ``i8`` (a
  quarter; USearch scales unit vectors by 127, so only for cosine).
  Distances are those of the stored (rounded) vectors.
* ``ef_search`` per call without shared state: USearch keeps its search
  width on the index (``expansion_search``) and searches with
  ``max(expansion_search, count)``. This backend sets it to 1 once and asks
  for ``max(ef_search, k)`` results, keeping the first ``k``: the very search
  that ``expansion_search = ef_search`` would run (checked in the tests), with
  nothing changed between calls. The default, ``max(128, 2k)``, reaches
  recall@10 >= 0.95 at 100,000 x 64 with ``m=16`` on every metric.
* ``mmap=True`` (a runtime option) serves a saved index from the file
  (USearch's ``view``): read-only, so ``add`` and ``remove`` are refused.
* No native filter: USearch's Python binding takes no predicate, so the
  core over-fetches and drops ``exclude``.
* Adoption: a file written by ``Index.save``; its metric, dimension and
  dtype come from the file's header, its keys become the index's ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from usearch.index import Index, MetricKind, ScalarKind

from rechub_serving import (
    Adopted,
    Backend,
    BackendConfig,
    Capabilities,
    Engine,
    EngineFiles,
    EngineKeys,
    IndexFormatError,
    InvalidInputError,
    InvalidParameterError,
    Metric,
    NotAnIndexError,
    Param,
    RawDistance,
    UnsupportedOperation,
)
from rechub_serving.graph import DEFAULT_EF_SEARCH, SCALE_FROM, search_width

__all__ = ["UsearchBackend", "UsearchEngine"]

INDEX_FILE = "index.usearch"
KINDS = {Metric.L2: MetricKind.L2sq, Metric.IP: MetricKind.IP, Metric.COSINE: MetricKind.IP}
METRICS = {MetricKind.L2sq: Metric.L2, MetricKind.IP: Metric.IP, MetricKind.Cos: Metric.COSINE}
DTYPES = {"f32": ScalarKind.F32, "f16": ScalarKind.F16, "bf16": ScalarKind.BF16, "i8": ScalarKind.I8}
F16_MAX = 65504.0


class UsearchEngine(Engine):
    """One ``usearch.index.Index`` (in memory, or a read-only view of a saved file)."""

    def __init__(self, index: Any, threads: int | None, keys: EngineKeys, viewed: bool = False):
        index.expansion_search = 1  # the width comes from the count asked for: see the module docstring
        self.index: Any = index
        self.threads = threads or 0  # USearch: 0 = every core
        self.keys = keys
        self.viewed = viewed
        self.dtype = next(name for name, kind in DTYPES.items() if kind == index.dtype)
        self.distance = RawDistance.SQUARED_L2 if index.metric_kind == MetricKind.L2sq else RawDistance.ONE_MINUS_IP

    @property
    def dim(self) -> int:
        return int(self.index.ndim)

    @property
    def metric(self) -> Metric:
        return METRICS[self.index.metric_kind]

    def __len__(self) -> int:
        return len(self.index)

    def resolved_params(self) -> Mapping[str, Any]:
        """What the graph holds (an adopted file's own M and dtype)."""
        return {"m": int(self.index.connectivity), "dtype": self.dtype}

    def capabilities(self, declared: Capabilities) -> Capabilities:
        if not self.viewed:
            return declared
        return Capabilities(**{**declared.as_dict(), "add": False, "remove": False})

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        width = search_width(params["ef_search"], k, len(self))
        found = self.index.search(queries, width, threads=1 if len(queries) == 1 else self.threads)
        keys, dist = np.atleast_2d(found.keys)[:, :k].astype(np.int64), np.atleast_2d(found.distances)[:, :k]
        if len(queries) > 1:  # a batch pads short rows with junk (NaN distances): counts say how many are real
            short = np.arange(keys.shape[1]) >= found.counts[:, None]
            keys[short], dist[short] = -1, 0.0
        return self.keys.labels(keys), dist

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        if self.viewed:
            raise UnsupportedOperation("usearch: an index opened with mmap=True is read-only")
        _check_range(vectors, self.dtype)
        self.index.add(self.keys.of(labels).astype(np.uint64), vectors, threads=self.threads)

    def remove(self, labels: np.ndarray) -> int:
        if self.viewed:
            raise UnsupportedOperation("usearch: an index opened with mmap=True is read-only")
        return int(np.sum(self.index.remove(self.keys.of(labels).astype(np.uint64))))

    def save(self, directory: Path) -> dict[str, Any]:
        self.index.save(str(directory / INDEX_FILE))
        return {
            "file": INDEX_FILE,
            "metric": self.index.metric_kind.name,
            "dtype": self.dtype,
            **self.keys.save(directory),
        }

    def close(self) -> None:
        self.index = None


class UsearchBackend(Backend):
    """HNSW graphs with USearch: f32 / f16 / bf16 / i8 storage, add and remove, memory-mapped serving."""

    name = "usearch"
    engine_distribution = "usearch"
    capabilities = Capabilities(exact=False, add=True, remove=True, native_filter=False, persist=True, mmap=True)
    params = (
        Param("m", int, None, "graph degree M (None: 16)", aliases=("M", "connectivity"), minimum=2, maximum=1024),
        Param(
            "ef_construction",
            int,
            128,
            "candidate list size while building (higher: better graph, slower build)",
            aliases=("efConstruction", "expansion_add"),
            minimum=1,
            maximum=1 << 16,
        ),
        Param(
            "ef_search",
            int,
            None,
            f"candidate list size per query, per call: the search uses max(ef_search, k) "
            f"(None: max({DEFAULT_EF_SEARCH}, 2k) up to {SCALE_FROM:,} vectors, doubled per tenfold more)",
            aliases=("ef", "efSearch", "expansion_search"),
            minimum=1,
            maximum=1 << 16,
            search=True,
        ),
        Param(
            "dtype",
            str,
            None,
            "storage: f32 (None), f16, bf16, or i8 (metric='cosine' only)",
            aliases=("storage",),
            choices=tuple(DTYPES),
        ),
        Param(
            "threads",
            int,
            None,
            "threads of one build, add or query batch (None: all cores)",
            aliases=("num_threads", "n_jobs"),
            minimum=1,
            maximum=1024,
            runtime=True,
        ),
        Param("mmap", bool, False, "serve a saved index from its file (read-only)", runtime=True),
    )

    def check_config(self, config: BackendConfig) -> None:
        if config["dtype"] == "i8" and config.metric is not Metric.COSINE:
            raise InvalidParameterError(
                f"usearch: dtype='i8' quantises unit vectors and is defined for metric='cosine' only, "
                f"not {config.metric.value!r}; use dtype='f16' or 'bf16', or metric='cosine'"
            )

    def tune_space(self, config: BackendConfig) -> Mapping[str, Sequence[Any]]:
        return {"ef_search": [10, 16, 32, 64, 128, 256, 512]}

    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> UsearchEngine:
        dtype = config["dtype"] or "f32"
        index = Index(
            ndim=vectors.shape[1],
            metric=MetricKind.Cos if dtype != "f32" and config.metric is Metric.COSINE else KINDS[config.metric],
            dtype=DTYPES[dtype],
            connectivity=config["m"] or 16,
            expansion_add=config["ef_construction"],
        )
        engine = UsearchEngine(index, config["threads"], EngineKeys())
        engine.add(vectors, np.arange(len(vectors), dtype=np.int64))
        return engine

    def load(self, files: EngineFiles, config: BackendConfig) -> UsearchEngine:
        path = files.path(str(files.meta.get("file", INDEX_FILE)))
        index = Index.restore(str(path), view=config["mmap"])
        if index is None:
            raise IndexFormatError(f"{path.name} is not a USearch index; the index is damaged")
        engine = UsearchEngine(index, config["threads"], EngineKeys.load(files), viewed=config["mmap"])
        if config["dtype"] not in (None, engine.dtype):
            raise IndexFormatError(
                f"usearch: the saved index stores {engine.dtype}, its manifest says {config['dtype']}"
            )
        return engine

    def adopt(self, path: Path, config: BackendConfig) -> Adopted:
        """A file written by ``usearch.index.Index.save``: metric, dimension, dtype and keys read from it."""
        try:
            meta = Index.metadata(str(path))
        except (ValueError, RuntimeError) as exc:
            raise NotAnIndexError(f"{path} is not a USearch index file ({exc})") from None
        kind, scalar = meta["kind_metric"] if meta else None, meta["kind_scalar"] if meta else None
        if kind not in METRICS or scalar not in DTYPES.values():
            raise NotAnIndexError(
                f"{path}: a USearch index of metric {kind} and dtype {scalar}; rechub-serving serves "
                "metrics L2sq, IP and Cos with dtypes f32, f16, bf16 and i8"
            )
        if scalar == ScalarKind.I8 and kind != MetricKind.Cos:
            raise NotAnIndexError(f"{path}: an i8 index of metric {kind.name}: distances would be in i8 units")
        index = Index.restore(str(path), view=config["mmap"])
        if index is None:
            raise NotAnIndexError(f"{path} is not a USearch index file")
        live = np.sort(np.asarray(index.keys, dtype=np.uint64))
        if not len(live) or live[-1] >= 2**63 or (np.diff(live) == 0).any():
            raise NotAnIndexError(f"{path}: no vectors, a key above 2**63 - 1, or several vectors per key")
        # Removed keys are gone from a USearch file (and may be used again): only the live ones matter.
        keys = EngineKeys.adopted(live.astype(np.int64), int(live[-1]) + 1, np.zeros(0, np.int64))
        engine = UsearchEngine(index, config["threads"], keys, viewed=config["mmap"])
        return Adopted(engine, METRICS[kind], ids=keys.external(), dim=engine.dim)


def _check_range(vectors: np.ndarray, dtype: str) -> None:
    if dtype == "f16" and len(vectors) and float(np.abs(vectors).max()) > F16_MAX:
        raise InvalidInputError(
            f"usearch: dtype='f16' holds values up to {F16_MAX:g}, these vectors reach "
            f"{float(np.abs(vectors).max()):g}; use dtype='bf16' or 'f32', or scale the vectors"
        )
