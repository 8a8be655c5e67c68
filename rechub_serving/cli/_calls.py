"""Calling the library with command-line values: builders, opened indexes, output paths.

What the user typed wrong (an unknown backend or parameter, a build
parameter given to a saved index) becomes a :class:`UsageProblem` (exit 2)
carrying the library's message, "did you mean" included; everything else
is the library's own error, which names the path and says what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rechub_serving import (
    Builder,
    Indexer,
    InvalidParameterError,
    MissingPluginError,
    UnknownBackendError,
    builder_factory,
    get_backend,
    is_index_dir,
    open_index,
    read_manifest,
)

from ._common import CliError, UsageProblem

__all__ = ["check_output", "make_builder", "open_index_arg"]


def make_builder(backend: str, metric: str | None, params: dict[str, Any]) -> Builder:
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


def check_output(output: Path, overwrite: bool) -> dict[str, Any] | None:
    """Refuse to touch an existing path unless --overwrite (and never a path that is not an index).

    Returns the manifest of the index ``--overwrite`` will replace (None when nothing is there).
    """
    if not output.exists():
        return None
    if not is_index_dir(output):
        kind = "directory" if output.is_dir() else "file"
        raise CliError(f"{output}: exists and is a {kind} that is not a rechub-serving index; choose another -o path")
    if not overwrite:
        raise CliError(f"{output}: an index already exists there; pass --overwrite to replace it")
    return read_manifest(output)


def _build_params(backend: str, params: dict[str, Any]) -> list[str]:
    """The names in ``params`` that are build parameters of ``backend`` (fixed once an index is built)."""
    try:
        schema = get_backend(backend).schema()
    except UnknownBackendError:
        return []
    fixed = {n.lower(): p.name for p in schema if not (p.search or p.runtime) for n in (p.name, *p.aliases)}
    return [k for k in params if k.lower() in fixed and fixed[k.lower()] not in ("metric", "dim")]


def open_index_arg(path: Path, backend: str | None, params: dict[str, Any]) -> Indexer:
    """Open what the user named: a saved index directory, or with ``backend`` a native engine file to adopt.

    ``params`` are search parameters and runtime options (they become this
    session's defaults); for a saved index, build parameters are refused,
    since the index keeps the values it was built with.
    """
    path = Path(path).expanduser()
    adopting = backend is not None and path.is_file()
    if not adopting:
        name = backend or read_manifest(path)["backend"]
        fixed = _build_params(name, params)
        if fixed:
            raise UsageProblem(
                f"{', '.join(fixed)}: build parameter(s) of {name}; a saved index keeps the values it was built "
                "with (rebuild it to change them); -p takes search parameters and runtime options here"
            )
    try:
        if backend is None:
            return open_index(path, **params)
        return builder_factory(backend, **params).from_index_file(path)
    except MissingPluginError:
        raise
    except (UnknownBackendError, InvalidParameterError) as exc:
        raise UsageProblem(str(exc)) from None
