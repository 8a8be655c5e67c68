"""``rechub-index serve``: an HTTP server for a two-tower model (extra ``[serve]``: FastAPI, uvicorn, prometheus-client).

Nothing here is imported by ``import rechub_serving``, and importing this
package imports no web framework: FastAPI and uvicorn load when an app is
created or served. :func:`create_app` gives the ASGI app for a
:class:`ServeConfig` (to mount it, or to run it under another ASGI server);
:func:`serve` runs it on uvicorn the way the command line does.
"""

from __future__ import annotations

from typing import Any

from .config import BatchConfig, Limits, RecallConfig, ServeConfig
from .errors import ConfigError, RequestError

__all__ = ["BatchConfig", "ConfigError", "Limits", "RecallConfig", "RequestError", "ServeConfig", "create_app", "serve"]


def create_app(config: ServeConfig) -> Any:
    """The FastAPI app serving ``config`` (loads the model now)."""
    from .app import create_app as _create_app

    return _create_app(config)


def serve(config: ServeConfig) -> None:
    """Run the server until SIGTERM or SIGINT (graceful: in-flight requests are answered first)."""
    from .server import run

    run(config)
