"""``bench`` and ``tune``: measure configurations, and choose search parameters for a target recall.

Both hold out catalogue rows as queries (or read ``--queries``), take the
exact ground truth from :func:`rechub_serving.evaluation.ground_truth` and
score with :func:`rechub_serving.evaluation.recall_at_k`; the measuring
itself is in :mod:`._measure`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from rechub_serving.evaluation import ground_truth, holdout

from ._calls import check_output, make_builder
from ._common import CliError, format_bytes, parse_config, parse_params, state, to_jsonable
from ._io import Loaded, load_vectors
from ._measure import MEMORY_LABEL, Measurement, TuneOutcome, TunePoint, measure, truth_ids, tune_search
from ._milvus_cmds import release_replaced
from ._options import KeyOpt, MetricOpt, OverwriteOpt, ParamOpt, QueriesOpt, output_options
from ._render import Progress, fmt, print_table

__all__ = ["register"]

EmbeddingsArg = Annotated[Path, typer.Argument(metavar="EMBEDDINGS", help="The catalogue vectors.", show_default=False)]
KOpt = Annotated[int, typer.Option("-k", "--k", min=1, help="Recall@k and results per query.")]
RepeatsOpt = Annotated[int, typer.Option("--repeats", min=1, help="Timed batch runs per setting (median).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the held-out split.")]


def register(app: typer.Typer) -> None:
    """Add ``bench`` and ``tune`` to ``app``."""
    app.command()(output_options(bench))
    app.command()(output_options(tune))


def _catalogue_and_queries(
    loaded: Loaded, embeddings: Path, queries: Path | None, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(catalogue vectors, their ids, query vectors): ``--queries``, or catalogue rows held out."""
    if queries is not None:
        q = load_vectors(queries, "queries").vectors
        if q.shape[1] != loaded.vectors.shape[1]:
            raise CliError(
                f"{queries}: queries have dimension {q.shape[1]}, {embeddings} has {loaded.vectors.shape[1]}"
            )
        return loaded.vectors, loaded.ids, q
    try:
        base_rows, query_rows = holdout(len(loaded.vectors), n_queries, seed=seed)
    except ValueError as exc:
        raise CliError(f"{embeddings}: {exc}; pass --queries FILE") from None
    state.note(
        f"held out {len(query_rows)} of {len(loaded.vectors)} vectors as queries; the index holds the other {len(base_rows)}"
    )
    base_ids = None if loaded.ids is None else loaded.ids[base_rows]
    return loaded.vectors[base_rows], base_ids, loaded.vectors[query_rows]


