"""Checkpoints: save/load with vocabularies, resume equal to an uninterrupted run, torch-rechub's keywords."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pandas")

from rechub_serving import InvalidInputError, InvalidParameterError  # noqa: E402
from rechub_serving.train import (  # noqa: E402
    MatchTrainer,
    build_dssm,
    load_checkpoint,
    make_synthetic,
    prepare_match_data,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def data():
    return prepare_match_data(make_synthetic(120, 60, 2500, seed=5), mode=2, seq_max_len=6)


def _trainer(data, tower="sequence", **kw):
    torch.manual_seed(0)
    model = build_dssm(data, embed_dim=8, user_params={"dims": [8]}, item_params={"dims": [8]}, user_tower=tower)
    kw.setdefault("n_epoch", 4)
    return MatchTrainer(model, mode=2, batch_size=64, progress=False, threads=1, earlystop_patience=10, **kw)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("tower", ["sequence", "mlp"])
def test_save_and_load_round_trip_with_vocabularies(data, tmp_path, tower):
    trainer = _trainer(data, tower, n_epoch=1)
    trainer.fit(data)
    path = trainer.save(tmp_path / "ckpt", data)
    ckpt = load_checkpoint(path)
    assert ckpt.model.config() == trainer.model.config()
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k], v), k
    assert ckpt.vocabularies["movie_id"].values.tolist() == data.vocabularies["movie_id"].values.tolist()
    assert (
        ckpt.vocabularies["genres"].encode(["Drama"]).tolist() == data.vocabularies["genres"].encode(["Drama"]).tolist()
    )
    again = MatchTrainer(ckpt.model, mode=2, progress=False)
    assert np.array_equal(again.inference_embedding("user", data), trainer.inference_embedding("user", data))
    assert ckpt.extra["data"]["hist_col"] == "hist_movie_id" and ckpt.trainer_state["epoch"] == 1


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(data, tmp_path):
    whole = _trainer(data, n_epoch=4)
    whole.fit(data)
    first = _trainer(data, n_epoch=2, model_path=tmp_path / "run")
    first.fit(data)
    assert (tmp_path / "run" / "trainer.pt").is_file()
    resumed = MatchTrainer.from_checkpoint(tmp_path / "run", n_epoch=4, batch_size=64, progress=False, threads=1,
                                           earlystop_patience=10)  # fmt: skip
    resumed.fit(data, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-5)
    for k, v in whole.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[k], v, atol=1e-6), k
    best = load_checkpoint(tmp_path / "run")  # the served weights: the best validation epoch
    assert np.allclose(
        best.model.user_tower.mlp.net[0].weight.detach(), whole.model.user_tower.mlp.net[0].weight.detach(), atol=1e-6
    )


def test_resume_refuses_what_it_cannot_continue(data, tmp_path):
    with pytest.raises(InvalidParameterError, match="model_path"):
        _trainer(data).fit(data, resume=True)
    with pytest.raises(InvalidParameterError, match="no trainer state"):
        _trainer(data, model_path=tmp_path / "empty").fit(data, resume=True)
    _trainer(data, n_epoch=1, model_path=tmp_path / "seq").fit(data)
    with pytest.raises(InvalidParameterError, match="architecture"):
        _trainer(data, "mlp", model_path=tmp_path / "seq").fit(data, resume=True)
    with pytest.raises(InvalidInputError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    trainer = _trainer(data, n_epoch=1)
    trainer.fit(data)
    with pytest.raises(InvalidInputError, match="not a checkpoint"):
        save_checkpoint(tmp_path / "other", trainer.model)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"  # nothing lost


def test_torch_rechub_calls_work(data, tmp_path):
    """MatchTrainer(model_path=...) and inference_embedding(model, mode, data_loader, model_path)."""
    trainer = _trainer(data, n_epoch=1, model_path=str(tmp_path / "m"))
    trainer.fit(data)
    model = trainer.model
    want = trainer.inference_embedding("user", data)
    inputs = data.user_inputs(data.test.user, data.test.hist)
    got = trainer.inference_embedding(model, "user", inputs, str(tmp_path / "m"))  # positional, their order
    assert isinstance(got, torch.Tensor) and np.allclose(got.numpy(), want, atol=1e-6)  # a tensor, as theirs
    got = trainer.inference_embedding(model=model, mode="user", data_loader=inputs, model_path=str(tmp_path / "m"))
    assert np.allclose(got.numpy(), want, atol=1e-6)
    batches = [{k: v[s : s + 7] for k, v in inputs.items()} for s in range(0, len(data.test), 7)]  # a DataLoader
    assert np.allclose(
        trainer.inference_embedding(model=model, mode="user", data_loader=batches).numpy(), want, atol=1e-6
    )
    items = trainer.inference_embedding(model, "item", data.item_inputs(data.catalog), None)
    assert items.shape == (len(data.catalog), 8)
    other = _trainer(data).model
    with pytest.raises(InvalidParameterError, match="this trainer's model"):
        trainer.inference_embedding(model=other, mode="user", data_loader=inputs)
