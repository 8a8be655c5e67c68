"""ONNX export (verified against torch), the Retriever, quick_embeddings and the CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")
ort = pytest.importorskip("onnxruntime")

from rechub_serving import builder_factory  # noqa: E402
from rechub_serving.retriever import ModelMismatchError, Retriever, read_tower_metadata  # noqa: E402
from rechub_serving.train import ExportError, export_towers, make_synthetic, train_dssm  # noqa: E402
from rechub_serving.train.artifacts import write_artifacts  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    return train_dssm(
        make_synthetic(200, 120, 4000, seed=0),
        mode=2,
        n_epoch=2,
        batch_size=128,
        seq_max_len=10,
        ks=(10,),
        progress=False,
        threads=1,
    )


@pytest.fixture(scope="module")
def artifacts(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    return write_artifacts(trained, out)


def test_onnx_towers_match_torch_with_dynamic_batch(trained, artifacts):
    data = trained.data
    meta = read_tower_metadata(artifacts["user_tower"])
    assert [s["name"] for s in meta["inputs"]] == ["user_id", "gender", "age", "occupation", "zip", "hist_movie_id"]
    assert meta["dim"] == trained.model.embed_dim and meta["metric"] == "cosine" and meta["normalized"] is True
    assert meta["vocabularies"]["movie_id"]["values"][:3] == data.vocabularies["movie_id"].values[:3].tolist()
    item_meta = read_tower_metadata(artifacts["item_tower"])
    assert item_meta["model_hash"] == meta["model_hash"]
    session = ort.InferenceSession(str(artifacts["user_tower"]))
    for n in (1, 7, len(data.test)):
        feeds = data.user_inputs(data.test.user[:n], data.test.hist[:n])
        got = session.run(["embedding"], feeds)[0]
        want = trained.trainer.inference_embedding("user", inputs=feeds)
        assert got.shape == (n, meta["dim"]) and np.max(np.abs(got - want)) <= 1e-5
    manifest = json.loads((artifacts["index"] / "manifest.json").read_text())
    assert manifest["metadata"]["model_hash"] == meta["model_hash"]
    assert np.load(artifacts["item_embeddings"]).shape == (len(data.catalog), meta["dim"])


def test_export_fails_loudly(trained, tmp_path):
    data = trained.data
    with pytest.raises(ExportError, match="differs from torch"):
        export_towers(trained.model, tmp_path, user_inputs=data.user_inputs(data.test.user[:4], data.test.hist[:4]),
                      item_inputs=data.item_inputs(data.catalog[:4]), atol=-1.0)  # fmt: skip
    assert not (tmp_path / "user_tower.onnx").exists()


def test_retriever_raw_features_in_raw_ids_out(artifacts):
    with Retriever(artifacts["user_tower"], artifacts["index"], k=5) as r:
        one = {"user_id": 3, "gender": "M", "age": 25, "occupation": 4, "zip": "00000", "hist_movie_id": [1, 2, 3]}
        recs = r.recommend(one)
        ids = recs.item_ids[0].tolist()
        assert len(ids) == 5 and not {1, 2, 3} & set(ids) and np.all(np.diff(recs.scores[0]) <= 1e-6)
        assert not {7, 8} & set(r.recommend(one, k=20, seen=[[7, 8]]).item_ids[0].tolist())
        frame = pd.DataFrame({"user_id": [1, 99999], "gender": ["F", "?"], "age": [18, 3], "occupation": [1, 2],
                              "zip": ["1", "2"], "hist_movie_id": [[5, 6], "7|8"]})  # fmt: skip
        got = r.recommend(frame, k=3)
        assert got.item_ids.shape == (2, 3) and not {7, 8} & set(got.item_ids[1].tolist())
        assert r.user_vectors(frame).shape == (2, r.dim)


def test_retriever_user_vectors_are_the_torch_towers(trained, artifacts):
    """Raw features in (decoded from the test split): the torch tower's vectors on the encoded inputs out."""
    data = trained.data
    feeds = data.user_inputs(data.test.user[:16], data.test.hist[:16])
    raw = {f: data.vocabularies[f].decode(feeds[f]).tolist() for f in data.user_features}
    items = data.vocabularies[data.item_col]
    raw[data.hist_col] = [items.decode(row[row != 0]).tolist() for row in feeds[data.hist_col]]
    want = trained.trainer.inference_embedding("user", inputs=feeds)
    with Retriever(artifacts["user_tower"], artifacts["index"], k=5) as r:
        got = r.user_vectors(pd.DataFrame(raw))
    assert got.shape == want.shape and np.max(np.abs(got - want)) <= 1e-5


def test_retriever_refuses_mismatched_index(trained, artifacts, tmp_path):
    dim = trained.model.embed_dim
    rng = np.random.default_rng(0)
    with builder_factory("numpy", metric="cosine").from_embeddings(rng.normal(size=(10, dim + 1))) as idx:
        with pytest.raises(ModelMismatchError, match="dimension"):
            Retriever(artifacts["user_tower"], idx)
    with builder_factory("numpy", metric="l2").from_embeddings(rng.normal(size=(10, dim))) as idx:
        with pytest.raises(ModelMismatchError, match="metric"):
            Retriever(artifacts["user_tower"], idx)
    saved = tmp_path / "other.index"
    with builder_factory("numpy", metric="cosine").from_embeddings(rng.normal(size=(10, dim))) as idx:
        idx.save(saved, metadata={"model_hash": "f" * 64})
    with pytest.raises(ModelMismatchError, match="same training run"):
        Retriever(artifacts["user_tower"], saved)


def test_quick_embeddings():
    from rechub_serving.train import quick_embeddings

    q = quick_embeddings(seed=0, n_users=120, n_items=80, n_interactions=2500, n_epoch=1)
    items, item_ids, users, user_ids, seen = q
    assert items.shape[0] == len(item_ids) and users.shape[0] == len(user_ids) == len(seen)
    assert item_ids.dtype == np.int64 and all(set(s) <= set(item_ids.tolist()) for s in seen)
    assert np.allclose(np.linalg.norm(users, axis=1), 1, atol=1e-5)


def test_cli_train_and_recommend(tmp_path):
    typer_testing = pytest.importorskip("typer.testing")
    from rechub_serving.cli._app import app

    runner = typer_testing.CliRunner()
    out = tmp_path / "m"
    res = runner.invoke(app, ["train", "--synthetic", "-o", str(out), "--n-users", "150", "--n-items", "80",
                              "--n-interactions", "3000", "--epochs", "1", "--seq-max-len", "8", "--threads", "1", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["files"]["index"].endswith("items.index")
    feats = json.dumps({"user_id": 1, "gender": "M", "age": 18, "occupation": 2, "zip": "1", "hist_movie_id": [4, 5]})
    res = runner.invoke(app, ["recommend", str(out), "-f", feats, "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows[0]) == 3 and not {4, 5} & {r["item_id"] for r in rows[0]}
    res = runner.invoke(app, ["train", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2
