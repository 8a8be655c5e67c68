"""What every command shares: the error type, the run state (--json/--quiet/--debug), consoles, value parsing.

Nothing here imports typer: the pure helpers are used by the measuring code
and the tests without building the app.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "CliError",
    "State",
    "UsageProblem",
    "dir_size",
    "format_bytes",
    "parse_config",
    "parse_params",
    "parse_value",
    "state",
    "to_jsonable",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit code 1 (or ``exit_code``)."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageProblem(CliError):
    """A bad command line (a malformed --param, an unknown backend or parameter): exit code 2."""

    exit_code = EXIT_USAGE


@dataclass
class State:
    """Output switches of the running command (global options or per-command ones)."""

    json: bool = False
    quiet: bool = False
    debug: bool = False
    #: Paths the command wrote so far; None while the command has not said that it tracks its outputs
    #: (then an interruption cannot say whether something was written).
    written: list[str] | None = None

    def reset(self) -> None:
        self.json = self.quiet = self.debug = False
        self.written = None

    def track_outputs(self) -> None:
        """Declare that this command records every path it writes (all its writes are atomic)."""
        self.written = []

    def wrote(self, path: Any) -> None:
        """Record a path this command has written completely."""
        if self.written is None:
            self.written = []
        self.written.append(str(path))

    def update(self, *, json: bool = False, quiet: bool = False, debug: bool = False) -> None:
        self.json |= json
        self.quiet |= quiet
        self.debug |= debug
        configure_logging(self)

    # Consoles are made per use: CliRunner swaps sys.stdout/sys.stderr between runs.
    def out(self):
        from rich.console import Console

        return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160, soft_wrap=False)

    def err(self):
        from rich.console import Console

        return Console(file=sys.stderr, width=None if sys.stderr.isatty() else 160, soft_wrap=False)

    def note(self, message: str) -> None:
        """A status line on stderr (silenced by --quiet and --json)."""
        if not (self.quiet or self.json):
            self.err().print(message, highlight=False)

    def emit_json(self, payload: Any) -> None:
        sys.stdout.write(json.dumps(to_jsonable(payload), indent=2) + "\n")


state = State()

_handler: logging.Handler | None = None


def configure_logging(st: State) -> None:
    """Library log records go to stderr: warnings by default, debug with --debug, errors with --quiet."""
    global _handler
    logger = logging.getLogger("rechub_serving")
    if _handler is None or getattr(_handler, "stream", None) is not sys.stderr:
        if _handler is not None:
            logger.removeHandler(_handler)
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter("rechub-index: %(levelname)s: %(message)s"))
        logger.addHandler(_handler)
        logger.propagate = False
    level = logging.DEBUG if st.debug else logging.ERROR if (st.quiet or st.json) else logging.WARNING
    logger.setLevel(level)
    _handler.setLevel(level)


def parse_value(text: str) -> Any:
    """``"32"`` -> 32, ``"0.5"`` -> 0.5, ``"true"``/``"false"`` -> bool, ``"none"`` -> None, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def parse_params(items: list[str] | None, option: str = "--param") -> dict[str, Any]:
    """``["nprobe=8", "index_type=HNSW"]`` -> ``{"nprobe": 8, "index_type": "HNSW"}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageProblem(f"{option} {item!r} is not key=value (for example {option} nprobe=16)")
        if key in out:
            raise UsageProblem(f"{option} {key} is given twice")
        out[key] = parse_value(value)
    return out


def parse_config(spec: str) -> tuple[str, dict[str, Any]]:
    """``"faiss:index_type=IVF64,PQ8,nprobe=8"`` -> ``("faiss", {"index_type": "IVF64,PQ8", "nprobe": 8})``.

    Values may contain commas (faiss factory strings): a comma-separated piece
    without ``=`` continues the previous value.
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise UsageProblem(f"--config {spec!r} has no backend name; write NAME or NAME:key=value,...")
    pieces: list[str] = []
    for piece in rest.split(",") if rest.strip() else []:
        if "=" in piece or not pieces:
            pieces.append(piece)
        else:
            pieces[-1] += "," + piece
    return name, parse_params(pieces, option=f"--config {name}:")


def dir_size(path: Path) -> int:
    """Bytes on disk under ``path`` (a file or a directory)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def format_bytes(n: float | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; None -> ``"-"``."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def to_jsonable(value: Any) -> Any:
    """Numpy scalars/arrays, paths and non-finite floats made JSON friendly."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
