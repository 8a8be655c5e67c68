"""Label encoding, leave-last-out split, histories and negative sampling, all vectorised.

Encoded indices follow one convention everywhere: ``0`` is padding (masked
out by sequence pooling), ``1`` is the unknown value (what serving maps an
unseen raw value to), real values start at ``2``. Vocabularies are saved as
JSON. No step loops over rows or users in Python: sorting, ``bincount``,
``searchsorted`` and fancy indexing do the work (histories are built in
chunks of rows to bound memory).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rechub_serving import InvalidInputError

from .movielens import MovieLens

__all__ = [
    "PAD",
    "UNK",
    "EvalSplit",
    "MatchData",
    "Vocabulary",
    "build_histories",
    "leave_last_out",
    "load_vocabularies",
    "prepare_match_data",
    "sample_negatives",
    "save_vocabularies",
    "sequence_windows",
]

logger = logging.getLogger("rechub_serving.train")

PAD, UNK = 0, 1
OFFSET = 2


class Vocabulary:
    """Raw values <-> indices; 0 is padding, 1 is unknown, real values start at 2."""

    def __init__(self, name: str, values: Sequence[Any]):
        self.name = name
        self.values = np.asarray(values)
        if self.values.dtype.kind not in "iuU" and self.values.dtype != object:
            self.values = self.values.astype(object)
        self._index = pd.Index(self.values)
        if not self._index.is_unique:
            raise InvalidInputError(f"vocabulary {name!r} has duplicate values")

    @classmethod
    def fit(cls, name: str, values: Iterable[Any]) -> Vocabulary:
        """The sorted distinct values of ``values``."""
        uniq = pd.unique(pd.Series(values))
        try:
            uniq = np.sort(uniq)
        except TypeError:  # mixed types: keep first-seen order
            pass
        return cls(name, uniq)

    def __len__(self) -> int:
        """Embedding table size: the values plus padding and unknown."""
        return len(self.values) + OFFSET

    def __repr__(self) -> str:
        return f"Vocabulary({self.name!r}, {len(self.values)} values)"

    def encode(self, values: Any) -> np.ndarray:
        """Indices (int64) of raw ``values``; unseen values map to ``UNK`` (1)."""
        arr = np.asarray(values)
        if self.values.dtype.kind in "iu" and arr.dtype.kind in "OUSf":  # "42" or 42.0 for an integer vocabulary
            arr = pd.to_numeric(pd.Series(arr.ravel()), errors="coerce").to_numpy().reshape(arr.shape)
        elif self.values.dtype.kind not in "iu" and arr.dtype.kind in "iu" and self.values.dtype == object:
            arr = arr.astype(str).astype(object)
        codes = self._index.get_indexer(arr.ravel()).reshape(arr.shape)
        return np.where(codes < 0, UNK, codes + OFFSET).astype(np.int64)

    def decode(self, codes: Any) -> np.ndarray:
        """Raw values of indices (object array; None for padding and unknown)."""
        codes = np.asarray(codes, dtype=np.int64)
        real = codes >= OFFSET
        out = np.full(codes.shape, None, dtype=object)
        out[real] = self.values[codes[real] - OFFSET]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pad": PAD, "unk": UNK, "offset": OFFSET, "values": self.values.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        if data.get("offset", OFFSET) != OFFSET:
            raise InvalidInputError(
                f"vocabulary {data.get('name')!r} uses offset {data.get('offset')}, expected {OFFSET}"
            )
        values = data["values"]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            arr = np.asarray(values, dtype=np.int64)
        else:
            arr = np.asarray(values, dtype=object)
        return cls(data["name"], arr)


def save_vocabularies(vocabularies: Mapping[str, Vocabulary], path: str | Path) -> Path:
    """Write ``{feature: vocabulary}`` as JSON."""
    path = Path(path)
    path.write_text(json.dumps({k: v.to_dict() for k, v in vocabularies.items()}))
    return path


def load_vocabularies(source: str | Path | Mapping[str, Any]) -> dict[str, Vocabulary]:
    """Read vocabularies from a JSON file (or an already-parsed mapping)."""
    data = source if isinstance(source, Mapping) else json.loads(Path(source).read_text())
    return {k: Vocabulary.from_dict(v) for k, v in data.items()}


# -- split and histories ---------------------------------------------------------------
def _positions(user: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows sorted by user: position within the user, the user's count and first row."""
    counts = np.bincount(user, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(user)) - starts[user]
    return pos, counts[user], starts


