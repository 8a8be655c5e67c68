"""The serving model and its hot swap: load a new generation beside the old one, check it, switch.

A generation is a :class:`LoadedModel`: the user tower (a
:class:`~rechub_serving.Retriever`) or none, the index, the manifest it was
loaded from, and the exact reference for recall monitoring. The
:class:`ModelStore` hands the current generation to each batch
(:meth:`ModelStore.acquire`, reference counted) and replaces it when the files
change on disk (polled: the stat of the tower, of the index manifest and of
the reference files) or when an admin asks (:meth:`ModelStore.reload`).

A replacement is loaded completely beside the serving one, checked (the tower
and index agree on dimension, metric and model hash, which the Retriever
checks; the new pair has the serving pair's dimension, metric, id type and
features, which clients depend on; a warm-up query runs), and only then made
current; batches already running finish on the old generation, which is
closed when the last one lets go. Anything wrong and the new pair is closed,
the reason logged and shown in ``/v1/info``, and the old one keeps serving; the
same files are not tried again until they change. Files seen changing are
loaded only once they have stayed the same for one poll interval, and a load
during which they changed again is discarded and retried, so a copy in
progress is never taken for a bad model.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import Indexer, open_index
from .config import ModelPaths, ServeConfig
from .errors import SwapRefusedError, public_message
from .reference import ExactReference, load_reference

__all__ = ["LoadedModel", "ModelStore", "fingerprint", "read_index_manifest"]

logger = logging.getLogger("rechub_serving.serve")

Fingerprint = tuple[Any, ...]


def read_index_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the saved index at ``path`` (not re-verifying checksums: loading does that)."""
    from rechub_serving import read_manifest

    return read_manifest(Path(path), verify=False)


