"""Saved indexes: a directory with ``manifest.json``, the engine's files and the id map.

Writing. :func:`write_index` writes a sibling temporary directory, checksums
every file, fsyncs, then swaps it into place atomically
(``renameat2(RENAME_EXCHANGE)`` on Linux, two renames elsewhere), so a crash
or a full disk leaves the old index or the new one, never a mix. The writer
holds an exclusive ``flock`` on its temporary directory while it works; every
save first sweeps the siblings left by earlier saves (killed writers, old
versions) whose lock it can take, so what killed saves leave stays bounded.

Reading. :func:`open_saved` opens the directory once and reads everything
through that descriptor (``/proc/self/fd/N``), holding a shared ``flock`` on
it: a writer deletes a replaced version only under an exclusive lock, and
deletes its manifest first, so a reader either sees one complete version or
sees it gone and opens the path again (then getting the newer one). A reader
never fails because a save ran at the same time.

Trust. A manifest is untrusted input: every field is type-checked, every path
it names must stay inside the directory (no ``..``, no absolute path, no
symlink), and every file is verified (size and sha256) before anything reads
it. No pickle, ever.
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
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ._errors import (
    BackendError,
    ChecksumMismatchError,
    IndexFormatError,
    NotAnIndexError,
    UnsupportedFormatVersionError,
)
from ._ids import IdMap
from ._metrics import parse_metric
from ._version import __version__

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no reader/writer locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT", "FORMAT_VERSION", "SavedIndex", "is_index_dir", "open_saved", "read_manifest", "write_index"]

logger = logging.getLogger("rechub_serving")

FORMAT = "rechub-serving-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_STALE_NEW_SECONDS = 60.0  # a ".new-" directory this old belongs to a writer killed before it locked it
_OPEN_ATTEMPTS = 200
_SHA256 = re.compile(r"[0-9a-f]{64}")


# -- small file-system helpers -----------------------------------------------------------------
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
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _flock(fd: int, *, exclusive: bool, blocking: bool = True) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, op if blocking else op | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _through_fd(fd: int, path: Path) -> Path:
    """A path that names the directory ``fd`` holds, whatever happens to ``path`` meanwhile."""
    pinned = Path(f"/proc/self/fd/{fd}")
    return pinned if pinned.is_dir() else path


def is_index_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding a rechub-serving manifest."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


# -- writing -----------------------------------------------------------------------------------------
def write_index(
    path: str | Path,
    *,
    write_engine: Callable[[Path], Mapping[str, Any] | None],
    ids: IdMap | None,
    fields: Mapping[str, Any],
) -> Path:
    """Write a saved index at directory ``path``, replacing an index there atomically.

    ``write_engine(directory)`` writes the engine's files into ``engine/`` and
    returns the manifest's ``engine`` entry; ``ids`` is saved as the id map;
    ``fields`` are the manifest's descriptive fields (backend, metric, dim,
    count, params, ...). Returns the absolute path.
    """
    path = Path(path).expanduser()
    path = path.parent.absolute().resolve() / path.name
    if path.is_symlink() or (path.exists() and not is_index_dir(path)):
        kind = "symlink" if path.is_symlink() else "directory" if path.is_dir() else "file"
        raise IndexFormatError(
            f"{path} exists and is a {kind} that is not a rechub-serving index; "
            "refusing to overwrite it, choose another path or remove it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    new = path.parent / f".{path.name}.new-{token}"
    new.mkdir()
    fd = _open_dir(new)
    try:
        _flock(fd, exclusive=True)  # marks the directory as in use before it gets a sweepable name
        tmp = path.parent / f".{path.name}.tmp-{token}"
        os.rename(new, tmp)
        try:
            _fill(tmp, write_engine, ids, fields)
            _swap_into_place(tmp, path, token)
        except BaseException:
            _remove_tree(tmp)
            raise
    finally:
        os.close(fd)  # releases the lock: readers of the new version may proceed
    logger.info("saved %s index (%s vectors) to %s", fields.get("backend"), fields.get("count"), path)
    return path


def _fill(tmp: Path, write_engine: Callable[[Path], Any], ids: IdMap | None, fields: Mapping[str, Any]) -> None:
    engine_dir = tmp / "engine"
    engine_dir.mkdir()
    engine_meta = dict(write_engine(engine_dir) or {})
    ids_entry = ids.save(tmp) if ids is not None else None
    files = {}
    for file in sorted(tmp.rglob("*")):
        if file.is_symlink():
            raise BackendError(
                f"the {fields.get('backend')} engine wrote a symlink ({file.relative_to(tmp)}) into its save "
                "directory; a saved index holds plain files only"
            )
        if file.is_file():
            rel = file.relative_to(tmp).as_posix()
            files[rel] = {"size": file.stat().st_size, "sha256": file_digest(file)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **fields,
        "rechub_serving_version": __version__,
        "ids": ids_entry,
        "engine": engine_meta,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "files": files,
    }
    try:
        text = json.dumps(manifest, indent=2, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BackendError(f"the index manifest cannot be written as JSON: {exc}") from None
    (tmp / MANIFEST).write_text(text)
    _fsync_tree(tmp)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _swap_into_place(tmp: Path, path: Path, token: str) -> None:
    old = path.parent / f".{path.name}.old-{token}"
    for _ in range(3):
        if not path.exists():
            try:
                os.rename(tmp, path)
                return
            except OSError:  # another writer created it meanwhile: swap with theirs
                pass
        if _exchange(tmp, path):
            os.rename(tmp, old)  # tmp now holds the replaced version
            _discard(old)
            return
        if _renameat2() is not None and path.exists():
            continue  # renameat2 exists but failed (filesystem without RENAME_EXCHANGE): fall through below
        break
    # Two renames: readers retry through the short moment when path does not exist.
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    _discard(old)


def _remove_tree(directory: Path) -> None:
    """Delete a saved-index directory, its manifest first (readers then know it is gone)."""
    with contextlib.suppress(OSError):
        (directory / MANIFEST).unlink()
    shutil.rmtree(directory, ignore_errors=True)


def _discard(directory: Path) -> bool:
    """Delete ``directory`` unless a reader holds it (then a later save sweeps it). True if deleted."""
    try:
        fd = _open_dir(directory)
    except OSError:
        return False
    try:
        if not _flock(fd, exclusive=True, blocking=False):
            logger.debug("%s is being read; left for a later save to remove", directory)
            return False
        _remove_tree(directory)
        return True
    finally:
        os.close(fd)


def leftovers(path: str | Path) -> list[Path]:
    """Siblings of ``path`` that saves left: temporary (killed or running) and replaced versions."""
    path = Path(path)
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return [
        path.parent / n for n in names if n.startswith(prefix) and n[len(prefix) :].startswith(("tmp-", "old-", "new-"))
    ]


def sweep_leftovers(path: str | Path) -> int:
    """Remove what earlier saves of ``path`` left and nobody holds; returns how many were removed."""
    removed = 0
    for entry in leftovers(path):
        if entry.name[len(Path(path).name) + 2 :].startswith("new-"):
            try:
                if time.time() - entry.stat().st_mtime < _STALE_NEW_SECONDS:
                    continue
            except OSError:
                continue
        if entry.is_dir() and not entry.is_symlink():
            removed += _discard(entry)
    if removed:
        logger.info("removed %d directories left by earlier saves of %s", removed, path)
    return removed


# -- reading ------------------------------------------------------------------------------------------
class SavedIndex:
    """One version of a saved index, held open (and locked against deletion) by :func:`open_saved`.

    ``path`` is what the user named (for messages); ``directory`` reads the
    very version that was opened; ``manifest`` is checked.
    """

    def __init__(self, path: Path, directory: Path, manifest: dict[str, Any]):
        self.path = path
        self.directory = directory
        self.manifest = manifest

    def file(self, rel: str) -> Path:
        """The path of file ``rel`` after checking it is confined, plain and listed (hence verified)."""
        rel = _safe_relative(rel, self.path, "a file name")
        if rel not in self.manifest["files"]:
            raise IndexFormatError(
                f"{self.path}: {rel} is not listed in the manifest's files, so it cannot be verified; "
                "the index is damaged or was edited: save it again"
            )
        return self.directory / rel

    def engine_files(self) -> list[str]:
        """Files under ``engine/``, relative to it."""
        return [rel[len("engine/") :] for rel in self.manifest["files"] if rel.startswith("engine/")]

    def load_ids(self) -> IdMap | None:
        """The saved id map (None for backends that keep ids themselves)."""
        entry = self.manifest.get("ids")
        if entry is None:
            return None
        alive = self.file(entry["alive"]) if entry.get("alive") else None
        return IdMap.load(self.file(entry["file"]), alive, entry, where=str(self.path))


@contextlib.contextmanager
def open_saved(path: str | Path, *, verify: bool = True) -> Iterator[SavedIndex]:
    """Open the saved index at ``path``: one complete version, checked, held for the ``with`` block."""
    path = Path(path).expanduser()
    for _ in range(_OPEN_ATTEMPTS):
        opened = _open_once(path, verify)
        if opened is None:
            continue  # the version was replaced and deleted while we opened it: open the path again
        fd, saved = opened
        try:
            yield saved
        finally:
            stale = _stale_location(fd, path)
            os.close(fd)  # releases the shared lock
            if stale is not None:  # a save replaced this version while we read it: it is ours to delete
                _discard(stale)
        return
    raise NotAnIndexError(f"{path} kept being replaced while it was opened ({_OPEN_ATTEMPTS} tries); try again")


def _open_once(path: Path, verify: bool) -> tuple[int, SavedIndex] | None:
    try:
        fd = _open_dir(path)
    except FileNotFoundError:
        if _save_in_progress(path):  # between the two renames of a save without RENAME_EXCHANGE
            time.sleep(0.002)
            return None
        raise NotAnIndexError(_missing_message(path)) from None
    except NotADirectoryError:
        raise NotAnIndexError(_file_message(path)) from None
    except PermissionError as exc:
        raise NotAnIndexError(f"{path} cannot be opened: {exc.strerror}") from None
    try:
        _flock(fd, exclusive=False)
        directory = _through_fd(fd, path)
        if (directory / MANIFEST).is_symlink():
            raise IndexFormatError(f"{path}: {MANIFEST} is a symlink; a saved index holds plain files only")
        if not (directory / MANIFEST).is_file():
            if _replaced(fd, path):
                os.close(fd)
                return None
            raise NotAnIndexError(
                f"{path} is a directory but not a rechub-serving index: it has no {MANIFEST}. "
                "Pass the directory written by Indexer.save() (or `rechub-index build -o`)"
            )
        manifest = _load_manifest(directory / MANIFEST, path)
        if verify:
            _verify_files(directory, manifest, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd, SavedIndex(path, directory, manifest)


def _stale_location(fd: int, path: Path) -> Path | None:
    """Where the version held by ``fd`` lies now, if a save replaced it (a leftover next to ``path``)."""
    try:
        if not _replaced(fd, path):
            return None
        where = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None
    if where.parent == path.absolute().parent and where.name.startswith(f".{path.name}.old-"):
        return where
    return None


def _replaced(fd: int, path: Path) -> bool:
    """True when the directory held by ``fd`` was deleted or is no longer the one at ``path``."""
    held = os.fstat(fd)
    if held.st_nlink == 0:
        return True
    try:
        current = os.stat(path)
    except OSError:
        return True
    return (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino)


def read_manifest(path: str | Path, *, verify: bool = False) -> dict[str, Any]:
    """The checked manifest of the saved index at ``path`` (with ``verify``, every file's checksum too)."""
    with open_saved(path, verify=verify) as saved:
        return saved.manifest


def _save_in_progress(path: Path) -> bool:
    return any(p.name[len(path.name) + 2 :].startswith(("tmp-", "new-")) for p in leftovers(path))


def _missing_message(path: Path) -> str:
    return f"{path} does not exist; pass the directory written by Indexer.save() (or `rechub-index build -o`)"


def _file_message(path: Path) -> str:
    return (
        f"{path} is a file, not a saved rechub-serving index (a directory with {MANIFEST}). If it is a native "
        "file of an engine (faiss.write_index, AnnoyIndex.save, ...), adopt it with "
        "builder_factory(BACKEND).from_index_file(path), or `--backend BACKEND` on the command line"
    )


# -- checking a manifest ------------------------------------------------------------------------
def _load_manifest(file: Path, where: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NotAnIndexError(f"{where}/{MANIFEST} is not valid JSON ({exc}); the index is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NotAnIndexError(
            f"{where}/{MANIFEST} is not a rechub-serving manifest (format field missing or different)"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise IndexFormatError(
            f"{where}: format_version {version!r} is not a positive integer; the manifest is damaged"
        )
    if version > FORMAT_VERSION:
        raise UnsupportedFormatVersionError(
            f"{where} has index format version {version}; this rechub-serving {__version__} reads up to "
            f"{FORMAT_VERSION}: upgrade rechub-serving"
        )
    check_manifest(manifest, where)
    return manifest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(where: Path, field: str, expected: str, value: Any) -> IndexFormatError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return IndexFormatError(
        f"{where}: manifest field {field!r} is {shown}, expected {expected}; the manifest was damaged or edited: "
        "save the index again"
    )


def check_manifest(manifest: Mapping[str, Any], where: Path) -> None:
    """Type-check every field of ``manifest`` the core reads; raise :class:`IndexFormatError`."""
    missing = [k for k in ("backend", "metric", "dim", "count", "files") if k not in manifest]
    if missing:
        raise NotAnIndexError(f"{where}/{MANIFEST} lacks the fields {', '.join(missing)}; the index is damaged")
    if not isinstance(manifest["backend"], str) or not manifest["backend"]:
        raise _bad(where, "backend", "a backend name", manifest["backend"])
    try:
        parse_metric(manifest["metric"])
    except Exception:
        raise _bad(where, "metric", "l2, ip or cosine", manifest["metric"]) from None
    if not _is_int(manifest["dim"]) or manifest["dim"] < 1:
        raise _bad(where, "dim", "a positive integer", manifest["dim"])
    if not _is_int(manifest["count"]) or manifest["count"] < 0:
        raise _bad(where, "count", "a non-negative integer", manifest["count"])
    files = manifest["files"]
    if not isinstance(files, dict):
        raise _bad(where, "files", "an object of file name -> {size, sha256}", files)
    for rel, entry in files.items():
        _safe_relative(rel, where, "files")
        if not isinstance(entry, dict) or not _is_int(entry.get("size")) or entry["size"] < 0:
            raise _bad(where, f"files.{rel}", "{size: integer, sha256: hex}", entry)
        if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
            raise _bad(where, f"files.{rel}.sha256", "64 lower-case hex digits", entry.get("sha256"))
    for name in ("params", "search_params", "engine", "metadata"):
        if manifest.get(name) is not None and not isinstance(manifest[name], dict):
            raise _bad(where, name, "an object", manifest[name])
    ids = manifest.get("ids")
    if ids is not None:
        if not isinstance(ids, dict):
            raise _bad(where, "ids", "an object or null", ids)
        if ids.get("kind") not in ("int", "str"):
            raise _bad(where, "ids.kind", "'int' or 'str'", ids.get("kind"))
        if not isinstance(ids.get("file"), str):
            raise _bad(where, "ids.file", "a file name", ids.get("file"))
        _safe_relative(ids["file"], where, "ids.file")
        if ids.get("alive") is not None:
            if not isinstance(ids["alive"], str):
                raise _bad(where, "ids.alive", "a file name", ids["alive"])
            _safe_relative(ids["alive"], where, "ids.alive")
        if not isinstance(ids.get("positional", False), bool):
            raise _bad(where, "ids.positional", "true or false", ids.get("positional"))


def _safe_relative(rel: Any, where: Path, field: str) -> str:
    """``rel`` if it is a plain relative path inside the index directory; else IndexFormatError."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise _bad(where, field, "a relative file name", rel)
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or any(p in ("..", ".", "") for p in parts) or PurePosixPath(rel).as_posix() != rel:
        raise IndexFormatError(
            f"{where}: the manifest names {rel!r} in {field}, a path outside the index directory or not "
            "normalised; a manifest may only name files inside its directory (the index was tampered with)"
        )
    return rel


def _verify_files(directory: Path, manifest: Mapping[str, Any], where: Path) -> None:
    for rel, entry in manifest["files"].items():
        file = directory / rel
        _refuse_symlinks(directory, rel, where)
        try:
            info = os.lstat(file)
        except FileNotFoundError:
            raise ChecksumMismatchError(
                f"{where}: file {rel} is missing; the index is incomplete: save it again (or copy it whole)"
            ) from None
        if not stat.S_ISREG(info.st_mode):
            raise IndexFormatError(f"{where}: {rel} is not a regular file; a saved index holds plain files only")
        if info.st_size != entry["size"]:
            raise ChecksumMismatchError(
                f"{where}: file {rel} has {info.st_size} bytes, the manifest says {entry['size']} (truncated or "
                "replaced); the index is damaged: save it again or restore a copy"
            )
        if file_digest(file) != entry["sha256"]:
            raise ChecksumMismatchError(
                f"{where}: file {rel} does not match its checksum (edited or corrupted); the index is damaged: "
                "save it again or restore a copy"
            )


def _refuse_symlinks(directory: Path, rel: str, where: Path) -> None:
    current = directory
    for part in PurePosixPath(rel).parts:
        current = current / part
        if current.is_symlink():
            raise IndexFormatError(
                f"{where}: {rel} goes through the symlink {current.relative_to(directory)}; a saved index holds "
                "plain files only (symlinks could point outside it)"
            )
