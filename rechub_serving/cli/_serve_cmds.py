"""``rechub-index serve`` (registered on the app by :func:`register`).

Parse the options into a :class:`rechub_serving.serve.ServeConfig` and hand it
to :func:`rechub_serving.serve.serve`; FastAPI, uvicorn and onnxruntime are
imported only when the command runs. The admin token is never an option (a
command line ends up in shell history and ``ps``): it is read from an
environment variable or a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import CliError, UsageProblem, parse_params, state

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""

    @app.command()
    def serve(
        model_dir: Annotated[
            Path | None,
            typer.Argument(
                help="The --output directory of `rechub-index train` (user_tower.onnx, items.index/, "
                "item_embeddings.npy).",
                show_default=False,
            ),
        ] = None,
        user_tower: Annotated[
            Path | None, typer.Option("--user-tower", help="ONNX user tower (default MODEL_DIR/user_tower.onnx).")
        ] = None,
        index: Annotated[
            Path | None,
            typer.Option("--index", help="Saved index (default MODEL_DIR/items.index); alone: vector search only."),
        ] = None,
        host: Annotated[str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes the server.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port).")] = 8000,
        workers: Annotated[
            int, typer.Option("--workers", help="Processes sharing the port, each with its own copy of the model.")
        ] = 1,
        k: Annotated[int, typer.Option("-k", "--k", help="Items per user when a request gives no k.")] = 10,
        param: Annotated[
            list[str] | None,
            typer.Option("--param", "-p", help="Index parameter key=value when opening the index (repeatable)."),
        ] = None,
        max_batch: Annotated[
            int, typer.Option("--max-batch", help="Users per micro-batch (1: no batching, one request at a time).")
        ] = 64,
        max_wait_ms: Annotated[
            float, typer.Option("--max-wait-ms", help="Longest wait for a micro-batch to fill, in milliseconds.")
        ] = 2.0,
        max_queue: Annotated[
            int, typer.Option("--max-queue", help="Users allowed to wait; beyond it requests get 503 at once.")
        ] = 4096,
        batch_threads: Annotated[int, typer.Option("--batch-threads", help="Micro-batches computing at once.")] = 1,
        tower_threads: Annotated[
            int, typer.Option("--tower-threads", help="onnxruntime threads per tower run (0: all cores).")
        ] = 1,
        compute_threads: Annotated[
            int,
            typer.Option(
                "--compute-threads", help="Threads of numpy's BLAS and of OpenMP (faiss) per batch (0: their defaults)."
            ),
        ] = 1,
        timeout: Annotated[float, typer.Option("--timeout", help="Per-request timeout in seconds (504 after).")] = 5.0,
        max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest request body (413 above).")] = (
            1 << 20
        ),
        max_users: Annotated[int, typer.Option("--max-users", help="Users or vectors in one request.")] = 256,
        max_k: Annotated[int, typer.Option("--max-k", help="Largest k a request may ask for.")] = 1000,
        watch_interval: Annotated[
            float,
            typer.Option("--watch-interval", help="Seconds between checks for new model files (0: only on request)."),
        ] = 2.0,
        admin_token_file: Annotated[
            Path | None,
            typer.Option(
                "--admin-token-file",
                help="File holding the token of POST /admin/reload (default: the RECHUB_SERVE_ADMIN_TOKEN "
                "environment variable; neither: admin endpoints off).",
            ),
        ] = None,
        recall_sample: Annotated[
            float, typer.Option("--recall-sample", help="Share of requests re-answered by exact search (0: off).")
        ] = 0.01,
        recall_queue: Annotated[int, typer.Option("--recall-queue", help="Samples waiting; more are dropped.")] = 64,
        recall_window: Annotated[int, typer.Option("--recall-window", help="Users the live recall is over.")] = 1000,
        reference_vectors: Annotated[
            Path | None,
            typer.Option("--reference-vectors", help=".npy of the index's item vectors: the exact reference."),
        ] = None,
        reference_ids: Annotated[
            Path | None, typer.Option("--reference-ids", help="JSON list of the ids of --reference-vectors.")
        ] = None,
        graceful_timeout: Annotated[
            float, typer.Option("--graceful-timeout", help="Seconds in-flight requests get after SIGTERM.")
        ] = 30.0,
        log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
        log_format: Annotated[str, typer.Option("--log-format", help="text or json (one object per line).")] = "text",
        access_log: Annotated[bool, typer.Option("--access-log", help="One uvicorn access line per request.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    ) -> None:
        """Serve recommendations over HTTP: micro-batched, hot-swapped on new model files, with metrics."""
        state.update(debug=debug)
        if model_dir is None and index is None:
            raise UsageProblem("give MODEL_DIR, or --index (with --user-tower for recommendations)")
        if log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise UsageProblem(f"--log-level {log_level!r}: use debug, info, warning or error")
        try:
            from rechub_serving.serve import BatchConfig, ConfigError, Limits, RecallConfig, ServeConfig, serve
        except ImportError as exc:
            raise CliError(
                f"rechub-index serve needs the serve extra ({exc}): pip install 'rechub-serving[serve]'"
            ) from None
        config = ServeConfig(
            model_dir=str(model_dir) if model_dir else None,
            user_tower=str(user_tower) if user_tower else None,
            index=str(index) if index else None,
            index_params=parse_params(param),
            default_k=k,
            host=host,
            port=port,
            workers=workers,
            watch_interval_s=watch_interval,
            admin_token_file=str(admin_token_file) if admin_token_file else None,
            tower_threads=tower_threads,
            compute_threads=compute_threads,
            graceful_timeout_s=graceful_timeout,
            log_level="debug" if debug else log_level.lower(),
            log_format=log_format.lower(),
            access_log=access_log,
            limits=Limits(max_body_bytes=max_body_bytes, max_users=max_users, max_k=max_k, request_timeout_s=timeout),
            batching=BatchConfig(
                max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, threads=batch_threads
            ),
            recall=RecallConfig(
                sample_rate=recall_sample,
                queue_size=recall_queue,
                window=recall_window,
                reference_vectors=str(reference_vectors) if reference_vectors else None,
                reference_ids=str(reference_ids) if reference_ids else None,
            ),
        )
        try:
            config.check()
            serve(config)
        except ConfigError as exc:
            raise UsageProblem(str(exc)) if "must be" in str(exc) else CliError(str(exc)) from None
