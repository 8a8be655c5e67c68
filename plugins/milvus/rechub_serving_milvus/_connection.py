"""Where a Milvus index lives and how to reach it: a server, or a milvus-lite database; retries, errors.

Everything that talks to pymilvus goes through :class:`Connection`, so every
failure becomes one of the core's errors with a message that names the uri
(never a password or the token) and the collection, and no call can hang:
every RPC carries a timeout and connecting is retried a bounded number of
times with exponential back-off. pymilvus's own log output (it prints
tracebacks to stderr by default) is routed to the ``rechub_serving.milvus``
logger at debug level, credentials removed.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from rechub_serving import BackendError, BackendUnavailableError, InvalidParameterError

from ._host import HostError, LiteHost
from ._private import PrivateDatabase

__all__ = ["Connection", "Target", "legacy_lite_path", "redact_uri", "scrub"]

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
# gRPC's C core logs connection events ("Got goaway" when an embedded database stops) on
# stderr; keep it to errors unless the user chose a level. Read by gRPC on first use.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<secret>[^/@\s]*)@")


def legacy_lite_path() -> Path:
    """The shared milvus-lite database of rechub-serving-milvus 0.1 (``$RECHUB_MILVUS_PATH`` or ``~/.cache/...``)."""
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


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with ``scheme://user:password@`` passwords and the given secrets replaced by ``***``."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class Target:
    """A Milvus to connect to: a server ``uri``, a milvus-lite data directory ``path``, or neither.

    Neither (``is_private``): a private milvus-lite database that the
    connection creates and deletes (see :mod:`._private`).
    """

    uri: str | None = None
    path: str | None = None
    db_name: str = ""
    token: str = field(default="", repr=False)

    @classmethod
    def from_config(cls, config: Any) -> Target:
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
                    "(for your own embedded database use path='file.db' instead)"
                )
            token = config.get("token") or os.environ.get(TOKEN_ENV, "")
            return cls(uri=uri, db_name=config.get("db_name") or "", token=token)
        if config.get("db_name"):
            raise InvalidParameterError("milvus: db_name= needs a server uri=; milvus-lite has a single database")
        if config.get("path"):
            return cls.lite(config["path"])
        return cls()

    @classmethod
    def lite(cls, path: str | Path) -> Target:
        """A milvus-lite database of the user's (``path=``, or a 0.1 saved index's)."""
        resolved = Path(path).expanduser().absolute()
        if not resolved.name.endswith(".db"):
            raise InvalidParameterError(f"milvus: path={str(resolved)!r} must end with '.db' (a milvus-lite database)")
        return cls(path=str(resolved))

    @property
    def is_server(self) -> bool:
        return self.uri is not None

    @property
    def is_private(self) -> bool:
        return self.uri is None and self.path is None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in messages: the token and any password inside the uri."""
        out = [self.token] if self.token else []
        if self.token and ":" in self.token:
            out.append(self.token.split(":", 1)[1])
        password = urlsplit(self.uri).password if self.uri else None
        if password:
            out.append(password)
        return tuple(out)

    def describe(self) -> str:
        """Printable location, without secrets."""
        if self.is_server:
            db = f" (database {self.db_name!r})" if self.db_name else ""
            return f"Milvus server {redact_uri(self.uri or '')}{db}"
        if self.is_private:
            return "a private milvus-lite database"
        return f"milvus-lite database {self.path}"

    def manifest_entry(self) -> dict[str, Any]:
        """What a saved server index records about its location (never the token)."""
        return {"kind": "server", "uri": redact_uri(self.uri or ""), "db_name": self.db_name}


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or ""
    text = str(text).strip()
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


