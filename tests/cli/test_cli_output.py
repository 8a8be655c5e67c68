"""What the commands print (issue 13, items 5 to 7): memory column, titles, --help, status lines, docs order, install noise."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import typer

from rechub_serving import list_backends
from rechub_serving.cli import app
from rechub_serving.evaluation import clustered_data

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RECHUB_SERVING_PLUGINS": ""}


def run_script(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command line as a user runs it, stdout and stderr piped (not a terminal)."""
    cmd = [sys.executable, "-m", "rechub_serving.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


# -- item 5: bench measures resident memory and says so -------------------------------------------------
def test_psutil_is_a_dependency_of_the_core():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(re.match(r"psutil\b", d) for d in project["dependencies"])


def test_bench_memory_is_resident_growth(cli, tmp_path):
    items = clustered_data(40_000, 64, seed=0)  # 10 MiB; cosine makes a normalised copy inside the index
    np.save(tmp_path / "items.npy", items)
    np.save(tmp_path / "q.npy", items[:3])
    args = ["bench", tmp_path / "items.npy", "-c", "numpy:metric=cosine", "-c", "numpy:metric=ip", "--queries"]
    args += [tmp_path / "q.npy", "--repeats", "1", "--latency-queries", "1"]
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    cosine, ip = json.loads(result.stdout)["results"]
    # the cosine index holds its own 10 MiB copy; the ip one shares the caller's array
    assert cosine["rss_growth_bytes"] > 8 * 2**20 > ip["rss_growth_bytes"]
    table = cli(*args)
    assert "RSS growth" in table.stdout and "memory" not in table.stdout.lower()
    assert "resident memory of this process and its children" in table.stderr


# -- item 6: output noise ------------------------------------------------------------------------------
def test_table_titles_once_and_unwrapped_when_piped(tmp_path):
    result = run_script("quickstart", "--synthetic", "-b", "numpy", "--n-items", "300", "--n-users", "20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    both = result.stdout + result.stderr
    assert both.count("synthetic clustered catalogue") == 1
    title = next(line for line in result.stdout.splitlines() if "synthetic clustered catalogue" in line)
    assert title.endswith("k=10, seen items excluded")  # the whole title on one line
    assert all(line == line.rstrip() for line in result.stdout.splitlines())  # no padding to the table's width
    np.save(tmp_path / "items.npy", clustered_data(400, 8, seed=0))
    result = run_script("bench", tmp_path / "items.npy", "-c", "numpy", "--repeats", "1", "--latency-queries", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "320 x 8 items, 80 queries, k=10"
    assert sum("queries, k=10" in line for line in result.stdout.splitlines()) == 1


def _commands(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under ``group``: ("build",), ("milvus", "list"), ..."""
    ctx = typer.Context(group, info_name="rechub-index")
    paths = []
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if hasattr(sub, "list_commands"):
            paths += _commands(sub, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_help_shows_no_type_beside_flags(cli):
    group = typer.main.get_command(app)
    paths = _commands(group)
    assert ("milvus", "list") in paths
    for path in [(), ("milvus",), *paths]:
        result = cli(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.stdout, path
        # train, recommend and serve log their progress; they print no result to format
        if path and path != ("milvus",) and path[0] not in ("train", "recommend", "serve"):
            assert "--json" in result.stdout, path


def test_build_status_and_summary_show_resolved_values(cli, toy_backend, tmp_path):
    np.save(tmp_path / "items.npy", clustered_data(100, 4, seed=0))
    result = cli("build", tmp_path / "items.npy", "-o", tmp_path / "a.index", "-b", "approx")
    assert result.exit_code == 0, result.output
    assert "building the approx index over 100 x 4 vectors" in result.stderr  # never "a approx"
    assert "n_lists=16" in result.stdout and "None" not in result.stdout
    assert result.stdout.splitlines()[0] == f"Built {tmp_path / 'a.index'}"
    result = cli("build", tmp_path / "items.npy", "-o", tmp_path / "b.index", "-b", "approx", "--json")
    assert json.loads(result.stdout)["params"]["n_lists"] == 16
    # info opens the index to show what the engine chose for an "(auto)" parameter
    result = cli("info", tmp_path / "a.index")
    assert result.exit_code == 0, result.output
    assert "n_lists=16" in result.stdout and "None" not in result.stdout
    assert json.loads(cli("info", tmp_path / "a.index", "--json").stdout)["params"]["n_lists"] == 16


# -- item 7: the docs run in order ------------------------------------------------------------------
def _docs_commands() -> list[list[str]]:
    text = (ROOT / "docs" / "cli.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block is not None
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("rechub-index ")]


def test_docs_commands_never_write_over_an_earlier_output():
    written: set[str] = set()
    for words in _docs_commands():
        for flag in ("-o", "--output"):
            if flag in words and words[1] in ("build", "tune"):
                out = words[words.index(flag) + 1]
                assert out not in written or "--overwrite" in words, f"{' '.join(words)}: {out} exists by then"
                written.add(out)


def test_docs_commands_run_in_order(tmp_path):
    commands = [w for w in _docs_commands() if w[1] != "quickstart"]  # quickstart runs in its own test
    needed = {"numpy"} | {m for w in commands for m in re.findall(r"\b(faiss|annoy|hnswlib|milvus)\b", " ".join(w))}
    missing = needed - {b.name for b in list_backends()}
    if missing:
        pytest.skip(f"the docs use backends that are not installed: {', '.join(sorted(missing))}")
    items = clustered_data(2000, 16, seed=0)
    np.save(tmp_path / "items.npy", items)
    np.save(tmp_path / "users.npy", clustered_data(20, 16, seed=1, centres_seed=0))
    (tmp_path / "item_ids.txt").write_text("\n".join(f"item{i}" for i in range(len(items))))
    (tmp_path / "seen.jsonl").write_text("\n".join(json.dumps([f"item{i}"]) for i in range(20)))
    env = {**ENV, "RECHUB_SERVING_PLUGINS": ",".join(sorted(needed - {"numpy"}))}
    for words in commands:
        cmd = [sys.executable, "-m", "rechub_serving.cli", *words[1:]]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, f"{' '.join(words)}\n{result.stderr}"


# -- item 6: the install scripts do not print setuptools' editable-install notices ----------------------
@pytest.mark.parametrize("script", ["quickstart.sh", "test.sh"])
def test_install_scripts_silence_the_editable_install_notice(script):
    text = (ROOT / "scripts" / script).read_text()
    installs = [line for line in text.splitlines() if "pip install" in line and "-r requirements" in line]
    assert installs, script
    assert all('PYTHONWARNINGS="ignore:Editable installation"' in line for line in installs), installs
