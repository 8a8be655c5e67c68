"""Embedded Milvus that behaves like a file: private milvus-lite databases and consistent copies of them.

Where the data lives. Every embedded engine without ``path=`` works in a
*private database* of its own, a directory under the work root
(``$RECHUB_MILVUS_WORKDIR``, default ``~/.cache/rechub-serving/milvus``)::

    <work root>/<pid>-<time>-<hex>/owner.json   who made it: pid, host, creation time, purpose
                                  /owner.lock   flock held by the owning process while it lives
                                  /milvus.db/   the milvus-lite data directory

A temporary index builds there; opening a saved index copies its database
there (hard links for milvus-lite's write-once segment and index files, so a
copy costs next to nothing on the same file system, and the opener never
touches the saved directory again: a later save may replace and delete it).
The private database is deleted when the engine closes, is garbage
collected, at interpreter exit, and when the process dies in any other way:
the host process (:mod:`._host_main`) sees its parent go and deletes every
private database it served. What survives both dying at once (SIGKILL of the
process group, a power cut) is recognisable by ``owner.json`` and is removed
by the next process that starts a host (:func:`sweep`).

The databases are served by a child process, the host (:mod:`._host`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rechub_serving import BackendError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DATA_DIR",
    "PrivateDatabase",
    "PrivateEntry",
    "copy_collection",
    "link_or_copy",
    "list_private",
    "sweep",
    "work_root",
]

logger = logging.getLogger("rechub_serving.milvus")

WORKDIR_ENV = "RECHUB_MILVUS_WORKDIR"
DATA_DIR = "milvus.db"  # pymilvus and milvus-lite expect the ".db" suffix
OWNER_FILE = "owner.json"
OWNER_LOCK = "owner.lock"
_YOUNG_SECONDS = 60.0  # an entry without owner.json this young may still be being created
_IMMUTABLE_SUFFIXES = (".parquet", ".idx")  # milvus-lite writes these once and never in place


def work_root() -> Path:
    """Where private databases live: ``$RECHUB_MILVUS_WORKDIR`` or ``$XDG_CACHE_HOME/rechub-serving/milvus``."""
    env = os.environ.get(WORKDIR_ENV)
    if env:
        return Path(env).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).absolute() / "rechub-serving" / "milvus"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when another process holds it."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


# -- private databases ---------------------------------------------------------------------------
_MINE: set[Path] = set()  # every private database this process created


def remove_leftovers() -> None:
    """Delete what is left of this process's private databases (at exit, once the host is gone)."""
    for root in list(_MINE):
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            _MINE.discard(root)


class PrivateDatabase:
    """A private milvus-lite data directory owned by this process (see the module docstring)."""

    def __init__(self, purpose: str, *, root: Path | None = None):
        base = root or work_root()
        try:
            base.mkdir(parents=True, exist_ok=True)
            stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
            self.root = base / f"{os.getpid()}-{stamp}-{uuid.uuid4().hex[:8]}"
            self.root.mkdir()
            _MINE.add(self.root)
            lock = self.root / OWNER_LOCK
            lock.touch()
            self._lock_fd: int | None = os.open(lock, os.O_RDWR)
            if fcntl is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            owner = {
                "sdk": "rechub-serving-milvus",
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "created": _now(),
                "purpose": purpose,
            }
            tmp = self.root / (OWNER_FILE + ".tmp")
            tmp.write_text(json.dumps(owner))
            os.replace(tmp, self.root / OWNER_FILE)  # written last: an entry with owner.json is locked
        except OSError as exc:
            raise BackendError(
                f"cannot create a private milvus-lite database under {base}: {exc.strerror or exc}; "
                f"set ${WORKDIR_ENV} to a writable directory"
            ) from None
        self.data_dir = self.root / DATA_DIR

    def release(self) -> None:
        """Forget the directory (the host deletes it); delete what is left; drop the lock. Idempotent."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            if self.root.exists():
                shutil.rmtree(self.root, ignore_errors=True)
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"PrivateDatabase({self.root})"


@dataclass(frozen=True)
class PrivateEntry:
    """One directory under the work root, as :func:`list_private` sees it."""

    path: Path
    pid: int | None
    host: str | None
    created: str | None
    purpose: str | None
    alive: bool
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "pid": self.pid,
            "host": self.host,
            "created": self.created,
            "purpose": self.purpose,
            "alive": self.alive,
            "size_bytes": self.size,
        }


def _entries(root: Path) -> Iterator[Path]:
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return
    for name in names:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            yield path


def _owner(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _in_use(path: Path) -> bool:
    """True while the owner holds ``owner.lock`` or a milvus-lite process holds the database."""
    for lock in (path / OWNER_LOCK, path / DATA_DIR / "LOCK"):
        if not lock.exists():
            continue
        fd = _try_lock(lock)
        if fd is None:
            return True
        os.close(fd)
    return False


def _young(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < _YOUNG_SECONDS
    except OSError:
        return True


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def list_private(root: Path | None = None) -> list[PrivateEntry]:
    """Every private database under the work root, with its owner and whether the owner still holds it."""
    out = []
    for path in _entries(root or work_root()):
        owner = _owner(path) or {}
        pid = owner.get("pid")
        out.append(
            PrivateEntry(
                path=path,
                pid=pid if isinstance(pid, int) else None,
                host=owner.get("host"),
                created=owner.get("created"),
                purpose=owner.get("purpose"),
                alive=_in_use(path) or (not owner and _young(path)),
                size=_size(path),
            )
        )
    return out


def sweep(root: Path | None = None) -> list[Path]:
    """Delete the private databases whose owner is gone (a killed process); return what was deleted."""
    removed = []
    for entry in list_private(root):
        if entry.alive:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not entry.path.exists():
            removed.append(entry.path)
            logger.info(
                "removed a milvus-lite database left by process %s (created %s): %s",
                entry.pid,
                entry.created,
                entry.path,
            )
    return removed


# -- copying databases ---------------------------------------------------------------------------------
def link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` to ``dst`` when milvus-lite never rewrites it in place, else copy. True if linked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.name.endswith(_IMMUTABLE_SUFFIXES) and "wal" not in src.parts:
        try:
            os.link(src, dst)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    shutil.copyfile(src, dst)
    return False


def copy_collection(src: Path, dst: Path, attempts: int = 8) -> int:
    """Copy a milvus-lite collection directory that may be in use: a consistent snapshot of it.

    milvus-lite replaces its ``manifest.json`` atomically and only then
    deletes files it no longer needs, so a copy taken while the manifest
    stayed the same is complete; when it changed (a background compaction),
    the copy starts again. Returns the number of files.
    """
    manifest = src / "manifest.json"
    for attempt in range(attempts):
        try:
            before = manifest.read_bytes()
        except FileNotFoundError:
            raise BackendError(
                f"{src} holds no milvus-lite manifest.json; this milvus-lite version stores collections "
                "differently from the one rechub-serving-milvus supports (milvus-lite 3.x)"
            ) from None
        if dst.exists():
            shutil.rmtree(dst)
        count = 0
        try:
            for dirpath, _, files in os.walk(src):
                for name in files:
                    if name.endswith(".tmp") or name == "LOCK":
                        continue
                    file = Path(dirpath) / name
                    link_or_copy(file, dst / file.relative_to(src))
                    count += 1
            (dst / "manifest.json").write_bytes(before)
            if manifest.read_bytes() == before:
                return count
        except FileNotFoundError:
            pass  # a file went away under us: the manifest changed, start again
        time.sleep(0.05 * (attempt + 1))
    raise BackendError(f"{src} kept changing while it was copied ({attempts} tries); try again")
