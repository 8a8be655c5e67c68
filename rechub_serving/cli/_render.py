"""Rendering for the terminal: tables on stdout, a progress bar on stderr.

A table's title is printed as its own line, never wrapped to the table's
width and never padded, so that piped output reads like the terminal's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ._common import state

__all__ = ["Progress", "fmt", "print_pairs", "print_table"]


def fmt(value: float | None, spec: str) -> str | None:
    """``format(value, spec)``, or None (shown as ``-``) when there is no value."""
    return None if value is None else format(value, spec)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int], header: bool) -> Any:
    from rich.table import Table

    table = Table(show_header=header, header_style="bold", show_lines=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if i in right else "left", overflow="fold")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    return table


def print_table(
    title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()
) -> None:
    """A table on stdout under a one-line ``title``; ``right`` are the indexes of right-aligned columns."""
    out = state.out()
    if title:
        out.print(title, soft_wrap=True, highlight=False, markup=False)
    out.print(_table(columns, rows, right, header=True))


def print_pairs(title: str | None, pairs: Sequence[tuple[str, Any]]) -> None:
    """A two-column ``name  value`` table (no header) on stdout under a one-line ``title``."""
    out = state.out()
    if title:
        out.print(title, soft_wrap=True, highlight=False, markup=False)
    out.print(_table(["", ""], [list(p) for p in pairs], (), header=False))


class Progress:
    """A transient rich progress bar on stderr (only on a terminal, and not with --quiet/--json)."""

    def __init__(self, description: str, total: float | None = None):
        self.description, self.total = description, total
        self.bar: Any = None

    def __enter__(self) -> Progress:
        if sys.stderr.isatty() and not (state.quiet or state.json):
            from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(
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
        """Show what is happening now (on the bar; as a status line with --debug when there is no bar)."""
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
