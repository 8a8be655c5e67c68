"""Reading vectors, ids and exclusions from files, and writing query results.

Every problem is reported as a :class:`CliError` that names the file and what
is wrong with it (missing, unknown format, wrong shape, NaN, ...), never as a
traceback. Formats: ``.npy``, ``.npz``, ``.pt``/``.pth`` (``torch.load`` with
``weights_only=True``, only when torch is installed), ``.parquet`` (pyarrow)
and ``.csv`` (the standard library). No pickle is ever loaded.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._common import CliError, to_jsonable

__all__ = [
    "RESULT_SUFFIXES",
    "VECTOR_SUFFIXES",
    "Loaded",
    "load_exclude",
    "load_ids",
    "load_vectors",
    "result_rows",
    "write_results",
]

VECTOR_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".parquet", ".csv")
RESULT_SUFFIXES = (".npz", ".parquet", ".csv", ".jsonl")
_ID_NAMES = ("id", "ids", "item_id", "item_ids", "user_id", "query_id")
_VECTOR_NAMES = ("embeddings", "embedding", "vectors", "vector", "item_vectors", "item_embeddings", "user_vectors", "x")


@dataclass
class Loaded:
    """Vectors read from a file, with the ids found beside them (if any) and where they came from."""

    vectors: np.ndarray
    ids: np.ndarray | None = None
    ids_source: str | None = None


# -- generic readers ------------------------------------------------------------------------------
def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise CliError(f"{path}: no such file ({what})")
    if path.is_dir():
        raise CliError(f"{path}: is a directory, expected a {what} file")


def _read_dict(path: Path) -> dict[str, Any] | np.ndarray:
    """An .npy array, or the arrays of an .npz / .pt file (a bare tensor comes back as an array)."""
    suffix = path.suffix.lower()
    magic = {".npy": b"\x93NUMPY", ".npz": b"PK"}.get(suffix)
    if magic is not None:
        with open(path, "rb") as fh:
            if fh.read(len(magic)) != magic:
                raise CliError(f"{path}: not a readable {suffix} file (no {suffix} header; wrong format or truncated)")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CliError(f"{path}: holds Python objects (pickled); only numeric arrays are read") from None
        raise CliError(f"{path}: not a readable {suffix} file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise CliError(f"{path}: not a readable {suffix} file ({exc})") from None
    return _read_torch(path)


def _read_torch(path: Path) -> dict[str, Any] | np.ndarray:
    try:
        import torch
    except ImportError:
        raise CliError(
            f"{path}: reading .pt/.pth files needs torch (pip install 'rechub-serving[train]'); "
            "or save the tensor with numpy.save() as .npy"
        ) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"{path}: cannot be loaded with torch.load(weights_only=True): {first}") from None

    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype.is_floating_point and value.dtype.itemsize < 4:
                value = value.float()
            return value.numpy()
        return value

    if isinstance(data, dict):
        return {str(k): convert(v) for k, v in data.items()}
    if isinstance(data, torch.Tensor):
        return convert(data)
    if isinstance(data, (list, tuple)) and data and all(isinstance(v, torch.Tensor) for v in data):
        return {str(i): convert(v) for i, v in enumerate(data)}
    raise CliError(f"{path}: holds a {type(data).__name__}, expected a tensor or a dict of tensors")


def _read_table(path: Path) -> dict[str, np.ndarray]:
    """Columns of a .csv (header optional) or .parquet file."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise CliError(f"{path}: reading .parquet needs pyarrow (pip install 'rechub-serving[io]')") from None
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow.lib.ArrowInvalid and friends
            raise CliError(f"{path}: not a readable parquet file ({exc})") from None
        columns: dict[str, np.ndarray] = {}
        for name in table.column_names:
            col = table.column(name).to_numpy(zero_copy_only=False)
            if col.dtype == object and len(col) and isinstance(col[0], (np.ndarray, list)):
                try:
                    col = np.stack([np.asarray(v) for v in col])
                except ValueError:
                    raise CliError(f"{path}: column {name!r} holds lists of different lengths") from None
            columns[name] = col
        return columns
    return _read_csv(path)


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CliError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise CliError(f"{path}: is empty")
    header = rows[0] if not all(_is_number(c) for c in rows[0]) else None
    body = rows[1:] if header is not None else rows
    width = len(rows[0])
    for line, row in enumerate(body, start=2 if header else 1):
        if len(row) != width:
            raise CliError(f"{path}: line {line} has {len(row)} fields, expected {width} (wrong shape)")
    names = [h.strip() for h in header] if header else [str(i) for i in range(width)]
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        cells = [row[j].strip() for row in body]
        if all(_is_int(c) for c in cells):
            columns[name] = np.array([int(c) for c in cells], dtype=np.int64)
        elif all(_is_number(c) for c in cells):
            columns[name] = np.array([float(c) for c in cells], dtype=np.float64)
        else:
            columns[name] = np.array(cells, dtype=object)
    return columns


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# -- vectors --------------------------------------------------------------------------------------
def load_vectors(
    path: str | Path, what: str = "embeddings", *, key: str | None = None, ids: str | None = None
) -> Loaded:
    """Read an (n, d) matrix of finite numbers from ``path``.

    ``key`` picks the array of an .npz/.pt dict or the vector column of a
    table. ``ids`` is a file of ids, or the name of a column/key of ``path``;
    without it a column/key named ``id``, ``item_id`` (...) is used as ids when present.
    """
    path = Path(path)
    _check_exists(path, what)
    suffix = path.suffix.lower()
    if suffix not in VECTOR_SUFFIXES:
        raise CliError(
            f"{path}: unknown format {suffix or '(no suffix)'}; expected one of {', '.join(VECTOR_SUFFIXES)}"
        )
    id_file = ids if ids is not None and Path(ids).is_file() else None
    id_name = None if ids is None or id_file is not None else ids
    if suffix in (".csv", ".parquet"):
        loaded = _from_table(path, _read_table(path), key, id_name)
    else:
        data = _read_dict(path)
        loaded = _from_arrays(path, data, key, id_name)
    loaded.vectors = check_matrix(loaded.vectors, path)
    if id_file is not None:
        loaded.ids, loaded.ids_source = load_ids(id_file), str(id_file)
    if loaded.ids is not None and len(loaded.ids) != len(loaded.vectors):
        raise CliError(
            f"{loaded.ids_source}: has {len(loaded.ids)} ids but {path} has {len(loaded.vectors)} vectors; give one id per row"
        )
    return loaded


