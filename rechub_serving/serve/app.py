"""The FastAPI application: endpoints, error handlers and the lifespan of the batching and watching threads.

:func:`create_app` loads the model (so a bad path fails before the port is
bound), builds the request models from the loaded tower and index (so the
OpenAPI description names the real features and id type), and wires the
parts: :class:`~.store.ModelStore` (hot swap), two
:class:`~.batching.MicroBatcher` (recommend, search), the
:class:`~.recall.RecallMonitor`, :class:`~.metrics.ServeMetrics` and the ASGI
:class:`~.middleware.ServeMiddleware`. Every error leaves as
``{"error": {"kind", "message", "field"}}`` with a 4xx status when the request
was at fault; an unexpected failure is a 500 whose body says nothing more
(the traceback goes to the log).

Deliberately not ``from __future__ import annotations``: FastAPI reads the
endpoint annotations, and the request models are built at run time.
"""

import asyncio
import contextlib
import datetime as _dt
import hmac
import importlib.metadata
import logging
import platform
import signal
import threading
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .batching import Arrivals, MicroBatcher
from .compute import RecommendPayload, SearchPayload, params_key, run_recommend, run_search
from .config import ServeConfig, read_admin_token
from .errors import RequestError, error_body, public_message
from .metrics import ServeMetrics
from .middleware import EXPECTED, ServeMiddleware, endpoint_label
from .recall import RecallMonitor
from .schemas import (
    ErrorResponse,
    HealthResponse,
    RecommendResponse,
    ReloadResponse,
    SearchResponse,
    recommend_request_model,
    search_request_model,
)
from .store import LoadedModel, ModelStore
from .threads import limit_compute_threads
from .validation import FeatureChecker, translate

__all__ = ["app_from_environment", "create_app"]

logger = logging.getLogger("rechub_serving.serve")

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the body is not JSON"},
    413: {"model": ErrorResponse, "description": "the body is over the size limit"},
    415: {"model": ErrorResponse, "description": "the body is not sent as application/json"},
    422: {"model": ErrorResponse, "description": "a field is missing, of the wrong type or out of range"},
    503: {"model": ErrorResponse, "description": "overloaded or shutting down: retry"},
    504: {"model": ErrorResponse, "description": "no answer within the request timeout"},
}

