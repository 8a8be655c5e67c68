"""Options that several commands share, and :func:`output_options`, which adds ``--json/--quiet/--debug``.

A command module declares its options with these aliases, so that a flag is
spelled and explained the same way in every command.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ._common import state

__all__ = [
    "BackendOpt",
    "DebugOpt",
    "JsonOpt",
    "KeyOpt",
    "MetricOpt",
    "OverwriteOpt",
    "ParamOpt",
    "QueriesOpt",
    "QuietOpt",
    "output_options",
]

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout (no tables, no status).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors: no status or progress.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        metavar="KEY=VALUE",
        help="Backend parameter (repeatable); values parsed as int, float, bool or str.",
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", help="Which array of an .npz/.pt dict, or which column of a table, holds the vectors."),
]
MetricOpt = Annotated[str | None, typer.Option("--metric", "-m", help="l2, ip or cosine (default: the backend's, l2).")]
BackendOpt = Annotated[
    str, typer.Option("--backend", "-b", help="Backend name (see `rechub-index backends`).", show_default=False)
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing index at --output.")]
QueriesOpt = Annotated[
    Path | None,
    typer.Option("--queries", help="Query vectors (e.g. user vectors); default: hold out catalogue rows."),
]

_OUTPUT_PARAMS = (
    inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOpt),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOpt),
    inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=DebugOpt),
)


def output_options(command: F) -> F:
    """Give a command the ``--json``, ``--quiet`` and ``--debug`` options (also accepted before the command).

    The decorated function does not declare them: the wrapper switches the
    shared :data:`state` and then calls it. Put it under ``@app.command()``.
    """
    signature = inspect.signature(command, eval_str=True)

    @functools.wraps(command)
    def wrapper(*args: Any, json_out: bool = False, quiet: bool = False, debug: bool = False, **kwargs: Any) -> Any:
        state.update(json=json_out, quiet=quiet, debug=debug)
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *_OUTPUT_PARAMS]
    )
    return wrapper  # type: ignore[return-value]
