"""The sequence user tower: masking, causality, windows, ONNX export and serving through the Retriever."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pandas")

from rechub_serving import InvalidParameterError  # noqa: E402
from rechub_serving.train import (  # noqa: E402
    DSSM,
    PAD,
    MatchTrainer,
    SequenceFeature,
    SparseFeature,
    build_dssm,
    make_synthetic,
    prepare_match_data,
)


def _model(seq_max_len=6, **params):
    torch.manual_seed(0)
    user = [SparseFeature("user_id", 10, 8), SequenceFeature("hist", 12, 8, shared_with="item_id")]
    item = [SparseFeature("item_id", 12, 8)]
    p = {"dims": [16, 4], "n_layers": 2, "n_heads": 2, **params}
    return DSSM(user, item, p, {"dims": [16, 4]}, user_tower="sequence", seq_max_len=seq_max_len).eval()


def test_padding_is_never_attended_and_positions_count_from_the_newest():
    m = _model()
    users = torch.tensor([3, 3])
    short = {"user_id": users, "hist": torch.tensor([[0, 0, 5, 6, 7], [0, 0, 0, 0, 9]])}
    longer = {"user_id": users, "hist": torch.tensor([[0, 5, 6, 7], [0, 0, 0, 9]])}
    with torch.no_grad():
        assert torch.allclose(m.user_embedding(short), m.user_embedding(longer), atol=1e-6)
        # order matters (positions): a reversed history gives another vector
        rev = {"user_id": users[:1], "hist": torch.tensor([[0, 0, 7, 6, 5]])}
        assert not torch.allclose(m.user_embedding(rev), m.user_embedding(short)[:1], atol=1e-4)


def test_states_are_causal_and_the_last_state_is_the_user_vector():
    m = _model()
    x = {"user_id": torch.tensor([1, 2]), "hist": torch.tensor([[0, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 2]])}
    y = {"user_id": x["user_id"], "hist": x["hist"].clone()}
    y["hist"][:, 4:] = torch.tensor([[9, 9], [3, 3]])  # change the future of position 3
    with torch.no_grad():
        sx, sy = m.user_states(x), m.user_states(y)
        assert sx.shape == (2, 6, 4)
        assert torch.allclose(sx[:, :4], sy[:, :4], atol=1e-6)
        assert not torch.allclose(sx[:, 4:], sy[:, 4:], atol=1e-4)
        assert torch.allclose(sx[:, -1], m.user_embedding(x), atol=1e-6)
        assert torch.allclose(sx.norm(dim=-1), torch.ones(2, 6), atol=1e-5)


def test_histories_longer_than_seq_max_len_keep_the_most_recent_items():
    m = _model(seq_max_len=3)
    long = {"user_id": torch.tensor([1]), "hist": torch.tensor([[9, 8, 7, 2, 3, 4]])}
    tail = {"user_id": torch.tensor([1]), "hist": torch.tensor([[2, 3, 4]])}
    with torch.no_grad():
        assert torch.allclose(m.user_embedding(long), m.user_embedding(tail))


def test_empty_history_gives_a_finite_normalised_vector():
    m = _model()
    empty = {"user_id": torch.tensor([1, 4]), "hist": torch.zeros(2, 6, dtype=torch.long)}
    with torch.no_grad():
        v = m.user_embedding(empty)
    assert torch.isfinite(v).all() and torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)


def test_bad_sequence_configurations_say_what_to_do():
    with pytest.raises(InvalidParameterError, match="user_tower"):
        DSSM([SparseFeature("u", 5, 4)], [SparseFeature("i", 5, 4)], {"dims": [2]}, {"dims": [2]}, user_tower="rnn")
    with pytest.raises(InvalidParameterError, match="SequenceFeature"):
        DSSM(
            [SparseFeature("u", 5, 4)], [SparseFeature("i", 5, 4)], {"dims": [2]}, {"dims": [2]}, user_tower="sequence"
        )
    with pytest.raises(InvalidParameterError, match="n_heads"):
        _model(n_heads=3)
    with pytest.raises(InvalidParameterError, match="unknown sequence tower parameters"):
        _model(layers=2)


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(120, 60, 2500, seed=4)


def test_windows_hold_every_training_row_with_its_history(tiny):
    """Reference: the row-wise preparation. Every training (user, target) is predicted once, from the
    items just before it (a window position sees the window's items up to it: the tail of the row's history)."""
    data = prepare_match_data(tiny, mode=2, seq_max_len=5)
    w = data.windows
    got = {}
    for hist, target, user in zip(w["hist"], w["target"], w["user"]):
        for j in np.flatnonzero(target != PAD):
            prefix = hist[: j + 1]
            key = (int(user), int(target[j]))
            assert key not in got  # (user, item) pairs are unique in this data: predicted once
            got[key] = prefix[prefix != PAD].tolist()
    want = {
        (int(u), int(i)): h[h != PAD].tolist()
        for u, i, h in zip(data.train["user"], data.train["item"], data.train_hist[data.train["row"]])
    }
    assert got.keys() == want.keys()
    for key, prefix in got.items():
        assert len(prefix) >= 1 and want[key][-len(prefix) :] == prefix, key
    last = {(int(u), int(t[-1])): h for u, t, h in zip(w["user"], w["target"], w["hist"]) if t[-1] != PAD}
    assert all(h[h != PAD].tolist() == want[k] for k, h in last.items())  # a window's end sees the whole history


def test_windowed_training_learns_and_is_reproducible(tiny):
    data = prepare_match_data(tiny, mode=2, seq_max_len=8)

    def fit():
        torch.manual_seed(0)
        model = build_dssm(data, embed_dim=8, user_params={"dims": [8], "n_layers": 1}, item_params={"dims": [8]},
                           user_tower="sequence")  # fmt: skip
        trainer = MatchTrainer(model, mode=2, n_epoch=2, batch_size=64, progress=False, threads=1)
        trainer.fit(data)
        return trainer

    a, b = fit(), fit()
    assert np.array_equal(a.inference_embedding("user", data), b.inference_embedding("user", data))
    assert a.history[0]["loss"] > a.history[-1]["loss"] and all(np.isfinite(h["loss"]) for h in a.history)
    # one causal pass per window, every training row counted once
    assert a.history[0]["samples_per_s"] > 0 and len(data.windows["target"]) < len(data.train["item"])


@pytest.mark.parametrize("mode", [0, 1])
def test_sequence_tower_trains_in_the_other_modes(tiny, mode):
    data = prepare_match_data(tiny, mode=mode, seq_max_len=6, neg_ratio=2)
    torch.manual_seed(0)
    model = build_dssm(data, embed_dim=8, user_params={"dims": [8], "n_layers": 1}, item_params={"dims": [8]},
                       user_tower="sequence")  # fmt: skip
    trainer = MatchTrainer(model, mode=mode, n_epoch=1, batch_size=128, progress=False, threads=1)
    trainer.fit(data)
    assert np.isfinite(trainer.history[0]["loss"])


def test_item_tower_reads_all_genres_and_the_year(tiny):
    data = prepare_match_data(tiny, mode=2, seq_max_len=4)
    assert data.item_features == ["movie_id", "genres", "year"]
    movies = tiny.movies.set_index("movie_id")
    vocab = data.vocabularies
    for raw in tiny.movies["movie_id"].head(20):
        code = vocab["movie_id"].encode([raw])[0]
        genres = data.item_table["genres"][code]
        names = set(vocab["genres"].decode(genres[genres != PAD]).tolist())
        assert names == set(movies.loc[raw, "genres"].split("|"))
        year = vocab["year"].decode([data.item_table["year"][code]])[0]
        assert movies.loc[raw, "title"].endswith(f"({year})")
    model = build_dssm(data, embed_dim=8, user_params={"dims": [8]}, item_params={"dims": [8]})
    assert [type(f).__name__ for f in model.item_features] == ["SparseFeature", "SequenceFeature", "SparseFeature"]


# -- export and serving -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from rechub_serving.train import train_dssm
    from rechub_serving.train.artifacts import write_artifacts

    result = train_dssm(tiny, user_tower="sequence", seq_max_len=6, embed_dim=8, n_epoch=2, batch_size=128,
                        user_params={"dims": [16, 8], "n_layers": 2, "n_heads": 2}, item_params={"dims": [16, 8]},
                        ks=(10,), progress=False, threads=1)  # fmt: skip
    return result, write_artifacts(result, tmp_path_factory.mktemp("seq"))


@pytest.mark.parametrize("length", [0, 1, 3, 6, 15])
def test_onnx_sequence_tower_equals_torch_through_the_retriever(served, length):
    from rechub_serving.retriever import Retriever

    result, paths = served
    data = result.data
    items = data.vocabularies["movie_id"].values
    rng = np.random.default_rng(length)
    users = []
    for u in range(4):
        history = rng.choice(items, size=length, replace=False).tolist() if length else []
        users.append({"user_id": int(data.vocabularies["user_id"].values[u]), "gender": "F", "age": 25,
                      "occupation": 3, "zip": "00000", "hist_movie_id": history})  # fmt: skip
    with Retriever(paths["user_tower"], paths["index"], k=5) as r:
        feeds, _seen = r.encode(users)
        assert feeds["hist_movie_id"].shape == (4, 6)
        onnx_vectors = r.user_vectors(users)
        recs = r.recommend(users, k=5)
    full = {k: torch.as_tensor(v) for k, v in feeds.items()}
    full["hist_movie_id"] = torch.as_tensor(  # the untruncated history: torch keeps the last seq_max_len itself
        np.stack([np.concatenate([[0], data.vocabularies["movie_id"].encode(u["hist_movie_id"])]) for u in users])
    )
    with torch.no_grad():
        want = result.model.user_embedding(full).numpy()
    assert np.max(np.abs(onnx_vectors - want)) <= 1e-5
    for row, user in zip(recs.item_ids.tolist(), users):
        assert not set(row) & set(user["hist_movie_id"])  # the whole history is excluded, not only the last 6


def test_sequence_export_metadata(served):
    from rechub_serving.retriever import read_tower_metadata

    _result, paths = served
    meta = read_tower_metadata(paths["user_tower"])
    assert meta["seq_max_len"] == 6 and meta["item_id_feature"] == "movie_id"
    assert [s["type"] for s in meta["inputs"]][-1] == "sequence"
    item_meta = read_tower_metadata(paths["item_tower"])
    assert [s["name"] for s in item_meta["inputs"]] == ["movie_id", "genres", "year"]
