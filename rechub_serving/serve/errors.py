"""The server's errors and the one JSON shape every error response has.

Every failure a client can cause is a :class:`RequestError` with an HTTP status
in the 4xx range, a machine-readable ``kind``, the ``field`` it is about
(``users[2].age``, ``k``, ``seen[0][3]``) and a message that says what was
expected. Responses never carry a stack trace or a file path:
:func:`public_message` strips absolute paths from any text before it leaves
the process.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .. import RechubError

__all__ = [
    "ConfigError",
    "RequestError",
    "SwapRefusedError",
    "error_body",
    "public_message",
]


class ConfigError(RechubError, ValueError):
    """The server cannot start with these options (a missing file, an impossible limit)."""


class SwapRefusedError(RechubError):
    """A new model or index was refused; the serving generation stays."""


_logger = logging.getLogger("rechub_serving.serve")


class RequestError(RechubError):
    """A request the server will not answer: an HTTP status, a ``kind``, the ``field`` and a message."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.kind, self.message, self.field)

    def log(self, endpoint: str) -> None:
        """Log this refusal: a warning for a server-side failure (5xx), debug for a rejected request."""
        if self.status >= 500:
            _logger.warning(
                "%s %s: %s", self.status, self.kind, self.message, extra={"kind": self.kind, "endpoint": endpoint}
            )
        else:
            _logger.debug(
                "rejected: %s", self.message, extra={"kind": self.kind, "field": self.field, "endpoint": endpoint}
            )


def error_body(kind: str, message: str, field: str | None = None) -> dict[str, Any]:
    """``{"error": {"kind": ..., "message": ..., "field": ...}}`` (field omitted when none)."""
    error: dict[str, Any] = {"kind": kind, "message": public_message(message)}
    if field is not None:
        error["field"] = field
    return {"error": error}


# An absolute POSIX path (two or more components) or a Windows drive path.
_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s'\"<>:;,()\[\]{}]+){2,}|[A-Za-z]:\\[^\s'\"<>;,]+")


def public_message(text: str) -> str:
    """``text`` with absolute file paths replaced by their last component, on one line."""

    def last(match: re.Match[str]) -> str:
        value = match.group(0).rstrip("/\\.")
        return re.split(r"[/\\]", value)[-1] or "<path>"

    return " ".join(_PATH.sub(last, str(text)).split())
