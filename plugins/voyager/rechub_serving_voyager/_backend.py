"""The ``voyager`` backend: Spotify's Voyager (HNSW) behind the engine protocol.

========  =====================================  ==========================
metric    Voyager space: what ``query`` returns  ``Engine.distance``
========  =====================================  ==========================
l2        ``Euclidean``: squared distance        ``SQUARED_L2``
ip        ``InnerProduct``: ``1 - <q, x>``       ``ONE_MINUS_IP``
cosine    ``Cosine``: ``1 - cos``                ``ONE_MINUS_IP``
========  =====================================  ==========================

* ``dtype``: ``float32``; ``float8`` (8-bit fixed point, values in [-1, 1]:
  the cosine metric or vectors scaled to fit); ``e4m3`` (8-bit float, values
  in [-448, 448]). The 8-bit ones keep a quarter of the memory; distances are
  those of the rounded vectors. Out-of-range vectors are refused before
  Voyager sees them.
* ``ef_search`` is per call: Voyager's ``query(..., query_ef=)`` takes it with
  each call, so nothing shared changes. The search uses ``max(ef_search, k)``;
  the default, ``max(128, 2k)``, reaches recall@10 >= 0.95 at 100,000 x 64
  with ``m=16`` on every metric (docs/backends/voyager.md).
* Voyager raises ``RecallError`` when it finds fewer than ``k`` (a graph cut
  by removals): those rows are asked again, one by one, for what was found.
* ``remove`` marks vectors deleted. Voyager does not report deletions, so
  the removed keys are saved beside the index (``removed.npy``).
* No native filter: the core over-fetches and drops ``exclude``.
* Adoption: a file written by ``Index.save``; its space, dimension and
  storage come from the file, its ids become the index's ids (Voyager < 1.3
  files record none of these: give ``dim`` and ``metric``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import voyager

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
    Metric,
    NotAnIndexError,
    Param,
    RawDistance,
)
from rechub_serving.graph import DEFAULT_EF_SEARCH, SCALE_FROM, search_width

__all__ = ["VoyagerBackend", "VoyagerEngine"]

INDEX_FILE = "index.voyager"
DEFAULT_M, DEFAULT_EF_CONSTRUCTION, DEFAULT_DTYPE = 16, 200, "float32"
SPACES = {
    Metric.L2: voyager.Space.Euclidean,
    Metric.IP: voyager.Space.InnerProduct,
    Metric.COSINE: voyager.Space.Cosine,
}
METRICS = {space: metric for metric, space in SPACES.items()}
STORAGE = {
    "float32": voyager.StorageDataType.Float32,
    "float8": voyager.StorageDataType.Float8,
    "e4m3": voyager.StorageDataType.E4M3,
}
LIMITS = {"float8": 1.0, "e4m3": 448.0}  # the values each 8-bit storage can hold
_FOUND = re.compile(r"only found (\d+) of")  # RecallError's message


def _check_range(vectors: np.ndarray, dtype: str, what: str = "vectors") -> None:
    limit = LIMITS.get(dtype)
    if limit is not None and len(vectors) and float(np.abs(vectors).max()) > limit:
        raise InvalidInputError(
            f"voyager: dtype={dtype!r} holds values in [-{limit:g}, {limit:g}], but these {what} reach "
            f"{float(np.abs(vectors).max()):g}; use metric='cosine' (unit vectors), scale the vectors, or "
            "choose dtype='e4m3' / 'float32'"
        )


class VoyagerEngine(Engine):
    """One ``voyager.Index``; its keys are the core's labels (or an adopted file's own ids)."""

    def __init__(self, index: Any, dtype: str, threads: int | None, keys: EngineKeys, removed: np.ndarray):
        self.index = index
        self.dtype = dtype
        self.threads = -1 if threads is None else threads
        self.keys = keys
        self.removed = removed  # keys marked deleted, sorted
        self.distance = RawDistance.SQUARED_L2 if index.space == voyager.Space.Euclidean else RawDistance.ONE_MINUS_IP

    @property
    def dim(self) -> int:
        return int(self.index.num_dimensions)

    @property
    def metric(self) -> Metric:
        return METRICS[self.index.space]

    def __len__(self) -> int:
        return int(self.index.num_elements) - len(self.removed)

    def resolved_params(self) -> Mapping[str, Any]:
        """What the graph holds (an adopted file's own M, ef_construction and storage)."""
        return {"m": int(self.index.M), "ef_construction": int(self.index.ef_construction), "dtype": self.dtype}

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        ef = search_width(params["ef_search"], k, len(self))
        try:
            found, dist = self.index.query(queries, k, num_threads=self.threads, query_ef=ef)
        except voyager.RecallError:
            found, dist = self._row_by_row(queries, k, ef)
        except ValueError:  # a query outside what the 8-bit storage holds
            _check_range(queries, self.dtype, "queries")
            raise
        return self.keys.labels(found.astype(np.int64)), dist

    def _row_by_row(self, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row for as many results as Voyager finds (the same search: ``ef`` stays), -1 padded."""
        found = np.full((len(queries), k), -1, np.int64)
        dist = np.zeros((len(queries), k), np.float32)
        for i, row in enumerate(queries):
            want = k
            while want:
                try:
                    found[i, :want], dist[i, :want] = self.index.query(row, want, query_ef=ef)
                    break
                except voyager.RecallError as exc:
                    got = _FOUND.search(str(exc))
                    want = min(int(got[1]), want - 1) if got else want - 1
        return found, dist

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        _check_range(vectors, self.dtype)
        self.index.add_items(vectors, self.keys.of(labels).tolist(), num_threads=self.threads)

    def remove(self, labels: np.ndarray) -> int:
        keys = self.keys.of(labels)
        for key in keys.tolist():
            self.index.mark_deleted(key)
        self.removed = np.union1d(self.removed, keys)
        return len(keys)

    def save(self, directory: Path) -> dict[str, Any]:
        self.index.save(str(directory / INDEX_FILE))
        meta: dict[str, Any] = {"file": INDEX_FILE, "space": self.index.space.name, "dtype": self.dtype}
        if len(self.removed):
            np.save(directory / "removed.npy", self.removed, allow_pickle=False)
            meta["removed"] = "removed.npy"
        meta.update(self.keys.save(directory))
        return meta

    def close(self) -> None:
        self.index = None


class VoyagerBackend(Backend):
    """HNSW graphs with Voyager: float32 or 8-bit storage, add and remove, wheels for every platform."""

    name = "voyager"
    engine_distribution = "voyager"
    capabilities = Capabilities(exact=False, add=True, remove=True, native_filter=False, persist=True)
    params = (
        Param("m", int, None, f"graph degree M (None: {DEFAULT_M})", aliases=("M",), minimum=2, maximum=1024),
        Param(
            "ef_construction",
            int,
            None,
            f"candidate list size while building (higher: better graph, slower build; None: {DEFAULT_EF_CONSTRUCTION})",
            aliases=("efConstruction",),
            minimum=1,
            maximum=1 << 16,
        ),
        Param(
            "ef_search",
            int,
            None,
            f"candidate list size per query, per call: the search uses max(ef_search, k) "
            f"(None: max({DEFAULT_EF_SEARCH}, 2k) up to {SCALE_FROM:,} vectors, doubled per tenfold more)",
            aliases=("ef", "efSearch", "query_ef"),
            minimum=1,
            maximum=1 << 16,
            search=True,
        ),
        Param(
            "dtype",
            str,
            None,
            "storage: float32 (None), float8 (values in [-1, 1]) or e4m3 (values in [-448, 448])",
            aliases=("storage", "storage_data_type"),
            choices=tuple(STORAGE),
        ),
        Param(
            "seed", int, 1, "random seed of the graph levels", aliases=("random_seed",), minimum=0, maximum=2**31 - 1
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
    )

    def tune_space(self, config: BackendConfig) -> Mapping[str, Sequence[Any]]:
        return {"ef_search": [10, 16, 32, 64, 128, 256, 512]}

    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> VoyagerEngine:
        dtype = config["dtype"] or DEFAULT_DTYPE
        _check_range(vectors, dtype)
        index = voyager.Index(
            SPACES[config.metric],
            vectors.shape[1],
            M=config["m"] or DEFAULT_M,
            ef_construction=config["ef_construction"] or DEFAULT_EF_CONSTRUCTION,
            random_seed=config["seed"],
            max_elements=len(vectors),
            storage_data_type=STORAGE[dtype],
        )
        engine = VoyagerEngine(index, dtype, config["threads"], EngineKeys(), np.zeros(0, np.int64))
        engine.add(vectors, np.arange(len(vectors), dtype=np.int64))
        return engine

    def load(self, files: EngineFiles, config: BackendConfig) -> VoyagerEngine:
        index = voyager.Index.load(str(files.path(str(files.meta.get("file", INDEX_FILE)))))
        dtype = _dtype(index)
        if config["dtype"] not in (None, dtype):
            raise IndexFormatError(f"voyager: the saved index stores {dtype}, its manifest says {config['dtype']}")
        return VoyagerEngine(index, dtype, config["threads"], EngineKeys.load(files), EngineKeys.read(files, "removed"))

    def adopt(self, path: Path, config: BackendConfig) -> Adopted:
        """A file written by ``voyager.Index.save``: space, dimension, storage and ids read from it."""
        index = _load_native(path, config)
        every = np.sort(np.fromiter(index.ids, dtype=np.uint64, count=len(index.ids)))
        live = _live(index, every)
        if not len(live):
            raise NotAnIndexError(f"{path} is a Voyager index without vectors")
        if every[-1] >= 2**63:
            raise NotAnIndexError(f"{path} holds ids above 2**63 - 1, which rechub-serving ids cannot hold")
        removed = np.setdiff1d(every, live).astype(np.int64)
        keys = EngineKeys.adopted(live.astype(np.int64), int(every[-1]) + 1, removed)
        engine = VoyagerEngine(index, _dtype(index), config["threads"], keys, removed)
        return Adopted(engine, METRICS[index.space], ids=keys.external(), dim=engine.dim)


def _load_native(path: Path, config: BackendConfig) -> Any:
    try:
        return voyager.Index.load(str(path))
    except ValueError as exc:
        if "metadata" not in str(exc):
            raise NotAnIndexError(f"{path} is not a readable Voyager index ({exc})") from None
        given = config.given
        if "dim" not in given or "metric" not in given:
            raise NotAnIndexError(
                f"{path} records no space or dimension (a Voyager file older than 1.3, or not a Voyager file); "
                "give them: builder_factory('voyager', dim=64, metric='cosine', dtype='float32')"
            ) from None
    storage = STORAGE[config["dtype"] or DEFAULT_DTYPE]
    try:
        return voyager.Index.load(str(path), SPACES[config.metric], int(given["dim"]), storage)
    except (ValueError, RuntimeError) as exc:
        raise NotAnIndexError(f"{path} is not a readable Voyager index of dim={given['dim']} ({exc})") from None


def _dtype(index: Any) -> str:
    return next(name for name, kind in STORAGE.items() if kind == index.storage_data_type)


def _live(index: Any, ids: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """The ids not marked deleted (Voyager lists deleted ones in ``ids``; reading their vector fails)."""
    live = []
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        try:
            index.get_vectors(part.tolist())
            live.append(part)
        except (RuntimeError, KeyError):
            live.append(np.array([key for key in part.tolist() if _readable(index, key)], dtype=np.uint64))
    return np.concatenate(live) if live else ids


def _readable(index: Any, key: int) -> bool:
    try:
        index.get_vector(key)
        return True
    except (RuntimeError, KeyError):
        return False
