"""Fixtures of the Milvus plugin tests: a milvus-lite database, a real Milvus server, Docker.

The real server is the PyPI package ``milvus`` (2.3.5 standalone). It listens
on every interface, so it runs inside a loopback-only network namespace
(``unshare -n``) and is reached through a Unix socket file relayed to an
ephemeral port on this process's 127.0.0.1 (see ``_relay.py``). With
``RECHUB_MILVUS_URI`` set (and ``RECHUB_MILVUS_TOKEN`` if needed) the tests use
that server instead. Without either, server tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _relay import Relay  # noqa: E402

SERVER_TOKEN = "root:Milvus"  # the test server runs with authentication on
START_TIMEOUT = 180


@pytest.fixture(scope="session", autouse=True)
def _private_work_root(tmp_path_factory):
    """Private milvus-lite databases of the tests go to a temporary work root, not ~/.cache."""
    root = tmp_path_factory.mktemp("milvus-work")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECHUB_MILVUS_WORKDIR", str(root))
    yield root
    mp.undo()


@pytest.fixture
def work_root(_private_work_root) -> Path:
    """The work root of private databases (shared by the session; check entries by name)."""
    return _private_work_root


@pytest.fixture(scope="module")
def lite_db(tmp_path_factory) -> Path:
    """A fresh milvus-lite database (the user's own, path=) per test module."""
    return tmp_path_factory.mktemp("milvus-lite") / "milvus.db"


def _namespace_problem() -> str | None:
    """Why a loopback-only network namespace cannot be made here (None when it can)."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "the unshare or ip command is missing"
    try:
        probe = subprocess.run(
            ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -n failed: {exc}"
    if probe.returncode != 0:
        return f"unshare -n failed: {probe.stderr.strip() or probe.returncode} (needs root or CAP_SYS_ADMIN)"
    return None


class MilvusServerHandle:
    """A Milvus server for the tests: its uri and token; stop()/start() when it is ours."""

    def __init__(self, uri: str, token: str, *, data_dir: Path | None = None, sock: Path | None = None):
        self.uri = uri
        self.token = token
        self.data_dir = data_dir
        self.sock = sock
        self.proc: subprocess.Popen | None = None
        self.relay: Relay | None = None
        self._log = None

    @property
    def restartable(self) -> bool:
        return self.data_dir is not None

    @property
    def params(self) -> dict[str, str]:
        return {"uri": self.uri, "token": self.token} if self.token else {"uri": self.uri}

    def start(self) -> None:
        assert self.data_dir is not None and self.sock is not None
        self._log = open(self.data_dir / "launcher.log", "ab")
        script = HERE / "_netns_server.py"
        inner = f"ip link set lo up && exec {sys.executable} {script} {self.data_dir} {self.sock} auth"
        self.proc = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", inner],
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        ready = threading.Event()

        def watch() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                if line.strip() == b"READY":
                    ready.set()

        threading.Thread(target=watch, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (self.data_dir / "launcher.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"the Milvus test server did not start within {START_TIMEOUT}s:\n{log}")
        self.wait_until_serving(deadline)

    def wait_until_serving(self, deadline: float) -> None:
        """After READY, wait until a client gets an answer (a loaded machine may take a while)."""
        from pymilvus import MilvusClient

        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                client = MilvusClient(uri=self.uri, token=self.token, timeout=5)
                client.get_server_version(timeout=5)
                client.close()
                return
            except Exception as exc:  # not serving yet
                last = exc
                time.sleep(1)
        pytest.fail(f"the Milvus test server started but did not answer within {START_TIMEOUT}s: {last}")

    def stop(self) -> None:
        """Stop the server process (gracefully, so that it can be restarted on the same data)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self.relay is not None:
            self.relay.drop_connections()
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture(scope="session")
def milvus_server():
    """A real Milvus server: ``RECHUB_MILVUS_URI`` or the ``milvus`` package in a network namespace."""
    uri = os.environ.get("RECHUB_MILVUS_URI")
    if uri:
        yield MilvusServerHandle(uri, os.environ.get("RECHUB_MILVUS_TOKEN", ""))
        return
    problem = _namespace_problem()
    if problem:
        pytest.skip(
            f"no Milvus server for the server tests: {problem}, so the embedded milvus server (which listens on "
            "every interface) cannot be confined to loopback; set RECHUB_MILVUS_URI=http://host:19530 to use a server"
        )
    try:
        import milvus  # noqa: F401
    except ImportError:
        pytest.skip(
            "the milvus package (embedded server, pip install milvus==2.3.5) is not installed and RECHUB_MILVUS_URI is unset"
        )
    base = Path(tempfile.mkdtemp(prefix="rechub-milvus-"))  # short: a Unix socket path has at most 107 bytes
    handle = MilvusServerHandle("", SERVER_TOKEN, data_dir=base / "server", sock=base / "milvus.sock")
    handle.data_dir.mkdir()
    handle.relay = Relay.tcp_to_unix(str(handle.sock))
    handle.uri = f"http://127.0.0.1:{handle.relay.port}"
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()
        handle.relay.close()
        shutil.rmtree(base, ignore_errors=True)
