"""Saved indexes: a directory with ``manifest.json``, the engine's files and the id map.

Saving writes a sibling temporary directory, checksums every file, then swaps
it into place atomically (``renameat2(RENAME_EXCHANGE)`` on Linux, two renames
elsewhere), so a crash or a full disk leaves the old index or the new one,
never a mix. Readers that already opened the old index keep working. No pickle.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import (
    ChecksumMismatchError,
    IndexFormatError,
    NotAnIndexError,
    UnsupportedFormatVersionError,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._base import Indexer

__all__ = ["FORMAT", "FORMAT_VERSION", "read_manifest", "save_index"]

logger = logging.getLogger("rechub_serving")

FORMAT = "rechub-serving-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def file_digest(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.cache
def _renameat2() -> Any:
    """libc's renameat2, looked up once; None where there is none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False if unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def is_index_dir(path: Path) -> bool:
    """True when ``path`` is a directory holding a rechub-serving manifest."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def save_index(indexer: Indexer, path: Path) -> Path:
    """Write ``indexer`` to directory ``path``, replacing an index there atomically."""
    path = path.expanduser().absolute()
    if path.exists() and not is_index_dir(path):
        kind = "directory" if path.is_dir() else "file"
        raise IndexFormatError(
            f"{path} exists and is a {kind} that is not a rechub-serving index; "
            "refusing to overwrite it, choose another path or remove it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        engine_dir = tmp / "engine"
        engine_dir.mkdir()
        engine_meta = indexer._save(engine_dir) or {}
        ids_entry = indexer._ids.save(tmp) if indexer._ids is not None else None
        builder = indexer._builder
        files = {}
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = file.relative_to(tmp).as_posix()
            files[rel] = {"size": file.stat().st_size, "sha256": file_digest(file)}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backend": indexer.backend,
            "plugin_distribution": builder.distribution,
            "plugin_version": builder.plugin_version,
            "engine_version": builder.engine_version(),
            "rechub_serving_version": __version__,
            "metric": indexer.metric.value,
            "normalized": indexer.metric.value == "cosine",
            "dim": indexer.dim,
            "count": len(indexer),
            "params": builder.build_params,
            "search_params": indexer._search_defaults,
            "ids": ids_entry,
            "engine": engine_meta,
            "metadata": dict(indexer._metadata),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))
        _fsync_tree(tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved %s index (%d vectors) to %s", indexer.backend, len(indexer), path)
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _swap_into_place(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old index
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def pinned_directory(path: Path) -> Iterator[Path]:
    """Yield a path that keeps naming the directory ``path`` names now.

    A concurrent save swaps a new directory in at ``path``; reading through a
    file descriptor of the directory (``/proc/self/fd/N`` on Linux) keeps one
    load on one version. Elsewhere the path itself is yielded.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield path
        return
    try:
        pinned = Path(f"/proc/self/fd/{fd}")
        yield pinned if (pinned / MANIFEST).exists() else path
    finally:
        os.close(fd)


def read_manifest(path: Path, *, verify: bool = True, attempts: int = 3) -> dict[str, Any]:
    """Read and check ``path/manifest.json`` and, with ``verify``, every file's checksum.

    A concurrent save may swap the directory while it is read; the read is
    retried when the manifest changed under it.
    """
    path = Path(path)
    for attempt in range(attempts):
        manifest = _load_manifest(path)
        if not verify:
            return manifest
        try:
            _verify_files(path, manifest)
            return manifest
        except ChecksumMismatchError:
            if attempt + 1 == attempts or _load_manifest(path) == manifest:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _load_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise NotAnIndexError(f"{path} is not a rechub-serving index: it has no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NotAnIndexError(f"{file} is not valid JSON ({exc}); the index is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NotAnIndexError(f"{file} is not a rechub-serving manifest (format field missing or different)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UnsupportedFormatVersionError(
            f"{path} has index format version {version}; this rechub-serving {__version__} reads up to "
            f"{FORMAT_VERSION}: upgrade rechub-serving"
        )
    missing = [k for k in ("backend", "metric", "dim", "count", "files") if k not in manifest]
    if missing:
        raise NotAnIndexError(f"{file} lacks the fields {', '.join(missing)}; the index is damaged")
    return manifest


def _verify_files(path: Path, manifest: dict[str, Any]) -> None:
    for rel, entry in manifest["files"].items():
        file = path / rel
        if not file.is_file():
            raise ChecksumMismatchError(f"{path}: file {rel} is missing; the index is incomplete, save it again")
        size = file.stat().st_size
        if size != entry["size"]:
            raise ChecksumMismatchError(
                f"{path}: file {rel} has {size} bytes, the manifest says {entry['size']} (truncated or replaced)"
            )
        if file_digest(file) != entry["sha256"]:
            raise ChecksumMismatchError(f"{path}: file {rel} does not match its checksum (edited or corrupted)")
