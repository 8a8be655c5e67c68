"""Helpers shared by the benchmark scripts: timing medians, machine records and markdown output.

Every page a script writes starts with :func:`machine_section`: the CPU model,
cores, load at start and end, library versions, thread settings and the exact
command, so that a reader can reproduce the numbers (docs/benchmarks/index.md,
"How to measure").
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"

_START_LOAD = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "RECHUB_THREADS")
_LIBRARIES = (
    "numpy",
    "faiss-cpu",
    "annoy",
    "hnswlib",
    "pymilvus",
    "milvus-lite",
    "torch",
    "onnxruntime",
    "voyager",
    "usearch",
)


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def spread(values: Iterable[float], fmt: str = ".2f") -> str:
    """``median (min-max, n runs)`` of ``values``: how a ratio is reported."""
    values = sorted(values)
    return f"{statistics.median(values):{fmt}} ({values[0]:{fmt}}-{values[-1]:{fmt}}, {len(values)} runs)"


def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions(names: Iterable[str] = _LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries a benchmark may touch (absent ones left out)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def machine_info(extra_libraries: Iterable[str] = ()) -> dict[str, object]:
    """What the page must record about the machine and the run."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "python": platform.python_version(),
        "load_start": round(_START_LOAD, 2),
        "load_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "libraries": library_versions((*_LIBRARIES, *extra_libraries)),
        "threads": {k: os.environ[k] for k in _THREAD_VARS if k in os.environ},
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }


def machine_section(extra_libraries: Iterable[str] = ()) -> str:
    """The machine record as a markdown section (also printed to stdout)."""
    info = machine_info(extra_libraries)
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())  # type: ignore[union-attr]
    threads = ", ".join(f"{k}={v}" for k, v in info["threads"].items()) or "none set"  # type: ignore[union-attr]
    text = (
        "## Machine and command\n\n"
        f"- CPU: {info['cpu']}, {info['cores']} cores usable; Python {info['python']}\n"
        f"- load average (1 min): {info['load_start']} at start, {info['load_end']} at end\n"
        f"- libraries: {libs}\n"
        f"- thread settings: {threads}\n"
        f"- command: `{info['command']}`\n"
    )
    print(text)
    return text


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, title: str, body: str, out: str | Path | None = None) -> Path:
    """Write ``<out or docs/benchmarks>/<name>.md`` (machine record appended) and return its path."""
    directory = DOCS if out is None else Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.md"
    path.write_text(f"# {title}\n\n{body.strip()}\n\n{machine_section()}")
    return path
