"""Synthetic MovieLens-shaped data with planted structure, written in the official formats.

Users and items fall into clusters; a user mostly watches items of a primary
cluster and drifts towards a secondary one over time (so the time order and
the recent history carry signal); item popularity is Zipf-skewed inside each
cluster; user demographics and item genres are correlated with the clusters.
A model that learns the structure beats the most-popular baseline by a wide
margin; one that does not, does not. Everything is vectorised and seeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rechub_serving import InvalidInputError

from .movielens import ML100K_GENRES, MovieLens

__all__ = ["make_synthetic", "write_synthetic"]

ML1M_AGES = np.array([1, 18, 25, 35, 45, 50, 56])
_T0 = 956_703_932  # first timestamp of ML-1M


def make_synthetic(
    n_users: int = 1000,
    n_items: int = 500,
    n_interactions: int = 50_000,
    *,
    n_clusters: int = 8,
    in_cluster: float = 0.8,
    drift: float = 0.5,
    zipf: float = 1.0,
    min_per_user: int = 5,
    seed: int = 0,
) -> MovieLens:
    """Generate ``ratings``, ``users`` and ``movies`` frames (ids start at 1, as in MovieLens).

    ``in_cluster`` is the share of interactions inside the user's current
    cluster (the rest follow global popularity); ``drift`` the share of the
    secondary cluster reached by the user's last interaction.
    """
    if n_users < 1 or n_items < n_clusters or n_clusters < 1:
        raise InvalidInputError("need n_users >= 1 and n_items >= n_clusters >= 1")
    if not 0 <= in_cluster <= 1 or not 0 <= drift <= 1:
        raise InvalidInputError("in_cluster and drift are probabilities in [0, 1]")
    rng = np.random.default_rng(seed)

    # Items: a cluster each, Zipf popularity inside the catalogue.
    item_cluster = rng.integers(0, n_clusters, n_items)
    item_cluster[:n_clusters] = np.arange(n_clusters)  # every cluster non-empty
    pop = 1.0 / np.arange(1, n_items + 1) ** zipf
    pop = pop[rng.permutation(n_items)]

    # Users: a primary and a secondary cluster, skewed activity.
    primary = rng.integers(0, n_clusters, n_users)
    secondary = (primary + rng.integers(1, max(n_clusters, 2), n_users)) % n_clusters
    activity = rng.lognormal(0.0, 0.7, n_users)
    span = rng.integers(30, 900, n_users) * 86_400
    start = _T0 + rng.integers(0, 365 * 86_400, n_users)

    # In-cluster draws: one searchsorted over per-cluster CDFs laid end to end (cluster c owns (c, c+1]).
    order = np.argsort(item_cluster, kind="stable")
    w = pop[order]
    c_sorted = item_cluster[order]
    totals = np.bincount(c_sorted, weights=w, minlength=n_clusters)
    before = np.concatenate([[0.0], np.cumsum(totals)])[c_sorted]
    keys = c_sorted + (np.cumsum(w) - before) / totals[c_sorted]
    last = np.r_[c_sorted[1:] != c_sorted[:-1], True]
    keys[last] = c_sorted[last] + 1.0

    def draw(m: int) -> pd.DataFrame:
        extra = max(m - min_per_user * n_users, 0)
        users = np.concatenate(
            [np.repeat(np.arange(n_users), min_per_user), rng.choice(n_users, extra, p=activity / activity.sum())]
        )
        n = len(users)
        t = rng.random(n)  # position in the user's time span
        cluster = np.where(rng.random(n) < drift * t, secondary[users], primary[users])
        x = cluster + rng.random(n) * (1 - 1e-9)
        in_items = order[np.minimum(np.searchsorted(keys, x, side="left"), n_items - 1)]
        items = np.where(rng.random(n) < in_cluster, in_items, rng.choice(n_items, n, p=pop / pop.sum()))
        liked = item_cluster[items] == cluster
        rating = np.where(liked, rng.integers(4, 6, n), rng.integers(1, 6, n))
        timestamp = start[users] + (t * span[users]).astype(np.int64)
        frame = pd.DataFrame({"user_id": users + 1, "movie_id": items + 1, "rating": rating, "timestamp": timestamp})
        return frame.sort_values("timestamp", kind="stable").drop_duplicates(["user_id", "movie_id"], keep="first")

    m = int(n_interactions * 1.3)
    frame = draw(m)
    for _ in range(3):  # duplicates (user, item) are dropped: draw more until the target is reached
        if len(frame) >= n_interactions:
            break
        m = int(m * min(n_interactions / max(len(frame), 1), 4.0) * 1.15)
        frame = draw(m)
    if len(frame) > n_interactions:
        frame = frame.sample(n=n_interactions, random_state=seed)
    ratings = frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)

    genders = np.where(rng.random(n_users) < 0.3 + 0.4 * (primary % 2), "F", "M")
    age_idx = np.clip(primary % len(ML1M_AGES) + rng.integers(-1, 2, n_users), 0, len(ML1M_AGES) - 1)
    occupation = np.where(rng.random(n_users) < 0.6, primary % 21, rng.integers(0, 21, n_users))
    zips = np.char.zfill(rng.integers(0, 100_000, n_users).astype(str), 5)
    users_df = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "gender": genders,
            "age": ML1M_AGES[age_idx],
            "occupation": occupation,
            "zip": zips,
        }
    )
    names = np.array(ML100K_GENRES[1:], dtype=object)
    main = names[item_cluster % len(names)]
    other = names[rng.integers(0, len(names), n_items)]
    genres = np.where(rng.random(n_items) < 0.3, main + "|" + other, main)
    genres = np.where(genres == np.char.add(np.char.add(main.astype(str), "|"), main.astype(str)), main, genres)
    years = rng.integers(1930, 2001, n_items)
    titles = np.char.add(
        np.char.add(np.char.add("Movie ", np.arange(1, n_items + 1).astype(str)), " ("), years.astype(str)
    )
    titles = np.char.add(titles, ")")
    movies = pd.DataFrame({"movie_id": np.arange(1, n_items + 1), "title": titles.astype(object), "genres": genres})
    return MovieLens(ratings, users_df, movies)


def write_synthetic(directory: str | Path, fmt: str = "ml-1m", data: MovieLens | None = None, **kwargs) -> Path:
    """Write synthetic data (or ``data``) in an official layout; return the path to read back.

    ``fmt``: ``"ml-1m"`` (``*.dat``, ``::``, latin-1), ``"ml-100k"`` (``u.data``,
    ``u.user``, ``u.item``) or ``"csv"`` (torch-rechub's joined CSV, the file path is returned).
    """
    data = data if data is not None else make_synthetic(**kwargs)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    r, u, m = data.ratings, data.users, data.movies
    if fmt == "ml-1m":
        _write_lines(d / "ratings.dat", r[["user_id", "movie_id", "rating", "timestamp"]], "::")
        _write_lines(d / "users.dat", u[["user_id", "gender", "age", "occupation", "zip"]], "::")
        _write_lines(d / "movies.dat", m[["movie_id", "title", "genres"]], "::")
        return d
    if fmt == "ml-100k":
        _write_lines(d / "u.data", r[["user_id", "movie_id", "rating", "timestamp"]], "\t")
        occupations = np.array(["administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
                                "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other",
                                "programmer", "retired", "salesman", "scientist", "student", "technician", "writer"])  # fmt: skip
        occ = u["occupation"].to_numpy()
        users = pd.DataFrame(
            {"user_id": u["user_id"], "age": u["age"], "gender": u["gender"],
             "occupation": occupations[occ % len(occupations)] if occ.dtype.kind in "iu" else occ, "zip": u["zip"]}
        )  # fmt: skip
        _write_lines(d / "u.user", users, "|")
        flags = np.zeros((len(m), len(ML100K_GENRES)), dtype=np.int64)
        split = m["genres"].str.get_dummies(sep="|")
        for j, g in enumerate(ML100K_GENRES):  # 19 columns, not a loop over rows
            if g in split.columns:
                flags[:, j] = split[g].to_numpy()
        items = pd.DataFrame({"movie_id": m["movie_id"], "title": m["title"], "release": "01-Jan-1995", "video": "",
                              "url": "http://example.invalid/"})  # fmt: skip
        items = pd.concat([items, pd.DataFrame(flags, columns=list(ML100K_GENRES))], axis=1)
        _write_lines(d / "u.item", items, "|")
        return d
    if fmt == "csv":
        return data.write_joined_csv(d / "ml-synthetic.csv")
    raise InvalidInputError(f"unknown format {fmt!r}; use 'ml-1m', 'ml-100k' or 'csv'")


def _write_lines(path: Path, frame: pd.DataFrame, sep: str) -> None:
    """Write rows joined by ``sep`` (pandas cannot write multi-character separators), latin-1."""
    cols = [frame[c].astype(str) for c in frame.columns]
    joined = cols[0].str.cat(cols[1:], sep=sep)
    path.write_bytes(("\n".join(joined.tolist()) + "\n").encode("latin-1"))
