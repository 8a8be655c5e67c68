"""Features, DSSM towers, losses and the trainer (torch)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pandas")

from rechub_serving import InvalidParameterError  # noqa: E402
from rechub_serving.train import (  # noqa: E402
    DSSM,
    DenseFeature,
    MatchTrainer,
    SequenceFeature,
    SparseFeature,
    build_dssm,
    make_synthetic,
    prepare_match_data,
)


def _model(pooling="mean", temperature=1.0, **params):
    user = [
        SparseFeature("user_id", 10, 4),
        SequenceFeature("hist", 8, 4, shared_with="item_id", pooling=pooling),
        DenseFeature("age"),
    ]
    item = [SparseFeature("item_id", 8, 4)]
    p = {"dims": [6, 3], "activation": "prelu", **params}
    return DSSM(user, item, p, p, temperature=temperature)


def test_import_rechub_serving_does_not_import_torch():
    code = "import sys, rechub_serving, rechub_serving.retriever; assert 'torch' not in sys.modules and 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_sequence_pooling_ignores_padding(pooling):
    m = _model(pooling)
    table = m.embedding.tables["item_id"].weight
    assert m.embedding.tables["item_id"] is m.embedding.tables[m.user_features[1].table]  # shared_with
    assert torch.all(table[0] == 0)
    x = {
        "user_id": torch.tensor([1, 1]),
        "hist": torch.tensor([[0, 0, 3, 5], [3, 5, 0, 0]]),
        "age": torch.tensor([0.0, 0.0]),
    }
    pooled = m.embedding(x, m.user_features)[:, 4:8]
    want = table[3] + table[5]
    if pooling == "mean":
        want = want / 2
    assert torch.allclose(pooled[0], want) and torch.allclose(pooled[1], want)
    empty = {"user_id": torch.tensor([1]), "hist": torch.zeros(1, 4, dtype=torch.long), "age": torch.tensor([1.0])}
    assert torch.all(m.embedding(empty, m.user_features)[:, 4:8] == 0)


def test_towers_are_normalised_and_temperature_divides_logits():
    torch.manual_seed(0)
    a = _model(temperature=1.0)
    b = _model(temperature=0.1)
    b.load_state_dict(a.state_dict())
    x = {
        "user_id": torch.tensor([1, 2]),
        "hist": torch.tensor([[0, 3], [4, 5]]),
        "age": torch.tensor([0.3, 0.7]),
        "item_id": torch.tensor([3, 6]),
    }
    a.eval(), b.eval()
    assert torch.allclose(a.user_embedding(x).norm(dim=1), torch.ones(2))
    assert torch.allclose(b(x), a(x) * 10, atol=1e-5)
    assert a(x).abs().max() <= 1.0 + 1e-6


def test_invalid_configurations_say_what_to_do():
    with pytest.raises(InvalidParameterError, match="activation"):
        _model(activation="swishy")
    with pytest.raises(InvalidParameterError, match="temperature"):
        _model(temperature=0)
    with pytest.raises(InvalidParameterError, match="shared_with"):
        DSSM([SequenceFeature("h", 5, 4, shared_with="nope")], [SparseFeature("i", 5, 4)], {"dims": [2]}, {"dims": [2]})
    with pytest.raises(InvalidParameterError, match="different sizes"):
        DSSM([SparseFeature("u", 5, 4)], [SparseFeature("i", 5, 4)], {"dims": [2]}, {"dims": [3]})
    with pytest.raises(InvalidParameterError, match="pooling"):
        SequenceFeature("h", 5, 4, pooling="max")
    m = _model(batch_norm=True, dropout=0.2, activation="relu")
    assert any(isinstance(x, torch.nn.BatchNorm1d) for x in m.user_tower.mlp.net)


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(150, 80, 3000, seed=2)


def _fit(tiny, mode, seed=0, **kw):
    data = prepare_match_data(tiny, mode=mode, seq_max_len=8, neg_ratio=2, seed=seed)
    torch.manual_seed(seed)
    model = build_dssm(
        data, embed_dim=8, user_params={"dims": [16, 8]}, item_params={"dims": [16, 8]}, user_tower="mlp"
    )
    trainer = MatchTrainer(model, mode=mode, n_epoch=2, batch_size=128, seed=seed, progress=False, threads=1, **kw)
    trainer.fit(data)
    return data, trainer


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_training_is_reproducible_and_finite(tiny, mode):
    data, a = _fit(tiny, mode)
    _, b = _fit(tiny, mode)
    ea, eb = a.inference_embedding("item", data), b.inference_embedding("item", data)
    assert np.array_equal(ea, eb) and np.isfinite(ea).all()
    assert np.allclose(np.linalg.norm(ea, axis=1), 1, atol=1e-5)
    assert all(np.isfinite(h["loss"]) for h in a.history) and "val_recall@10" in a.history[0]
    users = a.inference_embedding("user", data, "test")
    assert users.shape == (len(data.test), 8)


def test_mode_needs_matching_data(tiny):
    data = prepare_match_data(tiny, mode=2, seq_max_len=8)
    model = build_dssm(data, embed_dim=8, user_params={"dims": [8]}, item_params={"dims": [8]})
    with pytest.raises(InvalidParameterError, match="mode=0"):
        MatchTrainer(model, mode=0, progress=False).fit(data)


def test_in_batch_duplicates_of_the_positive_are_masked(tiny):
    data = prepare_match_data(tiny, mode=2, seq_max_len=8)
    model = build_dssm(data, embed_dim=8, user_params={"dims": [8]}, item_params={"dims": [8]})
    trainer = MatchTrainer(model, mode=2, progress=False, logq_correction=True)
    t = trainer._tensors(data)
    # a batch where every row has the same positive: all off-diagonal logits are masked, loss is 0
    same = int(np.flatnonzero(data.train["item"] == np.bincount(data.train["item"]).argmax())[0])
    idx = torch.full((6,), same, dtype=torch.long)
    assert trainer._loss(data, t, idx).item() == pytest.approx(0.0, abs=1e-6)


def test_viz_missing_dependency_message():
    from rechub_serving.train import VizUnavailableError, plot_model

    try:
        import torchview  # noqa: F401
    except ImportError:
        with pytest.raises(VizUnavailableError, match=r"pip install 'rechub-serving\[viz\]'"):
            plot_model(_model(), {})
    else:
        pytest.skip("torchview is installed")


def test_fit_uses_the_default_thread_count_and_restores_torch_s(tiny, monkeypatch):
    from rechub_serving.train import trainer as trainer_module

    assert trainer_module.default_threads() == trainer_module.DEFAULT_THREADS == 1
    monkeypatch.setenv("RECHUB_TRAIN_THREADS", "2")
    assert trainer_module.default_threads() == 2
    monkeypatch.setenv("RECHUB_TRAIN_THREADS", "lots")
    assert trainer_module.default_threads() == 1
    monkeypatch.delenv("RECHUB_TRAIN_THREADS")
    data = prepare_match_data(tiny, mode=2, seq_max_len=4)
    model = build_dssm(data, embed_dim=4, user_params={"dims": [4]}, item_params={"dims": [4]}, user_tower="mlp")
    trainer = MatchTrainer(model, mode=2, n_epoch=1, progress=False)
    seen = []
    monkeypatch.setattr(trainer, "_fit", lambda d: seen.append(torch.get_num_threads()) or [])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        trainer.fit(data)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
