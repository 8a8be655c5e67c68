"""Run the ``milvus`` PyPI package's standalone server, reachable only through a Unix socket.

Meant to run inside a loopback-only network namespace::

    unshare -n sh -c 'ip link set lo up && exec python _netns_server.py DATA_DIR SOCKET'

The server listens on every interface of that namespace, which has only
``lo``; a relay forwards the Unix socket file ``SOCKET`` to its gRPC port.
Prints ``READY`` on stdout when the server answers; SIGTERM stops it.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _relay import Relay

FAST_SETTINGS = {
    "queryCoord.checkInterval": 200,
    "queryCoord.distPullInterval": 100,
    "queryCoord.checkHandoffInterval": 1000,
    "common.session.ttl": 10,
}


def main() -> None:
    data_dir, sock = sys.argv[1], sys.argv[2]
    from milvus import MilvusServer

    server = MilvusServer()
    server.set_base_dir(data_dir)
    server.listen_port = 19530
    if len(sys.argv) > 3 and sys.argv[3] == "auth":
        server.config.set("authorization_enabled", True)
    # A test server: poll faster than the production defaults so that load() and
    # index hand-off take a fraction of a second instead of several.
    for key, value in FAST_SETTINGS.items():
        server.config.set(key, value)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()  # waits for /healthz
    relay = Relay.unix_to_tcp(sock, server.listen_port)
    print("READY", flush=True)
    try:
        while not stop.wait(0.5):
            if server.server_proc is None or server.server_proc.poll() is not None:
                print("server process exited", file=sys.stderr, flush=True)
                break
    finally:
        relay.close()
        proc = server.server_proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # graceful: the server deregisters, so a restart does not wait for stale sessions
            try:
                proc.wait(timeout=10)
            except Exception:
                pass
        server.stop()


if __name__ == "__main__":
    main()
