"""Retriever: an ONNX user tower joined to a saved item index (onnxruntime and numpy only, no torch).

Raw user features go in (a dict of columns, one user as a dict of scalars, or
a pandas DataFrame), raw item ids with scores come out, the user's seen items
(its history plus any ``seen=`` ids) excluded. The tower's metadata (written
by :func:`rechub_serving.train.export_towers`) says how to encode each
feature; the index must match the tower's dimension, metric and
normalisation, and, when both record one, its model hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rechub_serving import Indexer, InvalidInputError, RechubError

__all__ = ["ModelMismatchError", "Recommendations", "Retriever", "read_tower_metadata"]

logger = logging.getLogger("rechub_serving")

METADATA_KEY = "rechub_serving"
PAD, UNK, OFFSET = 0, 1, 2


class ModelMismatchError(RechubError, ValueError):
    """The index was not built from this tower's model (dimension, metric, normalisation or hash)."""


def _session(path: Path, providers: Sequence[str] | None, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise RechubError("the Retriever needs onnxruntime: pip install 'rechub-serving[serve]'") from None
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist; pass the user_tower.onnx written by `rechub-index train`")
    options = None
    if threads is not None:
        if int(threads) < 0:
            raise InvalidInputError(f"threads must be >= 0 (0: onnxruntime's default), got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"]))


def read_tower_metadata(path: str | Path) -> dict[str, Any]:
    """The ``rechub_serving`` metadata of an exported tower (raises if absent)."""
    session = _session(Path(path), None)
    return _metadata(session, Path(path))


def _metadata(session: Any, path: Path) -> dict[str, Any]:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise InvalidInputError(
            f"{path} has no {METADATA_KEY!r} metadata; export it with rechub_serving.train.export_towers"
        )
    return json.loads(raw)


class _Encoder:
    """Raw value -> index with the training vocabulary (0 padding, 1 unknown).

    :meth:`key` is the one rule for how a raw value meets the vocabulary;
    :meth:`encode` and :meth:`keys` take vectorised shortcuts for the common
    columns (all ints for an int vocabulary, all strings for a string one)
    that give the same answer as applying :meth:`key` value by value.
    """

    def __init__(self, values: Sequence[Any]):
        self.ints = bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        self.lookup = {v: i + OFFSET for i, v in enumerate(values)}
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        if self.ints:
            try:
                raw = np.asarray(values, dtype=np.int64)
            except OverflowError:  # ids beyond int64: the per-value path only
                raw = None
            if raw is not None:
                order = np.argsort(raw, kind="stable")
                self._sorted = (raw[order], (order + OFFSET).astype(np.int64))

    def key(self, value: Any) -> Any:
        if hasattr(value, "item"):
            value = value.item()
        if self.ints and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if self.ints and isinstance(value, float) and value.is_integer():
            return int(value)
        if not self.ints and isinstance(value, int):
            return str(value) if str(value) in self.lookup else value
        return value

    def keys(self, values: list[Any]) -> list[Any]:
        """:meth:`key` of every value (the list itself when no value changes)."""
        if self.ints:
            if all(type(v) is int for v in values):
                return values
        elif all(type(v) is str for v in values):
            return values
        return [self.key(v) for v in values]

    def encode(self, values: Sequence[Any]) -> np.ndarray:
        n = len(values)
        if n and self._sorted is not None and all(type(v) is int for v in values):
            try:
                query = np.fromiter(values, dtype=np.int64, count=n)
            except OverflowError:
                query = None
            if query is not None:
                keys, codes = self._sorted
                pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
                return np.where(keys[pos] == query, codes[pos], UNK)
        get = self.lookup.get
        if not self.ints:
            return np.fromiter(
                (get(v, UNK) if type(v) is str else get(self.key(v), UNK) for v in values), dtype=np.int64, count=n
            )
        return np.fromiter((get(self.key(v), UNK) for v in values), dtype=np.int64, count=n)


