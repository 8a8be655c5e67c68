"""The rechub-index command line: every command and its error paths (CliRunner), plus the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rechub_serving import list_backends, open_index
from rechub_serving.cli import app, reference_markdown
from rechub_serving.cli._common import parse_config, parse_params
from tests.cli._support import brute_force

runner = CliRunner()
INSTALLED = {b.name for b in list_backends()}


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def err_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("rechub-index: error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture()
def data(tmp_path: Path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(4, 8)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    np.save(tmp_path / "q.npy", queries)
    return tmp_path, emb, queries


@pytest.fixture()
def built(data):
    tmp, emb, queries = data
    result = invoke("build", tmp / "emb.npy", "-o", tmp / "idx", "-b", "numpy", "--metric", "ip")
    assert result.exit_code == 0, result.output
    return tmp, emb, queries


# -- parsing helpers ------------------------------------------------------------------------------
def test_parse_params_types():
    assert parse_params(["a=1", "b=0.5", "c=true", "d=HNSW", "e=none"]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "HNSW",
        "e": None,
    }


def test_parse_config_keeps_factory_commas():
    assert parse_config("faiss:index_type=IVF64,PQ8,nprobe=8") == ("faiss", {"index_type": "IVF64,PQ8", "nprobe": 8})
    assert parse_config("numpy") == ("numpy", {})


# -- global behaviour -------------------------------------------------------------------------------
def test_no_command_is_usage_error():
    assert invoke().exit_code == 2


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and "rechub-index" in result.stdout


def test_unknown_option_is_one_line_usage_error(data):
    result = invoke("build", "--nope")
    assert result.exit_code == 2
    assert "No such option" in err_line(result)
    assert "Traceback" not in result.output


# -- backends ---------------------------------------------------------------------------------------
def test_backends_table_and_json():
    result = invoke("backends")
    assert result.exit_code == 0 and "numpy" in result.stdout and "block_bytes" in result.stdout
    result = invoke("--json", "backends")
    payload = json.loads(result.stdout)
    assert {b["name"] for b in payload["backends"]} == INSTALLED
    assert "broken" in payload
    one = json.loads(invoke("backends", "numpy", "--json").stdout)
    assert [b["name"] for b in one["backends"]] == ["numpy"]
    assert one["backends"][0]["capabilities"]["exact"] is True


def test_backends_unknown_name():
    result = invoke("backends", "nope")
    assert result.exit_code == 2 and "nope" in err_line(result)


# -- build ------------------------------------------------------------------------------------------
def test_build_summary_and_json(data):
    tmp, *_ = data
    result = invoke("build", tmp / "emb.npy", "-o", tmp / "idx", "-b", "numpy", "--json", "-p", "block_bytes=8192")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["count"] == 300 and summary["dim"] == 8 and summary["metric"] == "l2"
    assert summary["size_bytes"] > 0 and "build_seconds" in summary
    with open_index(tmp / "idx") as index:
        assert len(index) == 300 and index.params["block_bytes"] == 8192


def test_build_refuses_existing_index_without_overwrite(built):
    tmp, *_ = built
    before = (tmp / "idx" / "manifest.json").read_text()
    result = invoke("build", tmp / "emb.npy", "-o", tmp / "idx", "-b", "numpy")
    assert result.exit_code == 1 and "--overwrite" in err_line(result)
    assert (tmp / "idx" / "manifest.json").read_text() == before
    result = invoke("build", tmp / "emb.npy", "-o", tmp / "idx", "-b", "numpy", "--metric", "cosine", "--overwrite")
    assert result.exit_code == 0
    with open_index(tmp / "idx") as index:
        assert index.metric.value == "cosine"


def test_failed_build_keeps_existing_index(built):
    tmp, emb, _ = built
    bad = emb.copy()
    bad[0, 0] = 0.0
    bad[0] = 0.0  # a zero row cannot be cosine-normalised: the build fails
    np.save(tmp / "zero.npy", bad)
    before = (tmp / "idx" / "manifest.json").read_text()
    result = invoke("build", tmp / "zero.npy", "-o", tmp / "idx", "-b", "numpy", "-m", "cosine", "--overwrite")
    assert result.exit_code == 1 and "zero" in err_line(result)
    assert (tmp / "idx" / "manifest.json").read_text() == before
    assert not [p for p in tmp.iterdir() if p.name.startswith(".idx")]


def test_build_refuses_non_index_path(data):
    tmp, *_ = data
    (tmp / "notes.txt").write_text("keep me")
    result = invoke("build", tmp / "emb.npy", "-o", tmp / "notes.txt", "-b", "numpy", "--overwrite")
    assert result.exit_code == 1 and "not a rechub-serving index" in err_line(result)
    assert (tmp / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("missing", "no such file"),
        ("nan", "NaN"),
        ("shape", "wrong shape"),
        ("format", "unknown format"),
        ("garbage", "not a readable"),
        ("pickle", "pickled"),
    ],
)
def test_build_bad_files(data, content, message):
    tmp, emb, _ = data
    path = tmp / "bad.npy"
    if content == "nan":
        emb = emb.copy()
        emb[5, 1] = np.nan
        np.save(path, emb)
    elif content == "shape":
        np.save(path, emb[0])
    elif content == "format":
        path = tmp / "bad.h5"
        path.write_bytes(b"x")
    elif content == "garbage":
        path.write_bytes(b"not numpy at all")
    elif content == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result = invoke("build", path, "-o", tmp / "out", "-b", "numpy")
    assert result.exit_code == 1, result.output
    line = err_line(result)
    assert path.name in line and message in line
    assert not (tmp / "out").exists()


def test_build_usage_errors(data):
    tmp, *_ = data
    for args, text in [
        (["-b", "nope"], "nope"),
        (["-b", "numpy", "-p", "nlist=4"], "nlist"),
        (["-b", "numpy", "-p", "oops"], "key=value"),
        (["-b", "numpy", "-m", "hamming"], "hamming"),
    ]:
        result = invoke("build", tmp / "emb.npy", "-o", tmp / "out", *args)
        assert result.exit_code == 2, (args, result.output)
        assert text in err_line(result)
    assert invoke("build", tmp / "emb.npy", "-b", "numpy").exit_code == 2  # -o missing


def test_build_from_csv_with_id_column_and_npz_and_ids_file(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(20, 3)).astype(np.float32)
    lines = ["item_id,a,b,c"] + [f"sku{i},{v[0]},{v[1]},{v[2]}" for i, v in enumerate(emb)]
    (tmp_path / "e.csv").write_text("\n".join(lines))
    result = invoke("build", tmp_path / "e.csv", "-o", tmp_path / "i1", "-b", "numpy", "--json")
    assert result.exit_code == 0, result.output
    with open_index(tmp_path / "i1") as index:
        ids, _ = index.query(emb[:1], k=1)
        assert ids[0, 0] == "sku0"
    np.savez(tmp_path / "e.npz", vectors=emb, other=np.zeros((2, 2)))
    (tmp_path / "ids.txt").write_text("\n".join(str(100 + i) for i in range(20)))
    result = invoke("build", tmp_path / "e.npz", "-o", tmp_path / "i2", "-b", "numpy", "--ids", tmp_path / "ids.txt")
    assert result.exit_code == 0, result.output
    with open_index(tmp_path / "i2") as index:
        assert index.query(emb[3], k=1).indices[0, 0] == 103
    (tmp_path / "short.txt").write_text("1\n2\n")
    result = invoke("build", tmp_path / "e.npz", "-o", tmp_path / "i3", "-b", "numpy", "--ids", tmp_path / "short.txt")
    assert result.exit_code == 1 and "one id per row" in err_line(result)
    result = invoke("build", tmp_path / "e.npz", "-o", tmp_path / "i3", "-b", "numpy", "--ids", "nocol")
    assert result.exit_code == 1 and "nocol" in err_line(result)


def test_build_from_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    emb = np.random.default_rng(2).normal(size=(10, 4)).astype(np.float32)
    pq.write_table(pa.table({"id": np.arange(10) * 7, "embedding": list(emb)}), tmp_path / "e.parquet")
    result = invoke("build", tmp_path / "e.parquet", "-o", tmp_path / "idx", "-b", "numpy")
    assert result.exit_code == 0, result.output
    with open_index(tmp_path / "idx") as index:
        assert index.query(emb[2], k=1).indices[0, 0] == 14


def test_build_from_torch_file(tmp_path):
    torch = pytest.importorskip("torch")
    emb = torch.randn(15, 4)
    torch.save({"item_vectors": emb, "ids": torch.arange(15) + 1}, tmp_path / "e.pt")
    result = invoke("build", tmp_path / "e.pt", "-o", tmp_path / "idx", "-b", "numpy")
    assert result.exit_code == 0, result.output
    with open_index(tmp_path / "idx") as index:
        assert index.query(emb[4].numpy(), k=1).indices[0, 0] == 5


# -- query ------------------------------------------------------------------------------------------
def test_query_table(built):
    tmp, *_ = built
    result = invoke("query", tmp / "idx", tmp / "q.npy", "-k", "3")
    assert result.exit_code == 0, result.output
    assert "inner product" in result.stdout and result.stdout.count("│") > 10


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".jsonl", ".parquet"])
def test_query_writes_every_format(built, suffix):
    tmp, emb, queries = built
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    out = tmp / f"res{suffix}"
    result = invoke("query", tmp / "idx", tmp / "q.npy", "-k", "5", "-o", out)
    assert result.exit_code == 0, result.output
    pos, dist = brute_force(emb, queries, 5, "ip")  # the index was built with --metric ip
    expected = [
        (q, rank + 1, int(pos[q, rank]), float(dist[q, rank])) for q in range(len(queries)) for rank in range(5)
    ]
    if suffix == ".npz":
        with np.load(out) as got:
            assert (got["ids"] == pos).all() and got["valid"].all() and str(got["metric"]) == "ip"
            assert np.allclose(got["distances"], dist, rtol=1e-5, atol=1e-5)
        return
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["query"] for r in rows] == list(range(len(queries)))
        assert [r["ids"] for r in rows] == pos.tolist()
        assert np.allclose([r["distances"] for r in rows], dist, rtol=1e-5, atol=1e-5)
        return
    if suffix == ".csv":
        lines = out.read_text().splitlines()
        assert lines[0] == "query,rank,id,distance"
        got = [(int(q), int(r), int(i), float(d)) for q, r, i, d in (line.split(",") for line in lines[1:])]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out).to_pydict()
        assert list(table) == ["query", "rank", "id", "distance"]
        got = list(zip(table["query"], table["rank"], table["id"], table["distance"]))
    assert [g[:3] for g in got] == [e[:3] for e in expected]  # every (query, rank, id), in order
    assert np.allclose([g[3] for g in got], [e[3] for e in expected], rtol=1e-5, atol=1e-5)
    assert not [p for p in tmp.iterdir() if ".tmp-" in p.name]  # written beside, then renamed


def test_query_exclude_and_json(built):
    tmp, emb, queries = built
    top = np.argsort(-(queries @ emb.T), axis=1)[:, 0]
    (tmp / "ex.json").write_text(json.dumps([[int(t)] for t in top]))
    result = invoke("--json", "query", tmp / "idx", tmp / "q.npy", "-k", "2", "--exclude", tmp / "ex.json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert all(int(t) not in r["ids"] for t, r in zip(top, rows))
    (tmp / "ex.csv").write_text("query,item\n" + "\n".join(f"{i},{t}" for i, t in enumerate(top)))
    result = invoke("--json", "query", tmp / "idx", tmp / "q.npy", "-k", "2", "--exclude", tmp / "ex.csv")
    assert json.loads(result.stdout)["results"] == rows


def test_query_errors(built):
    tmp, *_ = built
    np.save(tmp / "q3.npy", np.zeros((2, 3), np.float32))
    (tmp / "ex.json").write_text("[[1]]")
    cases = [
        (["query", tmp / "idx", tmp / "q3.npy"], 1, "dimension"),
        (["query", tmp / "nowhere", tmp / "q.npy"], 1, "nowhere"),
        (["query", tmp / "idx", tmp / "q.npy", "--exclude", tmp / "ex.json"], 1, "ex.json"),
        (["query", tmp / "idx", tmp / "q.npy", "-o", tmp / "r.xlsx"], 2, "r.xlsx"),
        (["query", tmp / "idx", tmp / "q.npy", "-p", "nprobe=3"], 2, "nprobe"),
        (["query", tmp / "idx", tmp / "q.npy", "-k", "0"], 2, "-k"),
    ]
    for args, code, text in cases:
        result = invoke(*args)
        assert result.exit_code == code, (args, result.output)
        assert text in err_line(result)


# -- info -------------------------------------------------------------------------------------------
def test_info_readable_json_and_damaged(built):
    tmp, *_ = built
    result = invoke("info", tmp / "idx")
    assert result.exit_code == 0 and "numpy" in result.stdout and "checksums" in result.stdout
    payload = json.loads(invoke("info", tmp / "idx", "--json").stdout)
    assert payload["verified"] and payload["manifest"]["count"] == 300
    with open(tmp / "idx" / "engine" / "vectors.npy", "ab") as fh:
        fh.write(b"x")
    result = invoke("info", tmp / "idx")
    assert result.exit_code == 1 and "vectors.npy" in err_line(result)
    assert invoke("info", tmp / "missing").exit_code == 1
    assert invoke("info", tmp).exit_code == 1  # a directory that is not an index


def test_info_shows_what_the_search_defaults_trade(built):
    tmp, *_ = built
    assert "exact: every result equals exhaustive search" in " ".join(invoke("info", tmp / "idx").stdout.split())
    pytest.importorskip("rechub_serving_hnswlib")
    assert invoke("build", tmp / "emb.npy", "-o", tmp / "hnsw", "-b", "hnswlib").exit_code == 0
    text = " ".join(invoke("info", tmp / "hnsw").stdout.replace("│", " ").split())
    assert "approximate" in text and "recall@10 >= 0.95" in text and "raise ef_search per call" in text


# -- bench ------------------------------------------------------------------------------------------
def test_bench_numpy_report_and_json(data):
    tmp, *_ = data
    configs = ["-c", "numpy", "-c", "numpy:block_bytes=8192"]
    if "faiss" in INSTALLED:
        configs += ["-c", "faiss:index_type=HNSW,ef_search=16"]
    result = invoke(
        "bench", tmp / "emb.npy", *configs, "-k", "5", "--n-queries", "20", "--latency-queries", "5",
        "--repeats", "1", "--report", tmp / "r.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp / "r.json").read_text())
    assert report["n_queries"] == 20 and report["n_items"] == 280
    first = report["results"][0]
    assert (
        first["recall"] == 1.0 and first["qps"] > 0 and first["size_bytes"] > 0 and first["p99_ms"] >= first["p50_ms"]
    )
    assert "recall@5" in result.stdout
    result = invoke("--json", "bench", tmp / "emb.npy", "-c", "numpy", "--queries", tmp / "q.npy", "--repeats", "1")
    assert json.loads(result.stdout)["n_queries"] == 4


def test_bench_plot(data):
    pytest.importorskip("matplotlib")
    tmp, *_ = data
    result = invoke(
        "bench", tmp / "emb.npy", "-c", "numpy", "--n-queries", "10", "--repeats", "1", "--plot", tmp / "p.png", "-q"
    )
    assert result.exit_code == 0, result.output
    assert (tmp / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_errors(data):
    tmp, *_ = data
    result = invoke("bench", tmp / "emb.npy", "-c", "nope:x=1")
    assert result.exit_code == 2 and "nope" in err_line(result)
    result = invoke("bench", tmp / "emb.npy", "-c", "numpy:x")
    assert result.exit_code == 2 and "key=value" in err_line(result)
    assert invoke("bench", tmp / "emb.npy").exit_code == 2  # no --config
    np.save(tmp / "q3.npy", np.zeros((2, 3), np.float32))
    result = invoke("bench", tmp / "emb.npy", "-c", "numpy", "--queries", tmp / "q3.npy")
    assert result.exit_code == 1 and "q3.npy" in err_line(result)


# -- tune -------------------------------------------------------------------------------------------
def test_tune_numpy_has_nothing_to_sweep(data):
    tmp, *_ = data
    result = invoke(
        "tune", tmp / "emb.npy", "-b", "numpy", "-o", tmp / "t", "--n-queries", "10", "--repeats", "1", "--json"
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["swept"] == {} and payload["best"]["recall"] == 1.0 and payload["saved"]
    with open_index(tmp / "t") as index:
        assert len(index) == 300  # the saved index holds every vector, held-out ones included


@pytest.mark.skipif("hnswlib" not in INSTALLED and "faiss" not in INSTALLED, reason="needs an approximate backend")
def test_tune_writes_search_params_into_manifest(data):
    tmp, *_ = data
    backend, params = ("faiss", ["-p", "index_type=IVF", "-p", "nlist=16"]) if "faiss" in INSTALLED else ("hnswlib", [])
    result = invoke(
        "tune", tmp / "emb.npy", "-b", backend, *params, "-t", "0.9", "-o", tmp / "t",
        "--n-queries", "30", "--repeats", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["swept"] and set(payload["swept"]) <= set(payload["tune_space"])
    manifest = json.loads((tmp / "t" / "manifest.json").read_text())
    for name, value in payload["best"]["params"].items():
        assert manifest["search_params"][name] == value
    assert manifest["count"] == 300


def test_tune_errors(data):
    tmp, *_ = data
    assert invoke("tune", tmp / "emb.npy", "-b", "nope").exit_code == 2
    assert invoke("tune", tmp / "emb.npy", "-b", "numpy", "-t", "1.5").exit_code == 2
    assert invoke("tune", tmp / "missing.npy", "-b", "numpy").exit_code == 1


# -- quickstart -------------------------------------------------------------------------------------
def test_quickstart_small_synthetic():
    result = invoke("quickstart", "--synthetic", "-b", "numpy", "--n-items", "400", "--n-users", "20", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["results"][0]["recall"] == 1.0 and payload["source"].startswith("synthetic")
    result = invoke("quickstart", "--synthetic", "-b", "numpy", "--n-items", "400", "--n-users", "20")
    assert result.exit_code == 0 and "recall@10" in result.stdout


def test_quickstart_unknown_backend():
    result = invoke("quickstart", "--synthetic", "-b", "nope")
    assert result.exit_code == 2 and "nope" in err_line(result)


# -- docs and the installed script ------------------------------------------------------------------
def test_reference_markdown_lists_every_command():
    text = reference_markdown()
    for name in ("backends", "build", "query", "info", "bench", "tune", "quickstart"):
        assert f"## `rechub-index {name}`" in text
    assert "--target-recall" in text


def test_import_rechub_serving_does_not_import_typer():
    code = "import sys, rechub_serving, rechub_serving.cli; print('typer' in sys.modules, 'rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_console_script(data):
    tmp, *_ = data
    script = Path(sys.executable).parent / "rechub-index"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "rechub_serving.cli"]
    env = {**os.environ, "RECHUB_SERVING_PLUGINS": ""}
    ok = subprocess.run(
        [*cmd, "build", str(tmp / "emb.npy"), "-o", str(tmp / "idx"), "-b", "numpy", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*cmd, "info", str(tmp / "nothing")], capture_output=True, text=True, env=env)
    assert (
        bad.returncode == 1
        and bad.stderr.strip().startswith("rechub-index: error:")
        and len(bad.stderr.strip().splitlines()) == 1
    )
    mod = subprocess.run(
        [sys.executable, "-m", "rechub_serving.cli", "--version"], capture_output=True, text=True, env=env
    )
    assert mod.returncode == 0 and "rechub-index" in mod.stdout
