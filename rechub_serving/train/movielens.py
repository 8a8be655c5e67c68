"""MovieLens readers for the official file formats, and a checksummed download helper.

Every reader returns the same three pandas frames, so the rest of the pipeline
does not care where the data came from:

``ratings``  ``user_id, movie_id, rating, timestamp`` (one row per interaction)
``users``    ``user_id, gender, age, occupation, zip``
``movies``   ``movie_id, title, genres`` (genres ``|``-separated, as in ML-1M)

Formats: ML-100K (``u.data`` tab-separated, ``u.user`` and ``u.item``
``|``-separated, latin-1, genres as 19 flag columns), ML-1M (``ratings.dat``,
``users.dat``, ``movies.dat``, ``::``-separated, latin-1) and the joined CSV of
torch-rechub's examples (``user_id, movie_id, rating, timestamp, title, genres,
gender, age, occupation, zip``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rechub_serving import InvalidInputError, RechubError

__all__ = [
    "DATASETS",
    "ML100K_GENRES",
    "MovieLens",
    "download_movielens",
    "read_joined_csv",
    "read_ml1m",
    "read_ml100k",
    "read_movielens",
]

logger = logging.getLogger("rechub_serving.train")

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

JOINED_COLUMNS = ("user_id", "movie_id", "rating", "timestamp", "title", "genres", "gender", "age", "occupation", "zip")

# Official GroupLens archives and their sha256 (as published files are immutable).
DATASETS: dict[str, dict[str, str]] = {
    "ml-100k": {
        "url": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "sha256": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    },
    "ml-1m": {
        "url": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "sha256": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    },
}


@dataclass
class MovieLens:
    """The three frames of a MovieLens data set (see the module docstring)."""

    ratings: pd.DataFrame
    users: pd.DataFrame
    movies: pd.DataFrame

    def joined(self) -> pd.DataFrame:
        """One frame in torch-rechub's joined-CSV layout."""
        out = self.ratings.merge(self.movies, on="movie_id", how="left").merge(self.users, on="user_id", how="left")
        return out[list(JOINED_COLUMNS)]

    def write_joined_csv(self, path: str | Path) -> Path:
        path = Path(path)
        self.joined().to_csv(path, index=False)
        return path


def _read_sep(path: Path, sep: str, names: list[str], dtypes: dict | None = None) -> pd.DataFrame:
    """Read a latin-1 separated file with the fast C parser (``::`` is mapped to a tab first)."""
    if not path.is_file():
        raise InvalidInputError(f"{path} is missing; expected the official MovieLens file there")
    text = path.read_bytes().decode("latin-1")
    if len(sep) > 1:
        text = text.replace(sep, "\t")
        sep = "\t"
    return pd.read_csv(
        io.StringIO(text), sep=sep, names=names, header=None, dtype=dtypes, quoting=3, engine="c", keep_default_na=False
    )