class _ToDebug(logging.Handler):
    """Re-emit pymilvus records on our logger at debug level, without credentials."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = scrub(record.getMessage())
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({_message(record.exc_info[1])})"
            logger.debug("pymilvus: %s", scrub(text))
        except Exception:  # pragma: no cover - logging never breaks a call
            pass


_QUIET = threading.Lock()
_quieted = False


def quiet_pymilvus() -> None:
    """Route pymilvus's stderr handlers (tracebacks on every failed RPC) to our debug log, once."""
    global _quieted
    with _QUIET:
        if _quieted:
            return
        _quieted = True
        for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer"):
            log = logging.getLogger(name)
            for handler in list(log.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    log.removeHandler(handler)
            log.addHandler(_ToDebug())
            log.propagate = False


class Connection:
    """One pymilvus ``MilvusClient`` plus the settings every call needs.

    ``connect_timeout`` bounds one connection attempt, ``retries`` the extra
    attempts (back-off 0.5 s, 1 s, 2 s, ...), ``timeout`` every later call.
    A milvus-lite target is served by this process's :class:`~._host.LiteHost`;
    a private one gets a fresh :class:`~._private.PrivateDatabase` (``purpose``
    is recorded in its ``owner.json``) unless ``private`` hands one over.
    """

    def __init__(
        self,
        target: Target,
        *,
        connect_timeout: float = 10.0,
        timeout: float = 60.0,
        retries: int = 3,
        purpose: str = "temporary index",
        private: PrivateDatabase | None = None,
    ):
        self.target = target
        self.timeout = timeout
        self._client: Any = None
        self.private: PrivateDatabase | None = private
        self._host: LiteHost | None = None
        self._data_dir: Path | None = None
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:  # pragma: no cover - dependency missing
            raise BackendUnavailableError(
                f"the milvus backend needs pymilvus (pip install rechub-serving-milvus): {exc}"
            ) from None
        quiet_pymilvus()  # after the import: pymilvus configures its handlers when imported
        if target.is_server:
            self._client = self._connect_server(MilvusClient, connect_timeout, retries)
            return
        try:
            if target.is_private and self.private is None:
                self.private = PrivateDatabase(purpose)
            self._client = self._connect_lite(MilvusClient, connect_timeout)
        except BaseException:
            self.close(wait=False)
            raise

    # -- connecting -------------------------------------------------------------
    def _connect_server(self, client_cls: Any, connect_timeout: float, retries: int) -> Any:
        target = self.target
        last: BaseException | None = None
        for attempt in range(retries + 1):
            if attempt:
                delay = min(0.5 * 2 ** (attempt - 1), 4.0)
                logger.info(
                    "retrying %s in %.1fs (attempt %d of %d)", target.describe(), delay, attempt + 1, retries + 1
                )
                time.sleep(delay)
            try:
                client = client_cls(
                    uri=target.uri, token=target.token, db_name=target.db_name, timeout=connect_timeout, dedicated=True
                )
                client.get_server_version(timeout=connect_timeout)
                return client
            except Exception as exc:
                last = exc
                if not _is_unavailable(exc) and _port_open(target.uri or "", connect_timeout):
                    # Something listens there, yet the handshake failed: credentials (the
                    # server says little more than "code=2"), a wrong db_name, or not Milvus.
                    raise BackendError(
                        f"{target.describe()} answers on its port but the Milvus handshake failed "
                        f"({self.message(exc)}); check token= (user:password or an API key, default "
                        f"${TOKEN_ENV}), db_name=, and that a Milvus server listens there"
                    ) from None
                if _is_auth(exc) and not _is_unavailable(exc):
                    raise BackendError(
                        f"{target.describe()} refused the credentials ({self.message(exc)}); check token= "
                        f"(user:password or an API key) or ${TOKEN_ENV}"
                    ) from None
                if "database not found" in _message(exc).lower():
                    raise BackendError(
                        f"{target.describe()}: database {target.db_name!r} does not exist; create it or fix db_name="
                    ) from None
        raise BackendUnavailableError(
            f"cannot reach {target.describe()} after {retries + 1} attempts with a {connect_timeout:g}s connect "
            f"timeout ({self.message(last) if last else 'no answer'}); is the server running and the uri right?"
        ) from None

    def _connect_lite(self, client_cls: Any, connect_timeout: float) -> Any:
        data_dir = self.private.data_dir if self.private is not None else Path(self.target.path or "")
        if self.private is None:
            try:
                data_dir.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot create the directory of {self.target.describe()}: {exc}") from None
        host = LiteHost.get()
        try:
            port = host.open(data_dir, self.private.root if self.private is not None else None)
        except HostError as exc:
            if exc.kind == "DataDirLockedError":
                raise BackendUnavailableError(
                    f"{self.target.describe()} is open in another process, and milvus-lite lets one process at a "
                    "time use a database; close it there, or build without path= (each index then gets a private "
                    "database of its own)"
                ) from None
            raise BackendError(f"cannot open {self.describe()}: {exc}") from None
        self._host, self._data_dir = host, data_dir
        try:
            return client_cls(uri=f"http://127.0.0.1:{port}", timeout=connect_timeout, dedicated=True)
        except Exception as exc:
            raise BackendError(f"cannot connect to {self.describe()}: {self.message(exc)}") from None

    # -- calls ------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[..., T], *args: Any, collection: str | None = None, **kwargs: Any) -> T:
        """Run ``client.<fn>`` with the timeout; translate any failure into a core error."""
        if self._client is None:
            raise BackendError(f"the connection to {self.describe()} is closed")
        kwargs.setdefault("timeout", self.timeout)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise self.error(what, exc, collection) from None

    def message(self, exc: BaseException) -> str:
        """``exc`` as one line without credentials."""
        return scrub(_message(exc), self.target.secrets)

    def error(self, what: str, exc: BaseException, collection: str | None = None) -> BackendError:
        """The core error for ``exc`` raised while doing ``what``."""
        where = self.describe() + (f", collection {collection!r}" if collection else "")
        if isinstance(exc, BackendError):
            return exc
        if self._host is not None and not self._host.alive:
            return BackendError(f"{what} failed on {where}: the milvus-lite host process exited")
        if _is_unavailable(exc) and self.target.is_server:
            return BackendUnavailableError(
                f"{what} failed: {where} did not answer ({self.message(exc)}); check that the server is running"
            )
        return BackendError(f"{what} failed on {where}: {self.message(exc)}")

    def describe(self) -> str:
        """Where the data is (for messages): the server, or the milvus-lite directory."""
        if self.private is not None:
            return f"private milvus-lite database {self.private.data_dir}"
        return self.target.describe()

    @property
    def is_open(self) -> bool:
        return self._client is not None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise BackendError(f"the connection to {self.describe()} is closed")
        return self._client

    @property
    def collection_root(self) -> Path:
        """The directory milvus-lite keeps collections in (embedded databases only)."""
        if self._data_dir is None:
            raise BackendError(f"{self.describe()} is not an embedded database")
        return self._data_dir / "collections"

    def server_version(self) -> str | None:
        try:
            return str(self.client.get_server_version(timeout=self.timeout))
        except Exception:
            return None

    def close(self, *, wait: bool = True) -> None:
        """Close the client; stop serving the embedded database (deleting a private one). Idempotent.

        ``wait=False`` (an interrupted build) returns at once: the host
        process stops the database in the background.
        """
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # pragma: no cover
                logger.debug("closing the pymilvus client failed", exc_info=True)
        host, self._host = self._host, None
        if host is not None and self._data_dir is not None:
            host.close(self._data_dir, wait=wait)
        private, self.private = self.private, None
        if private is not None:
            private.release()