def leave_last_out(user: np.ndarray, n_users: int, *, validation: bool = True) -> np.ndarray:
    """Split rows (sorted by user, then time) into 0 = train, 1 = validation, 2 = test.

    A user's last interaction is the test row (users with at least 2 rows),
    the one before it the validation row (with ``validation`` and at least 3 rows).
    """
    pos, count, _ = _positions(user, n_users)
    split = np.zeros(len(user), dtype=np.int8)
    split[(pos == count - 1) & (count >= 2)] = 2
    if validation:
        split[(pos == count - 2) & (count >= 3)] = 1
    return split


def build_histories(
    items: np.ndarray, pos: np.ndarray, rows: np.ndarray, max_len: int, chunk: int = 1 << 16
) -> np.ndarray:
    """The ``max_len`` items before each of ``rows`` (same user), left-padded with ``PAD``.

    ``items`` and ``pos`` are per row of a frame sorted by user then time;
    the most recent item is in the last column.
    """
    out = np.empty((len(rows), max_len), dtype=np.int64)
    offsets = np.arange(-max_len, 0)
    for s in range(0, len(rows), chunk):  # chunks of rows bound the index matrix, no per-row loop
        r = rows[s : s + chunk]
        idx = r[:, None] + offsets
        valid = (pos[r][:, None] + offsets) >= 0
        out[s : s + chunk] = np.where(valid, items[np.maximum(idx, 0)], PAD)
    return out


def sample_negatives(
    users: np.ndarray,
    n_neg: int,
    n_items: int,
    positive_keys: np.ndarray,
    *,
    popularity: np.ndarray | None = None,
    power: float = 0.75,
    rng: np.random.Generator,
    max_rounds: int = 50,
) -> np.ndarray:
    """``n_neg`` negative items per entry of ``users``, never one of the user's positives.

    Items are drawn uniformly from the real items (``OFFSET..n_items-1``), or
    with probability ``popularity**power`` when ``popularity`` (counts per
    item index) is given. ``positive_keys`` is the sorted array of
    ``user * n_items + item`` of the positives. Collisions are redrawn in
    vectorised rounds.
    """
    shape = (len(users), n_neg)
    if popularity is not None:
        weights = np.asarray(popularity, dtype=np.float64) ** power
        weights[:OFFSET] = 0.0
        if weights.sum() <= 0:
            raise InvalidInputError("popularity has no positive count; cannot sample by popularity")
        cdf = np.cumsum(weights)
        cdf /= cdf[-1]

        def draw(size: int) -> np.ndarray:
            return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_items - 1)
    else:

        def draw(size: int) -> np.ndarray:
            return rng.integers(OFFSET, n_items, size)

    neg = draw(shape[0] * shape[1]).reshape(shape)
    owner = np.broadcast_to(users[:, None], shape)
    todo = np.ones(shape, dtype=bool)
    for _ in range(max_rounds):  # rounds shrink geometrically
        keys = owner[todo] * np.int64(n_items) + neg[todo]
        at = np.minimum(np.searchsorted(positive_keys, keys), max(len(positive_keys) - 1, 0))
        clash = positive_keys[at] == keys if len(positive_keys) else np.zeros(len(keys), bool)
        sub = np.flatnonzero(todo.ravel())[clash]
        if not len(sub):
            break
        todo = np.zeros(shape, dtype=bool)
        todo.ravel()[sub] = True
        neg.ravel()[sub] = draw(len(sub))
    return neg


# -- the prepared data set -----------------------------------------------------------------
@dataclass
class EvalSplit:
    """Held-out rows: one target per user, the history before it and the items seen before it."""

    user: np.ndarray  # encoded user index
    hist: np.ndarray  # (n, seq_max_len)
    target: np.ndarray  # encoded item index
    seen_start: np.ndarray  # rows [seen_start, seen_stop) of MatchData.sorted_items
    seen_stop: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def seen(self, sorted_items: np.ndarray) -> list[np.ndarray]:
        """Per row, the encoded items the user interacted with before the target."""
        return [sorted_items[a:b] for a, b in zip(self.seen_start.tolist(), self.seen_stop.tolist())]