def _write_atomically(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then rename over ``path``: an interrupted run leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    state.wrote(path)


# -- bench -------------------------------------------------------------------------------------------
def bench(
    embeddings: EmbeddingsArg,
    config: Annotated[
        list[str],
        typer.Option(
            "--config",
            "-c",
            metavar="NAME[:KEY=VALUE,...]",
            help="A configuration (repeatable), e.g. numpy or faiss:index_type=HNSW,ef_search=64.",
            show_default=False,
        ),
    ],
    queries: QueriesOpt = None,
    k: KOpt = 10,
    metric: MetricOpt = None,
    key: KeyOpt = None,
    n_queries: Annotated[
        int, typer.Option("--n-queries", min=1, help="Held-out queries (at most a fifth of the catalogue).")
    ] = 1000,
    latency_queries: Annotated[
        int, typer.Option("--latency-queries", min=0, help="Single queries timed for p50/p99.")
    ] = 200,
    repeats: RepeatsOpt = 3,
    report: Annotated[Path | None, typer.Option("--report", help="Write the results as JSON.")] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a recall-QPS plot as PNG (needs matplotlib).")
    ] = None,
    seed: SeedOpt = 0,
) -> None:
    """Benchmark configurations: build time, memory, size on disk, QPS, p50/p99 latency, recall@k against exact search."""
    configs = []
    for spec in config:
        name, params = parse_config(spec)
        cfg_metric = params.pop("metric", metric)
        builder = make_builder(name, cfg_metric, params)  # validates now, before any work
        configs.append((spec, name, {**params, "metric": builder.metric.value}))
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CliError("--plot needs matplotlib: pip install 'rechub-serving[plot]' (or drop --plot)") from None
    state.track_outputs()
    base, _, q = _catalogue_and_queries(load_vectors(embeddings, key=key), embeddings, queries, n_queries, seed)
    truths: dict[str, np.ndarray] = {}
    results: list[Measurement] = []
    with Progress("benchmark", total=len(configs)) as progress:
        for spec, name, params in configs:
            m = params["metric"]
            if m not in truths:
                progress.stage(f"exact ground truth ({m})")
                truths[m] = ground_truth(base, q, k, m)[0]
            r = measure(
                spec, name, params, base, q, k, truths[m],
                latency_queries=latency_queries, repeats=repeats, on_stage=progress.stage,
            )  # fmt: skip
            results.append(r)
            if not sys.stderr.isatty():
                state.note(
                    f"{spec}: failed: {r.error}" if r.error else f"{spec}: recall@{k} {r.recall:.4f}, {r.qps:,.0f} QPS"
                )
            progress.advance()
    payload = {
        "embeddings": str(embeddings),
        "n_items": len(base),
        "n_queries": len(q),
        "dim": base.shape[1],
        "k": k,
        "memory": "rss_growth_bytes: resident set of this process and its children after the build minus before it",
        "results": [r.as_dict() for r in results],
    }
    if report is not None:
        text = json.dumps(to_jsonable(payload), indent=2) + "\n"
        _write_atomically(report, lambda tmp: tmp.write_text(text))
    if plot is not None:
        _write_atomically(plot, lambda tmp: _plot(tmp, results, k))
    if state.json:
        state.emit_json(payload)
    else:
        _render_bench(results, k, f"{len(base)} x {base.shape[1]} items, {len(q)} queries, k={k}")
        state.note(f"{MEMORY_LABEL}: resident memory of this process and its children after the build minus before it")
        for path, what in ((report, "report"), (plot, "plot")):
            if path is not None:
                state.note(f"wrote the {what} to {path}")
    failed = [r for r in results if r.error]
    if failed:
        raise CliError(
            f"{len(failed)} of {len(results)} configurations failed (first: {failed[0].label}: {failed[0].error})"
        )


def _render_bench(results: list[Measurement], k: int, title: str) -> None:
    cols = ["config", "build s", MEMORY_LABEL, "size", "QPS", "p50 ms", "p99 ms", f"recall@{k}"]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.label, f"failed: {r.error}"] + [""] * (len(cols) - 2))
            continue
        rows.append(
            [
                r.label,
                fmt(r.build_s, ".3f"),
                format_bytes(r.rss_growth_bytes),
                format_bytes(r.size_bytes),
                fmt(r.qps, ",.0f"),
                fmt(r.p50_ms, ".3f"),
                fmt(r.p99_ms, ".3f"),
                fmt(r.recall, ".4f"),
            ]
        )
    print_table(title, cols, rows, right=tuple(range(1, len(cols))))


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
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


