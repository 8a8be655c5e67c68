"""``backends``, ``build``, ``query`` and ``info``: the commands around one index.

Each command parses its options, calls the library, and renders the result
(a table, or JSON with ``--json``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from rechub_serving import (
    BackendInfo,
    Indexer,
    InvalidParameterError,
    RechubError,
    UnknownBackendError,
    get_backend,
    list_backends,
    list_broken_plugins,
    open_index,
    read_manifest,
)

from ._calls import check_output, make_builder, open_index_arg
from ._common import CliError, UsageProblem, dir_size, format_bytes, parse_params, state
from ._io import RESULT_SUFFIXES, load_exclude, load_vectors, result_rows, write_results
from ._milvus_cmds import release_replaced
from ._options import BackendOpt, KeyOpt, MetricOpt, OverwriteOpt, ParamOpt, output_options
from ._render import Progress, print_pairs, print_table

__all__ = ["register"]

_DISTANCE_NAMES = {"l2": "squared l2 distance", "ip": "inner product", "cosine": "cosine similarity"}

IndexArg = Annotated[
    Path,
    typer.Argument(
        metavar="INDEX",
        help="A saved index directory (or, with --backend, a native file of that engine).",
        show_default=False,
    ),
]
AdoptOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        "-b",
        help="Adopt a bare native file of this backend (faiss.write_index, AnnoyIndex.save, ...); "
        "a saved index names its backend itself.",
    ),
]


def register(app: typer.Typer) -> None:
    """Add ``backends``, ``build``, ``query`` and ``info`` to ``app``."""
    app.command()(output_options(backends))
    app.command()(output_options(build))
    app.command()(output_options(query))
    app.command()(output_options(info))


# -- backends --------------------------------------------------------------------------------------
def backends(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Show only this backend.")] = None,
) -> None:
    """The installed backends: plugin and engine versions, capabilities and parameters; broken plugins with their error."""
    state.track_outputs()  # writes nothing
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
    rows = []
    for info in infos:
        caps = ", ".join(k for k, v in info.capabilities.as_dict().items() if v) or "-"
        rows.append([info.name, f"{info.distribution} {info.version}", info.engine_version or "-", caps])
    print_table("Backends", ["backend", "plugin", "engine", "capabilities"], rows)
    if not state.quiet:
        for info in infos:
            print_table(
                f"{info.name} parameters", ["name", "type", "default", "kind", "description"], _param_rows(info)
            )
    if broken:
        print_table(
            "Broken plugins", ["plugin", "distribution", "error"], [[b.plugin, b.distribution, b.error] for b in broken]
        )


def _param_rows(info: BackendInfo) -> list[list[Any]]:
    rows = []
    for p in info.schema():
        kind = "search" if p.search else "runtime" if p.runtime else "build"
        default = "(auto)" if p.default is None else repr(p.default)
        extra = f" (aliases: {', '.join(p.aliases)})" if p.aliases else ""
        choices = f" [{', '.join(map(str, p.choices))}]" if p.choices else ""
        rows.append([p.name, p.type.__name__, default, kind, f"{p.doc}{choices}{extra}"])
    return rows


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "-"


# -- build -----------------------------------------------------------------------------------------
def build(
    embeddings: Annotated[
        Path,
        typer.Argument(
            metavar="EMBEDDINGS", help="Vectors: .npy, .npz, .pt/.pth, .parquet or .csv.", show_default=False
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory of the saved index.", show_default=False)],
    backend: BackendOpt,
    metric: MetricOpt = None,
    ids: Annotated[
        str | None,
        typer.Option("--ids", help="Ids: a file (.npy, .txt, .csv, .json, .parquet) or a column/key of EMBEDDINGS."),
    ] = None,
    key: KeyOpt = None,
    param: ParamOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Build an index from an embeddings file and save it (atomically: a failure leaves no partial index)."""
    builder = make_builder(backend, metric, parse_params(param))
    replaced = check_output(output, overwrite)
    state.track_outputs()
    with Progress(f"reading {embeddings}", total=3) as progress:
        loaded = load_vectors(embeddings, key=key, ids=ids)
        progress.advance()
        n, dim = loaded.vectors.shape
        progress.stage(f"building the {builder.name} index over {n} x {dim}")
        state.note(f"building the {builder.name} index over {n} x {dim} vectors ...")
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
            state.wrote(output)
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
        params = {k: v for k, v in summary["params"].items() if k != "metric"}
        print_pairs(
            f"Built {output}",
            [
                ("backend", summary["backend"]),
                ("count", summary["count"]),
                ("dim", summary["dim"]),
                ("metric", summary["metric"]),
                ("parameters", _params_text(params)),
                ("ids", summary["ids"]),
                ("build time", f"{build_s:.3f} s"),
                ("size on disk", format_bytes(summary["size_bytes"])),
            ],
        )


