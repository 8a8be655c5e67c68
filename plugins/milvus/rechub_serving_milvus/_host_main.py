"""The milvus-lite host: a child process that serves embedded databases to one parent process.

Run by :mod:`._host` as ``python _host_main.py REPLY_FD`` (a plain script: it
imports only the standard library and milvus-lite). Requests come as JSON
lines on stdin, replies go as JSON lines to file descriptor ``REPLY_FD``;
anything milvus-lite prints lands on stdout/stderr, which the parent logs at
debug level, off the user's terminal.

Requests (each answered by ``{"id": ..., "ok": true, ...}`` or
``{"id": ..., "ok": false, "error": "..."}``):

* ``{"op": "open", "dir": DATA_DIR, "remove": ROOT_OR_NULL}``: serve a
  milvus-lite data directory on a loopback port (``"port"`` in the reply);
  opening a directory already served adds a reference. ``remove`` names a
  directory to delete when the last reference closes or the parent goes.
* ``{"op": "close", "dir": DATA_DIR}``: drop a reference; at the last one
  stop the server and delete ``remove`` (a private database) or close the
  database cleanly (the user's own).

Why a child: the parent can always stop it at once. An interrupted build
does not wait for milvus-lite's worker threads (an index build in C cannot be
cancelled, and the interpreter waits for those threads at exit), and when the
parent dies in any way (exit, Ctrl-C, SIGTERM, SIGKILL) the host sees its
stdin close or its parent change, deletes every private database it served
and exits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

_lock = threading.Lock()
_served: dict[str, dict[str, Any]] = {}  # data dir -> {"server", "db", "port", "refs", "remove"}
_closing: dict[str, threading.Event] = {}  # data dir -> set when its last close has finished
_reply_lock = threading.Lock()
_reply_fd = -1
_exiting = threading.Event()
_doomed: set[str] = set()  # private directories to delete: again after their database closes, and after we exit

# Run detached when the host exits: waits for the host's pid to go, then deletes what a milvus-lite
# worker thread may have written into a private directory after it was deleted.
_REAPER = """
import os, shutil, sys, time
pid, end = int(sys.argv[1]), time.monotonic() + 120
while time.monotonic() < end:
    try:
        os.kill(pid, 0)
    except OSError:
        break
    time.sleep(0.05)
for path in sys.argv[2:]:
    shutil.rmtree(path, ignore_errors=True)
"""


def _reply(message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    with _reply_lock:
        try:
            os.write(_reply_fd, data)
        except OSError:  # the parent is gone: the watcher exits
            pass


def _remove(path: str) -> None:
    for _ in range(5):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.1)  # a worker thread was still writing into it


def _open(data_dir: str, remove: str | None) -> dict[str, Any]:
    with _lock:
        closing = _closing.get(data_dir)
    if closing is not None:
        closing.wait(60.0)  # milvus-lite holds the directory's lock until the database is closed
    with _lock:
        entry = _served.get(data_dir)
        if entry is not None:
            entry["refs"] += 1
            return {"port": entry["port"]}
    server, db, port = _serve(data_dir)
    with _lock:
        _served[data_dir] = {"server": server, "db": db, "port": port, "refs": 1, "remove": remove}
    return {"port": port}


# pymilvus pings every 10 s; a gRPC server's defaults answer pings during a long call without
# data (an index build of minutes) with GOAWAY "too_many_pings", which kills the call: allow them.
_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
]


def _serve(data_dir: str) -> tuple[Any, Any, int]:
    """milvus-lite's gRPC server over ``data_dir`` on a loopback port: (server, database, port)."""
    from concurrent import futures

    import grpc
    from milvus_lite.adapter.grpc import server as lite_server
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from milvus_lite.db import MilvusLite
    from pymilvus.grpc_gen import milvus_pb2_grpc

    db = MilvusLite(data_dir)
    try:
        workers = getattr(lite_server, "DEFAULT_MAX_WORKERS", 10)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=_SERVER_OPTIONS)
        milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(db), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
    except BaseException:
        db.close()
        raise
    return server, db, port


def _stop(entry: dict[str, Any], *, wait: bool) -> None:
    try:
        entry["server"].stop(0)
    except Exception as exc:
        print(f"stopping a server failed: {exc!r}", file=sys.stderr, flush=True)
    if entry["remove"]:
        _doomed.add(entry["remove"])
        _remove(entry["remove"])
        # A worker thread may still be building an index: close the database in the background,
        # then delete again what it wrote meanwhile.
        threading.Thread(target=_close_then_remove, args=(entry,), daemon=True).start()
    elif wait:
        _close_db(entry)
    else:
        closer = threading.Thread(target=_close_db, args=(entry,), daemon=True)
        closer.start()
        closer.join(10.0)


def _close_then_remove(entry: dict[str, Any]) -> None:
    _close_db(entry)
    _remove(entry["remove"])


def _spawn_reaper(paths: list[str]) -> None:
    """Delete ``paths`` once this process is gone (its milvus-lite threads die with it)."""
    if not paths:
        return
    try:
        subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(os.getpid()), *paths],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        print(f"cannot start the cleaner of {paths}: {exc!r}", file=sys.stderr, flush=True)


def _close_db(entry: dict[str, Any]) -> None:
    try:
        entry["db"].close()
    except Exception as exc:
        print(f"closing a database failed: {exc!r}", file=sys.stderr, flush=True)


def _close(data_dir: str) -> dict[str, Any]:
    with _lock:
        entry = _served.get(data_dir)
        if entry is None:
            return {}
        entry["refs"] -= 1
        if entry["refs"] > 0:
            return {}
        del _served[data_dir]
        done = _closing[data_dir] = threading.Event()
    try:
        _stop(entry, wait=True)
    finally:
        done.set()
        with _lock:
            if _closing.get(data_dir) is done:
                del _closing[data_dir]
    return {}


def _handle(request: dict[str, Any]) -> None:
    rid = request.get("id")
    try:
        op = request.get("op")
        if op == "open":
            result = _open(str(request["dir"]), request.get("remove"))
        elif op == "close":
            result = _close(str(request["dir"]))
        elif op == "ping":
            result = {}
        else:
            raise ValueError(f"unknown request {op!r}")
        _reply({"id": rid, "ok": True, **result})
    except Exception as exc:
        _reply({"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__})


def _shutdown(*_: Any) -> None:
    """The parent is gone (or asked us to stop): delete private databases, close the rest, exit."""
    if _exiting.is_set():
        return
    _exiting.set()
    with _lock:
        entries = list(_served.values())
        _served.clear()
    for entry in entries:
        _stop(entry, wait=False)
    _spawn_reaper(sorted(_doomed))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # never wait for milvus-lite's worker threads


def _watch_parent(parent: int) -> None:
    while not _exiting.is_set():
        if os.getppid() != parent:
            _shutdown()
        time.sleep(0.5)


def main() -> None:
    global _reply_fd
    _reply_fd = int(sys.argv[1])
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches it, not us
    signal.signal(signal.SIGTERM, _shutdown)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        import milvus_lite
        from milvus_lite.adapter.grpc import server  # noqa: F401  (slow: before "ready")
    except Exception as exc:
        _reply({"id": 0, "ok": False, "error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__})
        os._exit(1)
    _reply({"id": 0, "ok": True, "pid": os.getpid(), "version": getattr(milvus_lite, "__version__", "?")})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            continue
        threading.Thread(target=_handle, args=(request,), daemon=True).start()
    _shutdown()


if __name__ == "__main__":
    main()
