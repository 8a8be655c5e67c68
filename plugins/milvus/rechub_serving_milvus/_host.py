"""The milvus-lite host: this process's side of the child that serves its embedded databases.

One host per process, started on demand (:meth:`LiteHost.get`, or early in
the background with :meth:`LiteHost.prestart`). It runs :mod:`._host_main`
with the same interpreter; requests and replies are JSON lines (see there).
What the child prints goes to the ``rechub_serving.milvus.lite`` logger at
debug level. A forked child process starts a host of its own.

Why a child: milvus-lite runs its engine in threads of the process that
opens a database; an index build cannot be interrupted and the interpreter
waits for those threads at exit, so Ctrl-C took as long as the build. The
parent can always stop a child at once, and milvus-lite's own output
(tracebacks, warnings) stays off the user's terminal.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from rechub_serving import BackendError, BackendUnavailableError

from ._private import remove_leftovers, sweep

__all__ = ["HostError", "LiteHost"]

logger = logging.getLogger("rechub_serving.milvus")
lite_logger = logging.getLogger("rechub_serving.milvus.lite")

HOST_START_TIMEOUT = 180.0  # importing milvus-lite takes seconds, more on a loaded machine
REQUEST_TIMEOUT = 120.0


class HostError(BackendError):
    """A request the milvus-lite host refused; ``kind`` is the exception type it reported."""

    def __init__(self, message: str, kind: str = ""):
        super().__init__(message)
        self.kind = kind


class LiteHost:
    """The child process that serves this process's embedded databases (one per process, started on demand)."""

    _instance: LiteHost | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def prestart(cls) -> None:
        """Start the host in the background (it takes seconds), so that the first build or load finds it ready."""
        with cls._instance_lock:
            host = cls._instance
            if host is not None and host.alive and host.owner_pid == os.getpid():
                return

        def start() -> None:
            try:
                cls.get()
            except Exception as exc:  # reported again, with its message, on first use
                logger.debug("starting the milvus-lite host in the background failed: %s", exc)

        threading.Thread(target=start, name="milvus-lite-prestart", daemon=True).start()

    @classmethod
    def get(cls) -> LiteHost:
        with cls._instance_lock:
            host = cls._instance
            if host is None or not host.alive or host.owner_pid != os.getpid():
                host = cls._instance = cls()
            return host

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._next_id = 1
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self.alive = False
        try:
            import milvus_lite  # noqa: F401  (fail here with the install hint)
        except ImportError:
            raise BackendUnavailableError(
                "no uri= was given, so the milvus backend uses an embedded milvus-lite database, but milvus-lite "
                "is not installed (pip install milvus-lite), or pass uri='http://host:19530'"
            ) from None
        removed = sweep()
        if removed:
            logger.info("removed %d milvus-lite databases left by killed processes", len(removed))
        reply_r, reply_w = os.pipe()
        script = Path(__file__).with_name("_host_main.py")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-u", str(script), str(reply_w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(reply_w,),
                start_new_session=True,  # Ctrl-C in a terminal reaches the parent, which stops us
            )
        except OSError as exc:
            os.close(reply_r)
            raise BackendUnavailableError(f"cannot start the milvus-lite host process: {exc}") from None
        finally:
            os.close(reply_w)
        self._replies = os.fdopen(reply_r, "rb")
        ready: Future = Future()
        self._pending[0] = ready
        threading.Thread(target=self._read_replies, name="milvus-lite-replies", daemon=True).start()
        threading.Thread(target=self._read_output, name="milvus-lite-output", daemon=True).start()
        try:
            hello = ready.result(HOST_START_TIMEOUT)
        except BaseException:
            self._kill()
            raise
        if not hello.get("ok"):
            self._kill()
            raise BackendUnavailableError(f"the milvus-lite host process could not start: {hello.get('error')}")
        self.alive = True
        self.version = str(hello.get("version"))
        atexit.register(self.shutdown)
        logger.debug("milvus-lite host process %d started (milvus-lite %s)", self._proc.pid, self.version)

    # -- talking to the child ---------------------------------------------------------------------
    def _read_replies(self) -> None:
        for line in self._replies:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            fut = self._pending.pop(message.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(message)
        self.alive = False
        error = BackendError(f"the milvus-lite host process exited unexpectedly{self._tail_text()}")
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()

    def _read_output(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._tail.append(line)
                lite_logger.debug("%s", line)

    def _tail_text(self) -> str:
        lines = list(self._tail)[-5:]
        return (": " + " | ".join(lines)) if lines else ""

    def request(self, op: str, *, wait: bool = True, timeout: float = REQUEST_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """Send one request; with ``wait``, return the reply or raise :class:`HostError`."""
        fut: Future = Future()
        with self._lock:
            if not self.alive:
                raise BackendError(f"the milvus-lite host process is not running{self._tail_text()}")
            rid = self._next_id
            self._next_id += 1
            self._pending[rid] = fut
            stdin = self._proc.stdin
            assert stdin is not None
            try:
                stdin.write((json.dumps({"id": rid, "op": op, **fields}) + "\n").encode())
                stdin.flush()
            except OSError as exc:
                self._pending.pop(rid, None)
                raise BackendError(f"the milvus-lite host process is gone ({exc}){self._tail_text()}") from None
        if not wait:
            return {}
        try:
            reply = fut.result(timeout)
        except TimeoutError:
            self._pending.pop(rid, None)
            raise BackendError(f"the milvus-lite host process did not answer {op!r} within {timeout:g}s") from None
        if not reply.get("ok"):
            raise HostError(str(reply.get("error")), str(reply.get("type") or ""))
        return reply

    def open(self, data_dir: Path, remove: Path | None) -> int:
        """Serve ``data_dir``; return its port. ``remove``: delete that directory when it closes or we die."""
        reply = self.request("open", dir=str(data_dir), remove=str(remove) if remove else None)
        return int(reply["port"])

    def close(self, data_dir: Path, *, wait: bool = True) -> None:
        if not self.alive or self.owner_pid != os.getpid():
            return
        try:
            self.request("close", dir=str(data_dir), wait=wait)
        except BackendError as exc:
            logger.debug("closing %s in the milvus-lite host failed: %s", data_dir, exc)

    # -- stopping ---------------------------------------------------------------------------------
    def shutdown(self, timeout: float = 3.0) -> None:
        """Close the host's stdin: it deletes private databases, closes the others and exits.

        A host that has not exited within ``timeout`` (milvus-lite busy in an index build) is
        killed; then what is left of this process's private databases is deleted here.
        """
        if self.owner_pid != os.getpid():
            return
        self.alive = False
        proc = self._proc
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.debug("the milvus-lite host did not exit within %gs: killing it", timeout)
            self._kill()
        remove_leftovers()

    def _kill(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self._proc.kill()
        with contextlib.suppress(Exception):
            self._proc.wait(5)

    @property
    def pid(self) -> int:
        return self._proc.pid


def _forget_host_in_child() -> None:
    # A forked child must not write into its parent's pipe: it starts its own host on first use.
    LiteHost._instance = None
    LiteHost._instance_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_host_in_child)
