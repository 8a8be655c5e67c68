"""The Retriever's batch path: the same answers as one user at a time, encodings checked against the vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rechub_serving import Retriever
from tests.serve.conftest import user


@pytest.fixture(scope="module")
def retriever(model_a):
    with Retriever(model_a / "user_tower.onnx", model_a / "items.index", k=10) as r:
        yield r


@pytest.fixture(scope="module")
def vocab(model_a):
    return json.loads((model_a / "vocabularies.json").read_text())


def code(vocab, name, value) -> int:
    """Independent of the Retriever: position in the training vocabulary plus 2 (0 padding, 1 unknown)."""
    values = vocab[name]["values"]
    return values.index(value) + 2 if value in values else 1


def test_encoding_follows_the_vocabulary(retriever, vocab):
    movies = vocab["movie_id"]["values"]
    users = [
        user(vocab["user_id"]["values"][3], movies[:3]),
        user(987654, [movies[5], 10**9, movies[6]]),  # unknown ids
        user(str(vocab["user_id"]["values"][4]), [str(m) for m in movies[7:9]]),  # numbers sent as strings
        user(vocab["user_id"]["values"][5], list(movies[:40])),  # longer than seq_max_len: the last ones kept
        user(vocab["user_id"]["values"][6], None),
        user(np.int64(vocab["user_id"]["values"][7]), np.asarray(movies[2:4])),  # numpy values
        user(float(vocab["user_id"]["values"][8]), "|".join(str(m) for m in movies[9:11])),
    ]
    feeds, history = retriever.encode(users)
    width = retriever.seq_max_len
    want_users = [code(vocab, "user_id", int(u["user_id"])) if u["user_id"] != 987654 else 1 for u in users]
    assert feeds["user_id"].tolist() == want_users
    for i, u in enumerate(users):
        raw = u["hist_movie_id"]
        if raw is None:
            values = []
        elif isinstance(raw, str):
            values = [int(v) for v in raw.split("|")]
        else:
            values = [int(v) for v in list(raw)]
        tail = values[-width:]
        row = [0] * (width - len(tail)) + [code(vocab, "movie_id", v) for v in tail]
        assert feeds["hist_movie_id"][i].tolist() == row, i
        assert [int(h) for h in history[i]] == values
    assert all(type(h) is int for h in history[2]), "numeric strings become the index's integer ids"


def test_a_batch_answers_like_single_users(retriever):
    rng = np.random.default_rng(0)
    users = [user(int(rng.integers(1, 220)), rng.integers(1, 121, rng.integers(0, 15)).tolist()) for _ in range(64)]
    seen = [rng.integers(1, 121, 3).tolist() for _ in users]
    batch = retriever.recommend(users, k=15, seen=seen)
    for i, u in enumerate(users):
        one = retriever.recommend(u, k=15, seen=[seen[i]])
        assert batch.item_ids[i].tolist() == one.item_ids[0].tolist()
        np.testing.assert_allclose(batch.scores[i], one.scores[0], atol=1e-5)
        assert not set(u["hist_movie_id"]) & set(batch.item_ids[i].tolist())
        assert not set(seen[i]) & set(batch.item_ids[i].tolist())


def test_recommend_is_encode_embed_and_recommend_vectors(retriever):
    users = [user(1, [1, 2]), user(2, [3]), user(3, [])]
    feeds, history = retriever.encode(users)
    vectors = retriever.embed(feeds)
    np.testing.assert_array_equal(vectors, retriever.user_vectors(users))
    split = retriever.recommend_vectors(vectors, 5, history=history, seen=[[4], None, [5, "x"]])
    whole = retriever.recommend(users, 5, seen=[[4], None, [5, "x"]])
    assert split.item_ids.tolist() == whole.item_ids.tolist()
    assert retriever.exclusions(3, history, [[4], None, [5, "x", True]]) == [[1, 2, 4], [3], [5]]
    off = retriever.recommend_vectors(vectors, 5, history=history, exclude_seen=False)
    assert off.item_ids.tolist() == retriever.recommend(users, 5, exclude_seen=False).item_ids.tolist()