_VERSIONED = ("numpy", "onnxruntime", "fastapi", "uvicorn", "starlette", "pydantic", "prometheus-client")


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"rechub-serving": __version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _scrub(value: Any) -> Any:
    """A JSON value with every string passed through :func:`public_message` (no file paths)."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return public_message(value)
    return value


class _State:
    """What the endpoints share (one per app)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = ServeMetrics()
        self.monitor = RecallMonitor(
            config.recall.sample_rate, config.recall.queue_size, config.recall.window, self.metrics
        )
        self.store = ModelStore(
            config, config.paths(), on_swap=self._on_swap, on_outcome=lambda o: self.metrics.swaps.labels(o).inc()
        )
        self.token = read_admin_token(config)
        self.draining = False
        self.started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.versions = _versions()
        self.arrivals = {"/v1/recommend": Arrivals(), "/v1/search": Arrivals()}
        self.recommend_batcher = MicroBatcher(
            "recommend", lambda jobs: run_recommend(self.store, self.monitor, jobs), config.batching,
            arrivals=self.arrivals["/v1/recommend"], on_batch=self._batch_observer("/v1/recommend"),
        )  # fmt: skip
        self.search_batcher = MicroBatcher(
            "search", lambda jobs: run_search(self.store, self.monitor, jobs), config.batching,
            arrivals=self.arrivals["/v1/search"], on_batch=self._batch_observer("/v1/search"),
        )  # fmt: skip

    def _on_swap(self, model: LoadedModel) -> None:
        limit_compute_threads(self.config.compute_threads)  # a new backend may have loaded its own pool
        self.monitor.reset(model.generation, model.reference, model.reference_note)
        self.metrics.set_model(
            model.generation, len(model.index), model.model_hash, model.index.backend, model.index.metric.value
        )
        if model.reference is None and model.reference_note:
            logger.info("live recall monitoring off for generation %d: %s", model.generation, model.reference_note)

    def _batch_observer(self, endpoint: str):
        users = self.metrics.batch_users.labels(endpoint)
        requests = self.metrics.batch_requests.labels(endpoint)
        seconds = self.metrics.batch_seconds.labels(endpoint)
        waits = self.metrics.queue_seconds.labels(endpoint)

        def observe(batch: list, elapsed: float) -> None:
            users.observe(sum(job.size for job in batch))
            requests.observe(len(batch))
            seconds.observe(elapsed)
            for job in batch:
                waits.observe(max(0.0, job.started - job.enqueued))

        return observe

    def count_error(self, endpoint: str, kind: str) -> None:
        self.metrics.errors.labels(endpoint, kind).inc()

    def info(self) -> dict[str, Any]:
        model = self.store.current
        index = model.index
        tower = None
        if model.retriever is not None:
            r = model.retriever
            tower = {
                "file": r.tower_path.name,
                "features": [
                    {k: v for k, v in spec.items() if k in ("name", "type", "embed_dim", "vocabulary", "pooling")}
                    for spec in r.inputs
                ],
                "dim": r.dim,
                "metric": r.metric,
                "normalized": r.normalized,
                "seq_max_len": r.seq_max_len,
            }
        manifest = {k: v for k, v in model.manifest.items() if k != "files"}
        manifest["files"] = sorted(model.manifest.get("files", {}))
        return _scrub(
            {
                "status": "draining" if self.draining else "ready",
                "mode": model.mode,
                "generation": model.generation,
                "loaded_at": _dt.datetime.fromtimestamp(model.loaded_at, _dt.UTC).isoformat(timespec="seconds"),
                "started_at": self.started_at,
                "model_hash": model.model_hash,
                "index": {
                    "path": model.paths.index.name,
                    "backend": index.backend,
                    "metric": index.metric.value,
                    "dim": index.dim,
                    "count": len(index),
                    "id_kind": index.id_kind,
                    "params": index.params,
                    "capabilities": index.capabilities.as_dict(),
                    "manifest": manifest,
                },
                "user_tower": tower,
                "versions": {
                    **self.versions,
                    "backend_plugin": model.manifest.get("plugin_version"),
                    "engine": model.manifest.get("engine_version"),
                },
                "batching": asdict(self.config.batching),
                "limits": asdict(self.config.limits),
                "default_k": self.config.default_k,
                "watch_interval_s": self.config.watch_interval_s,
                "recall": self.monitor.snapshot(),
                "last_swap": self.store.last_swap,
                "admin": self.token is not None,
            }
        )


class _ServeApp(FastAPI):
    """A FastAPI app with :class:`ServeMiddleware` outside everything, so the fast path skips the whole stack."""

    outer_middleware: dict[str, Any] | None = None

    def build_middleware_stack(self) -> Any:
        stack = super().build_middleware_stack()
        if self.outer_middleware is None:
            return stack
        return ServeMiddleware(stack, **self.outer_middleware)