@dataclass
class MatchData:
    """Everything a two-tower model trains and is evaluated on.

    Feature values are encoded indices. ``user_table[f][u]`` is feature ``f``
    of user index ``u``; ``item_table[f][i]`` feature ``f`` of item index ``i``
    (so batches carry only indices and histories; a multi-valued item feature
    such as ``genres`` is a 2-D table, one left-padded row per item).
    ``train`` holds ``user``, ``row`` (into ``train_hist``), ``item`` and, per
    mode, ``label`` (0) or ``neg_items`` (1). ``windows`` holds the same
    training interactions as whole sequences for the sequence tower:
    ``user``, ``hist`` (W, seq_max_len) and ``target`` (W, seq_max_len), where
    ``target[w, j]`` is the item that followed ``hist[w, :j + 1]`` (``PAD``
    where there is none).
    """

    vocabularies: dict[str, Vocabulary]
    user_features: list[str]
    item_features: list[str]
    user_col: str
    item_col: str
    hist_col: str
    seq_max_len: int
    mode: int
    user_table: dict[str, np.ndarray]
    item_table: dict[str, np.ndarray]
    train: dict[str, np.ndarray]
    train_hist: np.ndarray
    val: EvalSplit | None
    test: EvalSplit
    sorted_items: np.ndarray
    item_popularity: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    windows: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        """Size of the item vocabulary (padding and unknown included)."""
        return len(self.vocabularies[self.item_col])

    @property
    def catalog(self) -> np.ndarray:
        """Encoded indices of the real items (what retrieval ranks)."""
        return np.arange(OFFSET, self.n_items)

    def user_inputs(self, user: np.ndarray, hist: np.ndarray) -> dict[str, np.ndarray]:
        """User-tower inputs (feature name -> encoded array) for users and histories."""
        out = {f: self.user_table[f][user] for f in self.user_features}
        out[self.hist_col] = hist
        return out

    def item_inputs(self, item: np.ndarray) -> dict[str, np.ndarray]:
        """Item-tower inputs for encoded item indices."""
        return {f: self.item_table[f][item] for f in self.item_features}

    def raw_item_ids(self, item: np.ndarray) -> np.ndarray:
        return self.vocabularies[self.item_col].decode(item)

    def feature_sizes(self) -> dict[str, int]:
        """Vocabulary size of every sparse feature (for the embedding tables)."""
        return {name: len(v) for name, v in self.vocabularies.items()}


