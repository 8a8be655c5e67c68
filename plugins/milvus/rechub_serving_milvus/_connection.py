"""Where a Milvus index lives and how to reach it: milvus-lite file or server, retries, errors.

Everything that talks to pymilvus directly goes through :class:`Connection`,
so every failure becomes one of the core's errors with a message that names
the uri (never the token) and the collection, and no call can hang: every
RPC carries a timeout and connecting is retried a bounded number of times
with exponential back-off.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from rechub_serving import BackendError, BackendUnavailableError, InvalidParameterError

__all__ = ["Connection", "Target", "default_lite_path", "redact_uri"]

logger = logging.getLogger("rechub_serving.milvus")

T = TypeVar("T")

TOKEN_ENV = "RECHUB_MILVUS_TOKEN"
PATH_ENV = "RECHUB_MILVUS_PATH"

# Substrings of pymilvus / gRPC messages that mean "the server is not there".
_UNAVAILABLE_HINTS = (
    "unavailable",
    "connection refused",
    "failed to connect",
    "fail connecting",
    "deadline",
    "timeout",
    "timed out",
    "socket closed",
    "connection reset",
    "retry run out",
    "not ready",
    "broken pipe",
    "cancelled",
)
_AUTH_HINTS = ("auth", "credential", "unauthenticated", "password", "permission denied", "token")


def default_lite_path() -> Path:
    """The milvus-lite database used when neither ``uri`` nor ``path`` is given.

    ``$RECHUB_MILVUS_PATH`` if set, else ``$XDG_CACHE_HOME/rechub-serving/milvus.db``
    (``~/.cache/rechub-serving/milvus.db``).
    """
    env = os.environ.get(PATH_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "rechub-serving" / "milvus.db"


def redact_uri(uri: str) -> str:
    """``uri`` without user info (``user:password@``) and without a query string."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class Target:
    """A Milvus to connect to: a server ``uri`` or a milvus-lite ``path``."""

    uri: str | None = None
    path: str | None = None
    db_name: str = ""
    token: str = field(default="", repr=False)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Target:
        uri = config.get("uri")
        if config.get("host") or config.get("port"):
            if uri:
                raise InvalidParameterError("milvus: give either uri= or host=/port=, not both")
            uri = f"http://{config.get('host') or 'localhost'}:{config.get('port') or 19530}"
        if uri:
            if config.get("path"):
                raise InvalidParameterError("milvus: give either uri= (a server) or path= (milvus-lite), not both")
            scheme = urlsplit(uri).scheme
            if scheme not in ("http", "https", "tcp", "grpc", "unix"):
                raise InvalidParameterError(
                    f"milvus: uri={redact_uri(uri)!r} is not a server address; expected http://host:19530 "
                    "(for an embedded database use path='file.db' instead)"
                )
            token = config.get("token") or os.environ.get(TOKEN_ENV, "")
            return cls(uri=uri, db_name=config.get("db_name") or "", token=token)
        if config.get("db_name"):
            raise InvalidParameterError("milvus: db_name= needs a server uri=; milvus-lite has a single database")
        path = Path(config.get("path") or default_lite_path()).expanduser().absolute()
        if not path.name.endswith(".db"):
            raise InvalidParameterError(f"milvus: path={str(path)!r} must end with '.db' (a milvus-lite database)")
        return cls(path=str(path))

    @property
    def is_lite(self) -> bool:
        return self.uri is None

    def describe(self) -> str:
        """Printable location, without secrets."""
        if self.is_lite:
            return f"milvus-lite database {self.path}"
        db = f" (database {self.db_name!r})" if self.db_name else ""
        return f"Milvus server {redact_uri(self.uri or '')}{db}"

    def manifest_entry(self) -> dict[str, Any]:
        """What a saved index records about its location (never the token)."""
        if self.is_lite:
            return {"kind": "lite", "path": self.path}
        return {"kind": "server", "uri": redact_uri(self.uri or ""), "db_name": self.db_name}


class _LiteServers:
    """Reference counts of the in-process milvus-lite servers, one per database file."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}

    def acquire(self, path: str) -> None:
        with self._lock:
            self._users[path] = self._users.get(path, 0) + 1

    def release(self, path: str) -> None:
        with self._lock:
            left = self._users.get(path, 0) - 1
            if left > 0:
                self._users[path] = left
                return
            self._users.pop(path, None)
        try:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(path)
        except Exception:  # pragma: no cover - best effort at close
            logger.debug("could not release milvus-lite server for %s", path, exc_info=True)


_LITE = _LiteServers()


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or ""
    text = text.strip()
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError
        try:
            code = code().name
            text = text or exc.details()  # type: ignore[attr-defined]
        except Exception:
            code = None
    label = type(exc).__name__
    if code not in (None, ""):
        label += f" code={code}"
    return f"{label}: {text}" if text else label


def _port_open(uri: str, timeout: float) -> bool:
    """True when a TCP connection to the uri's host and port succeeds."""
    parts = urlsplit(uri)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 19530)
    try:
        with socket.create_connection((parts.hostname, port), timeout=min(timeout, 5.0)):
            return True
    except OSError:
        return False


def _is_unavailable(exc: BaseException) -> bool:
    text = _message(exc).lower()
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(h in text for h in _UNAVAILABLE_HINTS)


