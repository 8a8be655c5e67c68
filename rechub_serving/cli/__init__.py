"""The ``rechub-index`` command line (typer + rich, imported only when it runs).

``rechub-index backends | build | query | info | bench | tune | quickstart``
(and ``train`` / ``recommend`` when the training commands are installed).
Exit codes: 0 success, 1 failure, 2 bad usage, 130 interrupted (Ctrl-C); errors are one line on stderr
(``--debug`` adds the traceback). ``python -m rechub_serving.cli`` works too.
"""

from __future__ import annotations

from typing import Any

__all__ = ["main", "reference_markdown"]


def main(argv: list[str] | None = None) -> None:
    """Run the command line (the ``rechub-index`` console script); exits with the command's code."""
    from ._app import run

    run(argv)


def reference_markdown() -> str:
    """Markdown reference of every command, generated from the typer app (for the docs)."""
    from ._reference import reference_markdown as render

    return render()


def __getattr__(name: str) -> Any:
    if name == "app":  # the typer application, built on first access
        from ._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
