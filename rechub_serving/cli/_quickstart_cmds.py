"""``quickstart``: the whole serving path with no files, on every installed backend, compared."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from rechub_serving import UnknownBackendError, get_backend, list_backends
from rechub_serving.evaluation import Catalogue, ground_truth, synthetic_catalogue

from ._common import CliError, UsageProblem, state
from ._measure import Measurement, measure, truth_ids
from ._options import output_options
from ._render import Progress, fmt, print_table

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``quickstart`` to ``app``."""
    app.command()(output_options(quickstart))


def _trained_catalogue(seed: int) -> Catalogue | None:
    """DSSM embeddings from the trainer, or None when the train extra (torch) is not installed."""
    try:
        from rechub_serving.train import quick_embeddings
    except ImportError:
        state.note("the train extra (torch) is not installed: using a synthetic clustered catalogue")
        return None
    state.note("training a small DSSM on synthetic interactions (pass --synthetic to skip) ...")
    items, item_ids, users, user_ids, seen = quick_embeddings(seed=seed)
    items = np.asarray(items.detach().cpu() if hasattr(items, "detach") else items, np.float32)
    users = np.asarray(users.detach().cpu() if hasattr(users, "detach") else users, np.float32)
    if isinstance(seen, dict):
        seen = [list(seen.get(u.item() if hasattr(u, "item") else u, [])) for u in user_ids]
    seen = [list(np.asarray(s).tolist()) if s is not None else [] for s in seen]
    return Catalogue(items, np.asarray(item_ids), users, np.asarray(user_ids), seen)


@contextlib.contextmanager
def _in_temp_dir() -> Iterator[Path]:
    """Run in a scratch directory: embedded engines (milvus-lite) write their files there."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="rechub-quickstart-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


def _positions(item_ids: np.ndarray, seen: list[list[Any]]) -> list[list[int]]:
    """Each user's seen item ids as catalogue rows (ids not in the catalogue are dropped)."""
    row_of = {v: i for i, v in enumerate(item_ids.tolist())}
    return [[row_of[s] for s in row if s in row_of] for row in seen]


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
) -> None:
    """The whole serving path with no files: embeddings -> an index on every installed backend -> top-k per user, compared."""
    try:
        names = [get_backend(name).name for name in backend] if backend else [b.name for b in list_backends()]
    except UnknownBackendError as exc:
        raise UsageProblem(str(exc)) from None
    state.track_outputs()  # nothing is written outside a scratch directory
    data = None if synthetic else _trained_catalogue(seed)
    source = "DSSM embeddings (rechub_serving.train)"
    if data is None:
        data = synthetic_catalogue(n_items, dim, n_users, seed)
        source = "synthetic clustered catalogue"
    metric = "cosine"
    results: list[Measurement] = []
    with Progress("quickstart", total=len(names)) as progress, _in_temp_dir():
        progress.stage("exact ground truth")
        positions, _ = ground_truth(data.items, data.users, k, metric, exclude=_positions(data.item_ids, data.seen))
        truth = truth_ids(positions, data.item_ids)
        for name in names:
            progress.stage(f"{name}: building")
            r = measure(
                name, name, {"metric": metric}, data.items, data.users, k, truth,
                ids=data.item_ids, exclude=data.seen, latency_queries=100, repeats=1, measure_size=False,
                on_stage=progress.stage,
            )  # fmt: skip
            results.append(r)
            progress.advance()
    user = data.user_ids[0]
    example = {"user": user.item() if hasattr(user, "item") else user, "top": truth[0][: min(5, k)].tolist()}
    title = f"{source}: {len(data.items)} items x {data.items.shape[1]}, {len(data.users)} users, {metric}, k={k}, seen items excluded"
    if state.json:
        payload = {
            "source": source,
            "n_items": len(data.items),
            "dim": data.items.shape[1],
            "n_users": len(data.users),
            "k": k,
            "metric": metric,
        }
        state.emit_json({**payload, "results": [r.as_dict() for r in results], "example": example})
    else:
        _render(results, k, title)
        if not state.quiet:
            state.out().print(
                f"user {example['user']}: top-{len(example['top'])} items (seen ones excluded): {example['top']}",
                highlight=False,
            )
            state.note(
                "next: rechub-index build ITEMS.npy -o items.index --backend NAME; rechub-index bench / tune (see --help)"
            )
    failed = [r for r in results if r.error]
    if failed:
        raise CliError(
            f"{len(failed)} of {len(results)} backends failed (first: {failed[0].backend}: {failed[0].error})"
        )


def _render(results: list[Measurement], k: int, title: str) -> None:
    rows = []
    for r in results:
        exact = "yes" if get_backend(r.backend).capabilities.exact else "no"
        if r.error:
            rows.append([r.backend, exact, "", "", "", "", f"failed: {r.error}"])
        else:
            rows.append(
                [
                    r.backend,
                    exact,
                    fmt(r.build_s, ".3f"),
                    fmt(r.qps, ",.0f"),
                    fmt(r.p50_ms, ".3f"),
                    fmt(r.recall, ".4f"),
                    "ok",
                ]
            )
    print_table(
        title, ["backend", "exact", "build s", "QPS", "p50 ms", f"recall@{k}", "status"], rows, right=(2, 3, 4, 5)
    )
