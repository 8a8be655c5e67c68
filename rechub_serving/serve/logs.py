"""Logging the way uvicorn deployments do it: one ``dictConfig`` for uvicorn's loggers and ours.

``text`` lines read well in a terminal; ``json`` gives one object per line
(time, level, logger, message and any structured fields an error carries:
``kind``, ``field``, ``endpoint``, ``status``) for a log pipeline. The access
log (one line per request, uvicorn's) is off unless asked for; with the
level at ``debug`` the server logs one line per request itself, with its
latency.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from typing import Any

__all__ = ["STRUCTURED_FIELDS", "JsonFormatter", "log_config"]

STRUCTURED_FIELDS = ("kind", "field", "endpoint", "status", "duration_ms", "generation")


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_config(level: str = "info", fmt: str = "text", access_log: bool = False) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for uvicorn's loggers and ``rechub_serving``'s, on stderr."""
    level = level.upper()
    formatter = (
        {"()": f"{__name__}.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    logger = {"handlers": ["default"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": logger,
            "uvicorn.error": {"level": level},
            "uvicorn.access": {**logger, "level": level if access_log else "WARNING"},
            "rechub_serving": logger,
        },
    }
