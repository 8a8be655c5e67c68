"""Readers, synthetic data, encoding, split, histories and negatives (numpy + pandas, no torch)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from rechub_serving import RechubError  # noqa: E402
from rechub_serving.train import (  # noqa: E402
    PAD,
    UNK,
    Vocabulary,
    build_histories,
    download_movielens,
    leave_last_out,
    load_vocabularies,
    make_synthetic,
    prepare_match_data,
    read_movielens,
    sample_negatives,
    save_vocabularies,
    write_synthetic,
)


@pytest.fixture(scope="module")
def small():
    return make_synthetic(200, 120, 4000, seed=1)


@pytest.mark.parametrize("fmt", ["ml-1m", "ml-100k", "csv"])
def test_readers_round_trip_official_formats(tmp_path, small, fmt):
    path = write_synthetic(tmp_path, fmt, data=small)
    got = read_movielens(path)
    want = small.ratings.sort_values(["user_id", "timestamp", "movie_id"]).reset_index(drop=True)
    have = got.ratings.sort_values(["user_id", "timestamp", "movie_id"]).reset_index(drop=True)
    assert have[["user_id", "movie_id", "rating", "timestamp"]].equals(
        want[["user_id", "movie_id", "rating", "timestamp"]]
    )
    assert sorted(got.users["user_id"]) == sorted(small.users["user_id"])[: len(got.users)]
    users = got.users.set_index("user_id")
    first = small.users.iloc[0]
    assert users.loc[first["user_id"], "gender"] == first["gender"]
    assert str(users.loc[first["user_id"], "zip"]) == first["zip"]  # leading zeros kept
    movies = got.movies.set_index("movie_id")
    assert set(movies.loc[small.movies.iloc[0]["movie_id"], "genres"].split("|")) == set(
        small.movies.iloc[0]["genres"].split("|")
    )


def test_ml1m_is_latin1_and_double_colon(tmp_path, small):
    movies = small.movies.copy()
    movies.loc[0, "title"] = "Amélie (2001)"
    data = type(small)(small.ratings, small.users, movies)
    path = write_synthetic(tmp_path, "ml-1m", data=data)
    assert "Amélie".encode("latin-1") in (path / "movies.dat").read_bytes()
    assert b"::" in (path / "ratings.dat").read_bytes()
    assert read_movielens(path).movies.loc[0, "title"] == "Amélie (2001)"


def test_reader_errors_are_actionable(tmp_path):
    with pytest.raises(RechubError, match="not a MovieLens data set"):
        read_movielens(tmp_path)
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(RechubError, match="lacks the columns"):
        read_movielens(bad)


def test_synthetic_has_planted_structure():
    data = make_synthetic(500, 300, 20000, seed=0)
    r = data.ratings
    assert len(r) == 20000 and not r.duplicated(["user_id", "movie_id"]).any()
    counts = r["movie_id"].value_counts().to_numpy()
    assert counts[:30].sum() > 3 * counts[-30:].sum()  # popularity skew
    assert (r.groupby("user_id")["timestamp"].apply(lambda s: s.is_monotonic_increasing)).all()  # time order
    # clusters: items a user watches share a first genre far more often than chance
    genre = data.movies.set_index("movie_id")["genres"].str.split("|").str[0]
    top_share = (
        r.assign(g=r["movie_id"].map(genre))
        .groupby("user_id")["g"]
        .agg(lambda s: s.value_counts(normalize=True).iloc[0])
    )
    assert top_share.mean() > 0.4
    assert make_synthetic(100, 50, 1000, seed=3).ratings.equals(make_synthetic(100, 50, 1000, seed=3).ratings)


def test_vocabulary_unknown_padding_and_json(tmp_path):
    v = Vocabulary.fit("movie_id", [30, 10, 20, 10])
    assert len(v) == 5
    assert v.encode([10, 20, 30, 99]).tolist() == [2, 3, 4, UNK]
    assert v.encode(["20", 99.0]).tolist() == [3, UNK]
    assert v.decode([PAD, UNK, 2]).tolist() == [None, None, 10]
    s = Vocabulary.fit("gender", ["M", "F"])
    save_vocabularies({"movie_id": v, "gender": s}, tmp_path / "v.json")
    back = load_vocabularies(tmp_path / "v.json")
    assert back["movie_id"].encode([30]).tolist() == [4] and back["gender"].encode(["F", "?"]).tolist() == [2, UNK]


def test_split_and_histories():
    user = np.array([2, 2, 2, 2, 3, 3, 4])  # sorted by user then time
    item = np.array([5, 6, 7, 8, 9, 10, 11])
    split = leave_last_out(user, 5)
    assert split.tolist() == [0, 0, 1, 2, 0, 2, 0]
    pos = np.array([0, 1, 2, 3, 0, 1, 0])
    hist = build_histories(item, pos, np.arange(7), 3, chunk=2)
    assert hist.tolist() == [[0, 0, 0], [0, 0, 5], [0, 5, 6], [5, 6, 7], [0, 0, 0], [0, 0, 9], [0, 0, 0]]


@pytest.mark.parametrize("popularity", [False, True])
def test_negatives_exclude_positives(popularity):
    rng = np.random.default_rng(0)
    n_items = 12
    users = np.repeat(np.arange(2, 52), 4)
    pos_items = rng.integers(2, n_items, len(users))
    keys = np.unique(users * n_items + pos_items)
    pop = np.bincount(pos_items, minlength=n_items) if popularity else None
    neg = sample_negatives(users, 5, n_items, keys, popularity=pop, rng=rng)
    assert neg.shape == (len(users), 5) and neg.min() >= 2 and neg.max() < n_items
    assert not np.isin(users[:, None] * n_items + neg, keys).any()


def test_popularity_sampling_follows_power():
    rng = np.random.default_rng(0)
    pop = np.array([0, 0, 1, 16, 81, 256])
    neg = sample_negatives(np.full(200_000, 2), 1, 6, np.zeros(0, np.int64), popularity=pop, rng=rng)
    freq = np.bincount(neg.ravel(), minlength=6)[2:] / 200_000
    want = pop[2:] ** 0.75 / (pop[2:] ** 0.75).sum()
    assert np.allclose(freq, want, atol=0.01)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_prepare_match_data(small, mode):
    data = prepare_match_data(small, mode=mode, seq_max_len=10, neg_ratio=2)
    n_pos = len(data.train_hist)
    if mode == 0:
        assert len(data.train["item"]) == 3 * n_pos and data.train["label"].sum() == n_pos
    elif mode == 1:
        assert data.train["neg_items"].shape == (n_pos, 2)
    assert data.test.hist.shape == (len(data.test), 10)
    # the test row's history ends with the validation item, and seen covers all earlier items
    seen = data.test.seen(data.sorted_items)
    assert all(data.test.target[i] not in seen[i] for i in range(len(seen)))
    assert (data.test.hist[:, -1] == data.val.target).all()
    assert data.item_table["year"][PAD] == PAD and data.item_table["year"][2:].min() >= 2
    assert data.item_table["genres"].ndim == 2 and (data.item_table["genres"][2:, -1] >= 2).all()


def test_prepare_match_data_with_torch_rechub_item_features(small):
    data = prepare_match_data(small, item_features=("movie_id", "cate_id"), seq_max_len=4)
    assert data.item_features == ["movie_id", "cate_id"]
    assert data.item_table["cate_id"][PAD] == PAD and data.item_table["cate_id"][2:].min() >= 2
    first = small.movies.set_index("movie_id")["genres"].str.split("|").str[0]
    codes = data.vocabularies["movie_id"].encode(first.index.to_numpy())
    got = data.vocabularies["cate_id"].decode(data.item_table["cate_id"][codes])
    assert got.tolist() == first.tolist()
    with pytest.raises(RechubError, match="not columns of the movies frame"):
        prepare_match_data(small, item_features=("movie_id", "budget"))


def _serve(directory: Path):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(directory), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_is_checksummed_and_cached(tmp_path, small):
    src = write_synthetic(tmp_path / "src" / "ml-1m", "ml-1m", data=small)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"ml-1m/{f.name}")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "ml-1m.zip").write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    server = _serve(tmp_path / "www")
    url = f"http://127.0.0.1:{server.server_address[1]}/ml-1m.zip"
    try:
        with pytest.raises(RechubError, match="sha256"):
            download_movielens("ml-1m", tmp_path / "cache", url=url, sha256="0" * 64)
        assert not (tmp_path / "cache" / "ml-1m").exists()
        path = download_movielens("ml-1m", tmp_path / "cache", url=url, sha256=digest)
        assert len(read_movielens(path).ratings) == len(small.ratings)
        server.shutdown()
        assert download_movielens("ml-1m", tmp_path / "cache", url=url, sha256=digest) == path  # cached
    finally:
        server.shutdown()


def test_timestamp_ties_keep_the_file_order(small):
    """The protocol: the last interaction by time is held out, ties broken by the order of the file."""
    r = small.ratings.copy()
    first = r["user_id"].iloc[0]
    rows = r.index[r["user_id"] == first]
    r.loc[rows, "timestamp"] = 1_000  # every interaction of this user at the same second
    shuffled = pd.concat([r.loc[rows[::-1]], r.drop(rows)]).reset_index(drop=True)  # reversed file order
    data = prepare_match_data(type(small)(shuffled, small.users, small.movies), seq_max_len=4)
    u = data.vocabularies["user_id"].encode([first])[0]
    at = int(np.flatnonzero(data.test.user == u)[0])
    file_order = shuffled.loc[shuffled["user_id"] == first, "movie_id"].tolist()
    assert data.vocabularies["movie_id"].decode([data.test.target[at]])[0] == file_order[-1]
    assert data.vocabularies["movie_id"].decode([data.val.target[at]])[0] == file_order[-2]
