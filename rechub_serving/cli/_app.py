"""The typer application: global options, error handling and the commands.

Errors never escape as tracebacks: :class:`_Group.main` turns usage errors into
one line and exit code 2, and every other failure (bad files, engine errors)
into one line and exit code 1; ``--debug`` prints the traceback first.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from typer.core import TyperGroup

from rechub_serving import (
    InvalidParameterError,
    MissingPluginError,
    RechubError,
    UnknownBackendError,
    __version__,
    builder_factory,
    list_backends,
    list_broken_plugins,
    open_index,
)
from rechub_serving._plugins import get_backend
from rechub_serving._storage import is_index_dir, read_manifest

from ._common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CliError,
    UsageProblem,
    configure_logging,
    dir_size,
    format_bytes,
    parse_config,
    parse_params,
    state,
    to_jsonable,
)
from ._io import load_exclude, load_vectors, result_rows, write_results
from ._measure import Measurement, exact_topk, measure, synthetic_catalogue, tune_search
from ._milvus_cmds import release_replaced

__all__ = ["app", "run"]

# The click exceptions of whatever click typer uses (typer >= 0.20 vendors its own copy).
_click_exc = sys.modules[typer.BadParameter.__module__]


def _fail(message: str, code: int) -> None:
    if state.debug and sys.exc_info()[0] is not None:
        traceback.print_exc(file=sys.stderr)
    sys.stderr.write(f"rechub-index: error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


class _Group(TyperGroup):
    """A typer group whose errors are one line on stderr with exit code 2 (usage) or 1 (failure)."""

    def main(
        self,
        args: Any = None,
        prog_name: Any = None,
        complete_var: Any = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        state.reset()
        configure_logging(state)
        prog_name = prog_name or "rechub-index"
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click_exc.NoArgsIsHelpError as exc:
            sys.stderr.write(exc.format_message() + "\n")
            sys.exit(EXIT_USAGE)
        except _click_exc.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else prog_name
            _fail(f"{exc.format_message().rstrip('.')} (see '{where} --help')", EXIT_USAGE)
        except _click_exc.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except typer.Abort:
            _fail("aborted", EXIT_FAILURE)
        except CliError as exc:
            _fail(str(exc), exc.exit_code)
        except (RechubError, OSError, MemoryError) as exc:
            _fail(_one_line(exc), EXIT_FAILURE)
        except Exception as exc:
            _fail(
                f"unexpected {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)", EXIT_FAILURE
            )
        sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return text


app = typer.Typer(
    cls=_Group,
    name="rechub-index",
    help="Build, query, benchmark and tune vector indexes for recommender retrieval, on any installed backend.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout (no tables, no status).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors: no status or progress.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param", "-p", help="Backend parameter key=value (repeatable); values parsed as int, float, bool or str."
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", help="Which array of an .npz/.pt dict, or which column of a table, holds the vectors."),
]
MetricOpt = Annotated[str | None, typer.Option("--metric", "-m", help="l2, ip or cosine (default: the backend's, l2).")]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rechub-index (rechub-serving) {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Build, query, benchmark and tune vector indexes for recommender retrieval, on any installed backend.

    Exit codes: 0 success, 1 failure, 2 bad usage.
    """
    state.update(json=json_out, quiet=quiet, debug=debug)


# -- helpers ---------------------------------------------------------------------------------------
class _Progress:
    """A transient rich progress bar on stderr (only on a terminal, and not with --quiet/--json)."""

    def __init__(self, description: str, total: float | None = None):
        self.description, self.total = description, total
        self.bar: Any = None

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty() and not (state.quiet or state.json):
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=state.err(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total)
        return self

    def stage(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)
        elif state.debug:
            state.note(text)

    def advance(self, n: float = 1) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


def _make_builder(backend: str, metric: str | None, params: dict[str, Any]):
    """A builder from command-line values; unknown backends or parameters are usage errors (exit 2)."""
    if metric is not None:
        if "metric" in params:
            raise UsageProblem("the metric is given twice (--metric and --param metric=...)")
        params = {**params, "metric": metric}
    try:
        return builder_factory(backend, **params)
    except MissingPluginError:
        raise
    except (UnknownBackendError, InvalidParameterError) as exc:
        raise UsageProblem(str(exc)) from None