def _from_arrays(path: Path, data: dict[str, Any] | np.ndarray, key: str | None, id_name: str | None) -> Loaded:
    if isinstance(data, np.ndarray):
        if key is not None:
            raise CliError(f"{path}: holds a single array, so --key {key!r} does not apply")
        if id_name is not None:
            raise CliError(f"--ids {id_name}: no such file, and {path} holds a single array (no id key)")
        return Loaded(data)
    names = list(data)
    if key is not None:
        if key not in data:
            raise CliError(f"{path}: has no array {key!r} (it has: {', '.join(names)})")
        vec_key = key
    else:
        two_d = [k for k in names if isinstance(data[k], np.ndarray) and data[k].ndim == 2]
        named = [k for k in _VECTOR_NAMES if k in two_d]
        if len(two_d) == 1:
            vec_key = two_d[0]
        elif named:
            vec_key = named[0]
        else:
            found = ", ".join(f"{k} {getattr(data[k], 'shape', '?')}" for k in names) or "nothing"
            raise CliError(f"{path}: cannot tell which array holds the vectors ({found}); pass --key NAME")
    found_ids, source = _pick_ids(path, data, id_name, exclude=vec_key)
    return Loaded(np.asarray(data[vec_key]), found_ids, source)


def _from_table(path: Path, columns: dict[str, np.ndarray], key: str | None, id_name: str | None) -> Loaded:
    found_ids, source = _pick_ids(path, columns, id_name, exclude=key)
    id_col = source.rsplit(":", 1)[1] if source else None
    rest = {k: v for k, v in columns.items() if k != id_col}
    if key is not None:
        if key not in columns:
            raise CliError(f"{path}: has no column {key!r} (it has: {', '.join(columns)})")
        matrix = rest[key]
    else:
        nested = [k for k, v in rest.items() if v.ndim == 2]
        if len(nested) == 1:
            matrix = rest[nested[0]]
        elif nested:
            raise CliError(f"{path}: several vector columns ({', '.join(nested)}); pass --key NAME")
        else:
            text = [k for k, v in rest.items() if v.dtype.kind not in "iuf"]
            if text:
                raise CliError(
                    f"{path}: column(s) {', '.join(text)} are not numbers; pass --ids COLUMN for an id column "
                    "(every other column is a vector dimension)"
                )
            if not rest:
                raise CliError(f"{path}: has no vector columns")
            matrix = np.column_stack(list(rest.values()))
    return Loaded(np.asarray(matrix), found_ids, source)


def _pick_ids(
    path: Path, data: dict[str, Any], id_name: str | None, exclude: str | None
) -> tuple[np.ndarray | None, str | None]:
    if id_name is not None:
        if id_name not in data:
            raise CliError(
                f"--ids {id_name}: no such file, and {path} has no column/key of that name (it has: {', '.join(data)})"
            )
        name = id_name
    else:
        name = next((n for n in _ID_NAMES if n in data and n != exclude), None)
        if name is None:
            return None, None
    return _as_ids(np.asarray(data[name]), f"{path}:{name}"), f"{path}:{name}"


