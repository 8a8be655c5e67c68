"""What the SDK left where: its collections on a server or in a milvus-lite database, and its private databases.

Used by ``rechub-index milvus list`` and ``rechub-index milvus drop``.
A collection is the SDK's when it carries the ``rechub.sdk`` property (or,
for rechub-serving-milvus 0.1, has a default ``rechub_<16 hex>`` name and
the SDK's two fields). Nothing else is ever dropped here. Each SDK
collection gets one state:

``referenced``   a saved index under the searched directories points at it
``in use``       temporary, and the process that made it is alive
``dead owner``   temporary, and the process that made it is gone (killed before it could drop it)
``other host``   temporary, made on another machine (whether its process lives is unknown)
``unreferenced`` kept (saved or ``keep()``), but no saved index under the searched directories points at it
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rechub_serving import BackendError, InvalidParameterError

from ._collection import P_CREATED, P_OWNER, P_SDK, P_TEMPORARY, SDK_MARK, is_sdk_collection
from ._connection import Connection, Target, legacy_lite_path, redact_uri
from ._private import PrivateEntry, list_private, sweep

__all__ = [
    "CollectionStatus",
    "drop_collections",
    "find_saved",
    "legacy_lite_path",
    "list_collections",
    "list_databases",
    "release_saved",
    "remove_dead_databases",
]

STATES = ("referenced", "in use", "dead owner", "other host", "unreferenced", "not the SDK's")
_SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", "site-packages"}


@dataclass
class CollectionStatus:
    """One collection as the inventory sees it."""

    name: str
    location: str
    sdk: bool
    legacy: bool = False
    temporary: bool | None = None
    owner: str | None = None
    created: str | None = None
    owner_alive: bool | None = None
    rows: int | None = None
    referenced_by: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if not self.sdk:
            return "not the SDK's"
        if self.referenced_by:
            return "referenced"
        if self.temporary:
            if self.owner_alive is None:
                return "other host"
            return "in use" if self.owner_alive else "dead owner"
        return "unreferenced"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "location": self.location,
            "state": self.state,
            "sdk": self.sdk,
            "legacy": self.legacy,
            "temporary": self.temporary,
            "owner": self.owner,
            "created": self.created,
            "rows": self.rows,
            "referenced_by": list(self.referenced_by),
        }


# -- saved indexes ------------------------------------------------------------------------------------
def find_saved(search: Iterable[str | Path], max_depth: int = 6) -> list[tuple[Path, dict[str, Any]]]:
    """Saved milvus indexes under ``search`` (directories or index paths): ``(path, engine entry)``."""
    found: list[tuple[Path, dict[str, Any]]] = []
    seen: set[Path] = set()
    for start in search:
        root = Path(start).expanduser().absolute()
        for path in _walk(root, max_depth):
            if path in seen:
                continue
            seen.add(path)
            try:
                manifest = json.loads((path / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(manifest, dict) and manifest.get("backend") == "milvus":
                engine = manifest.get("engine")
                if isinstance(engine, dict):
                    found.append((path, engine))
    return found


def _walk(root: Path, depth: int) -> Iterable[Path]:
    if (root / "manifest.json").is_file():
        yield root
        return
    if depth <= 0 or not root.is_dir():
        return
    try:
        children = sorted(root.iterdir())
    except OSError:
        return
    for child in children:
        if (
            child.is_dir()
            and not child.is_symlink()
            and child.name not in _SKIP_DIRS
            and not child.name.startswith(".")
        ):
            yield from _walk(child, depth - 1)


def _references(saved: Sequence[tuple[Path, Mapping[str, Any]]], target: Target) -> dict[str, list[str]]:
    """Collection name -> saved indexes that point at it on ``target``."""
    out: dict[str, list[str]] = {}
    for path, engine in saved:
        location = engine.get("location") or {}
        name = engine.get("collection")
        if not isinstance(name, str) or engine.get("layout") == "embedded":
            continue  # a self-contained save holds its own copy
        if target.is_server:
            same = location.get("kind") == "server" and _same_server(location, target)
        else:
            same = location.get("kind") == "lite" and _same_path(location.get("path"), target.path)
        if same:
            out.setdefault(name, []).append(str(path))
    return out


def _same_server(location: Mapping[str, Any], target: Target) -> bool:
    return redact_uri(str(location.get("uri") or "")) == redact_uri(target.uri or "") and (
        location.get("db_name") or ""
    ) == (target.db_name or "")


def _same_path(a: Any, b: Any) -> bool:
    if not a or not b:
        return False
    return os.path.realpath(str(a)) == os.path.realpath(str(b))


# -- owners ------------------------------------------------------------------------------------------------
def _owner_alive(owner: str | None, created: str | None) -> bool | None:
    """Whether the process ``pid@host`` that created a collection at ``created`` still runs (None: unknown)."""
    if not owner or "@" not in owner:
        return None
    pid_text, host = owner.split("@", 1)
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(pid)
    born = _parse_time(created)
    if started is not None and born is not None and started > born + 5:
        return False  # the pid was reused by a process that started after the collection was made
    return True


def _process_start(pid: int) -> float | None:
    """Start time of ``pid`` (seconds since the epoch), from /proc; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


# -- listing and dropping --------------------------------------------------------------------------------
def _target(uri: str | None, path: str | Path | None, token: str | None, db_name: str | None) -> Target:
    if path is None and uri is None:
        path = legacy_lite_path()
    target = Target.from_config({"uri": uri, "path": str(path) if path else None, "token": token, "db_name": db_name})
    if target.is_private:  # pragma: no cover - from_config never returns one here
        raise InvalidParameterError("give uri= (a server) or path= (a milvus-lite database)")
    return target