def _is_auth(exc: BaseException) -> bool:
    text = _message(exc).lower()
    return any(h in text for h in _AUTH_HINTS) or getattr(exc, "code", None) in (1800, 2, 16)


class Connection:
    """One pymilvus ``MilvusClient`` plus the settings every call needs.

    ``connect_timeout`` bounds one connection attempt, ``retries`` the extra
    attempts (back-off 0.5 s, 1 s, 2 s, ...), ``timeout`` every later call.
    """

    def __init__(self, target: Target, *, connect_timeout: float = 10.0, timeout: float = 60.0, retries: int = 3):
        self.target = target
        self.timeout = timeout
        self._client: Any = None
        self._lite_acquired = False
        self._connect(connect_timeout, retries)

    # -- connecting -------------------------------------------------------------
    def _connect(self, connect_timeout: float, retries: int) -> None:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:  # pragma: no cover - dependency missing
            raise BackendUnavailableError(
                f"the milvus backend needs pymilvus (pip install rechub-serving-milvus): {exc}"
            ) from None
        target = self.target
        if target.is_lite:
            self._client = self._connect_lite(MilvusClient, connect_timeout)
            return
        last: BaseException | None = None
        for attempt in range(retries + 1):
            if attempt:
                delay = min(0.5 * 2 ** (attempt - 1), 4.0)
                logger.info(
                    "retrying %s in %.1fs (attempt %d of %d)", target.describe(), delay, attempt + 1, retries + 1
                )
                time.sleep(delay)
            try:
                client = MilvusClient(
                    uri=target.uri, token=target.token, db_name=target.db_name, timeout=connect_timeout
                )
                client.get_server_version(timeout=connect_timeout)
                self._client = client
                return
            except Exception as exc:
                last = exc
                if not _is_unavailable(exc) and _port_open(target.uri or "", connect_timeout):
                    # Something listens there, yet the handshake failed: credentials (the
                    # server says little more than "code=2"), a wrong db_name, or not Milvus.
                    raise BackendError(
                        f"{target.describe()} answers on its port but the Milvus handshake failed ({_message(exc)}); "
                        f"check token= (user:password or an API key, default ${TOKEN_ENV}), db_name=, and that "
                        "a Milvus server listens there"
                    ) from None
                if _is_auth(exc) and not _is_unavailable(exc):
                    raise BackendError(
                        f"{target.describe()} refused the credentials ({_message(exc)}); check token= "
                        f"(user:password or an API key) or ${TOKEN_ENV}"
                    ) from None
                if "database not found" in _message(exc).lower():
                    raise BackendError(
                        f"{target.describe()}: database {target.db_name!r} does not exist; create it or fix db_name="
                    ) from None
        raise BackendUnavailableError(
            f"cannot reach {target.describe()} after {retries + 1} attempts with a {connect_timeout:g}s connect "
            f"timeout ({_message(last) if last else 'no answer'}); is the server running and the uri right?"
        ) from None

    def _connect_lite(self, client_cls: Any, connect_timeout: float) -> Any:
        path = Path(self.target.path or "")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create the directory of the milvus-lite database {path}: {exc}") from None
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise BackendUnavailableError(
                "no uri= was given, so the milvus backend uses an embedded milvus-lite database, "
                "but milvus-lite is not installed (pip install milvus-lite), or pass uri='http://host:19530'"
            ) from None
        _LITE.acquire(str(path))
        self._lite_acquired = True
        try:
            return client_cls(uri=str(path), timeout=connect_timeout)
        except Exception as exc:
            self._release_lite()
            raise BackendUnavailableError(
                f"cannot open the {self.target.describe()} ({_message(exc)}); milvus-lite lets one process at "
                f"a time use a database: if another process holds it, pass path= or set ${PATH_ENV}"
            ) from None

    def _release_lite(self) -> None:
        if self._lite_acquired:
            self._lite_acquired = False
            _LITE.release(str(self.target.path))

    # -- calls ------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[..., T], *args: Any, collection: str | None = None, **kwargs: Any) -> T:
        """Run ``client.<fn>`` with the timeout; translate any failure into a core error."""
        if self._client is None:
            raise BackendError(f"the connection to {self.target.describe()} is closed")
        kwargs.setdefault("timeout", self.timeout)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise self.error(what, exc, collection) from None

    def error(self, what: str, exc: BaseException, collection: str | None = None) -> BackendError:
        """The core error for ``exc`` raised while doing ``what``."""
        where = self.target.describe() + (f", collection {collection!r}" if collection else "")
        if isinstance(exc, BackendError):
            return exc
        if _is_unavailable(exc) and not self.target.is_lite:
            return BackendUnavailableError(
                f"{what} failed: {where} did not answer ({_message(exc)}); check that the server is running"
            )
        return BackendError(f"{what} failed on {where}: {_message(exc)}")

    @property
    def client(self) -> Any:
        if self._client is None:
            raise BackendError(f"the connection to {self.target.describe()} is closed")
        return self._client

    def server_version(self) -> str | None:
        try:
            return str(self.client.get_server_version(timeout=self.timeout))
        except Exception:
            return None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # pragma: no cover
                logger.debug("closing the pymilvus client failed", exc_info=True)
        self._release_lite()
