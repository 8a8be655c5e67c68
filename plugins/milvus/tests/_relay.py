"""A tiny byte relay between a TCP port and a Unix socket file (test helper).

The Milvus test server runs in a loopback-only network namespace; a Unix
socket *file* is reachable from both sides of a namespace boundary, so one
relay inside the namespace forwards ``socket file -> 127.0.0.1:port`` and one
in the test process forwards ``127.0.0.1:ephemeral -> socket file``. Nothing
listens on any interface but loopback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class Relay:
    """Accept on ``listener`` and forward every connection to ``connect()``."""

    def __init__(self, listener: socket.socket, connect: Callable[[], socket.socket]):
        self._listener = listener
        self._connect = connect
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="relay", daemon=True)
        self._thread.start()

    @classmethod
    def tcp_to_unix(cls, path: str) -> Relay:
        """Listen on 127.0.0.1 (ephemeral port), forward to the Unix socket ``path``."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)

        def connect() -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            return s

        return cls(listener, connect)

    @classmethod
    def unix_to_tcp(cls, path: str, port: int) -> Relay:
        """Listen on the Unix socket file ``path``, forward to 127.0.0.1:``port``."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        return cls(listener, lambda: socket.create_connection(("127.0.0.1", port), timeout=5))

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def _serve(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect()
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def drop_connections(self) -> None:
        """Cut every open connection (new ones are still accepted)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop_connections()