def _stat(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def fingerprint(paths: ModelPaths) -> Fingerprint:
    """What changes when any file of a generation is replaced (inode, mtime, size of each)."""
    return (
        _stat(paths.user_tower),
        _stat(paths.index / "manifest.json"),
        _stat(paths.embeddings),
        _stat(paths.embedding_ids),
    )


def _complete(paths: ModelPaths, fp: Fingerprint) -> bool:
    """The files a generation needs are all there (a swap in progress may have removed one for a moment)."""
    return (paths.user_tower is None or fp[0] is not None) and fp[1] is not None


class _ChangedWhileLoading(Exception):
    """The files changed during a load: the loaded pair may mix two versions."""


@dataclass(eq=False)
class LoadedModel:
    """One generation: what serves, where it came from, and who is still using it."""

    paths: ModelPaths
    index: Indexer
    retriever: Any  # rechub_serving.Retriever, or None for an index alone
    manifest: dict[str, Any]
    fingerprint: Fingerprint
    reference: ExactReference | None
    reference_note: str
    generation: int = 0
    loaded_at: float = field(default_factory=time.time)
    refs: int = 0
    retired: bool = False

    @property
    def mode(self) -> str:
        return "recommend" if self.retriever is not None else "search"

    @property
    def model_hash(self) -> str | None:
        if self.retriever is not None and self.retriever.model_hash:
            return str(self.retriever.model_hash)
        value = self.index.metadata.get("model_hash")
        return str(value) if value else None

    @property
    def features(self) -> list[dict[str, Any]] | None:
        return list(self.retriever.inputs) if self.retriever is not None else None

    def signature(self) -> dict[str, Any]:
        """What clients depend on: it must not change in a hot swap."""
        features = None
        if self.features is not None:
            features = [(f["name"], f["type"], int(f.get("embed_dim", 1)) if f["type"] == "dense" else None)
                        for f in self.features]  # fmt: skip
        return {
            "dimension": self.index.dim,
            "metric": self.index.metric.value,
            "id type": self.index.id_kind,
            "features": features,
        }

    def close(self) -> None:
        if self.reference is not None:
            self.reference.close()
        if self.retriever is not None:
            self.retriever.close()
        else:
            self.index.close()


def _warm_up(model: LoadedModel) -> None:
    """One real query through the new pair before it serves (also pays the first-call costs)."""
    k = max(1, min(10, len(model.index)))
    if model.retriever is not None:
        user: dict[str, Any] = {}
        for spec in model.retriever.inputs:
            if spec["type"] == "sparse":
                user[spec["name"]] = None
            elif spec["type"] == "sequence":
                user[spec["name"]] = []
            else:
                dim = int(spec.get("embed_dim", 1))
                user[spec["name"]] = 0.0 if dim == 1 else [0.0] * dim
        vectors = model.retriever.user_vectors([user])
        if vectors.shape != (1, model.index.dim) or not np.all(np.isfinite(vectors)):
            raise SwapRefusedError(f"the user tower returned {vectors.shape} or non-finite values for a test user")
        model.retriever.recommend([user], k=k)
    elif len(model.index):
        probe = np.zeros((1, model.index.dim), np.float32)
        probe[0, 0] = 1.0
        model.index.query(probe, k)


def load_model(config: ServeConfig, paths: ModelPaths) -> LoadedModel:
    """Load one generation from ``paths`` and check it; raises on any problem (nothing stays open)."""
    before = fingerprint(paths)
    manifest = read_index_manifest(paths.index)
    tower_threads = config.tower_threads
    if paths.user_tower is not None:
        from ..retriever import Retriever

        retriever = Retriever(
            paths.user_tower, paths.index, k=config.default_k, threads=tower_threads, **config.index_params
        )
        index = retriever.index
    else:
        retriever = None
        index = open_index(paths.index, **config.index_params)
    model = LoadedModel(paths, index, retriever, manifest, before, None, "")
    try:
        if (manifest.get("dim"), manifest.get("count"), manifest.get("metric")) != (
            index.dim, len(index), index.metric.value
        ):  # fmt: skip
            raise _ChangedWhileLoading("the manifest read does not describe the index loaded")
        _warm_up(model)
        model.reference, model.reference_note = load_reference(paths, config.recall, index)
        if fingerprint(paths) != before:
            raise _ChangedWhileLoading("the files changed while they were loaded")
    except BaseException:
        model.close()
        raise
    return model


class ModelStore:
    """The current generation, reference counted, and its replacement (polled or on request)."""

    def __init__(
        self,
        config: ServeConfig,
        paths: ModelPaths,
        *,
        on_swap: Callable[[LoadedModel], None] | None = None,
        on_outcome: Callable[[str], None] | None = None,
    ):
        self.config = config
        self.paths = paths
        self._on_swap = on_swap
        self._on_outcome = on_outcome
        self._lock = threading.Lock()  # the current generation and reference counts
        self._swap_lock = threading.Lock()  # one load at a time
        self._current: LoadedModel | None = None
        self._refused: Fingerprint | None = None
        self._candidate: Fingerprint | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.last_swap: dict[str, Any] = {"outcome": None}

    # -- the serving generation ---------------------------------------------------------------------
    def load_initial(self, attempts: int = 3) -> LoadedModel:
        for attempt in range(attempts):
            try:
                model = load_model(self.config, self.paths)
                break
            except _ChangedWhileLoading:
                if attempt + 1 == attempts:
                    raise SwapRefusedError("the model files kept changing while they were loaded") from None
                time.sleep(0.2)
        self._publish(model)
        logger.info(
            "serving generation %d: %s index of %d items%s", model.generation, model.index.backend, len(model.index),
            f", model {model.model_hash[:12]}" if model.model_hash else "",
        )  # fmt: skip
        return model

    @property
    def current(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise SwapRefusedError("no model is loaded")
        return model

    @contextlib.contextmanager
    def acquire(self) -> Iterator[LoadedModel]:
        """The current generation, kept open until the block ends even if a swap retires it meanwhile."""
        with self._lock:
            model = self.current
            model.refs += 1
        try:
            yield model
        finally:
            with self._lock:
                model.refs -= 1
                close = model.retired and model.refs == 0
            if close:
                self._close(model)

    def _publish(self, model: LoadedModel) -> LoadedModel | None:
        with self._lock:
            old = self._current
            model.generation = (old.generation if old is not None else 0) + 1
            if self._on_swap is not None:
                self._on_swap(model)
            self._current = model
            close_old = False
            if old is not None:
                old.retired = True
                close_old = old.refs == 0
        if close_old and old is not None:
            self._close(old)
        return old

    @staticmethod
    def _close(model: LoadedModel) -> None:
        try:
            model.close()
        except Exception as exc:  # closing must never break serving
            logger.warning("closing generation %d failed: %s", model.generation, exc)

    # -- swapping ------------------------------------------------------------------------------------
    def reload(self, reason: str = "admin request") -> tuple[bool, int, str]:
        """Load the files now and switch if they pass the checks: ``(swapped, generation, message)``."""
        with self._swap_lock:
            return self._swap(reason)

    def _swap(self, reason: str) -> tuple[bool, int, str]:
        old = self.current
        started = fingerprint(self.paths)
        try:
            new = load_model(self.config, self.paths)
        except _ChangedWhileLoading as exc:
            logger.info("hot swap postponed (%s): %s", reason, exc)
            return False, old.generation, f"not swapped: {exc}; retry when the files are complete"
        except Exception as exc:
            if fingerprint(self.paths) != started:  # a writer was at work: not a verdict on the new files
                logger.info("hot swap postponed (%s): the files changed while loading (%s)", reason, exc)
                return False, old.generation, "not swapped: the files changed while they were loaded; retry"
            return self._refuse(started, reason, exc)
        problems = [
            f"{name} {new_value!r} differs from the serving {old_value!r}"
            for name, old_value, new_value in (
                (name, old.signature()[name], value) for name, value in new.signature().items()
            )
            if old_value != new_value
        ]
        if old.model_hash and new.mode == "recommend" and not new.index.metadata.get("model_hash"):
            problems.append("the new index records no model hash, so it cannot be checked against the tower")
        if problems:
            self._close(new)
            return self._refuse(
                started, reason, SwapRefusedError("; ".join(problems) + "; restart the server to serve it")
            )
        self._publish(new)
        self._refused = None
        message = (
            f"swapped to generation {new.generation} ({reason}): {new.index.backend} index of {len(new.index)} items"
            + (f", model {new.model_hash[:12]}" if new.model_hash else "")
        )
        logger.info("%s", message)
        self._record("swapped", reason, public_message(message), new.generation)
        return True, new.generation, public_message(message)

    def _refuse(self, started: Fingerprint, reason: str, exc: BaseException) -> tuple[bool, int, str]:
        self._refused = started
        generation = self.current.generation
        text = " ".join(str(exc).split()) or type(exc).__name__
        logger.error(
            "refused the new model (%s): %s; still serving generation %d", reason, text, generation,
            extra={"kind": "swap_refused"},
        )  # fmt: skip
        message = public_message(f"refused: {text}; still serving generation {generation}")
        self._record("refused", reason, message, generation)
        return False, generation, message

    def _record(self, outcome: str, reason: str, message: str, generation: int) -> None:
        self.last_swap = {
            "outcome": outcome,
            "reason": reason,
            "message": message,
            "generation": generation,
            "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    # -- watching ------------------------------------------------------------------------------------
    def poll(self) -> None:
        """One watcher tick: swap when the files changed and have stayed the same since the last tick."""
        fp = fingerprint(self.paths)
        if fp == self.current.fingerprint or fp == self._refused or not _complete(self.paths, fp):
            self._candidate = None
            return
        if fp != self._candidate:
            self._candidate = fp  # changed: wait one interval for the writer to finish
            return
        self._candidate = None
        with self._swap_lock:
            if fingerprint(self.paths) == fp:
                self._swap("files changed on disk")

    def start_watching(self) -> None:
        interval = self.config.watch_interval_s
        if interval <= 0 or self._watcher is not None:
            return

        def watch() -> None:
            while not self._stop.wait(interval):
                try:
                    self.poll()
                except Exception:  # the watcher must survive anything
                    logger.exception("model watcher tick failed")

        self._stop.clear()
        self._watcher = threading.Thread(target=watch, name="rechub-model-watcher", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
            self._watcher = None

    def close(self) -> None:
        self.stop_watching()
        with self._lock:
            model, self._current = self._current, None
        if model is not None:
            model.retired = True
            if model.refs == 0:
                self._close(model)