# -- query -----------------------------------------------------------------------------------------
def query(
    index: IndexArg,
    queries: Annotated[
        Path,
        typer.Argument(
            metavar="QUERIES", help="Query vectors: .npy, .npz, .pt/.pth, .parquet or .csv.", show_default=False
        ),
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
    backend: AdoptOpt = None,
    key: KeyOpt = None,
    show: Annotated[int, typer.Option("--show", min=0, help="Queries shown in the terminal table.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Queries per call.")] = 4096,
) -> None:
    """Top-k items for each query vector: a table on the terminal, or every result written with -o."""
    if output is not None and output.suffix.lower() not in RESULT_SUFFIXES:
        raise UsageProblem(f"-o {output}: unknown output format; expected {', '.join(RESULT_SUFFIXES)}")
    state.track_outputs()
    with open_index_arg(index, backend, parse_params(param)) as idx:
        loaded = load_vectors(queries, "queries", key=key)
        if loaded.vectors.shape[1] != idx.dim:
            raise CliError(
                f"{queries}: vectors have dimension {loaded.vectors.shape[1]}, the index {index} has {idx.dim}"
            )
        n = len(loaded.vectors)
        rows = load_exclude(exclude, n, loaded.ids, idx.id_kind) if exclude is not None else None
        if output is not None:
            state.note(f"querying {index} with {n} vectors, k={k} ...")
        ids, dist = _query_batches(idx, loaded.vectors, k, rows, batch_size, f"querying {index}")
        metric = idx.metric.value
    if output is not None:
        write_results(output, ids, dist, loaded.ids, metric)
        state.wrote(output)
        if state.json:
            state.emit_json({"output": str(output), "queries": n, "k": k, "metric": metric})
        else:
            state.note(f"wrote {n} x {k} results ({metric}) to {output}")
        return
    if state.json:
        results = [
            {
                "query": loaded.ids[i] if loaded.ids is not None else i,
                "ids": ids[i][np.isfinite(dist[i])],
                "distances": dist[i][np.isfinite(dist[i])],
            }
            for i in range(n)
        ]
        state.emit_json({"metric": metric, "k": k, "results": results})
        return
    shown = min(n, show) if not state.quiet else n
    query_ids = None if loaded.ids is None else loaded.ids[:shown]
    table_rows = [[q, rank, item, f"{d:.6g}"] for q, rank, item, d in result_rows(ids[:shown], dist[:shown], query_ids)]
    print_table(None, ["query", "rank", "id", _DISTANCE_NAMES[metric]], table_rows, right=(1, 3))
    if shown < n:
        state.note(f"... {n - shown} more queries not shown; write them all with -o results.parquet/.csv/.jsonl/.npz")


def _query_batches(
    idx: Indexer, vectors: np.ndarray, k: int, exclude: list[list[Any]] | None, batch_size: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Every query's (ids, distances), ``batch_size`` queries per call."""
    n = len(vectors)
    all_ids, all_dist = [], []
    with Progress(what, total=n) as progress:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            try:
                res = idx.query(vectors[start:stop], k=k, exclude=None if exclude is None else exclude[start:stop])
            except InvalidParameterError as exc:
                raise UsageProblem(str(exc)) from None
            all_ids.append(np.asarray(res.indices))
            all_dist.append(np.asarray(res.distances))
            progress.advance(stop - start)
    return np.concatenate(all_ids), np.concatenate(all_dist)


# -- info --------------------------------------------------------------------------------------------
def info(index: IndexArg, backend: AdoptOpt = None) -> None:
    """What an index holds: its manifest, readable, with every checksum verified (or an adopted native file)."""
    state.track_outputs()  # writes nothing
    if backend is not None and index.is_file():
        _info_adopted(index, backend)
        return
    manifest = read_manifest(index, verify=False)
    if backend is not None and _backend_name(backend) != manifest["backend"]:
        raise CliError(f"{index} was saved by the {manifest['backend']!r} backend, not {backend!r}; omit --backend")
    problem = None
    try:
        read_manifest(index, verify=True)
    except RechubError as exc:
        problem = str(exc)
    params = _resolved_params(index, manifest) if problem is None else None
    if state.json:
        payload = {"path": str(index), "verified": problem is None, "problem": problem, "manifest": manifest}
        state.emit_json({**payload, "params": params})
    else:
        _render_manifest(index, manifest, params, problem)
    if problem is not None:
        raise CliError(problem)


def _backend_name(name: str) -> str:
    try:
        return get_backend(name).name
    except UnknownBackendError as exc:
        raise UsageProblem(str(exc)) from None


def _resolved_params(path: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The index's parameters with the values the engine chose for "(auto)" ones (opens the index only then)."""
    saved = {**(manifest.get("params") or {}), **(manifest.get("search_params") or {})}
    if all(v is not None for v in saved.values()):
        return {"metric": manifest["metric"], **saved}
    try:
        with open_index(path) as idx:
            return idx.params
    except RechubError as exc:  # the plugin is missing, ...: the manifest still says what it can
        state.note(f"the values chosen for (auto) parameters are unknown: {exc}")
        return None


def _render_manifest(path: Path, manifest: dict[str, Any], params: dict[str, Any] | None, problem: str | None) -> None:
    ids = manifest.get("ids") or {}
    files = manifest.get("files", {})
    total = sum(int(f.get("size", 0)) for f in files.values())
    plugin = f"{manifest.get('plugin_distribution') or '?'} {manifest.get('plugin_version') or ''}".strip()
    build_names = list(manifest.get("params") or {})
    search_names = list(manifest.get("search_params") or {})
    values = params or {**(manifest.get("params") or {}), **(manifest.get("search_params") or {})}
    if ids:
        id_text = ids.get("kind", "?") + (" (positions)" if ids.get("positional") else "")
    else:
        id_text = "kept by the engine"
    print_pairs(
        f"Index {path}",
        [
            ("backend", manifest["backend"]),
            ("plugin", plugin),
            ("engine version", manifest.get("engine_version") or "-"),
            ("format", f"{manifest.get('format')} v{manifest.get('format_version')}"),
            ("written by", f"rechub-serving {manifest.get('rechub_serving_version', '?')}"),
            ("created", manifest.get("created", "-")),
            ("metric", manifest["metric"] + (" (vectors L2-normalised)" if manifest.get("normalized") else "")),
            ("dim", manifest["dim"]),
            ("count", manifest["count"]),
            ("build parameters", _params_text({n: values.get(n) for n in build_names})),
            ("search parameters", _params_text({n: values.get(n) for n in search_names})),
            ("recall", _recall_note(manifest)),
            ("ids", id_text),
            ("engine info", _params_text(manifest.get("engine") or {})),
            ("files", f"{len(files)} ({format_bytes(total)})"),
            ("checksums", "ok" if problem is None else "FAILED"),
        ],
    )
    if not state.quiet:
        rows = [[name, format_bytes(f.get("size")), str(f.get("sha256", ""))[:16]] for name, f in files.items()]
        print_table(None, ["file", "size", "sha256"], rows)


def _recall_note(manifest: dict[str, Any]) -> str:
    """What the search defaults trade: exact, or the recall they were chosen for and what to raise for more."""
    try:
        builder = get_backend(manifest["backend"]).builder(metric=manifest["metric"], **(manifest.get("params") or {}))
        exact, space = builder.capabilities.exact, list(builder.tune_space())
    except RechubError:
        return "-"
    if exact:
        return "exact: every result equals exhaustive search"
    knobs = " or ".join(space) or "the search parameters"
    return (
        "approximate: the search defaults are the fastest measured to reach recall@10 >= 0.95 on clustered "
        f"benchmark data (docs/benchmarks/); raise {knobs} per call, or run `rechub-index tune` on your data, "
        "for more recall at a lower speed"
    )


def _info_adopted(path: Path, backend: str) -> None:
    with open_index_arg(path, backend, {}) as idx:
        payload = {
            "path": str(path),
            "adopted": True,
            "backend": idx.backend,
            "engine_version": idx.builder.engine_version,
            "metric": idx.metric.value,
            "dim": idx.dim,
            "count": len(idx),
            "params": idx.params,
            "size_bytes": dir_size(path),
        }
    if state.json:
        state.emit_json(payload)
        return
    print_pairs(
        f"Native {payload['backend']} file {path} (adopted, not a saved index: no manifest, no checksums)",
        [
            ("backend", payload["backend"]),
            ("engine version", payload["engine_version"] or "-"),
            ("metric", payload["metric"]),
            ("dim", payload["dim"]),
            ("count", payload["count"]),
            ("parameters", _params_text({k: v for k, v in payload["params"].items() if k != "metric"})),
            ("size", format_bytes(payload["size_bytes"])),
        ],
    )
    state.note(f"to save it as an index: rechub_serving.builder_factory({backend!r}).from_index_file(path).save(DIR)")