class Recommendations:
    """Top-k raw item ids and scores (higher is better) per user; padding is id None/-1 with score -inf."""

    __slots__ = ("item_ids", "scores")

    def __init__(self, item_ids: np.ndarray, scores: np.ndarray):
        self.item_ids = item_ids
        self.scores = scores

    def __iter__(self):
        yield self.item_ids
        yield self.scores

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.scores)

    def to_lists(self) -> list[list[tuple[Any, float]]]:
        """Per user, the ``(item_id, score)`` pairs without padding."""
        out = []
        for ids, scores in zip(self.item_ids, self.scores):
            keep = np.isfinite(scores)
            out.append([(i.item() if hasattr(i, "item") else i, float(s)) for i, s in zip(ids[keep], scores[keep])])
        return out

    def __repr__(self) -> str:
        return f"Recommendations(users={len(self)}, k={self.scores.shape[1] if self.scores.ndim == 2 else 0})"


class Retriever:
    """Serve a two-tower model: ONNX user tower + saved item index.

    ``user_tower``: the ``user_tower.onnx`` of an export. ``index``: a saved
    index directory (opened with :func:`rechub_serving.open_index`, ``index_params``
    passed on) or an open :class:`Indexer`. ``vocabularies``: a JSON file or
    mapping overriding the tower's own. ``threads``: onnxruntime's intra-op
    threads for the tower (default: its own choice, all cores). Raises
    :class:`ModelMismatchError` when the index does not fit the tower.
    """

    def __init__(
        self,
        user_tower: str | Path,
        index: str | Path | Indexer,
        *,
        vocabularies: str | Path | Mapping[str, Any] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        **index_params: Any,
    ):
        self.tower_path = Path(user_tower)
        self._session = _session(self.tower_path, providers, threads)
        self.metadata = _metadata(self._session, self.tower_path)
        if self.metadata.get("tower") != "user":
            raise InvalidInputError(f"{self.tower_path} is the {self.metadata.get('tower')} tower; pass the user tower")
        self.k = k
        self.exclude_seen = exclude_seen
        self.dim = int(self.metadata["dim"])
        self.metric = str(self.metadata["metric"])
        self.normalized = bool(self.metadata.get("normalized", True))
        self.model_hash = self.metadata.get("model_hash")
        self.inputs = list(self.metadata["inputs"])
        self.seq_max_len = int(self.metadata.get("seq_max_len", 50))
        self.item_vocabulary = self.metadata.get("item_id_feature")
        self._encoders = self._load_encoders(vocabularies)
        self._owns_index = not isinstance(index, Indexer)
        if isinstance(index, Indexer):
            self.index = index
        else:
            from . import open_index

            self.index = open_index(Path(index), **index_params)
        try:
            self._check(self.index, index)
        except Exception:
            if self._owns_index:
                self.index.close()
            raise

    # -- checks -----------------------------------------------------------------------------
    def _check(self, index: Indexer, where: Any) -> None:
        meta = index.metadata
        if index.dim != self.dim:
            raise ModelMismatchError(
                f"the index {where} has dimension {index.dim}, the user tower outputs {self.dim}; "
                "rebuild the index from this model's item tower"
            )
        if index.metric.value != self.metric:
            raise ModelMismatchError(
                f"the index {where} uses metric {index.metric.value!r}, the tower was trained for {self.metric!r}; "
                f"rebuild the index with metric={self.metric!r}"
            )
        normalized = bool(meta.get("normalized", index.metric.value == "cosine"))
        if normalized != self.normalized:
            raise ModelMismatchError(
                f"the index {where} has normalized={normalized}, the tower has normalized={self.normalized}"
            )
        recorded = meta.get("model_hash")
        if recorded and self.model_hash and recorded != self.model_hash:
            raise ModelMismatchError(
                f"the index {where} was built from model {recorded[:12]}…, the user tower is model "
                f"{self.model_hash[:12]}…; export both from the same training run"
            )
        if not recorded:
            logger.warning("the index %s records no model hash; cannot check it was built from this tower", where)

    def _load_encoders(self, override: Any) -> dict[str, _Encoder]:
        if override is not None:
            vocabs = override if isinstance(override, Mapping) else json.loads(Path(override).read_text())
        elif "vocabularies" in self.metadata:
            vocabs = self.metadata["vocabularies"]
        elif "vocabularies_file" in self.metadata:
            file = self.tower_path.parent / self.metadata["vocabularies_file"]
            if not file.is_file():
                raise InvalidInputError(f"{file} (the tower's vocabularies) is missing; pass vocabularies=")
            data = file.read_bytes()
            want = self.metadata.get("vocabularies_sha256")
            if want and hashlib.sha256(data).hexdigest() != want:
                raise ModelMismatchError(f"{file} does not match the vocabularies the tower was exported with")
            vocabs = json.loads(data)
        else:
            vocabs = {}
        encoders = {}
        for spec in self.inputs:
            name = spec.get("vocabulary")
            if spec["type"] != "dense":
                if name not in vocabs:
                    raise InvalidInputError(f"no vocabulary {name!r} for feature {spec['name']!r}; pass vocabularies=")
                encoders[spec["name"]] = _Encoder(vocabs[name]["values"])
        return encoders

    # -- inference ------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [s["name"] for s in self.inputs]

    def _columns(self, features: Any) -> tuple[dict[str, Any], int]:
        if hasattr(features, "to_dict") and hasattr(features, "columns"):  # a pandas DataFrame
            cols = {c: list(features[c]) for c in features.columns}
        elif isinstance(features, Mapping):
            cols = dict(features)
        elif isinstance(features, Sequence) and features and all(isinstance(r, Mapping) for r in features):
            cols = {name: [r.get(name) for r in features] for name in features[0]}
        else:
            raise InvalidInputError(
                "features must be a dict (of columns, or of one user's values), a list of dicts or a DataFrame"
            )
        missing = [n for n in self.feature_names if n not in cols]
        if missing:
            raise InvalidInputError(f"missing user features {missing}; the tower takes {self.feature_names}")
        first = (
            next(s for s in self.inputs if s["type"] != "sequence")["name"]
            if any(s["type"] != "sequence" for s in self.inputs)
            else None
        )
        single = first is not None and np.ndim(cols[first]) == 0 and not isinstance(cols[first], (list, tuple))
        if single:
            cols = {k: [v] for k, v in cols.items()}
        n = len(cols[self.feature_names[0]])
        for name in self.feature_names:
            if len(cols[name]) != n:
                raise InvalidInputError(f"feature {name!r} has {len(cols[name])} values, expected {n} (one per user)")
        return cols, n

    @staticmethod
    def _sequence(value: Any) -> list[Any]:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return []
        if isinstance(value, str):
            return [v for v in value.replace(",", "|").split("|") if v != ""]
        if type(value) is list and (all(type(v) is int for v in value) or all(type(v) is str for v in value)):
            return value  # what the numpy round trip below gives, without it
        return list(np.asarray(value).ravel().tolist())

    def _encode_sequences(self, enc: _Encoder, rows: list[list[Any]]) -> np.ndarray:
        """Left-padded ``(n, seq_max_len)`` codes of each row's last ``seq_max_len`` values, in one encode call."""
        n, width = len(rows), self.seq_max_len
        out = np.zeros((n, width), dtype=np.int64)
        tails = [row[-width:] if width else [] for row in rows]
        lengths = np.fromiter((len(t) for t in tails), dtype=np.int64, count=n)
        total = int(lengths.sum())
        if total:
            flat = [v for t in tails for v in t]
            codes = enc.encode(flat)
            row_of = np.repeat(np.arange(n), lengths)
            starts = np.cumsum(lengths) - lengths
            col_of = width - lengths[row_of] + (np.arange(total) - starts[row_of])
            out[row_of, col_of] = codes
        return out

    def encode(self, features: Any) -> tuple[dict[str, np.ndarray], list[list[Any]]]:
        """ONNX feeds for raw ``features``, and per user the raw item ids of its histories."""
        cols, n = self._columns(features)
        feeds: dict[str, np.ndarray] = {}
        seen: list[list[Any]] = [[] for _ in range(n)]
        for spec in self.inputs:
            name = spec["name"]
            if spec["type"] == "dense":
                feeds[name] = np.asarray(cols[name], dtype=np.float32)
            elif spec["type"] == "sparse":
                feeds[name] = self._encoders[name].encode(list(cols[name]))
            else:
                rows = [self._sequence(v) for v in cols[name]]
                enc = self._encoders[name]
                feeds[name] = self._encode_sequences(enc, rows)
                if spec.get("vocabulary") == self.item_vocabulary:
                    for i, row in enumerate(rows):
                        seen[i].extend(enc.keys(row))
        return feeds, seen

    def embed(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """The user tower's vectors for encoded ``feeds`` (from :meth:`encode`), one tower run for the batch."""
        return self._session.run(["embedding"], dict(feeds))[0]

    def user_vectors(self, features: Any) -> np.ndarray:
        """The user tower's L2-normalised vectors for raw ``features``."""
        feeds, _ = self.encode(features)
        return self.embed(feeds)

    def recommend(
        self,
        features: Any,
        k: int | None = None,
        *,
        seen: Sequence[Any] | None = None,
        exclude_seen: bool | None = None,
        **search_params: Any,
    ) -> Recommendations:
        """Top-``k`` raw item ids per user, the user's history and ``seen`` ids excluded."""
        feeds, history = self.encode(features)
        vectors = self.embed(feeds)
        return self.recommend_vectors(
            vectors, k, history=history, seen=seen, exclude_seen=exclude_seen, **search_params
        )

    def recommend_vectors(
        self,
        vectors: np.ndarray,
        k: int | None = None,
        *,
        history: Sequence[Sequence[Any]] | None = None,
        seen: Sequence[Any] | None = None,
        exclude_seen: bool | None = None,
        **search_params: Any,
    ) -> Recommendations:
        """Top-``k`` for user ``vectors`` already computed (:meth:`embed`), excluding ``history`` and ``seen``.

        ``history`` is the second value :meth:`encode` returns. ``recommend`` is
        ``encode``, ``embed`` and this; a server that gathers many requests runs
        the first two once for all of them and this once per group of requests
        that share ``k`` and search parameters.
        """
        exclude = self.exclusions(len(vectors), history, seen) if (
            self.exclude_seen if exclude_seen is None else exclude_seen
        ) else None  # fmt: skip
        k = min(k or self.k, len(self.index))
        result = self.index.query(vectors, k, exclude=exclude, **search_params)
        return Recommendations(np.asarray(result.indices), np.asarray(result.scores, dtype=np.float32))

    def exclusions(
        self, n: int, history: Sequence[Sequence[Any]] | None, seen: Sequence[Any] | None = None
    ) -> list[list[Any]]:
        """Per user, the item ids the index must not return: its history plus its ``seen`` row."""
        if seen is not None and len(seen) != n:
            raise InvalidInputError(f"seen has {len(seen)} rows for {n} users; give one list per user")
        if history is not None and len(history) != n:
            raise InvalidInputError(f"history has {len(history)} rows for {n} users; give one list per user")
        rows = []
        for i in range(n):
            row = list(history[i]) if history is not None else []
            if seen is not None and seen[i] is not None:
                row.extend(seen[i])
            rows.append(self._index_ids(row))
        return rows

    def _index_ids(self, row: list[Any]) -> list[Any]:
        """Keep only ids of the index's type (a str id never matches an int index and vice versa)."""
        if not row:
            return row
        if self.index.id_kind == "str":
            return row if all(type(v) is str for v in row) else [v for v in row if isinstance(v, str)]
        if all(type(v) is int for v in row):
            return row
        return [v for v in row if not isinstance(v, (str, bool))]

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_index:
            self.index.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Retriever {self.tower_path.name} dim={self.dim} metric={self.metric} index={self.index!r}>"
