"""Running the app on uvicorn: one process, or several workers sharing the port.

One worker: the app is built here (a model that cannot be loaded fails
before the port is bound) and run by a uvicorn ``Server`` whose SIGTERM
handling is uvicorn's (stop accepting, let in-flight requests finish, run
the lifespan shutdown) except at the end: the process exits 0 instead of
re-raising the signal.

Several workers: uvicorn's supervisor starts the processes, each building
the app from the config in ``RECHUB_SERVE_CONFIG``; each loads its own copy
of the model and watches the files itself. Metrics are shared through
prometheus-client's multiprocess mode (a temporary directory, removed at
exit, unless ``PROMETHEUS_MULTIPROC_DIR`` is already set).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from .config import CONFIG_ENV, ServeConfig
from .errors import ConfigError
from .logs import log_config

__all__ = ["run"]

logger = logging.getLogger("rechub_serving.serve")


def _uvicorn():
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("serving needs the [serve] extra: pip install 'rechub-serving[serve]'") from None
    return uvicorn


def _server_class(uvicorn: Any) -> type:
    class GracefulServer(uvicorn.Server):
        """uvicorn's server, exiting 0 after a graceful SIGTERM/SIGINT shutdown."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()  # shut down gracefully: exit normally, not by the signal

    return GracefulServer


def _uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    return {
        "host": config.host,
        "port": config.port,
        "log_config": log_config(config.log_level, config.log_format, config.access_log),
        "log_level": config.log_level.lower(),
        "access_log": config.access_log,
        "timeout_graceful_shutdown": config.graceful_timeout_s,
        "lifespan": "on",
        "server_header": False,
    }


def run(config: ServeConfig) -> None:
    """Serve ``config`` until a signal asks to stop; raises :class:`ConfigError` when it cannot start."""
    config.check()
    uvicorn = _uvicorn()
    import logging.config

    logging.config.dictConfig(log_config(config.log_level, config.log_format, config.access_log))
    if config.workers == 1:
        _run_single(uvicorn, config)
    else:
        _run_workers(uvicorn, config)


def _run_single(uvicorn: Any, config: ServeConfig) -> None:
    from .app import create_app

    app = create_app(config)
    server = _server_class(uvicorn)(uvicorn.Config(app, **_uvicorn_options(config)))
    server.run()
    if not server.started:
        raise ConfigError(f"the server did not start on {config.host}:{config.port} (see the log above)")


def _preflight(config: ServeConfig) -> None:
    """Cheap checks in the parent before workers start (a worker that cannot load stops the server, exit 3)."""
    from .store import read_index_manifest

    paths = config.paths()
    read_index_manifest(paths.index)
    if paths.user_tower is not None:
        from ..retriever import read_tower_metadata

        read_tower_metadata(paths.user_tower)


def _run_workers(uvicorn: Any, config: ServeConfig) -> None:
    _preflight(config)
    os.environ[CONFIG_ENV] = config.to_json()
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="rechub-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    try:
        uvicorn.run(
            "rechub_serving.serve.app:app_from_environment", factory=True, workers=config.workers,
            **_uvicorn_options(config),
        )  # fmt: skip
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