def read_ml100k(directory: str | Path) -> MovieLens:
    """Read ML-100K's ``u.data``, ``u.user`` and ``u.item`` from ``directory``."""
    d = Path(directory)
    ratings = _read_sep(d / "u.data", "\t", ["user_id", "movie_id", "rating", "timestamp"])
    users = _read_sep(d / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"], {"zip": str})
    users = users[["user_id", "gender", "age", "occupation", "zip"]]
    names = ["movie_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
    items = _read_sep(d / "u.item", "|", names)
    flags = items[list(ML100K_GENRES)].to_numpy(dtype=bool)
    labels = np.array([g + "|" for g in ML100K_GENRES], dtype=object)
    genres = pd.Series((flags * labels).sum(axis=1), dtype=object).str.rstrip("|")  # vectorised join
    genres = genres.where(genres != "", "unknown")  # flags all zero
    movies = pd.DataFrame({"movie_id": items["movie_id"], "title": items["title"], "genres": genres.to_numpy()})
    return MovieLens(ratings, users, movies)


def read_ml1m(directory: str | Path) -> MovieLens:
    """Read ML-1M's ``ratings.dat``, ``users.dat`` and ``movies.dat`` (``::``, latin-1)."""
    d = Path(directory)
    ratings = _read_sep(d / "ratings.dat", "::", ["user_id", "movie_id", "rating", "timestamp"])
    users = _read_sep(d / "users.dat", "::", ["user_id", "gender", "age", "occupation", "zip"], {"zip": str})
    movies = _read_sep(d / "movies.dat", "::", ["movie_id", "title", "genres"])
    return MovieLens(ratings, users, movies)


def read_joined_csv(path: str | Path) -> MovieLens:
    """Read torch-rechub's joined CSV (``user_id, movie_id, rating, timestamp, title, genres, ...``)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist; expected a CSV with columns {', '.join(JOINED_COLUMNS)}")
    df = pd.read_csv(path, dtype={"zip": str}, keep_default_na=False)
    missing = [c for c in JOINED_COLUMNS if c not in df.columns]
    if missing:
        raise InvalidInputError(f"{path} lacks the columns {', '.join(missing)}; expected {', '.join(JOINED_COLUMNS)}")
    ratings = df[["user_id", "movie_id", "rating", "timestamp"]].reset_index(drop=True)
    users = df[["user_id", "gender", "age", "occupation", "zip"]].drop_duplicates("user_id").reset_index(drop=True)
    movies = df[["movie_id", "title", "genres"]].drop_duplicates("movie_id").reset_index(drop=True)
    return MovieLens(ratings, users, movies)


def read_movielens(path: str | Path) -> MovieLens:
    """Read any supported layout: an ML-100K or ML-1M directory, or a joined CSV file."""
    path = Path(path)
    if path.is_file():
        return read_joined_csv(path)
    if (path / "ratings.dat").is_file():
        return read_ml1m(path)
    if (path / "u.data").is_file():
        return read_ml100k(path)
    for sub in ("ml-1m", "ml-100k"):
        if (path / sub).is_dir():
            return read_movielens(path / sub)
    raise InvalidInputError(
        f"{path} is not a MovieLens data set: expected a joined CSV file, or a directory with "
        "ratings.dat/users.dat/movies.dat (ML-1M) or u.data/u.user/u.item (ML-100K)"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$RECHUB_SERVING_CACHE`` or ``~/.cache/rechub-serving``."""
    return Path(os.environ.get("RECHUB_SERVING_CACHE", Path.home() / ".cache" / "rechub-serving")).expanduser()


def download_movielens(
    name: str = "ml-1m",
    cache_dir: str | Path | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download and unpack a MovieLens archive into ``cache_dir``; return the data directory.

    The archive is checked against its sha256 before it is unpacked (a mismatch
    raises and keeps nothing). A data set already in the cache is not downloaded
    again. ``url``/``sha256`` override the official ones (mirrors, tests).
    """
    if name not in DATASETS and (url is None or sha256 is None):
        raise InvalidInputError(f"unknown data set {name!r}; known: {', '.join(DATASETS)} (or pass url= and sha256=)")
    spec = DATASETS.get(name, {})
    url = url or spec["url"]
    expected = (sha256 or spec["sha256"]).lower()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / name
    marker = target / ".sha256"
    if marker.is_file() and marker.read_text().strip() == expected:
        return _data_root(target, name)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        archive = Path(tmp) / "archive.zip"
        logger.info("downloading %s from %s", name, url)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(archive, "wb") as out:
                shutil.copyfileobj(resp, out)
        except OSError as exc:
            raise RechubError(f"could not download {name} from {url}: {exc}; check the network or pass url=") from exc
        actual = _sha256(archive)
        if actual != expected:
            raise RechubError(
                f"the archive downloaded from {url} has sha256 {actual}, expected {expected}; "
                "the download is corrupt or the file changed upstream (nothing was kept)"
            )
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():  # refuse path traversal
                if member.startswith("/") or ".." in Path(member).parts:
                    raise RechubError(f"the archive from {url} holds an unsafe path {member!r}")
            zf.extractall(unpacked)
        (unpacked / ".sha256").write_text(expected)
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return _data_root(target, name)


def _data_root(target: Path, name: str) -> Path:
    """The directory holding the data files (archives nest them in a folder named after the set)."""
    nested = target / name
    return nested if nested.is_dir() else target