def _table(vocab_rows: int, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A lookup table indexed by encoded key; rows without data hold UNK (pad row 0 stays PAD)."""
    table = np.full(vocab_rows, UNK, dtype=np.int64)
    table[PAD] = PAD
    table[keys] = values
    return table


MULTI_VALUED = ("genres",)
_YEAR = r"\((\d{4})\)\s*$"
_HAS_YEAR = r"\(\d{4}\)\s*$"


def _item_columns(movies: pd.DataFrame, item_features: Sequence[str]) -> pd.DataFrame:
    """Derive ``cate_id`` (first genre) and ``year`` (from a ``year`` column or the title) when asked for."""
    movies = movies.reset_index(drop=True)
    if "cate_id" in item_features and "cate_id" not in movies.columns:
        movies = movies.assign(cate_id=movies["genres"].astype(str).str.split("|", n=1).str[0])
    if "year" in item_features and "year" not in movies.columns:
        year = movies["title"].astype(str).str.extract(_YEAR, expand=False) if "title" in movies else None
        movies = movies.assign(year=pd.to_numeric(year, errors="coerce") if year is not None else np.nan)
    missing = [f for f in item_features[1:] if f not in movies.columns]
    if missing:
        raise InvalidInputError(
            f"the item features {missing} are not columns of the movies frame ({list(movies.columns)}); "
            "pass item_features= with existing columns"
        )
    return movies


def _multi_table(vocab_rows: int, keys: np.ndarray, values: pd.Series, name: str) -> tuple[Vocabulary, np.ndarray]:
    """A ``|``-separated feature as a (vocab_rows, width) table of right-aligned codes, left-padded with PAD."""
    lists = values.fillna("").astype(str).str.split("|").explode()
    lists = lists[lists != ""]
    vocab = Vocabulary.fit(name, lists.to_numpy())
    row = lists.index.to_numpy()
    counts = np.bincount(row, minlength=len(values))
    width = max(int(counts.max()) if len(counts) else 1, 1)
    within = lists.groupby(level=0).cumcount().to_numpy()
    table = np.full((vocab_rows, width), PAD, dtype=np.int64)
    table[UNK:, -1] = UNK  # items without a value
    real = keys >= OFFSET
    table[keys[real], -1] = UNK
    has = real[row]
    table[keys[row[has]], width - counts[row[has]] + within[has]] = vocab.encode(lists.to_numpy()[has])
    return vocab, table


def prepare_match_data(
    data: MovieLens,
    *,
    mode: int = 2,
    seq_max_len: int = 50,
    neg_ratio: int = 3,
    sample_method: str = "uniform",
    min_history: int = 1,
    validation: bool = True,
    user_features: Sequence[str] = ("user_id", "gender", "age", "occupation", "zip"),
    item_features: Sequence[str] | None = None,
    seed: int = 0,
) -> MatchData:
    """Encode, split (leave-last-out by time), build histories and negatives.

    ``mode`` 0 (point-wise) adds ``neg_ratio`` negatives per positive with
    label 0; mode 1 (pair-wise) gives every positive ``neg_ratio`` negatives;
    mode 2 (list-wise) uses in-batch negatives and samples none.
    ``sample_method`` is ``"uniform"`` or ``"popularity"`` (count**0.75).
    Training rows need at least ``min_history`` earlier items.
    ``item_features`` default: ``movie_id``, ``genres`` (all of an item's
    genres, a multi-valued feature) and ``year`` (from a ``year`` column or a
    ``(1995)`` at the end of the title), those the data has.
    """
    import time

    if mode not in (0, 1, 2):
        raise InvalidInputError(f"mode must be 0 (point-wise), 1 (pair-wise) or 2 (list-wise), got {mode!r}")
    if sample_method not in ("uniform", "popularity"):
        raise InvalidInputError(f"sample_method must be 'uniform' or 'popularity', got {sample_method!r}")
    if seq_max_len < 1 or neg_ratio < 1:
        raise InvalidInputError("seq_max_len and neg_ratio must be >= 1")
    rng = np.random.default_rng(seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if item_features is None:
        item_features = ["movie_id"]
        if "genres" in data.movies.columns:
            item_features.append("genres")
        if "year" in data.movies.columns or (
            "title" in data.movies.columns
            and data.movies["title"].astype(str).str.contains(_HAS_YEAR, regex=True).mean() > 0.5
        ):
            item_features.append("year")
    user_col, item_col, hist_col = user_features[0], item_features[0], f"hist_{item_features[0]}"
    ratings = data.ratings
    movies = _item_columns(data.movies, item_features)

    # Encoding.
    vocabs: dict[str, Vocabulary] = {}
    vocabs[user_col] = Vocabulary.fit(user_col, ratings[user_col].to_numpy())
    vocabs[item_col] = Vocabulary.fit(item_col, ratings[item_col].to_numpy())
    user = vocabs[user_col].encode(ratings[user_col].to_numpy())
    item = vocabs[item_col].encode(ratings[item_col].to_numpy())
    n_users, n_items = len(vocabs[user_col]), len(vocabs[item_col])
    user_table = {user_col: np.arange(n_users, dtype=np.int64)}
    ukeys = vocabs[user_col].encode(data.users[user_col].to_numpy())
    for f in user_features[1:]:
        vocabs[f] = Vocabulary.fit(f, data.users[f].to_numpy())
        user_table[f] = _table(
            n_users, ukeys[ukeys >= OFFSET], vocabs[f].encode(data.users[f].to_numpy())[ukeys >= OFFSET]
        )
    item_table = {item_col: np.arange(n_items, dtype=np.int64)}
    ikeys = vocabs[item_col].encode(movies[item_col].to_numpy())
    for f in item_features[1:]:
        if f in MULTI_VALUED:
            vocabs[f], item_table[f] = _multi_table(n_items, ikeys, movies[f], f)
            continue
        column = movies[f]
        known = (ikeys >= OFFSET) & column.notna().to_numpy()
        values = column[known].to_numpy()
        if values.dtype.kind == "f" and len(values) and np.all(values == np.round(values)):
            values = values.astype(np.int64)  # a year read as float because of missing values
        vocabs[f] = Vocabulary.fit(f, values)
        item_table[f] = _table(n_items, ikeys[known], vocabs[f].encode(values))
    timings["encode"] = time.perf_counter() - t0

    # Sort by user then time (stable: ties keep file order), split, histories.
    t0 = time.perf_counter()
    order = np.lexsort((ratings["timestamp"].to_numpy(), user))
    user, item = user[order], item[order]
    pos, _, starts = _positions(user, n_users)
    split = leave_last_out(user, n_users, validation=validation)
    timings["split"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_rows = np.flatnonzero((split == 0) & (pos >= min_history))
    train_hist = build_histories(item, pos, train_rows, seq_max_len)

    def held_out(code: int) -> EvalSplit:
        rows = np.flatnonzero(split == code)
        return EvalSplit(
            user=user[rows],
            hist=build_histories(item, pos, rows, seq_max_len),
            target=item[rows],
            seen_start=starts[user[rows]],
            seen_stop=rows,
        )

    val = held_out(1) if validation else None
    test = held_out(2)
    timings["histories"] = time.perf_counter() - t0

    # Negatives.
    t0 = time.perf_counter()
    is_train = split == 0
    popularity = np.bincount(item[is_train], minlength=n_items).astype(np.int64)
    train = {"user": user[train_rows], "row": np.arange(len(train_rows)), "item": item[train_rows]}
    if mode in (0, 1):
        positive_keys = np.unique(user[is_train] * np.int64(n_items) + item[is_train])
        neg = sample_negatives(
            train["user"],
            neg_ratio,
            n_items,
            positive_keys,
            popularity=popularity if sample_method == "popularity" else None,
            rng=rng,
        )
        if mode == 1:
            train["neg_items"] = neg
        else:
            n = len(train_rows)
            train = {
                "user": np.concatenate([train["user"], np.repeat(train["user"], neg_ratio)]),
                "row": np.concatenate([train["row"], np.repeat(train["row"], neg_ratio)]),
                "item": np.concatenate([train["item"], neg.ravel()]),
                "label": np.concatenate([np.ones(n, np.float32), np.zeros(n * neg_ratio, np.float32)]),
            }
    timings["negatives"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    windows = sequence_windows(item, pos, split, user, seq_max_len, min_history)
    timings["windows"] = time.perf_counter() - t0
    logger.info(
        "prepared %d interactions: %d users, %d items, %d training rows, %d test users",
        len(ratings), n_users - OFFSET, n_items - OFFSET, len(train["item"]), len(test),
    )  # fmt: skip
    return MatchData(
        vocabularies=vocabs,
        user_features=list(user_features),
        item_features=list(item_features),
        user_col=user_col,
        item_col=item_col,
        hist_col=hist_col,
        seq_max_len=seq_max_len,
        mode=mode,
        user_table=user_table,
        item_table=item_table,
        train=train,
        train_hist=train_hist,
        val=val,
        test=test,
        sorted_items=item,
        item_popularity=popularity,
        timings=timings,
        windows=windows,
    )


def sequence_windows(
    items: np.ndarray, pos: np.ndarray, split: np.ndarray, user: np.ndarray, max_len: int, min_history: int = 1
) -> dict[str, np.ndarray]:
    """Each user's training interactions cut into windows of ``max_len`` next-item predictions.

    Rows are sorted by user then time. A user's training rows (split 0) form a
    prefix; windows end at the user's last training row and every ``max_len``
    rows before it, so every training target with at least ``min_history``
    earlier items is predicted exactly once. ``hist[w]`` holds the ``max_len``
    items before the window's end (left-padded), ``target[w, j]`` the item
    after ``hist[w, :j + 1]``, ``PAD`` where that item is too early.
    """
    train = np.flatnonzero(split == 0)
    if not len(train):
        empty = np.zeros((0, max_len), dtype=np.int64)
        return {"user": np.zeros(0, dtype=np.int64), "hist": empty, "target": empty.copy()}
    last = np.r_[user[train][1:] != user[train][:-1], True]
    ends = train[last]  # each user's last training row
    usable = np.maximum(pos[ends] - (min_history - 1), 0)  # targets at positions min_history..pos[end]
    n_windows = -(-usable // max_len)
    owner = np.repeat(np.arange(len(ends)), n_windows)
    k = np.arange(len(owner)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    end_rows = ends[owner] - k * max_len
    hist = build_histories(items, pos, end_rows, max_len)
    offsets = np.arange(-max_len + 1, 1)
    target_rows = end_rows[:, None] + offsets
    ok = (pos[end_rows][:, None] + offsets) >= min_history
    target = np.where(ok, items[np.maximum(target_rows, 0)], PAD)
    return {"user": user[end_rows], "hist": hist, "target": target}
