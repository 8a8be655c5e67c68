"""The ASGI layer in front of the endpoints: body limits, content type, metrics and the per-request log line.

A pure ASGI middleware (no per-request task or stream wrapping, which costs
more than the recommendation itself on a small model). For each HTTP
request it: refuses a body over the limit with 413 (from ``Content-Length``
before reading, or while reading a chunked body) and a POST body that is not
JSON with 415, both in the server's JSON error shape; tells the micro-batcher
that a batchable request is on its way (:class:`~.batching.Arrivals`); counts
the request, its status and latency per endpoint; and logs one line at debug.

The serving endpoints have a fast path here: their ``answer(raw body)``
function (the same one their FastAPI route calls after FastAPI parsed the
body) is called directly, which skips routing, dependency solving and the
request object: about half of the framework's cost per request, which
micro-batching cannot share out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .batching import Arrivals
from .errors import RequestError, error_body
from .metrics import ServeMetrics

__all__ = ["ServeMiddleware", "endpoint_label"]

logger = logging.getLogger("rechub_serving.serve")

ROUTES = frozenset(
    {"/v1/recommend", "/v1/search", "/v1/info", "/health", "/ready", "/metrics", "/admin/reload", "/openapi.json",
     "/docs", "/redoc"}
)  # fmt: skip

EXPECTED = "rechub_expected"  # key in the request state: the request is counted in Arrivals


def endpoint_label(path: str) -> str:
    """The metric label of a path: the route itself, or ``other`` (unknown paths must not create series)."""
    return path if path in ROUTES else "other"


class ServeMiddleware:
    def __init__(
        self,
        app: Any,
        *,
        fast: Mapping[str, Callable[[bytes], Awaitable[bytes]]],
        metrics: ServeMetrics,
        max_body_bytes: int,
        arrivals: Mapping[str, Arrivals],
        on_error: Callable[[str, str], None],
    ):
        self.app = app
        self.fast = dict(fast)
        self.metrics = metrics
        self.max_body = int(max_body_bytes)
        self.arrivals = dict(arrivals)
        self.on_error = on_error

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope.get("path", "")
        endpoint = endpoint_label(path)
        status_box = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = int(message["status"])
            await send(message)

        arrivals = self.arrivals.get(path) if scope.get("method") == "POST" else None
        if arrivals is not None:
            arrivals.expect()
            scope.setdefault("state", {})[EXPECTED] = arrivals
        self.metrics.in_flight.inc()
        try:
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                body = await self._checked_body(scope, receive, send_status, endpoint)
                if body is None:
                    return
                answer = self.fast.get(path) if scope.get("method") == "POST" else None
                if answer is not None:
                    if arrivals is not None and scope["state"].pop(EXPECTED, None) is not None:
                        arrivals.settle()
                    await self._answer(answer, body, send_status, endpoint)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_status)
        finally:
            if arrivals is not None and scope["state"].pop(EXPECTED, None) is not None:
                arrivals.settle()
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            status = status_box[0]
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(elapsed)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s %s %d %.2f ms", scope.get("method"), path, status, elapsed * 1e3,
                    extra={"endpoint": endpoint, "status": status, "duration_ms": round(elapsed * 1e3, 3)},
                )  # fmt: skip

    async def _answer(self, answer: Callable, body: bytes, send: Callable, endpoint: str) -> None:
        """The fast path of a serving endpoint: its answer, or its error in the server's JSON shape."""
        try:
            content = await answer(body)
        except RequestError as exc:
            self.on_error(endpoint, exc.kind)
            exc.log(endpoint)
            await _send(send, exc.status, json.dumps(exc.body()).encode(), exc.headers)
            return
        except Exception:
            self.on_error(endpoint, "internal")
            logger.exception("unexpected error on %s", endpoint, extra={"kind": "internal"})
            await _send(
                send,
                500,
                json.dumps(error_body("internal", "the server failed to answer; the error was logged")).encode(),
            )
            return
        await _send(send, 200, content)

    async def _checked_body(self, scope: dict, receive: Callable, send: Callable, endpoint: str) -> bytes | None:
        """Read the whole body within the limit; None when an error response was sent."""
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype and ctype != b"application/json" and not ctype.endswith(b"+json"):
            await self._error(send, endpoint, 415, "unsupported_media_type",
                              "send the body as JSON with the header Content-Type: application/json")  # fmt: skip
            return None
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                await self._error(send, endpoint, 400, "bad_request", "the Content-Length header is not a number")
                return None
            if size > self.max_body:
                if size <= self._drain_cap:  # read it first, so that the client sees the answer, not a reset
                    await self._drain(receive, 0)
                await self._error(send, endpoint, 413, "body_too_large", self._too_large())
                return None
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                if message.get("more_body", False):
                    await self._drain(receive, total)
                await self._error(send, endpoint, 413, "body_too_large", self._too_large())
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @property
    def _drain_cap(self) -> int:
        return max(4 * self.max_body, 8 << 20)

    async def _drain(self, receive: Callable, seen: int) -> None:
        """Read and drop the rest of an oversized body, up to a cap (beyond it the connection is closed)."""
        while seen <= self._drain_cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _too_large(self) -> str:
        return f"the request body is over the limit of {self.max_body} bytes; send fewer users per request"

    async def _error(self, send: Callable, endpoint: str, status: int, kind: str, message: str) -> None:
        self.on_error(endpoint, kind)
        await _send(send, status, json.dumps(error_body(kind, message)).encode())


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that hands the already-read body to the app once."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send(send: Callable, status: int, content: bytes, headers: Mapping[str, str] | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})