def check_matrix(array: Any, path: Path | str) -> np.ndarray:
    """A finite (n, d) float32 matrix, or a CliError naming ``path`` and the problem."""
    array = np.asarray(array)
    if array.dtype.kind not in "iuf":
        raise CliError(f"{path}: holds {array.dtype} values, expected numbers")
    if array.ndim != 2:
        raise CliError(f"{path}: has shape {array.shape}, expected a 2-D (n, d) matrix (wrong shape)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise CliError(f"{path}: is empty (shape {array.shape})")
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise CliError(f"{path}: {len(rows)} row(s) contain NaN or inf (first: row {int(rows[0])}); clean or drop them")
    return array


# -- ids --------------------------------------------------------------------------------------------
def _as_ids(values: np.ndarray, source: str) -> np.ndarray:
    if values.ndim != 1:
        raise CliError(f"{source}: ids must be one-dimensional, got shape {values.shape}")
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        if np.isfinite(values).all() and (values == np.round(values)).all():
            return values.astype(np.int64)
        raise CliError(f"{source}: ids are fractional numbers; ids must be integers or strings")
    if values.dtype.kind in "UO":
        text = [str(v) for v in values]
        if text and all(_is_int(t) for t in text) and values.dtype.kind == "U":
            return np.array([int(t) for t in text], dtype=np.int64)
        return np.array(text, dtype=object)
    raise CliError(f"{source}: ids have dtype {values.dtype}; expected integers or strings")


def load_ids(path: str | Path) -> np.ndarray:
    """Ids from .npy, .txt (one per line), .csv (first column, header optional), .json (a list) or .parquet."""
    path = Path(path)
    _check_exists(path, "ids")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz", ".pt", ".pth"):
        data = _read_dict(path)
        if isinstance(data, dict):
            name = next((n for n in _ID_NAMES if n in data), None) or (next(iter(data)) if len(data) == 1 else None)
            if name is None:
                raise CliError(f"{path}: cannot tell which array holds the ids (it has: {', '.join(data)})")
            data = np.asarray(data[name])
        return _as_ids(np.asarray(data), str(path))
    if suffix == ".json":
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CliError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(values, list) or not all(
            isinstance(v, (int, str)) and not isinstance(v, bool) for v in values
        ):
            raise CliError(f"{path}: expected a JSON list of integers or strings")
        kinds = {type(v) for v in values}
        if len(kinds) > 1:
            raise CliError(f"{path}: mixes integer and string ids")
        return np.array(values, dtype=np.int64 if kinds == {int} else object)
    if suffix in (".csv", ".parquet"):
        columns = _read_table(path)
        name = next((n for n in _ID_NAMES if n in columns), None) or next(iter(columns))
        return _as_ids(columns[name], f"{path}:{name}")
    if suffix in (".txt", ".tsv", ""):
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"{path}: not a readable text file ({exc})") from None
        if all(_is_int(v) for v in lines):
            return np.array([int(v) for v in lines], dtype=np.int64)
        return np.array(lines, dtype=object)
    raise CliError(f"{path}: unknown ids format {suffix}; expected .npy, .txt, .csv, .json or .parquet")


# -- exclusions ------------------------------------------------------------------------------------
def load_exclude(
    path: str | Path, n_queries: int, query_ids: np.ndarray | None, id_kind: str | None
) -> list[list[Any]]:
    """Per query row, the ids that must not come back.

    ``.json``: a list with one list (or null) per query, or an object mapping
    a query row number or query id to a list. ``.jsonl``: one list (or null)
    per line and query. ``.csv``/``.parquet``: pairs ``query,item`` (query = row
    number or query id), header optional.
    """
    path = Path(path)
    _check_exists(path, "exclude")
    suffix = path.suffix.lower()
    rows: list[list[Any]] = [[] for _ in range(n_queries)]
    lookup = {str(q): i for i, q in enumerate(query_ids)} if query_ids is not None else {}

    def row_of(key: Any) -> int:
        text = str(key)
        if text in lookup:
            return lookup[text]
        if _is_int(text) and 0 <= int(text) < n_queries:
            return int(text)
        raise CliError(f"{path}: query {key!r} is neither a query id nor a row number below {n_queries}")

    if suffix in (".json", ".jsonl"):
        try:
            text = path.read_text(encoding="utf-8")
            data = (
                json.loads(text)
                if suffix == ".json"
                else [json.loads(line) for line in text.splitlines() if line.strip()]
            )
        except (OSError, ValueError) as exc:
            raise CliError(f"{path}: not valid {suffix[1:].upper()} ({exc})") from None
        if isinstance(data, dict):
            for key, items in data.items():
                rows[row_of(key)] = _id_list(items, path)
        elif isinstance(data, list):
            if len(data) != n_queries:
                raise CliError(
                    f"{path}: has {len(data)} entries but there are {n_queries} queries; give one list per query"
                )
            rows = [_id_list(items, path) for items in data]
        else:
            raise CliError(f"{path}: expected a list of lists or an object of lists")
    elif suffix in (".csv", ".parquet"):
        columns = _read_table(path)
        if len(columns) != 2:
            raise CliError(f"{path}: expected two columns (query, item), found {len(columns)}")
        queries, items = columns.values()
        for q, item in zip(queries, items):
            rows[row_of(q)].append(item.item() if hasattr(item, "item") else item)
    else:
        raise CliError(f"{path}: unknown exclude format {suffix}; expected .json, .jsonl, .csv or .parquet")
    return [_coerce_ids(r, id_kind) for r in rows]


