"""Data for the trainer benchmarks: real MovieLens-100K from a registry package, and MovieLens-shaped synthetic data.

The real data set is the GroupLens MovieLens-100K sample that RecBole ships
inside its wheel (``recbole/dataset_example/ml-100k``: 100,000 ratings by 943
users of 1,682 movies, with user demographics, genres and release years, in
the order of the official ``u.data``). It is fetched with pip, the ordinary
client of the package registry, checked against the wheel's sha256, and read
straight from the wheel. It is used by the benchmarks only and never
committed (the MovieLens licence does not allow redistribution).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

RECBOLE = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
CACHE = Path(os.environ.get("RECHUB_SERVING_CACHE", Path.home() / ".cache" / "rechub-serving")) / "bench"


def recbole_wheel(cache: Path = CACHE) -> Path:
    """The RecBole wheel in ``cache`` (downloaded with ``pip download`` once), sha256-checked."""
    path = cache / RECBOLE_WHEEL
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", RECBOLE, "-d", str(cache)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != RECBOLE_SHA256:
        raise RuntimeError(f"{path} has sha256 {digest}, expected {RECBOLE_SHA256}; delete it and rerun")
    return path


def ml100k(cache: Path = CACHE):
    """MovieLens-100K as a :class:`rechub_serving.train.MovieLens` (ratings in the file order of ``u.data``)."""
    import pandas as pd

    from rechub_serving.train import MovieLens

    with zipfile.ZipFile(recbole_wheel(cache)) as zf:

        def read(name: str) -> pd.DataFrame:
            raw = zf.read(f"recbole/dataset_example/ml-100k/ml-100k.{name}").decode("latin-1")
            frame = pd.read_csv(io.StringIO(raw), sep="\t", dtype=str, keep_default_na=False, quoting=3)
            frame.columns = [c.split(":")[0] for c in frame.columns]
            return frame

        inter, user, item = read("inter"), read("user"), read("item")
    ratings = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype(int),
            "movie_id": inter["item_id"].astype(int),
            "rating": inter["rating"].astype(float).astype(int),
            "timestamp": inter["timestamp"].astype(float).astype("int64"),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": user["user_id"].astype(int),
            "gender": user["gender"],
            "age": user["age"].astype(int),
            "occupation": user["occupation"],
            "zip": user["zip_code"],
        }
    )
    movies = pd.DataFrame(
        {
            "movie_id": item["item_id"].astype(int),
            "title": item["movie_title"] + " (" + item["release_year"] + ")",
            "genres": item["class"].str.split().str.join("|"),
        }
    )
    return MovieLens(ratings, users, movies)


def synthetic(n_interactions: int = 100_000, seed: int = 0):
    """MovieLens-shaped synthetic data: 2,000 users, 1,000 items (what `rechub-index train --synthetic` trains on)."""
    from rechub_serving.train import make_synthetic

    return make_synthetic(2000, 1000, n_interactions, seed=seed)


DATASETS = {"ml-100k": ml100k, "synthetic": synthetic}