def _connect(target: Target, timeout: float) -> Connection:
    if not target.is_server and not Path(target.path or "").exists():
        raise BackendError(f"there is no milvus-lite database at {target.path}")
    return Connection(target, connect_timeout=timeout, timeout=timeout, retries=1)


def _status(conn: Connection, name: str, references: Mapping[str, list[str]]) -> CollectionStatus:
    desc = conn.call("describe_collection", conn.client.describe_collection, name, collection=name)
    props = desc.get("properties") or {}
    sdk = is_sdk_collection(name, desc)
    marked = props.get(P_SDK) == SDK_MARK
    rows = None
    with contextlib.suppress(BackendError):
        stats = conn.call("get_collection_stats", conn.client.get_collection_stats, name, collection=name)
        rows = int(stats.get("row_count", 0))
    status = CollectionStatus(
        name=name,
        location=conn.describe(),
        sdk=sdk,
        legacy=sdk and not marked,
        temporary=(props.get(P_TEMPORARY) == "true") if marked else None,
        owner=props.get(P_OWNER),
        created=props.get(P_CREATED),
        rows=rows,
        referenced_by=list(references.get(name, [])),
    )
    if status.temporary:
        status.owner_alive = _owner_alive(status.owner, status.created)
    return status


def list_collections(
    *,
    uri: str | None = None,
    path: str | Path | None = None,
    token: str | None = None,
    db_name: str | None = None,
    search: Iterable[str | Path] = (),
    timeout: float = 30.0,
) -> list[CollectionStatus]:
    """Every collection on a server (``uri``) or in a milvus-lite database (``path``; default: 0.1's shared one).

    ``search``: directories whose saved indexes count as references.
    """
    target = _target(uri, path, token, db_name)
    references = _references(find_saved(search), target)
    conn = _connect(target, timeout)
    try:
        names = sorted(conn.call("list_collections", conn.client.list_collections))
        return [_status(conn, name, references) for name in names]
    finally:
        conn.close()


def drop_collections(
    names: Sequence[str] = (),
    *,
    states: Sequence[str] = (),
    uri: str | None = None,
    path: str | Path | None = None,
    token: str | None = None,
    db_name: str | None = None,
    search: Iterable[str | Path] = (),
    force: bool = False,
    dry_run: bool = False,
    timeout: float = 30.0,
) -> tuple[list[CollectionStatus], list[tuple[str, str]]]:
    """Drop the SDK's collections named in ``names`` or in one of ``states``; return (dropped, refused with why).

    Never drops a collection the SDK did not create. A named collection that
    is referenced by a saved index or in use by a live process is refused
    unless ``force``.
    """
    bad = [s for s in states if s not in ("dead owner", "unreferenced")]
    if bad:
        raise InvalidParameterError(f"states to drop are 'dead owner' and 'unreferenced', not {bad}")
    target = _target(uri, path, token, db_name)
    references = _references(find_saved(search), target)
    conn = _connect(target, timeout)
    dropped: list[CollectionStatus] = []
    refused: list[tuple[str, str]] = []
    try:
        existing = set(conn.call("list_collections", conn.client.list_collections))
        for name in names:
            if name not in existing:
                refused.append((name, "no such collection"))
        candidates = sorted(existing if states else existing & set(names))
        for name in candidates:
            status = _status(conn, name, references)
            why = _refusal(status, name in names, states, force)
            if why is not None:
                if name in names or status.state in states:
                    refused.append((name, why))
                continue
            if not dry_run:
                conn.call("drop_collection", conn.client.drop_collection, name, collection=name)
            dropped.append(status)
    finally:
        conn.close()
    return dropped, refused


def _refusal(status: CollectionStatus, named: bool, states: Sequence[str], force: bool) -> str | None:
    """Why ``status`` must not be dropped (None: drop it)."""
    if not status.sdk:
        return "not created by rechub-serving: never dropped here"
    if named:
        if status.state in ("referenced", "in use") and not force:
            by = f" by {status.referenced_by[0]}" if status.referenced_by else f" by process {status.owner}"
            return f"{status.state}{by}; pass --force to drop it anyway"
        return None
    return None if status.state in states else f"state {status.state!r} was not asked for"


def list_databases() -> list[PrivateEntry]:
    """The private milvus-lite databases under the work root (temporary indexes, copies of opened saved indexes)."""
    return list_private()


def remove_dead_databases() -> list[Path]:
    """Delete the private databases of processes that are gone; return what was deleted."""
    return sweep()


def release_saved(engine: Mapping[str, Any], *, token: str | None = None, timeout: float = 30.0) -> str | None:
    """Drop the server collection that a replaced saved index pointed at (``--overwrite``); return its name.

    ``engine`` is the replaced manifest's ``engine`` entry. Only an SDK
    collection on a server is dropped; an embedded save held its own copy,
    which went with the replaced directory.
    """
    location = engine.get("location") or {}
    name = engine.get("collection")
    if engine.get("layout") == "embedded" or location.get("kind") != "server" or not isinstance(name, str):
        return None
    target = Target.from_config({"uri": location.get("uri"), "db_name": location.get("db_name"), "token": token})
    conn = Connection(target, connect_timeout=timeout, timeout=timeout, retries=1)
    try:
        if not conn.call("has_collection", conn.client.has_collection, name, collection=name):
            return None
        desc = conn.call("describe_collection", conn.client.describe_collection, name, collection=name)
        if not is_sdk_collection(name, desc):
            return None
        conn.call("drop_collection", conn.client.drop_collection, name, collection=name)
        return name
    finally:
        conn.close()