# -- tune --------------------------------------------------------------------------------------------
def tune(
    embeddings: EmbeddingsArg,
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
    queries: QueriesOpt = None,
    n_queries: Annotated[
        int, typer.Option("--n-queries", min=1, help="Held-out queries (at most a fifth of the catalogue).")
    ] = 500,
    k: KOpt = 10,
    repeats: RepeatsOpt = 3,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Find the fastest search parameters that reach a target recall@k, and save them into the index's manifest.

    Sweeps what the backend declares for this configuration (its
    tune_space(): faiss IVF nprobe, HNSW ef_search, ...), one parameter at a
    time, on held-out queries, against exact ground truth. An exact index has
    nothing to tune: only its defaults are measured.
    """
    build_params = parse_params(param)
    builder = make_builder(backend, metric, build_params)
    space = builder.tune_space()
    replaced = check_output(output, overwrite) if output is not None else None
    state.track_outputs()
    loaded = load_vectors(embeddings, key=key, ids=ids)
    base, base_ids, q = _catalogue_and_queries(loaded, embeddings, queries, n_queries, seed)
    if not space:
        state.note(_nothing_to_tune(builder.name, builder.capabilities.exact, k))
    with Progress(f"tuning {builder.name}") as progress:
        progress.stage("exact ground truth")
        truth = truth_ids(ground_truth(base, q, k, builder.metric)[0], base_ids)
        progress.stage(f"building {builder.name} over {len(base)} x {base.shape[1]}")
        with builder.from_embeddings(base, ids=base_ids) as index:
            outcome = tune_search(
                index, space, q, truth, k, target_recall, repeats=repeats,
                on_point=lambda p: progress.stage(f"{p.params or 'defaults'}: recall {p.recall}"),
            )  # fmt: skip
            if output is not None and outcome.best is not None and queries is not None:
                index.set_search_defaults(**outcome.best.params)  # the index already holds every vector
                index.save(output)
                state.wrote(output)
                release_replaced(replaced, builder.given_params, output)
        if output is not None and outcome.best is not None and queries is None:
            progress.stage(f"building the final index over all {len(loaded.vectors)} vectors")
            final = make_builder(backend, metric, {**build_params, **outcome.best.params})
            with final.from_embeddings(loaded.vectors, ids=loaded.ids) as full:
                full.save(output)
                state.wrote(output)
                release_replaced(replaced, final.given_params, output)
    _render_tune(
        builder.name, builder.build_params, builder.metric.value, k, target_recall, len(q), space, outcome, output
    )


def _nothing_to_tune(name: str, exact: bool, k: int) -> str:
    if exact:
        return f"{name} searches exactly: recall@{k} is 1.0 at any setting, so there is nothing to tune; measuring its defaults only"
    return f"{name} declares nothing to tune for this configuration; measuring its defaults only"


def _setting(point: TunePoint) -> str:
    return ", ".join(f"{a}={b}" for a, b in point.params.items()) or "(defaults)"


def _render_tune(
    name: str,
    build_params: dict[str, Any],
    metric: str,
    k: int,
    target: float,
    n_queries: int,
    space: dict[str, list[Any]],
    outcome: TuneOutcome,
    output: Path | None,
) -> None:
    saved = output is not None and outcome.best is not None
    if state.json:
        state.emit_json(
            {
                "backend": name,
                "build_params": build_params,
                "metric": metric,
                "k": k,
                "target_recall": target,
                "queries": n_queries,
                "tune_space": space,
                "swept": outcome.swept,
                "points": [p.as_dict() for p in outcome.points],
                "best": outcome.best.as_dict() if outcome.best else None,
                "saved": str(output) if saved else None,
            }
        )
    else:
        if not state.quiet:
            rows = [[_setting(p), fmt(p.recall, ".4f"), fmt(p.qps, ",.0f"), p.error or ""] for p in outcome.points]
            print_table(f"{name}: recall@{k} by search setting", ["setting", "recall", "QPS", "error"], rows, (1, 2))
        if outcome.swept:
            state.note(
                "swept " + "; ".join(f"{n} over {v}" for n, v in outcome.swept.items()) + " (others at their defaults)"
            )
        best = outcome.best
        if best is not None:
            chosen = _setting(best) if best.params else "the defaults"
            state.out().print(f"best: {chosen}: recall@{k} {best.recall:.4f}, {best.qps:,.0f} QPS", highlight=False)
            if saved:
                state.note(f"saved the index with these search parameters to {output}")
    if outcome.best is None:
        measured = [p for p in outcome.points if p.recall is not None]
        top = max(measured, key=lambda p: p.recall or 0.0) if measured else None
        hint = f"; best recall {top.recall:.4f} with {_setting(top)}" if top else ""
        raise CliError(
            f"target recall@{k} {target} not reached{hint}; lower --target-recall or use stronger build parameters"
            + (" (nothing was saved)" if output is not None else "")
        )