def _check_output(output: Path, overwrite: bool) -> dict[str, Any] | None:
    """Refuse to touch an existing path unless --overwrite (and never a non-index path); the manifest replaced."""
    if not output.exists():
        return None
    if not is_index_dir(output):
        kind = "directory" if output.is_dir() else "file"
        raise CliError(f"{output}: exists and is a {kind} that is not a rechub-serving index; choose another -o path")
    if not overwrite:
        raise CliError(f"{output}: an index already exists there; pass --overwrite to replace it")
    return read_manifest(output)


def _table(title: str | None, columns: list[str], rows: list[list[Any]], justify_right: tuple[int, ...] = ()):
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if i in justify_right else "left", overflow="fold")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    return table


def _fmt(value: float | None, spec: str) -> str | None:
    return None if value is None else format(value, spec)


def _holdout(vectors: np.ndarray, ids: np.ndarray | None, n_queries: int, seed: int):
    """Split off ``n_queries`` random rows as queries (at most a fifth of the catalogue)."""
    n = len(vectors)
    if n < 2:
        raise CliError(f"need at least 2 vectors to hold out queries, got {n}; pass --queries FILE")
    n_q = max(1, min(n_queries, n // 5))
    rng = np.random.default_rng(seed)
    picked = np.zeros(n, bool)
    picked[rng.choice(n, size=n_q, replace=False)] = True
    base_ids = None if ids is None else ids[~picked]
    return vectors[~picked], base_ids, vectors[picked]


# -- backends --------------------------------------------------------------------------------------
@app.command()
def backends(
    name: Annotated[str | None, typer.Argument(help="Show only this backend.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The installed backends: plugin and engine versions, capabilities and parameters; broken plugins with their error."""
    state.update(json=json_out, quiet=quiet, debug=debug)
    if name is not None:
        try:
            infos = [get_backend(name)]
        except UnknownBackendError as exc:
            raise UsageProblem(str(exc)) from None
    else:
        infos = list_backends()
    broken = list_broken_plugins() if name is None else []
    if state.json:
        state.emit_json(
            {
                "backends": [info.describe() for info in infos],
                "broken": [{"plugin": b.plugin, "distribution": b.distribution, "error": b.error} for b in broken],
            }
        )
        return
    out = state.out()
    rows = []
    for info in infos:
        caps = ", ".join(k for k, v in info.capabilities.as_dict().items() if v) or "-"
        rows.append([info.name, f"{info.distribution} {info.version}", info.engine_version or "-", caps])
    out.print(_table("Backends", ["backend", "plugin", "engine", "capabilities"], rows))
    if not state.quiet:
        for info in infos:
            prow = []
            for p in info.builder.schema():
                kind = "search" if p.search else "runtime" if p.runtime else "build"
                default = "(auto)" if p.default is None else repr(p.default)
                extra = f" (aliases: {', '.join(p.aliases)})" if p.aliases else ""
                choices = f" [{', '.join(map(str, p.choices))}]" if p.choices else ""
                prow.append([p.name, p.type.__name__, default, kind, f"{p.doc}{choices}{extra}"])
            out.print(_table(f"{info.name} parameters", ["name", "type", "default", "kind", "description"], prow))
    if broken:
        out.print(
            _table(
                "Broken plugins",
                ["plugin", "distribution", "error"],
                [[b.plugin, b.distribution, b.error] for b in broken],
            )
        )


# -- build -----------------------------------------------------------------------------------------
@app.command()
def build(
    embeddings: Annotated[
        Path, typer.Argument(help="Vectors: .npy, .npz, .pt/.pth, .parquet or .csv.", show_default=False)
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory of the saved index.", show_default=False)],
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="Backend name (see `rechub-index backends`).", show_default=False)
    ],
    metric: MetricOpt = None,
    ids: Annotated[
        str | None,
        typer.Option("--ids", help="Ids: a file (.npy, .txt, .csv, .json, .parquet) or a column/key of EMBEDDINGS."),
    ] = None,
    key: KeyOpt = None,
    param: ParamOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing index at --output.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Build an index from an embeddings file and save it (atomically: a failure leaves no partial index)."""
    state.update(json=json_out, quiet=quiet, debug=debug)
    builder = _make_builder(backend, metric, parse_params(param))
    replaced = _check_output(output, overwrite)
    with _Progress(f"reading {embeddings}", total=3) as progress:
        loaded = load_vectors(embeddings, key=key, ids=ids)
        progress.advance()
        n, dim = loaded.vectors.shape
        progress.stage(f"building {builder.name} index over {n} x {dim}")
        state.note(f"building a {builder.name} index over {n} x {dim} vectors ...")
        start = time.perf_counter()
        try:
            index = builder.from_embeddings(loaded.vectors, ids=loaded.ids)
        except InvalidParameterError as exc:
            raise CliError(f"{embeddings}: {exc}") from None
        build_s = time.perf_counter() - start
        progress.advance()
        progress.stage(f"saving to {output}")
        with index:
            index.save(output)
            release_replaced(replaced, builder.given_params, output)
            progress.advance()
            summary = {
                "index": str(output),
                "backend": index.backend,
                "count": len(index),
                "dim": index.dim,
                "metric": index.metric.value,
                "params": index.params,
                "ids": loaded.ids_source or "positions 0..n-1",
                "build_seconds": round(build_s, 4),
                "size_bytes": dir_size(output),
            }
    if state.json:
        state.emit_json(summary)
    elif not state.quiet:
        rows = [
            ["index", summary["index"]],
            ["backend", summary["backend"]],
            ["count", summary["count"]],
            ["dim", summary["dim"]],
            ["metric", summary["metric"]],
            ["parameters", ", ".join(f"{k}={v}" for k, v in summary["params"].items() if k != "metric") or "-"],
            ["ids", summary["ids"]],
            ["build time", f"{build_s:.3f} s"],
            ["size on disk", format_bytes(summary["size_bytes"])],
        ]
        state.out().print(_table("Built", ["", ""], rows))


# -- query -----------------------------------------------------------------------------------------
def _split_params(manifest: dict[str, Any], params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runtime options go to open_index(), everything else is a per-query search parameter."""
    try:
        schema = get_backend(manifest["backend"]).builder.schema()
    except UnknownBackendError:
        return {}, params
    runtime = {n.lower() for p in schema if p.runtime for n in (p.name, *p.aliases)}
    open_kw = {k: v for k, v in params.items() if k.lower() in runtime}
    return open_kw, {k: v for k, v in params.items() if k not in open_kw}


@app.command()
def query(
    index: Annotated[Path, typer.Argument(help="A saved index directory.", show_default=False)],
    queries: Annotated[
        Path, typer.Argument(help="Query vectors: .npy, .npz, .pt/.pth, .parquet or .csv.", show_default=False)
    ],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Results per query.")] = 10,
    exclude: Annotated[
        Path | None,
        typer.Option(
            "--exclude",
            help="Ids not to return, per query: .json/.jsonl (a list per query) or .csv (query,item pairs).",
        ),
    ] = None,
    param: ParamOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write all results to .npz, .parquet, .csv or .jsonl.")
    ] = None,
    key: KeyOpt = None,
    show: Annotated[int, typer.Option("--show", min=0, help="Queries shown in the terminal table.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Queries per call.")] = 4096,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Top-k items for each query vector: a table on the terminal, or every result written with -o."""
    state.update(json=json_out, quiet=quiet, debug=debug)
    params = parse_params(param)
    manifest = read_manifest(index, verify=False)
    open_kw, search_kw = _split_params(manifest, params)
    if output is not None and output.suffix.lower() not in (".npz", ".parquet", ".csv", ".jsonl"):
        raise UsageProblem(f"-o {output}: unknown output format; expected .npz, .parquet, .csv or .jsonl")
    loaded = load_vectors(queries, "queries", key=key)
    if loaded.vectors.shape[1] != int(manifest["dim"]):
        raise CliError(
            f"{queries}: vectors have dimension {loaded.vectors.shape[1]}, the index {index} has {manifest['dim']}"
        )
    n = len(loaded.vectors)
    id_kind = (manifest.get("ids") or {}).get("kind")
    rows = load_exclude(exclude, n, loaded.ids, id_kind) if exclude is not None else None
    try:
        idx = open_index(index, **open_kw)
    except (UnknownBackendError, InvalidParameterError) as exc:
        if isinstance(exc, MissingPluginError):
            raise
        raise UsageProblem(str(exc)) from None
    with idx, _Progress(f"querying {index}", total=n) as progress:
        all_ids, all_dist = [], []
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            try:
                res = idx.query(
                    loaded.vectors[start:stop], k=k, exclude=None if rows is None else rows[start:stop], **search_kw
                )
            except InvalidParameterError as exc:
                raise UsageProblem(str(exc)) from None
            all_ids.append(np.asarray(res.indices))
            all_dist.append(np.asarray(res.distances))
            progress.advance(stop - start)
        ids = np.concatenate(all_ids)
        dist = np.concatenate(all_dist)
        metric = idx.metric.value
    if output is not None:
        write_results(output, ids, dist, loaded.ids, metric)
        if state.json:
            state.emit_json({"output": str(output), "queries": n, "k": k, "metric": metric})
        else:
            state.note(f"wrote {n} x {k} results ({metric}) to {output}")
        return
    if state.json:
        state.emit_json(
            {
                "metric": metric,
                "k": k,
                "results": [
                    {
                        "query": loaded.ids[i] if loaded.ids is not None else i,
                        "ids": ids[i][np.isfinite(dist[i])],
                        "distances": dist[i][np.isfinite(dist[i])],
                    }
                    for i in range(n)
                ],
            }
        )
        return
    shown = min(n, show) if not state.quiet else n
    table_rows = [
        [q, rank, item, f"{d:.6g}"]
        for q, rank, item, d in result_rows(
            ids[:shown], dist[:shown], None if loaded.ids is None else loaded.ids[:shown]
        )
    ]
    dist_name = {"l2": "squared l2 distance", "ip": "inner product", "cosine": "cosine similarity"}[metric]
    state.out().print(_table(None, ["query", "rank", "id", dist_name], table_rows, justify_right=(1, 3)))
    if shown < n:
        state.note(f"... {n - shown} more queries not shown; write them all with -o results.parquet/.csv/.jsonl/.npz")


# -- info --------------------------------------------------------------------------------------------
@app.command()
def info(
    index: Annotated[Path, typer.Argument(help="A saved index directory.", show_default=False)],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The manifest of a saved index, readable, with its checksums verified."""
    state.update(json=json_out, quiet=quiet, debug=debug)
    if not index.exists():
        raise CliError(f"{index}: no such index directory")
    manifest = read_manifest(index, verify=False)
    problem = None
    try:
        read_manifest(index, verify=True)
    except RechubError as exc:
        problem = str(exc)
    if state.json:
        state.emit_json({"path": str(index), "verified": problem is None, "problem": problem, "manifest": manifest})
    else:
        ids = manifest.get("ids") or {}
        files = manifest.get("files", {})
        total = sum(int(f.get("size", 0)) for f in files.values())
        plugin = f"{manifest.get('plugin_distribution') or '?'} {manifest.get('plugin_version') or ''}".strip()
        rows = [
            ["path", str(index)],
            ["backend", manifest["backend"]],
            ["plugin", plugin],
            ["engine version", manifest.get("engine_version") or "-"],
            ["format", f"{manifest.get('format')} v{manifest.get('format_version')}"],
            ["written by", f"rechub-serving {manifest.get('rechub_serving_version', '?')}"],
            ["created", manifest.get("created", "-")],
            ["metric", manifest["metric"] + (" (vectors L2-normalised)" if manifest.get("normalized") else "")],
            ["dim", manifest["dim"]],
            ["count", manifest["count"]],
            ["build parameters", ", ".join(f"{k}={v}" for k, v in (manifest.get("params") or {}).items()) or "-"],
            [
                "search parameters",
                ", ".join(f"{k}={v}" for k, v in (manifest.get("search_params") or {}).items()) or "-",
            ],
            [
                "ids",
                (ids.get("kind", "?") + (" (positions)" if ids.get("positional") else ""))
                if ids
                else "kept by the engine",
            ],
            ["engine info", ", ".join(f"{k}={v}" for k, v in (manifest.get("engine") or {}).items()) or "-"],
            ["files", f"{len(files)} ({format_bytes(total)})"],
            ["checksums", "ok" if problem is None else "FAILED"],
        ]
        out = state.out()
        out.print(_table(f"Index {index}", ["", ""], rows))
        if not state.quiet:
            out.print(
                _table(
                    None,
                    ["file", "size", "sha256"],
                    [[name, format_bytes(f.get("size")), str(f.get("sha256", ""))[:16]] for name, f in files.items()],
                )
            )
    if problem is not None:
        raise CliError(problem)


# -- bench -------------------------------------------------------------------------------------------
def _plot(path: Path, results: list[Measurement], k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if r.recall is not None and r.qps is not None:
            ax.scatter(r.recall, r.qps)
            ax.annotate(r.label, (r.recall, r.qps), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"recall@{k}")
    ax.set_ylabel("queries per second (batch)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.set_title("recall vs throughput")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _measurement_table(results: list[Measurement], k: int, title: str, memory: bool = True, size: bool = True):
    cols = ["config", "build s"] + (["memory"] if memory else []) + (["size"] if size else [])
    cols += ["QPS", "p50 ms", "p99 ms", f"recall@{k}"]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.label, f"failed: {r.error}"] + [""] * (len(cols) - 2))
            continue
        row = [r.label, _fmt(r.build_s, ".3f")]
        if memory:
            row.append(format_bytes(r.memory_bytes))
        if size:
            row.append(format_bytes(r.size_bytes))
        row += [_fmt(r.qps, ",.0f"), _fmt(r.p50_ms, ".3f"), _fmt(r.p99_ms, ".3f"), _fmt(r.recall, ".4f")]
        rows.append(row)
    return _table(title, cols, rows, justify_right=tuple(range(1, len(cols))))


@app.command()
def bench(
    embeddings: Annotated[Path, typer.Argument(help="The catalogue vectors.", show_default=False)],
    config: Annotated[
        list[str],
        typer.Option(
            "--config",
            "-c",
            help="NAME or NAME:key=value,... (repeatable), e.g. faiss:index_type=HNSW,ef_search=64.",
            show_default=False,
        ),
    ],
    queries: Annotated[
        Path | None, typer.Option("--queries", help="Query vectors; default: hold out --n-queries catalogue rows.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Recall@k and results per query.")] = 10,
    metric: MetricOpt = None,
    key: KeyOpt = None,
    n_queries: Annotated[
        int, typer.Option("--n-queries", min=1, help="Held-out queries (at most a fifth of the catalogue).")
    ] = 1000,
    latency_queries: Annotated[
        int, typer.Option("--latency-queries", min=0, help="Single queries timed for p50/p99.")
    ] = 200,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Batch runs per configuration (median QPS).")] = 3,
    report: Annotated[Path | None, typer.Option("--report", help="Write the results as JSON.")] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a recall-QPS plot as PNG (needs matplotlib).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out split.")] = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Benchmark configurations: build time, memory, size on disk, QPS, p50/p99 latency, recall@k against exact search."""
    state.update(json=json_out, quiet=quiet, debug=debug)
    configs = []
    for spec in config:
        name, params = parse_config(spec)
        cfg_metric = params.pop("metric", metric)
        builder = _make_builder(name, cfg_metric, params)  # validates now, before any work
        configs.append((spec, name, {**params, "metric": builder.metric.value}))
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CliError("--plot needs matplotlib: pip install 'rechub-serving[plot]' (or drop --plot)") from None
    loaded = load_vectors(embeddings)
    if queries is not None:
        base, q = loaded.vectors, load_vectors(queries, "queries", key=key).vectors
        if q.shape[1] != base.shape[1]:
            raise CliError(f"{queries}: queries have dimension {q.shape[1]}, {embeddings} has {base.shape[1]}")
    else:
        base, _, q = _holdout(loaded.vectors, None, n_queries, seed)
        state.note(f"held out {len(q)} of {len(loaded.vectors)} vectors as queries; building on the other {len(base)}")
    truths: dict[str, np.ndarray] = {}
    results: list[Measurement] = []
    with _Progress("benchmark", total=len(configs)) as progress:
        for spec, name, params in configs:
            m = params["metric"]
            if m not in truths:
                progress.stage(f"exact ground truth ({m})")
                truths[m] = exact_topk(base, q, k, m)
            result = measure(
                spec,
                name,
                params,
                base,
                q,
                k,
                truths[m],
                latency_queries=latency_queries,
                repeats=repeats,
                on_stage=progress.stage,
            )
            results.append(result)
            if not state.quiet and not state.json and not sys.stderr.isatty():
                state.note(
                    f"{spec}: "
                    + (
                        f"failed: {result.error}"
                        if result.error
                        else f"recall@{k} {result.recall:.4f}, {result.qps:,.0f} QPS"
                    )
                )
            progress.advance()
    payload = {
        "embeddings": str(embeddings),
        "n_items": len(base),
        "n_queries": len(q),
        "dim": base.shape[1],
        "k": k,
        "memory_method": next((r.memory_method for r in results if r.memory_method), None),
        "results": [r.as_dict() for r in results],
    }
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(__import__("json").dumps(to_jsonable(payload), indent=2) + "\n")
    if plot is not None:
        _plot(plot, results, k)
    if state.json:
        state.emit_json(payload)
    else:
        mem = "RSS growth incl. child processes" if payload["memory_method"] == "rss" else "Python allocations"
        title = f"{len(base)} x {base.shape[1]} items, {len(q)} queries, k={k} (memory: {mem})"
        state.out().print(_measurement_table(results, k, title))
        for path, what in ((report, "report"), (plot, "plot")):
            if path is not None:
                state.note(f"wrote the {what} to {path}")
    failed = [r for r in results if r.error]
    if failed:
        raise CliError(
            f"{len(failed)} of {len(results)} configurations failed (first: {failed[0].label}: {failed[0].error})"
        )


# -- tune --------------------------------------------------------------------------------------------
@app.command()
def tune(
    embeddings: Annotated[Path, typer.Argument(help="The catalogue vectors.", show_default=False)],
    backend: Annotated[str, typer.Option("--backend", "-b", help="Backend to tune.", show_default=False)],
    target_recall: Annotated[
        float, typer.Option("--target-recall", "-t", min=0.0, max=1.0, help="Recall@k to reach on held-out queries.")
    ] = 0.95,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Save the index (all vectors) with the chosen search parameters."),
    ] = None,
    metric: MetricOpt = None,
    param: ParamOpt = None,
    ids: Annotated[str | None, typer.Option("--ids", help="Ids file or column (used with --output).")] = None,
    key: KeyOpt = None,
    queries: Annotated[
        Path | None,
        typer.Option("--queries", help="Query vectors (e.g. user vectors); default: hold out catalogue rows."),
    ] = None,
    n_queries: Annotated[
        int, typer.Option("--n-queries", min=1, help="Held-out queries (at most a fifth of the catalogue).")
    ] = 500,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Recall@k.")] = 10,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per setting (median).")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out split.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing index at --output.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Find the fastest search parameters that reach a target recall@k, and save them into the index's manifest.

    Sweeps each search parameter that trades recall for speed (not block sizes
    or threads), on held-out queries, against exact ground truth.
    """
    state.update(json=json_out, quiet=quiet, debug=debug)
    build_params = parse_params(param)
    builder = _make_builder(backend, metric, build_params)
    replaced = _check_output(output, overwrite) if output is not None else None
    loaded = load_vectors(embeddings, key=key, ids=ids)
    metric_name = builder.metric.value
    if queries is not None:
        base, base_ids = loaded.vectors, loaded.ids
        q = load_vectors(queries, "queries").vectors
        if q.shape[1] != base.shape[1]:
            raise CliError(f"{queries}: queries have dimension {q.shape[1]}, {embeddings} has {base.shape[1]}")
    else:
        base, base_ids, q = _holdout(loaded.vectors, loaded.ids, n_queries, seed)
        state.note(f"held out {len(q)} of {len(loaded.vectors)} vectors as queries")
    with _Progress(f"tuning {builder.name}") as progress:
        progress.stage("exact ground truth")
        truth = exact_topk(base, q, k, metric_name, ids=base_ids)
        progress.stage(f"building {builder.name} over {len(base)} x {base.shape[1]}")
        index = builder.from_embeddings(base, ids=base_ids)
        with index:
            outcome = tune_search(
                index,
                builder.schema(),
                q,
                truth,
                k,
                target_recall,
                repeats=repeats,
                on_point=lambda p: progress.stage(f"{p.params or 'defaults'}: recall {p.recall}"),
            )
            keep_index = queries is not None and output is not None and outcome.best is not None
            if keep_index:
                index.set_search_defaults(**outcome.best.params)
                index.save(output)
                release_replaced(replaced, builder.given_params, output)
        if output is not None and outcome.best is not None and not keep_index:
            progress.stage(f"building the final index over all {len(loaded.vectors)} vectors")
            final = _make_builder(backend, metric, {**build_params, **outcome.best.params})
            with final.from_embeddings(loaded.vectors, ids=loaded.ids) as full:
                full.save(output)
                release_replaced(replaced, final.given_params, output)
    swept = {name: f"{values[0]}..{values[-1]}" for name, values in outcome.swept.items() if values}
    payload = {
        "backend": builder.name,
        "build_params": builder.build_params,
        "metric": metric_name,
        "k": k,
        "target_recall": target_recall,
        "queries": len(q),
        "swept": outcome.swept,
        "points": [p.as_dict() for p in outcome.points],
        "best": outcome.best.as_dict() if outcome.best else None,
        "saved": str(output) if output is not None and outcome.best is not None else None,
    }
    if state.json:
        state.emit_json(payload)
    else:
        out = state.out()
        if not state.quiet:
            rows = [
                [
                    ", ".join(f"{a}={b}" for a, b in p.params.items()) or "(defaults)",
                    _fmt(p.recall, ".4f"),
                    _fmt(p.qps, ",.0f"),
                    p.error or "",
                ]
                for p in outcome.points
            ]
            out.print(
                _table(
                    f"{builder.name}: recall@{k} by search setting", ["setting", "recall", "QPS", "error"], rows, (1, 2)
                )
            )
        if swept:
            state.note(
                "swept "
                + "; ".join(f"{n} over powers of two {r}" for n, r in swept.items())
                + " (others at their defaults)"
            )
        else:
            state.note(
                f"{builder.name} has no search parameter that trades recall for speed; only its defaults were measured"
            )
        if outcome.best is not None:
            chosen = ", ".join(f"{a}={b}" for a, b in outcome.best.params.items()) or "the defaults"
            out.print(f"best: {chosen}: recall@{k} {outcome.best.recall:.4f}, {outcome.best.qps:,.0f} QPS")
            if output is not None:
                state.note(f"saved the index with these search parameters to {output}")
    if outcome.best is None:
        measured = [p for p in outcome.points if p.recall is not None]
        top = max(measured, key=lambda p: p.recall) if measured else None
        hint = f"; best recall {top.recall:.4f} with {top.params or 'the defaults'}" if top else ""
        raise CliError(
            f"target recall@{k} {target_recall} not reached{hint}; lower --target-recall or use stronger build parameters"
            + (" (nothing was saved)" if output is not None else "")
        )


# -- quickstart --------------------------------------------------------------------------------------
def _quick_data(synthetic: bool, n_items: int, dim: int, n_users: int, seed: int):
    if not synthetic:
        try:
            from rechub_serving.train import quick_embeddings
        except ImportError:
            state.note("the train extra (torch) is not installed: using a synthetic clustered catalogue")
        else:
            state.note("training a small DSSM on synthetic interactions (pass --synthetic to skip) ...")
            items, item_ids, users, user_ids, seen = quick_embeddings(seed=seed)
            items = np.asarray(items.detach().cpu() if hasattr(items, "detach") else items, np.float32)
            users = np.asarray(users.detach().cpu() if hasattr(users, "detach") else users, np.float32)
            if isinstance(seen, dict):
                seen = [list(seen.get(u.item() if hasattr(u, "item") else u, [])) for u in user_ids]
            seen = [list(np.asarray(s).tolist()) if s is not None else [] for s in seen]
            return (
                items,
                np.asarray(item_ids),
                users,
                np.asarray(user_ids),
                seen,
                "DSSM embeddings (rechub_serving.train)",
            )
    items, item_ids, users, user_ids, seen = synthetic_catalogue(n_items, dim, n_users, seed)
    return items, item_ids, users, user_ids, seen, "synthetic clustered catalogue"


@contextlib.contextmanager
def _in_temp_dir():
    """Run in a scratch directory: embedded engines (milvus-lite) write their files there."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="rechub-quickstart-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


@app.command()
def quickstart(
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Use a synthetic catalogue even when torch is installed.")
    ] = False,
    backend: Annotated[
        list[str] | None,
        typer.Option("--backend", "-b", help="Only these backends (repeatable); default: every installed one."),
    ] = None,
    n_items: Annotated[int, typer.Option("--n-items", min=10, help="Synthetic catalogue size.")] = 10000,
    dim: Annotated[int, typer.Option("--dim", min=2, help="Synthetic vector dimension.")] = 64,
    n_users: Annotated[int, typer.Option("--n-users", min=1, help="Synthetic users (queries).")] = 500,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Items per user.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The whole serving path with no files: embeddings -> an index on every installed backend -> top-k per user, compared."""
    state.update(json=json_out, quiet=quiet, debug=debug)
    names = [info.name for info in list_backends()]
    if backend:
        for name in backend:
            try:
                get_backend(name)
            except UnknownBackendError as exc:
                raise UsageProblem(str(exc)) from None
        names = [get_backend(name).name for name in backend]
    items, item_ids, users, user_ids, seen, source = _quick_data(synthetic, n_items, dim, n_users, seed)
    metric = "cosine"
    state.note(
        f"{source}: {len(items)} items x {items.shape[1]}, {len(users)} users; metric {metric}, k={k}, seen items excluded"
    )
    results = []
    with _Progress("quickstart", total=len(names)) as progress, _in_temp_dir():
        progress.stage("exact ground truth (numpy)")
        truth = exact_topk(items, users, k, metric, ids=item_ids, exclude=seen)
        for name in names:
            progress.stage(f"{name}: building")
            r = measure(
                name, name, {"metric": metric}, items, users, k, truth,
                ids=item_ids, exclude=seen, latency_queries=100, repeats=1, measure_size=False, on_stage=progress.stage,
            )  # fmt: skip
            results.append(r)
            progress.advance()
    example = {
        "user": user_ids[0].item() if hasattr(user_ids[0], "item") else user_ids[0],
        "top": truth[0][: min(5, k)].tolist(),
    }
    payload = {
        "source": source,
        "n_items": len(items),
        "dim": items.shape[1],
        "n_users": len(users),
        "k": k,
        "metric": metric,
    }
    payload |= {"results": [r.as_dict() for r in results], "example": example}
    if state.json:
        state.emit_json(payload)
    else:
        rows = []
        for r in results:
            exact = get_backend(r.backend).capabilities.exact
            if r.error:
                rows.append([r.backend, "yes" if exact else "no", "", "", "", "", f"failed: {r.error}"])
            else:
                rows.append(
                    [
                        r.backend,
                        "yes" if exact else "no",
                        _fmt(r.build_s, ".3f"),
                        _fmt(r.qps, ",.0f"),
                        _fmt(r.p50_ms, ".3f"),
                        _fmt(r.recall, ".4f"),
                        "ok",
                    ]
                )
        title = f"{source}: {len(items)} items x {items.shape[1]}, {len(users)} users, {metric}, k={k}"
        state.out().print(
            _table(title, ["backend", "exact", "build s", "QPS", "p50 ms", f"recall@{k}", "status"], rows, (2, 3, 4, 5))
        )
        if not state.quiet:
            state.out().print(
                f"user {example['user']}: top-{len(example['top'])} items (seen ones excluded): {example['top']}"
            )
            state.note(
                "next: rechub-index build ITEMS.npy -o items.index --backend NAME; rechub-index bench / tune (see --help)"
            )
    failed = [r for r in results if r.error]
    if failed:
        raise CliError(
            f"{len(failed)} of {len(results)} backends failed (first: {failed[0].backend}: {failed[0].error})"
        )


# -- optional commands from the trainer helper ----------------------------------------------------------
try:
    from ._train_cmds import register as _register_train
except ImportError:  # the training commands are not installed
    _register_train = None
if _register_train is not None:
    try:
        _register_train(app)
    except Exception as _exc:  # a broken optional module must not break the whole CLI
        import logging

        logging.getLogger("rechub_serving").warning("train/recommend commands unavailable: %s", _exc)
from ._milvus_cmds import register as _register_milvus  # noqa: E402

_register_milvus(app)


def run(argv: list[str] | None = None) -> None:
    """Entry point: run the app on ``argv`` (default: sys.argv[1:]) and exit."""
    typer.main.get_command(app).main(args=argv, prog_name="rechub-index")
