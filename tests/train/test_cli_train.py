"""`rechub-index train` / `recommend` as a shell user meets them: pasteable hints, --download, errors."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pandas")
pytest.importorskip("onnxruntime")
typer_testing = pytest.importorskip("typer.testing")

from rechub_serving.cli._app import app  # noqa: E402
from rechub_serving.train import make_synthetic, write_synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--epochs", "1", "--seq-max-len", "6", "--embed-dim", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def runner():
    return typer_testing.CliRunner()


@pytest.fixture(scope="module")
def trained(runner, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    args = ["train", "--synthetic", "-o", str(out), "--n-users", "120", "--n-items", "60", "--n-interactions", "2500"]
    res = runner.invoke(app, [*args, *TINY, "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def _recommend_args(hint: str) -> list[str]:
    words = shlex.split(hint)
    assert words[:2] == ["rechub-index", "recommend"], hint
    return words[1:]


def test_train_hint_is_a_complete_valid_request(runner, trained):
    out, summary = trained
    example = summary["example_request"]
    assert list(example) == ["user_id", "gender", "age", "occupation", "zip", "hist_movie_id"]
    assert example["user_id"] == 1 and len(example["hist_movie_id"]) > 0  # the first user, with its history
    assert json.loads((out / "example_request.json").read_text()) == example
    args = _recommend_args(summary["next"])
    assert json.loads(args[args.index("--features") + 1]) == example  # valid JSON, not '{"user_id": 1, ...}'
    res = runner.invoke(app, [*args, "-k", "4", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 1 and len(rows[0]) == 4
    assert not {r["item_id"] for r in rows[0]} & set(example["hist_movie_id"])


def test_train_prints_the_hint_for_humans(runner, tmp_path):
    out = tmp_path / "m"
    args = ["train", "--synthetic", "-o", str(out), "--n-users", "80", "--n-items", "40", "--n-interactions", "1200"]
    res = runner.invoke(app, [*args, *TINY, "--user-tower", "mlp"])
    assert res.exit_code == 0, res.output
    hint = [line for line in res.stdout.splitlines() if line.startswith("rechub-index recommend")]
    assert len(hint) == 1, res.stdout
    res = runner.invoke(app, [*_recommend_args(hint[0]), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["user_tower"] == "mlp"


@pytest.mark.parametrize(
    "features",
    ['{"user_id": 1, ...}', '{"user_id": 1}', '{"user_id": 1, "gender": "F"}', "[1, 2]"],
    ids=["not-json", "one-feature", "two-features", "not-an-object"],
)
def test_feature_errors_show_a_complete_example_that_works(runner, trained, features):
    out, _summary = trained
    res = runner.invoke(app, ["recommend", str(out), "--features", features])
    assert res.exit_code == 2
    lines = [line.strip() for line in res.output.splitlines() if line.strip().startswith("rechub-index recommend")]
    assert lines, res.output
    res = runner.invoke(app, [*_recommend_args(lines[0]), "--json"])
    assert res.exit_code == 0, res.output


def test_example_from_metadata_when_the_file_is_gone(runner, trained, tmp_path):
    import shutil

    out, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "example_request.json").unlink()
    res = runner.invoke(app, ["recommend", str(copy), "--features", '{"user_id": 1}'])
    assert res.exit_code == 2
    line = next(x.strip() for x in res.output.splitlines() if x.strip().startswith("rechub-index recommend"))
    assert runner.invoke(app, [*_recommend_args(line), "--json"]).exit_code == 0


def test_hint_runs_in_a_real_shell_process(trained):
    """The pasted line, run by a shell, through the installed module entry point of this worktree."""
    _out, summary = trained
    hint = summary["next"].replace("rechub-index", f"{shlex.quote(sys.executable)} -m rechub_serving.cli", 1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(f"{hint} --json -k 3", shell=True, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)[0]) == 3


# -- --download --------------------------------------------------------------------------------------------
def _serve(directory: Path):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(directory), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    src = write_synthetic(root / "src", "ml-100k", data=make_synthetic(80, 40, 1200, seed=3))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"ml-100k/{f.name}")
    (root / "site").mkdir()
    (root / "site" / "ml-100k.zip").write_bytes(buf.getvalue())
    return root / "site", hashlib.sha256(buf.getvalue()).hexdigest()


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_trains_from_a_mirror_and_reuses_the_cache(runner, archive, tmp_path):
    site, digest = archive
    server = _serve(site)
    url = f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip"
    cache = tmp_path / "cache"
    base = ["train", "--download", "ml-100k", "--download-url", url, "--download-sha256", digest,
            "--cache-dir", str(cache), *TINY, "--json"]  # fmt: skip
    try:
        res = runner.invoke(app, [*base, "-o", str(tmp_path / "a")])
        assert res.exit_code == 0, res.output
        assert (cache / "ml-100k" / ".sha256").read_text() == digest
    finally:
        server.shutdown()
        server.server_close()
    res = runner.invoke(app, [*base, "-o", str(tmp_path / "b")])  # the server is gone: the cache serves
    assert res.exit_code == 0, res.output
    assert _leftovers(cache) == ["ml-100k"]


def test_download_without_network_says_what_to_do_and_keeps_nothing(runner, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    res = runner.invoke(app, ["train", "--download", "ml-1m", "--download-url", f"http://127.0.0.1:{port}/ml-1m.zip",
                              "--download-sha256", "0" * 64, "--cache-dir", str(cache), "-o", str(tmp_path / "m")])  # fmt: skip
    assert res.exit_code == 1
    assert "could not download ml-1m" in res.output and "Without network access" in res.output
    assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in res.output
    assert _leftovers(cache) == [] and not (tmp_path / "m").exists()


def test_download_with_a_wrong_checksum_keeps_nothing(runner, archive, tmp_path):
    site, _ = archive
    server = _serve(site)
    url = f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip"
    cache = tmp_path / "cache"
    try:
        res = runner.invoke(app, ["train", "--download", "ml-100k", "--download-url", url, "--download-sha256",
                                  "f" * 64, "--cache-dir", str(cache), "-o", str(tmp_path / "m")])  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert res.exit_code == 1 and "sha256" in res.output
    assert _leftovers(cache) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--download", "ml-20m"], "not a known data set"),
        (["--synthetic", "--download", "ml-100k"], "exactly one of"),
        (["--synthetic", "--user-tower", "rnn"], "--user-tower"),
        (["--synthetic", "--resume"], "--checkpoint"),
        (["--download", "ml-100k", "--download-url", "http://127.0.0.1:9/x.zip"], "go together"),
    ],
)
def test_train_usage_errors(runner, tmp_path, args, message):
    res = runner.invoke(app, ["train", *args, "-o", str(tmp_path / "m")])
    assert res.exit_code == 2 and message in res.output, res.output


@pytest.mark.slow
def test_train_checkpoint_and_resume(runner, tmp_path):
    ckpt = tmp_path / "ckpt"
    base = ["train", "--synthetic", "--n-users", "80", "--n-items", "40", "--n-interactions", "1200",
            "--seq-max-len", "6", "--embed-dim", "8", "--threads", "1", "--patience", "0", "--json",
            "--checkpoint", str(ckpt)]  # fmt: skip
    res = runner.invoke(app, [*base, "--epochs", "1", "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*base, "--epochs", "2", "--resume", "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["epochs"] == 2  # one epoch from before, one more


def test_cli_defaults_are_the_library_defaults():
    """`rechub-index train` and `train_dssm` share their measured defaults (the CLI spells them out)."""
    import inspect

    import typer

    from rechub_serving.train import train_dssm
    from rechub_serving.train.trainer import DEFAULT_MAX_EPOCHS, DEFAULT_PATIENCE

    command = typer.main.get_command(app).commands["train"]
    cli = {p.name: p.default for p in command.params}
    lib = {k: v.default for k, v in inspect.signature(train_dssm).parameters.items()}
    assert cli["user_tower"] == lib["user_tower"] and cli["embed_dim"] == lib["embed_dim"] and cli["lr"] == lib["lr"]
    assert cli["epochs"] == lib["n_epoch"] == DEFAULT_MAX_EPOCHS
    assert cli["patience"] == lib["earlystop_patience"] == DEFAULT_PATIENCE
    assert cli["threads"] is None and lib["threads"] is None
