"""``rechub-index milvus list|drop|convert`` and 0.1 saved indexes, on milvus-lite databases.

The command runs as a user runs it (``python -m rechub_serving.cli``). A
collection made by hand with pymilvus must never be dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rechub_serving import builder_factory, open_index

HERE = Path(__file__).parent
LEGACY = "rechub_0123456789abcdef"  # a default collection name of rechub-serving-milvus 0.1


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("RECHUB_MILVUS_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("RECHUB_SERVING_PLUGINS", "milvus")
    return dict(os.environ)


def handmade(db: Path, name: str, *extra: str) -> None:
    subprocess.run([sys.executable, str(HERE / "_handmade.py"), name, "--path", str(db), *extra], check=True)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rechub_serving.cli", "milvus", *args], capture_output=True, text=True, timeout=300
    )


def write_v01_index(index: Path, db: Path, collection: str, dim: int, count: int) -> None:
    """A saved index as rechub-serving-milvus 0.1 wrote it: a manifest pointing into a shared database."""
    engine = {
        "collection": collection,
        "location": {"kind": "lite", "path": str(db)},
        "id_kind": "int",
        "fields": {"pk": "pk", "vector": "vector"},
        "index": {"index_type": "FLAT", "metric": "L2", "params": {}},
        "server_version": "milvus_lite-3.2.2",
    }
    (index / "engine").mkdir(parents=True)
    data = json.dumps(engine, indent=2).encode()
    (index / "engine" / "milvus.json").write_bytes(data)
    manifest = {
        "format": "rechub-serving-index",
        "format_version": 1,
        "backend": "milvus",
        "plugin_distribution": "rechub-serving-milvus",
        "plugin_version": "0.1.0",
        "engine_version": "pymilvus 3.0.2",
        "rechub_serving_version": "0.1.0",
        "metric": "l2",
        "normalized": False,
        "dim": dim,
        "count": count,
        "params": {"index_type": "FLAT", "nlist": None, "m": None, "ef_construction": None, "consistency": None},
        "search_params": {"nprobe": None, "ef_search": None},
        "ids": None,
        "engine": {**engine, "file": "milvus.json"},
        "metadata": {},
        "created": "2026-01-01T00:00:00+00:00",
        "files": {"engine/milvus.json": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}},
    }
    (index / "manifest.json").write_text(json.dumps(manifest, indent=2))


def states(result: subprocess.CompletedProcess) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return {c["name"]: c["state"] for c in json.loads(result.stdout)["collections"]}


def test_v01_saved_index_opens_with_a_note_and_converts(env, tmp_path, caplog):
    db, index = tmp_path / "shared.db", tmp_path / "saved" / "v01.index"
    handmade(db, LEGACY)
    write_v01_index(index, db, LEGACY, dim=8, count=30)
    vectors = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)  # what _handmade.py inserted
    expected = builder_factory("numpy").from_embeddings(vectors).query(vectors[:3], 4).indices
    caplog.set_level(logging.WARNING, logger="rechub_serving")
    with open_index(index) as old:
        np.testing.assert_array_equal(old.query(vectors[:3], 4).indices, expected)
    notes = [r.getMessage() for r in caplog.records if "0.1" in r.getMessage()]
    assert len(notes) == 1 and str(index) in notes[0] and "rechub-index milvus convert" in notes[0]
    result = cli("convert", str(index))
    assert result.returncode == 0 and "own milvus-lite database" in result.stdout, result.stderr
    shutil.rmtree(db)  # the converted index needs the shared database no more
    caplog.clear()
    with open_index(index) as new:
        np.testing.assert_array_equal(new.query(vectors[:3], 4).indices, expected)
        assert new.engine.temporary
    assert not [r for r in caplog.records if "0.1" in r.getMessage()]
    assert "nothing to convert" in cli("convert", str(index)).stderr


@pytest.mark.slow
def test_list_and_drop_never_touch_a_collection_the_sdk_did_not_create(env, tmp_path):
    db, saved = tmp_path / "own.db", tmp_path / "saved"
    handmade(db, "handmade", "--pk", "id", "--vector", "emb")
    handmade(db, "rechub_hand", "--n", "5")  # an SDK-like name and fields, but no SDK mark
    handmade(db, LEGACY)
    write_v01_index(saved / "v01.index", db, LEGACY, dim=8, count=30)
    items = np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32)
    with builder_factory("milvus", path=str(db), collection="catalog", index_type="FLAT").from_embeddings(items):
        pass  # a named collection: kept after close
    child = subprocess.Popen(
        [sys.executable, str(HERE / "_child.py"), "build", "--path", str(db), "--n", "50", "--hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and '"built"' in child.stdout.readline() + child.stdout.readline()
    child.kill()  # a temporary collection of a process that is gone
    child.wait()

    listed = states(cli("list", "--path", str(db), "--search", str(saved), "--json"))
    temp = next(name for name, state in listed.items() if state == "dead owner")
    assert listed == {
        "catalog": "unreferenced",
        "handmade": "not the SDK's",
        "rechub_hand": "not the SDK's",
        LEGACY: "referenced",
        temp: "dead owner",
    }
    table = cli("list", "--path", str(db), "--search", str(saved))
    assert "catalog" in table.stdout and "handmade" not in table.stdout and "not created by" in table.stderr

    refused = cli("drop", "handmade", "--path", str(db), "--force")
    assert refused.returncode == 1 and "not created by rechub-serving" in refused.stderr
    refused = cli("drop", LEGACY, "--path", str(db), "--search", str(saved))
    assert refused.returncode == 1 and "referenced" in refused.stderr and "--force" in refused.stderr
    dry = cli("drop", "--dead", "--path", str(db), "--dry-run")
    assert dry.returncode == 0 and f"would drop {temp}" in dry.stdout
    assert cli("drop", "--dead", "--path", str(db)).returncode == 0
    assert cli("drop", "--unreferenced", "--path", str(db), "--search", str(saved)).returncode == 0
    assert states(cli("list", "--path", str(db), "--search", str(saved), "--json")) == {
        "handmade": "not the SDK's",
        "rechub_hand": "not the SDK's",
        LEGACY: "referenced",
    }
    assert cli("drop", LEGACY, "--path", str(db), "--search", str(saved), "--force").returncode == 0
    assert set(states(cli("list", "--path", str(db), "--json"))) == {"handmade", "rechub_hand"}


def test_list_shows_private_databases_with_their_owner(env, tmp_path):
    with builder_factory("milvus", index_type="FLAT").from_embeddings(np.eye(4, dtype=np.float32)) as index:
        result = cli("list", "--json")
        assert result.returncode == 0, result.stderr
        (entry,) = json.loads(result.stdout)["databases"]
        assert entry["pid"] == os.getpid() and entry["alive"] and entry["created"]
        assert entry["path"] in index.engine.location
    dead = tmp_path / "work" / "1-20200101T000000-00000000"
    (dead / "milvus.db").mkdir(parents=True)
    (dead / "owner.json").write_text(json.dumps({"pid": 1, "created": "2020"}))
    result = cli("drop", "--dead")
    assert result.returncode == 0 and not dead.exists() and "removed private database" in result.stderr
