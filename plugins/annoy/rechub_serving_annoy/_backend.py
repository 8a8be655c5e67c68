"""The ``annoy`` backend: Spotify's Annoy (random-projection forests) behind the rechub-serving contract.

* Metrics l2 / ip / cosine map onto Annoy's ``euclidean`` / ``dot`` /
  ``angular``; the engine declares Annoy's numbers and the core converts them
  (:mod:`._metrics`).
* Batches fan out over a thread pool: Annoy releases the GIL while it searches.
* Saved indexes are one Annoy file in ``engine/``; loading memory-maps it
  (``AnnoyIndex.load`` always does), so processes loading the same index share
  its pages. Bare ``AnnoyIndex.save`` files are adopted when ``dim`` and
  ``metric`` are given.
* Every file is checked against Annoy's layout before Annoy opens it
  (:mod:`._layout`): a wrong dimension or another engine's file gets the
  library's error, and Annoy prints nothing on stderr.
* Annoy cannot change an index after ``build``: no ``add``, no ``remove``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import annoy
import numpy as np
from rechub_serving import (
    Adopted,
    Backend,
    BackendConfig,
    BackendError,
    Capabilities,
    EngineFiles,
    IndexFormatError,
    InvalidParameterError,
    NotAnIndexError,
)

from . import _layout
from ._concurrency import usable_cores
from ._engine import ENGINE_FILE, AnnoyEngine
from ._metrics import ANNOY_METRIC, AnnoyMetric, annoy_metric_named
from ._params import PARAMS, TUNE_SEARCH_K, default_n_trees, resolve_threads

__all__ = ["AnnoyBackend"]

logger = logging.getLogger("rechub_serving.annoy")

_ADD_BLOCK = 4096  # rows converted to Python lists at a time while adding items

# on_disk_build files mapped by open indexes: rebuilding into one would truncate it under them.
_files_in_use: set[str] = set()
_files_lock = threading.Lock()


def query_threads(config: Mapping[str, Any]) -> int:
    """Threads a query batch fans out over: ``threads``, or every usable core."""
    return resolve_threads(config["threads"], usable_cores())


def build_threads(config: Mapping[str, Any]) -> int:
    """Threads that build the trees: ``n_jobs``, else ``threads``; -1: every usable core (never Annoy's own -1)."""
    n_jobs = config["n_jobs"]
    return query_threads(config) if n_jobs is None else resolve_threads(n_jobs, usable_cores())


class AnnoyBackend(Backend):
    """Approximate search with Annoy: small, memory-mapped indexes, fast builds, no updates."""

    name = "annoy"
    params = PARAMS
    capabilities = Capabilities(
        exact=False, add=False, remove=False, native_filter=False, persist=True, mmap=True, gpu=False
    )
    engine_distribution = "annoy"

    def check_config(self, config: BackendConfig) -> None:
        path = config["on_disk_build"]
        if path is not None and Path(path).expanduser().is_dir():
            raise InvalidParameterError(
                f"annoy: on_disk_build={path!r} is a directory; give the path of a file to build the index in"
            )

    def tune_space(self, config: BackendConfig) -> Mapping[str, Sequence[Any]]:
        return {"search_k": list(TUNE_SEARCH_K)}

    # -- build ---------------------------------------------------------------------------
    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> AnnoyEngine:
        n, dim = vectors.shape
        annoy_metric = ANNOY_METRIC[config.metric]
        index = annoy.AnnoyIndex(dim, annoy_metric)
        if config["seed"] is not None:
            index.set_seed(config["seed"])
        on_disk = _claim(config["on_disk_build"])
        try:
            if on_disk is not None:
                _check_writable(on_disk)
                index.on_disk_build(on_disk)
            for start in range(0, n, _ADD_BLOCK):
                for label, row in enumerate(vectors[start : start + _ADD_BLOCK].tolist(), start):
                    index.add_item(label, row)
            n_trees = config["n_trees"] or default_n_trees(config.metric)
            n_jobs = build_threads(config)
            if not index.build(n_trees, n_jobs):
                raise BackendError("annoy failed to build the index")
        except BaseException:
            index.unload()
            _release(on_disk)
            raise
        logger.debug("annoy: built %d trees over %d x %d (%d build threads)", n_trees, n, dim, n_jobs)
        return AnnoyEngine(
            index,
            dim=dim,
            annoy_metric=annoy_metric,
            threads=query_threads(config),
            prefault=config["prefault"],
            on_disk_file=on_disk,
            release=None if on_disk is None else lambda: _release(on_disk),
        )

    # -- load ------------------------------------------------------------------------------
    def load(self, files: EngineFiles, config: BackendConfig) -> AnnoyEngine:
        meta = files.meta
        name = meta.get("file", ENGINE_FILE)
        annoy_metric = annoy_metric_named(meta.get("annoy_metric", ANNOY_METRIC[config.metric]))
        if not isinstance(name, str) or annoy_metric is None:
            raise IndexFormatError(
                f"the manifest's engine entry {dict(meta)!r} names no Annoy file and metric; the manifest was edited"
            )
        path = files.path(name)
        reason = _layout.problem(path, files.dim, annoy_metric)
        if reason is not None:
            raise IndexFormatError(
                f"engine/{name} is not an Annoy index of dimension {files.dim} and metric {annoy_metric!r} "
                f"as the manifest says: {reason}; the index is damaged or its manifest was edited"
            )
        engine = self._open(path, files.dim, annoy_metric, config)
        if meta.get("n_items", len(engine)) != len(engine):
            engine.close()
            raise IndexFormatError(
                f"engine/{name} holds {len(engine)} items but the manifest's engine entry says {meta['n_items']}; "
                "the index is damaged or its manifest was edited"
            )
        return engine

    def adopt(self, path: Path, config: BackendConfig) -> Adopted:
        """Adopt a bare file written by ``AnnoyIndex.save`` (it records neither dim nor metric)."""
        if not _layout.fits(path, limit=1):
            raise NotAnIndexError(f"{path} is not an Annoy file: {_layout.describe_fits(path)}")
        dim, given = config.dim, config.given
        missing = [name for name in ("dim", "metric") if given.get(name) is None]
        if missing:
            wanted = None if "metric" in missing else ANNOY_METRIC[config.metric]
            guesses = [(f, name) for f, name in _layout.fits(path, dim, limit=16) if wanted in (None, name)]
            if not guesses:
                what = " and ".join(f"{k} {v!r}" for k, v in (("dimension", dim), ("metric", wanted)) if v is not None)
                raise NotAnIndexError(
                    f"{path} is not an Annoy file of {what}: {_layout.describe_fits(path)}; "
                    "check the parameters against how it was built"
                )
            f, name = guesses[0]
            raise InvalidParameterError(
                f"{path} is a bare Annoy file, which records neither its dimension nor its metric "
                f"({_layout.describe_fits(path)}): give {' and '.join(missing)} to the builder, e.g. "
                f"builder_factory('annoy', dim={f}, metric={name!r})"
            )
        assert dim is not None  # given, as checked above
        annoy_metric = ANNOY_METRIC[config.metric]
        reason = _layout.problem(path, dim, annoy_metric)
        if reason is not None:
            raise NotAnIndexError(
                f"{path} is not an Annoy file of dimension {dim} and metric {annoy_metric!r}: {reason}; "
                f"{_layout.describe_fits(path)}: check dim= and metric= against how it was built"
            )
        return Adopted(self._open(path, dim, annoy_metric, config), metric=config.metric, dim=dim)

    def _open(self, path: Path, dim: int, annoy_metric: AnnoyMetric, config: BackendConfig) -> AnnoyEngine:
        """Memory-map a file whose layout was checked (so Annoy's own checks cannot fail and print)."""
        index = annoy.AnnoyIndex(dim, annoy_metric)
        index.load(str(path), config["prefault"])
        return AnnoyEngine(
            index, dim=dim, annoy_metric=annoy_metric, threads=query_threads(config), prefault=config["prefault"]
        )


def _claim(path: str | None) -> str | None:
    """Reserve an on_disk_build file for one open index; None when not building on disk."""
    if path is None:
        return None
    path = os.path.realpath(os.path.expanduser(path))
    with _files_lock:
        if path in _files_in_use:
            raise InvalidParameterError(
                f"annoy: on_disk_build file {path} belongs to an open index; rebuilding there would "
                "truncate it under that index: close it first or choose another path"
            )
        _files_in_use.add(path)
    return path


def _release(path: str | None) -> None:
    if path is not None:
        with _files_lock:
            _files_in_use.discard(path)


def _check_writable(path: str) -> None:
    """Open the on_disk_build file as Annoy will, so that a bad path is our error, not Annoy's stderr."""
    try:
        with open(path, "wb"):
            pass
    except OSError as exc:
        raise InvalidParameterError(
            f"annoy: cannot build in on_disk_build={path!r}: {exc.strerror or exc}; "
            "give a writable file path in an existing directory"
        ) from None