def _id_list(items: Any, path: Path) -> list[Any]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise CliError(f"{path}: expected a list of ids per query, found {type(items).__name__}")
    return items


def _coerce_ids(values: list[Any], kind: str | None) -> list[Any]:
    if kind == "str":
        return [str(v) for v in values]
    if kind == "int":
        out = []
        for v in values:
            if isinstance(v, str) and _is_int(v):
                v = int(v)
            out.append(v)
        return out
    return values


# -- results ---------------------------------------------------------------------------------------
def result_rows(ids: np.ndarray, dist: np.ndarray, query_ids: np.ndarray | None):
    """Long format: (query, rank, id, distance) for every non-padding slot."""
    for i in range(len(dist)):
        q = query_ids[i] if query_ids is not None else i
        q = q.item() if hasattr(q, "item") else q
        for rank in range(dist.shape[1]):
            d = float(dist[i, rank])
            if np.isfinite(d):
                item = ids[i, rank]
                yield q, rank + 1, item.item() if hasattr(item, "item") else item, d


def write_results(
    path: str | Path, ids: np.ndarray, dist: np.ndarray, query_ids: np.ndarray | None, metric: str
) -> Path:
    """Write results to .npz (matrices + valid mask), .parquet / .csv (long format) or .jsonl (one line per query).

    The file is written beside ``path`` and renamed over it at the end: an
    interrupted or failed write leaves no half-written file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in RESULT_SUFFIXES:
        raise CliError(
            f"{path}: unknown output format {suffix or '(no suffix)'}; expected one of {', '.join(RESULT_SUFFIXES)}"
        )
    writer = {".npz": _write_npz, ".jsonl": _write_jsonl, ".csv": _write_csv, ".parquet": _write_parquet}[suffix]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(tmp, ids, dist, query_ids, metric)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_npz(path: Path, ids: np.ndarray, dist: np.ndarray, query_ids: np.ndarray | None, metric: str) -> None:
    valid = np.isfinite(dist)
    out_ids = np.where(valid, ids, "").astype(str) if ids.dtype == object else ids
    extra = (
        {} if query_ids is None else {"query_ids": query_ids.astype(str) if query_ids.dtype == object else query_ids}
    )
    with open(path, "wb") as fh:  # an open file: numpy would add .npz to a name that does not end with it
        np.savez(fh, ids=out_ids, distances=dist, valid=valid, metric=np.array(metric), **extra)


def _write_jsonl(path: Path, ids: np.ndarray, dist: np.ndarray, query_ids: np.ndarray | None, metric: str) -> None:
    valid = np.isfinite(dist)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(len(dist)):
            q = query_ids[i] if query_ids is not None else i
            line = {"query": q, "ids": ids[i][valid[i]], "distances": dist[i][valid[i]]}
            fh.write(json.dumps(to_jsonable(line)) + "\n")


def _write_csv(path: Path, ids: np.ndarray, dist: np.ndarray, query_ids: np.ndarray | None, metric: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["query", "rank", "id", "distance"])
        for q, rank, item, d in result_rows(ids, dist, query_ids):
            writer.writerow([q, rank, item, repr(d)])


def _write_parquet(path: Path, ids: np.ndarray, dist: np.ndarray, query_ids: np.ndarray | None, metric: str) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CliError(f"{path}: writing .parquet needs pyarrow (pip install 'rechub-serving[io]')") from None
    rows = list(result_rows(ids, dist, query_ids))
    table = pa.table(
        {
            "query": [r[0] for r in rows],
            "rank": pa.array([r[1] for r in rows], pa.int32()),
            "id": [r[2] for r in rows],
            "distance": pa.array([r[3] for r in rows], pa.float32()),
        }
    )
    pq.write_table(table, path)