def _drain_on_signals(state: _State) -> None:
    """Readiness turns 503 as soon as SIGTERM/SIGINT arrives (the server's own handler still runs)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            state.draining = True
            previous(signum, frame)

        signal.signal(sig, handler)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _from_bytes(model: type, answer: Any, fields: list[str], state: _State) -> Any:
    """``answer`` for a raw JSON body: validated by ``model`` in one pass, errors as :class:`RequestError`."""
    validate = model.model_validate_json  # type: ignore[attr-defined]

    async def from_bytes(raw: bytes) -> bytes:
        try:
            body = validate(raw)
        except ValidationError as exc:
            raise translate(exc.errors(), fields, state.config.limits, state.store.current.index.id_kind) from None
        return await answer(body)

    return from_bytes


def _settle(request: Request) -> None:
    arrivals = request.scope.get("state", {}).pop(EXPECTED, None)
    if arrivals is not None:
        arrivals.settle()


def create_app(config: ServeConfig) -> FastAPI:
    """The ASGI app for ``config``; loads the model now (raises when it cannot be served).

    The process's BLAS and OpenMP pools are set to ``config.compute_threads``
    threads (1 by default; 0 leaves them as they are).
    """
    config.check()
    state = _State(config)
    state.store.load_initial()
    model = state.store.current
    limits, timeout = config.limits, config.limits.request_timeout_s

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        _drain_on_signals(state)
        await state.recommend_batcher.start()
        await state.search_batcher.start()
        state.monitor.start()
        state.store.start_watching()
        logger.info(
            "ready: %s mode, generation %d, micro-batches of up to %d users waiting up to %g ms",
            model.mode, state.store.current.generation, config.batching.max_batch, config.batching.max_wait_ms,
        )  # fmt: skip
        try:
            yield
        finally:
            state.draining = True
            state.store.stop_watching()
            await state.recommend_batcher.stop()
            await state.search_batcher.stop()
            state.monitor.stop()
            state.store.close()
            state.metrics.close()
            logger.info("stopped: every accepted request was answered")

    app = _ServeApp(
        title="rechub-serving",
        version=__version__,
        summary="Two-tower retrieval: user features in, ranked item ids out.",
        description=(
            "Recommendations from an ONNX user tower and a vector index, micro-batched, hot-swapped on "
            "model updates, with Prometheus metrics and live recall monitoring. Every error is "
            '`{"error": {"kind", "message", "field"}}`.'
        ),
        lifespan=lifespan,
    )
    app.state.rechub = state

    # -- errors ---------------------------------------------------------------------------------------
    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        _settle(request)
        endpoint = endpoint_label(request.url.path)
        state.count_error(endpoint, exc.kind)
        exc.log(endpoint)
        return _json(exc.status, exc.body(), exc.headers)

    fields = {
        "/v1/recommend": ["users", "k", "seen", "exclude_seen", "search_params"],
        "/v1/search": ["vectors", "k", "exclude", "search_params"],
    }

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        path = request.url.path
        err = translate(exc.errors(), fields.get(path, []), limits, state.store.current.index.id_kind)
        return await request_error(request, err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 400: "invalid_json"}
        kind = kinds.get(exc.status_code, "http_error")
        message = {
            404: f"no endpoint {request.url.path}; see /docs or /openapi.json",
            405: f"{request.method} is not allowed on {request.url.path}",
            400: "the body could not be parsed as JSON",
        }.get(exc.status_code, public_message(str(exc.detail)))
        return await request_error(request, RequestError(exc.status_code, kind, message))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        _settle(request)
        endpoint = endpoint_label(request.url.path)
        state.count_error(endpoint, "internal")
        logger.error("unexpected error on %s", request.url.path, exc_info=exc, extra={"kind": "internal"})
        return _json(500, error_body("internal", "the server failed to answer; the error was logged"))

    # -- probes and information ------------------------------------------------------------------------------
    @app.get(
        "/health", response_model=HealthResponse, response_model_exclude_none=True, tags=["probes"],
        summary="Liveness: the process answers",
    )  # fmt: skip
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get(
        "/ready", response_model=HealthResponse, tags=["probes"], responses={503: {"model": HealthResponse}},
        summary="Readiness: a model is loaded and the server is not shutting down",
    )  # fmt: skip
    async def ready() -> Any:
        generation = state.store.current.generation
        if state.draining:
            return _json(503, {"status": "draining", "generation": generation})
        return {"status": "ready", "generation": generation}

    @app.get("/v1/info", tags=["information"], summary="Model hash, index manifest, backend, versions, live recall")
    async def info() -> dict[str, Any]:
        return state.info()

    @app.get(
        "/metrics", tags=["information"], summary="Prometheus metrics (text format)",
        response_class=Response, responses={200: {"content": {"text/plain": {}}}},
    )  # fmt: skip
    async def metrics() -> Response:
        content, ctype = state.metrics.render()
        return Response(content, media_type=ctype)

    # -- serving -----------------------------------------------------------------------------------------------
    # Each serving endpoint is one ``answer(body) -> bytes`` function used twice: by the FastAPI route (what
    # /openapi.json describes, and what serves when the app is mounted elsewhere) and by the middleware's fast
    # path, which validates the raw bytes in one pydantic pass and skips the framework's per-request work.
    fast: dict[str, Any] = {}
    if model.retriever is not None:
        features = model.features or []
        checker = FeatureChecker(features)
        RecommendRequest = recommend_request_model(features, model.index.id_kind, limits, config.default_k)

        async def answer_recommend(body: Any) -> bytes:
            users = body.users
            checker.check(users)
            if body.seen is not None and len(body.seen) != len(users):
                raise RequestError(
                    422, "wrong_length", f"seen has {len(body.seen)} rows for {len(users)} users; give one per user",
                    "seen",
                )  # fmt: skip
            k = body.k or config.default_k
            payload = RecommendPayload(users, k, body.seen, body.exclude_seen, body.search_params)
            return await state.recommend_batcher.submit(len(users), params_key(k, body.search_params), payload, timeout)

        @app.post(
            "/v1/recommend", response_model=RecommendResponse, responses=ERRORS, tags=["serving"],
            summary="Top-k item ids for users' raw features (history and seen ids excluded)",
        )  # fmt: skip
        async def recommend(body: RecommendRequest, request: Request) -> Response:  # type: ignore[valid-type]
            _settle(request)
            return Response(await answer_recommend(body), media_type="application/json")

        fast["/v1/recommend"] = _from_bytes(RecommendRequest, answer_recommend, fields["/v1/recommend"], state)

    else:

        @app.post("/v1/recommend", include_in_schema=False)
        async def no_recommend(request: Request) -> Response:
            raise RequestError(
                404, "no_user_tower",
                "this server serves an index alone (vectors in, /v1/search); start it with a model directory "
                "or --user-tower for recommendations",
            )  # fmt: skip

    SearchRequest = search_request_model(model.index.dim, model.index.id_kind, limits, config.default_k)

    async def answer_search(body: Any) -> bytes:
        if body.exclude is not None and len(body.exclude) != len(body.vectors):
            raise RequestError(
                422, "wrong_length",
                f"exclude has {len(body.exclude)} rows for {len(body.vectors)} vectors; give one per vector",
                "exclude",
            )  # fmt: skip
        k = body.k or config.default_k
        payload = SearchPayload(body.vectors, k, body.exclude, body.search_params)
        return await state.search_batcher.submit(len(body.vectors), params_key(k, body.search_params), payload, timeout)

    @app.post(
        "/v1/search", response_model=SearchResponse, responses=ERRORS, tags=["serving"],
        summary="Nearest items for query vectors (ids and the metric's distances)",
    )  # fmt: skip
    async def search(body: SearchRequest, request: Request) -> Response:  # type: ignore[valid-type]
        _settle(request)
        return Response(await answer_search(body), media_type="application/json")

    fast["/v1/search"] = _from_bytes(SearchRequest, answer_search, fields["/v1/search"], state)

    # -- administration ----------------------------------------------------------------------------------------
    @app.post(
        "/admin/reload", response_model=ReloadResponse, tags=["admin"],
        responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
        summary="Load the model files now and swap if they pass the checks (Authorization: Bearer TOKEN)",
    )  # fmt: skip
    async def reload(request: Request) -> Any:
        if state.token is None:
            raise RequestError(
                404, "admin_disabled",
                f"admin endpoints are off; set {config.admin_token_env} or --admin-token-file to enable them",
            )  # fmt: skip
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.token.encode()):
            raise RequestError(
                401, "unauthorized", "give the admin token as 'Authorization: Bearer TOKEN'",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        swapped, generation, message = await asyncio.to_thread(state.store.reload, "admin request")
        if not swapped:
            raise RequestError(409, "swap_refused", message)
        return {"swapped": True, "generation": generation, "message": message}

    app.outer_middleware = {
        "fast": fast,
        "metrics": state.metrics,
        "max_body_bytes": limits.max_body_bytes,
        "arrivals": state.arrivals,
        "on_error": state.count_error,
    }
    return app


def app_from_environment() -> Any:
    """The app factory uvicorn workers call: the config comes as JSON in ``RECHUB_SERVE_CONFIG``.

    A model that cannot be loaded gives an app whose startup fails, so uvicorn
    stops (exit code 3) instead of restarting the worker forever.
    """
    try:
        return create_app(ServeConfig.from_environment())
    except Exception as exc:
        message = public_message(" ".join(str(exc).split()) or type(exc).__name__)
        logger.error("cannot serve: %s", message)

        async def failing(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                await receive()
                await send({"type": "lifespan.startup.failed", "message": message})

        return failing
