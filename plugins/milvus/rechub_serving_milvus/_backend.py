"""The ``milvus`` backend: a Milvus collection whose primary keys are the external ids.

Without ``uri`` the collection lives in an embedded milvus-lite database on
local disk; with ``uri="http://host:19530"`` (plus ``token``, ``db_name``) it
lives on a Milvus server. The build inserts in batches below the gRPC message
limit, flushes, builds the index, loads, and only then searches, so queries
never scan unindexed segments.

A collection made by ``from_embeddings`` without a ``collection=`` name is
temporary: it is dropped when the index is closed, unless it was saved.
``save()`` writes a manifest that points at the collection; loading it
re-attaches without inserting anything. A collection named by the user is
never dropped.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rechub_serving import (
    BackendError,
    Builder,
    Capabilities,
    DimensionMismatchError,
    DuplicateIdError,
    IdMap,
    Indexer,
    InvalidInputError,
    InvalidParameterError,
    Metric,
    NotAnIndexError,
    Param,
)

from ._connection import Connection, Target

__all__ = ["MAX_TOPK", "MilvusBuilder", "MilvusIndexer"]

logger = logging.getLogger("rechub_serving.milvus")

INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")
MAX_TOPK = 16384  # Milvus' limit on results per query
MAX_NQ = 1000  # queries per search request
MESSAGE_BYTES = 16 << 20  # payload budget of one insert / search request (the gRPC limit is 64 MiB)
PK_FIELD = "pk"
VECTOR_FIELD = "vector"
VARCHAR_MAX = 65535
ENGINE_FILE = "milvus.json"
_MILVUS_METRIC = {Metric.L2: "L2", Metric.IP: "IP", Metric.COSINE: "COSINE"}
_METRIC_OF = {v: k for k, v in _MILVUS_METRIC.items()}


def _name_check(value: str) -> str:
    if not value or not (value[0].isalpha() or value[0] == "_") or not all(c.isalnum() or c == "_" for c in value):
        raise ValueError("a Milvus collection name starts with a letter or _ and holds only letters, digits and _")
    if len(value) > 255:
        raise ValueError("a Milvus collection name has at most 255 characters")
    return value


class MilvusBuilder(Builder):
    """Milvus: embedded milvus-lite by default, a Milvus server with ``uri=``."""

    name = "milvus"
    capabilities = Capabilities(exact=False, add=True, remove=True, native_filter=True, persist=True)
    params = (
        Param(
            "index_type",
            str,
            "HNSW",
            "FLAT (exact scan), IVF_FLAT, HNSW or AUTOINDEX",
            aliases=("index",),
            choices=INDEX_TYPES,
        ),
        Param(
            "nlist",
            int,
            None,
            "IVF_FLAT clusters (default ~4*sqrt(n), at most n)",
            aliases=("nlists",),
            minimum=1,
            maximum=65536,
        ),
        Param(
            "nprobe",
            int,
            None,
            "IVF_FLAT clusters visited per query (default nlist/8, at least 16)",
            minimum=1,
            maximum=65536,
            search=True,
        ),
        Param("m", int, None, "HNSW links per node (default 16)", minimum=2, maximum=2048),
        Param(
            "ef_construction",
            int,
            None,
            "HNSW build beam (default 200)",
            aliases=("efConstruction",),
            minimum=1,
            maximum=1 << 20,
        ),
        Param(
            "ef_search",
            int,
            None,
            "HNSW search beam (default max(64, k); never below k)",
            aliases=("ef", "efSearch"),
            minimum=1,
            maximum=1 << 20,
            search=True,
        ),
        Param(
            "consistency",
            str,
            None,
            "Milvus consistency level of searches (default: Strong for the first search after a build, "
            "attach, add or remove, so writes are always visible; Bounded otherwise, which skips the "
            "server's wait for the next time tick)",
            aliases=("consistency_level",),
            choices=("Strong", "Session", "Bounded", "Eventually"),
        ),
        Param(
            "collection",
            str,
            None,
            "collection name (default: a unique temporary one, dropped on close unless saved)",
            aliases=("collection_name",),
            runtime=True,
            check=_name_check,
        ),
        Param("uri", str, None, "Milvus server, e.g. http://host:19530 (default: embedded milvus-lite)", runtime=True),
        Param("host", str, None, "server host (torch-rechub style; same as uri=http://host:port)", runtime=True),
        Param("port", int, None, "server port with host= (default 19530)", minimum=1, maximum=65535, runtime=True),
        Param(
            "token",
            str,
            None,
            "server credentials 'user:password' or API key (default: $RECHUB_MILVUS_TOKEN)",
            runtime=True,
            secret=True,
        ),
        Param("db_name", str, None, "database on the server (default: the server's default)", runtime=True),
        Param(
            "path",
            str,
            None,
            "milvus-lite database file (default: $RECHUB_MILVUS_PATH or ~/.cache/rechub-serving/milvus.db)",
            runtime=True,
        ),
        Param(
            "batch_size",
            int,
            None,
            "rows per insert request (default: as many as fit in 16 MiB)",
            minimum=1,
            runtime=True,
        ),
        Param("connect_timeout", float, 10.0, "seconds one connection attempt may take", minimum=0.1, runtime=True),
        Param("timeout", float, 60.0, "seconds any one request may take", minimum=0.1, runtime=True),
        Param(
            "retries",
            int,
            3,
            "extra connection attempts, with exponential back-off",
            minimum=0,
            maximum=10,
            runtime=True,
        ),
        Param(
            "progress", bool, None, "progress bar for long builds (default: when stderr is a terminal)", runtime=True
        ),
    )

    @classmethod
    def engine_version(cls) -> str | None:
        try:
            from importlib.metadata import version

            return f"pymilvus {version('pymilvus')}"
        except Exception:
            return None

    def capabilities_for(self, config: Mapping[str, Any]) -> Capabilities:
        exact = config.get("index_type") == "FLAT"
        return Capabilities(exact=exact, add=True, remove=True, native_filter=True, persist=True)

    def _check_config(self, config: dict[str, Any]) -> None:
        kind = config["index_type"]
        allowed = {"IVF_FLAT": {"nlist", "nprobe"}, "HNSW": {"m", "ef_construction", "ef_search"}}.get(kind, set())
        for name in ("nlist", "nprobe", "m", "ef_construction", "ef_search"):
            if config.get(name) is not None and name not in allowed:
                owner = "IVF_FLAT" if name in ("nlist", "nprobe") else "HNSW"
                raise InvalidParameterError(
                    f"milvus: {name} applies to index_type={owner!r}, not {kind!r}; drop it or change index_type"
                )
        if config.get("nprobe") and config.get("nlist") and config["nprobe"] > config["nlist"]:
            raise InvalidParameterError(f"milvus: nprobe={config['nprobe']} exceeds nlist={config['nlist']}")
        Target.from_config(config)  # uri / path / db_name combinations

    # -- connecting ---------------------------------------------------------------
    def _connection(self, target: Target | None = None) -> Connection:
        cfg = self.config
        return Connection(
            target or Target.from_config(cfg),
            connect_timeout=cfg["connect_timeout"],
            timeout=cfg["timeout"],
            retries=cfg["retries"],
        )

    # -- build ----------------------------------------------------------------------
    def _build(self, vectors: np.ndarray, ids: IdMap) -> MilvusIndexer:
        cfg = self.config
        keep = cfg["collection"] is not None
        name = cfg["collection"] or f"rechub_{uuid.uuid4().hex[:16]}"
        conn = self._connection()
        client = conn.client
        try:
            if conn.call("has_collection", client.has_collection, name, collection=name):
                raise BackendError(
                    f"collection {name!r} already exists on {conn.target.describe()}; attach to it with "
                    "MilvusBuilder(...).open_collection(), drop it, or choose another collection= name"
                )
            kind = ids.kind
            self._create_collection(conn, name, kind, vectors.shape[1])
        except BaseException:
            conn.close()
            raise
        try:
            spec = IndexSpec.for_build(cfg, self.metric, len(vectors))
            _insert(conn, name, vectors, ids.ids, cfg["batch_size"], cfg["progress"])
            conn.call("flush", client.flush, name, collection=name)
            spec.create(conn, name)
            conn.call("load", client.load_collection, name, collection=name)
        except BaseException:
            _drop_quietly(conn, name)
            conn.close()
            raise
        next_id = int(ids.ids.max()) + 1 if kind == "int" and len(ids.ids) else None
        return MilvusIndexer(conn, name, spec, kind, len(vectors), temporary=not keep, next_id=next_id)

    def _create_collection(self, conn: Connection, name: str, kind: str, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        if kind == "int":
            schema.add_field(PK_FIELD, DataType.INT64, is_primary=True)
        else:
            schema.add_field(PK_FIELD, DataType.VARCHAR, is_primary=True, max_length=VARCHAR_MAX)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        client = conn.client
        conn.call(
            "create_collection",
            client.create_collection,
            name,
            schema=schema,
            consistency_level=self.config["consistency"] or "Bounded",
            collection=name,
        )
        logger.info("created collection %r on %s", name, conn.target.describe())

    # -- load / attach ------------------------------------------------------------------
    def _load(self, directory: Path, manifest: Mapping[str, Any]) -> MilvusIndexer:
        engine = dict(manifest.get("engine") or {})
        if (directory / ENGINE_FILE).is_file():
            try:
                engine.update(json.loads((directory / ENGINE_FILE).read_text()))
            except ValueError as exc:
                raise NotAnIndexError(f"{directory / ENGINE_FILE} is not valid JSON ({exc})") from None
        where = engine.get("location") or {}
        name = self.given_params.get("collection") or engine.get("collection")
        if not name:
            raise NotAnIndexError(f"{directory.parent}: the manifest names no Milvus collection")
        cfg = dict(self.config)
        if not self.given_params.get("uri") and not self.given_params.get("path"):
            if where.get("kind") == "server":
                cfg["uri"], cfg["db_name"] = where.get("uri"), self.given_params.get("db_name") or where.get("db_name")
            elif where.get("path"):
                cfg["path"] = where["path"]
        conn = self._connection(Target.from_config(cfg))
        try:
            info = _describe(conn, name)
            if info.dim != int(manifest["dim"]):
                raise DimensionMismatchError(
                    f"collection {name!r} on {conn.target.describe()} has dimension {info.dim}, the saved index "
                    f"{directory.parent} says {manifest['dim']}; it is not the collection that was saved"
                )
            if engine.get("id_kind") and engine["id_kind"] != info.kind:
                raise BackendError(
                    f"collection {name!r} on {conn.target.describe()} has {info.kind} primary keys, the saved index "
                    f"has {engine['id_kind']} ids"
                )
            spec = IndexSpec.from_saved(engine.get("index") or {}, self.config, self.metric)
            existing = _current_index(conn, name, info)
            if existing is None:
                conn.call("flush", conn.client.flush, name, collection=name)
                spec.create(conn, name)
            elif existing[1] != _MILVUS_METRIC[self.metric]:
                raise BackendError(
                    f"collection {name!r} on {conn.target.describe()} is indexed with metric {existing[1]}, "
                    f"the saved index uses {self.metric.value}"
                )
            conn.call("load", conn.client.load_collection, name, collection=name)
            count = _count(conn, name)
        except BaseException:
            conn.close()
            raise
        return MilvusIndexer(conn, name, spec, info.kind, count, temporary=False, fields=info.fields)

    def open_collection(self, name: str | None = None) -> MilvusIndexer:
        """Attach to an existing collection (``name`` or the builder's ``collection=``); never dropped on close.

        The collection needs one primary key (int64 or varchar) and one float
        vector field. An index on it decides the metric and index type (a
        ``metric=`` given to the builder must agree); without one, an index is
        built from this builder's parameters.
        """
        name = name or self.config["collection"]
        if not name:
            raise InvalidParameterError("milvus: open_collection() needs a collection name (argument or collection=)")
        _name_check(name)
        conn = self._connection()
        try:
            info = _describe(conn, name)
            if self.config["dim"] is not None and self.config["dim"] != info.dim:
                raise DimensionMismatchError(
                    f"collection {name!r} on {conn.target.describe()} has dimension {info.dim}, not dim={self.config['dim']}"
                )
            existing = _current_index(conn, name, info)
            builder: MilvusBuilder = self
            if existing is not None:
                index_type, metric_name, index_params = existing
                metric = _METRIC_OF.get(metric_name)
                if metric is None:
                    raise BackendError(
                        f"collection {name!r} uses metric {metric_name}, which rechub-serving does not map"
                    )
                if "metric" in self.given_params and metric is not self.metric:
                    raise InvalidParameterError(
                        f"collection {name!r} on {conn.target.describe()} is indexed with metric {metric.value}, "
                        f"not {self.metric.value}; omit metric= to use the collection's"
                    )
                given = {
                    k: v
                    for k, v in self.given_params.items()
                    if k not in ("index_type", "nlist", "m", "ef_construction")
                }
                settings = {"index_type": index_type if index_type in INDEX_TYPES else "AUTOINDEX", **given}
                settings["metric"] = metric.value
                settings = {k: v for k, v in settings.items() if not _foreign(k, settings["index_type"])}
                builder = type(self)(**settings)
                spec = IndexSpec(index_type, _MILVUS_METRIC[metric], index_params)
            else:
                spec = IndexSpec.for_build(self.config, self.metric, _count(conn, name))
                conn.call("flush", conn.client.flush, name, collection=name)
                spec.create(conn, name)
            conn.call("load", conn.client.load_collection, name, collection=name)
            count = _count(conn, name)
        except BaseException:
            conn.close()
            raise
        indexer = MilvusIndexer(conn, name, spec, info.kind, count, temporary=False, fields=info.fields)
        indexer._attach(builder, info.dim, None)
        return indexer


def _foreign(name: str, index_type: str) -> bool:
    own = {"IVF_FLAT": {"nlist", "nprobe"}, "HNSW": {"m", "ef_construction", "ef_search"}}.get(index_type, set())
    return name in ("nlist", "nprobe", "m", "ef_construction", "ef_search") and name not in own


class IndexSpec:
    """The vector index of a collection: type, Milvus metric name and build parameters."""

    def __init__(self, index_type: str, metric: str, params: dict[str, Any]):
        self.index_type = index_type
        self.metric = metric
        self.params = params

    @classmethod
    def for_build(cls, config: Mapping[str, Any], metric: Metric, n: int) -> IndexSpec:
        kind = config["index_type"]
        params: dict[str, Any] = {}
        if kind == "IVF_FLAT":
            nlist = config["nlist"] or round(4 * math.sqrt(max(n, 1)))
            if nlist > max(n, 1):
                logger.warning("nlist=%d exceeds the %d vectors; using nlist=%d", nlist, n, max(n, 1))
            params["nlist"] = max(1, min(nlist, max(n, 1), 65536))
        elif kind == "HNSW":
            params["M"] = config["m"] or 16
            params["efConstruction"] = config["ef_construction"] or 200
        return cls(kind, _MILVUS_METRIC[metric], params)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any], config: Mapping[str, Any], metric: Metric) -> IndexSpec:
        if saved.get("index_type"):
            return cls(
                saved["index_type"], saved.get("metric") or _MILVUS_METRIC[metric], dict(saved.get("params") or {})
            )
        return cls.for_build(config, metric, 0)

    def as_dict(self) -> dict[str, Any]:
        return {"index_type": self.index_type, "metric": self.metric, "params": dict(self.params)}

    def create(self, conn: Connection, name: str) -> None:
        """Build the index on the server and check that it is the one asked for."""
        client = conn.client
        index_params = client.prepare_index_params()
        index_params.add_index(
            field_name=VECTOR_FIELD, index_type=self.index_type, metric_type=self.metric, params=self.params
        )
        if self.params:
            # pymilvus >= 2.5 sends build parameters as flat key/value pairs, older ones as one
            # JSON "params" entry; servers read both, milvus-lite only the JSON one. Send both.
            for param in index_params:
                param.get_index_configs()["params"] = dict(self.params)
        try:
            client.create_index(name, index_params, timeout=conn.timeout)
        except Exception as exc:
            text = str(exc).lower()
            if "index" in text and ("type" in text or "support" in text or "invalid" in text):
                raise InvalidParameterError(
                    f"{conn.target.describe()} does not support index_type={self.index_type!r} with "
                    f"{self.params or 'default parameters'} ({exc}); choose another index_type"
                ) from None
            raise conn.error(f"create_index {self.index_type}", exc, name) from None
        self.verify(conn, name, _index_description(conn, name, VECTOR_FIELD))

    def verify(self, conn: Connection, name: str, got: Mapping[str, Any] | None) -> None:
        """Check that the engine built what was asked (milvus-lite ignores what it does not know)."""
        if got is None:
            raise BackendError(f"{conn.target.describe()} reports no index on collection {name!r} after building one")
        if str(got.get("index_type", "")).upper() != self.index_type:
            raise InvalidParameterError(
                f"{conn.target.describe()} built index_type {got.get('index_type')!r} instead of "
                f"{self.index_type!r}; this engine does not support {self.index_type!r}, choose another index_type"
            )
        applied = _flat_params(got)
        ignored = {k: v for k, v in self.params.items() if str(applied.get(k)) != str(v)}
        if ignored:
            raise InvalidParameterError(
                f"{conn.target.describe()} ignored the {self.index_type} parameters {ignored} (it reports "
                f"{ {k: applied.get(k) for k in ignored} }); this engine does not support them"
            )
        logger.info("built %s index on collection %r", self.index_type, name)

    def search_params(self, params: Mapping[str, Any], k: int) -> dict[str, Any]:
        """Milvus search parameters for one call."""
        out: dict[str, Any] = {}
        if self.index_type == "IVF_FLAT":
            nlist = int(self.params.get("nlist", 1))
            nprobe = params.get("nprobe") or max(16, nlist // 8)
            out["nprobe"] = max(1, min(int(nprobe), nlist))
        elif self.index_type == "HNSW":
            ef = params.get("ef_search") or max(64, k)
            out["ef"] = max(int(ef), k)
        # A per-query parameter of another index type (nprobe on HNSW) is ignored, like
        # generic tools expect; given to the builder it is an error (_check_config).
        return {"metric_type": self.metric, "params": out}


class _CollectionInfo:
    def __init__(self, pk: str, vector: str, dim: int, kind: str):
        self.fields = (pk, vector)
        self.dim = dim
        self.kind = kind


def _describe(conn: Connection, name: str) -> _CollectionInfo:
    """Fields of an existing collection; a clear error when it is missing or unusable."""
    client = conn.client
    if not conn.call("has_collection", client.has_collection, name, collection=name):
        raise BackendError(
            f"collection {name!r} does not exist on {conn.target.describe()} (dropped, or another uri/path/db_name?)"
        )
    desc = conn.call("describe_collection", client.describe_collection, name, collection=name)
    from pymilvus import DataType

    pk = vector = None
    dim = 0
    kind = "int"
    for f in desc.get("fields", []):
        ftype = f.get("type")
        if f.get("is_primary"):
            pk = f["name"]
            kind = "int" if ftype == DataType.INT64 else "str"
        elif ftype == DataType.FLOAT_VECTOR:
            if vector is not None:
                raise BackendError(f"collection {name!r} has several float vector fields; rechub-serving needs one")
            vector = f["name"]
            dim = int((f.get("params") or {}).get("dim", 0))
    if pk is None or vector is None:
        raise BackendError(
            f"collection {name!r} on {conn.target.describe()} needs a primary key and a float vector field"
        )
    return _CollectionInfo(pk, vector, dim, kind)


def _index_description(conn: Connection, name: str, field: str) -> dict[str, Any] | None:
    client = conn.client
    names = conn.call("list_indexes", client.list_indexes, name, collection=name)
    for index_name in names or []:
        desc = conn.call("describe_index", client.describe_index, name, index_name, collection=name)
        if desc and desc.get("field_name", field) == field:
            return desc
    return None


def _flat_params(desc: Mapping[str, Any]) -> dict[str, Any]:
    """Build parameters of an index description, whether flat or in a "params" entry."""
    skip = {
        "index_type",
        "metric_type",
        "field_name",
        "index_name",
        "total_rows",
        "indexed_rows",
        "pending_index_rows",
        "state",
    }
    out: dict[str, Any] = {}
    for key, value in desc.items():
        if key in skip:
            continue
        if key == "params":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    continue
            if isinstance(value, dict):
                out.update(value)
            continue
        out[key] = int(value) if isinstance(value, str) and value.isdigit() else value
    return out


def _current_index(conn: Connection, name: str, info: _CollectionInfo) -> tuple[str, str, dict[str, Any]] | None:
    desc = _index_description(conn, name, info.fields[1])
    if not desc:
        return None
    params = {k: v for k, v in _flat_params(desc).items() if k in ("nlist", "M", "efConstruction")}
    return str(desc.get("index_type", "AUTOINDEX")).upper(), str(desc.get("metric_type", "L2")).upper(), params


def _count(conn: Connection, name: str) -> int:
    client = conn.client
    rows = conn.call(
        "count", client.query, name, filter="", output_fields=["count(*)"], consistency_level="Strong", collection=name
    )
    return int(rows[0]["count(*)"]) if rows else 0


def _drop_quietly(conn: Connection, name: str) -> None:
    try:
        conn.client.drop_collection(name, timeout=conn.timeout)
        logger.info("dropped collection %r on %s", name, conn.target.describe())
    except Exception:
        logger.warning("could not drop collection %r on %s", name, conn.target.describe(), exc_info=True)


def _insert_batch_rows(dim: int, kind: str, batch_size: int | None) -> int:
    per_row = dim * 4 + (16 if kind == "int" else 80)
    fit = max(1, MESSAGE_BYTES // per_row)
    return max(1, min(batch_size or fit, fit))


def _progress(total: int, enabled: bool | None, what: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    disable = None if enabled is None else not enabled  # None: tqdm hides itself without a terminal
    return tqdm(total=total, desc=what, unit="vec", disable=disable, leave=False)


def _insert(
    conn: Connection,
    name: str,
    vectors: np.ndarray,
    ids: np.ndarray,
    batch_size: int | None,
    progress: bool | None,
    pk: str = PK_FIELD,
    vector_field: str = VECTOR_FIELD,
) -> None:
    kind = "int" if ids.dtype == np.int64 else "str"
    step = _insert_batch_rows(vectors.shape[1], kind, batch_size)
    bar = _progress(len(vectors), progress, f"milvus insert {name}") if len(vectors) > step else None
    client = conn.client
    try:
        for start in range(0, len(vectors), step):
            stop = min(start + step, len(vectors))
            keys = ids[start:stop].tolist()
            rows = [{pk: key, vector_field: vec} for key, vec in zip(keys, vectors[start:stop])]
            conn.call("insert", client.insert, name, rows, collection=name)
            logger.debug("inserted rows %d..%d into %r", start, stop, name)
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()


def _literal(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(int(value))


class MilvusIndexer(Indexer):
    """A loaded Milvus collection; primary keys are the external ids."""

    native_ids = True

    def __init__(
        self,
        conn: Connection,
        name: str,
        spec: IndexSpec,
        kind: str,
        count: int,
        *,
        temporary: bool,
        next_id: int | None = None,
        fields: tuple[str, str] = (PK_FIELD, VECTOR_FIELD),
    ):
        self._conn = conn
        self.collection = name
        self._spec = spec
        self._kind = kind
        self._count = int(count)
        self._temporary = temporary
        self._next_id = next_id
        self._pk, self._vector_field = fields
        self._fresh_writes = True  # the first search waits for every write (Strong)

    @property
    def location(self) -> str:
        """Where the collection lives (no secrets)."""
        return f"{self._conn.target.describe()}, collection {self.collection!r}"

    @property
    def temporary(self) -> bool:
        """True when closing drops the collection (made by from_embeddings, never saved)."""
        return self._temporary

    def keep(self) -> None:
        """Keep the collection after close even if the index is not saved."""
        self._temporary = False

    # -- search ----------------------------------------------------------------------
    def _search(self, queries, k, params, exclude):
        if k > MAX_TOPK:
            raise InvalidInputError(f"Milvus returns at most {MAX_TOPK} results per query; k={k} is too large")
        search = self._spec.search_params(params, k)
        plan = self._plan(exclude, k, len(queries))
        if plan is None:
            return self._overfetch_search(queries, k, params, exclude)
        if len(plan) == 1 and len(plan[0][0]) == len(queries):
            return self._search_rows(queries, k, search, plan[0][2])
        n = len(queries)
        labels = np.full((n, k), None if self._kind == "str" else -1, dtype=object if self._kind == "str" else np.int64)
        dist = np.full((n, k), self.metric.pad_distance, dtype=np.float32)
        for rows, limit, expr in plan:
            labels[rows], dist[rows] = self._search_rows(queries[rows], limit, search, expr)
        return labels, dist

    def _plan(self, exclude, k, n):
        """Requests to make, as (rows, limit, filter expression); None: over-fetch and drop instead."""
        if exclude is None or not any(len(r) for r in exclude):
            return [(np.arange(n), k, "")]
        distinct: dict[tuple, list[int]] = {}
        for i, row in enumerate(exclude):
            distinct.setdefault(tuple(sorted(row.tolist())), []).append(i)
        extra = max(len(key) for key in distinct)
        # A filter is one expression per request: cheap when few distinct exclusion lists
        # (one user per request); over-fetching serves many different lists in one request.
        if len(distinct) > 4 and k + extra <= min(MAX_TOPK, self._count):
            return None
        return [
            (np.asarray(rows), k, f"{self._pk} not in [{', '.join(_literal(v) for v in key)}]" if key else "")
            for key, rows in distinct.items()
        ]

    def _search_rows(self, queries: np.ndarray, k: int, search: dict, expr: str):
        n = len(queries)
        is_str = self._kind == "str"
        out_ids = np.full((n, k), None if is_str else -1, dtype=object if is_str else np.int64)
        out_dist = np.full((n, k), self.metric.pad_distance, dtype=np.float32)
        step = max(1, min(MAX_NQ, MESSAGE_BYTES // max(1, queries.shape[1] * 4), max(1, MAX_NQ * 16 // max(k, 1))))
        client = self._conn.client
        consistency = self._builder.config["consistency"]
        if consistency is None:
            consistency = "Strong" if self._fresh_writes else "Bounded"
        for start in range(0, n, step):
            batch = queries[start : start + step]
            result = self._conn.call(
                "search",
                client.search,
                self.collection,
                data=[row for row in batch],
                limit=k,
                filter=expr,
                output_fields=[self._pk],
                search_params=search,
                anns_field=self._vector_field,
                consistency_level=consistency,
                collection=self.collection,
            )
            for j, hits in enumerate(result):
                got = len(hits.ids)
                if got:
                    out_ids[start + j, :got] = list(hits.ids[:k])
                    out_dist[start + j, :got] = np.asarray(hits.distances[:k], dtype=np.float32)
        if consistency == "Strong":
            self._fresh_writes = False
        if self.metric is Metric.L2:
            np.maximum(out_dist, 0.0, out=out_dist)
        return out_ids, out_dist

    # -- mutation ----------------------------------------------------------------------
    def _check_kind(self, ids: np.ndarray) -> None:
        kind = "int" if ids.dtype == np.int64 else "str"
        if len(ids) and kind != self._kind:
            raise InvalidInputError(f"this index has {self._kind} ids; got {kind} ids")

    def _existing(self, ids: np.ndarray) -> list:
        """Which of ``ids`` are in the collection."""
        found: list = []
        client = self._conn.client
        for start in range(0, len(ids), 4096):
            chunk = ids[start : start + 4096].tolist()
            expr = f"{self._pk} in [{', '.join(_literal(v) for v in chunk)}]"
            rows = self._conn.call(
                "query",
                client.query,
                self.collection,
                filter=expr,
                output_fields=[self._pk],
                consistency_level="Strong",
                collection=self.collection,
            )
            found += [row[self._pk] for row in rows]
        return found

    def _max_id(self) -> int:
        if self._next_id is None:
            client = self._conn.client
            top = -1
            try:
                iterator = client.query_iterator(
                    self.collection, batch_size=16384, filter="", output_fields=[self._pk], timeout=self._conn.timeout
                )
                while True:
                    page = iterator.next()
                    if not page:
                        break
                    top = max(top, max(int(row[self._pk]) for row in page))
                iterator.close()
            except Exception as exc:
                raise self._conn.error("scanning ids", exc, self.collection) from None
            self._next_id = top + 1
        return self._next_id

    def _add(self, vectors, ids):
        if ids is None:
            if self._kind == "str":
                raise InvalidInputError("this index has string ids; pass ids= for the new vectors")
            start = self._max_id()
            ids = np.arange(start, start + len(vectors), dtype=np.int64)
        self._check_kind(ids)
        dup = self._existing(ids)
        if dup:
            raise DuplicateIdError(f"id {dup[0]!r} is already in the index; remove it first or use another id")
        cfg = self._builder.config
        _insert(
            self._conn, self.collection, vectors, ids, cfg["batch_size"], cfg["progress"], self._pk, self._vector_field
        )
        self._count += len(ids)
        self._fresh_writes = True
        if self._kind == "int" and len(ids):
            self._next_id = max(self._next_id or 0, int(ids.max()) + 1)

    def _remove(self, ids):
        if not len(ids):
            return 0
        self._check_kind(ids)
        found = self._existing(ids)
        if found:
            client = self._conn.client
            for start in range(0, len(found), 4096):
                self._conn.call(
                    "delete",
                    client.delete,
                    self.collection,
                    ids=found[start : start + 4096],
                    collection=self.collection,
                )
            self._count -= len(found)
            self._fresh_writes = True
        return len(found)

    def upsert(self, embeddings: Any, ids: Any) -> None:
        """Insert or replace vectors by id (remove then add, under the index lock)."""
        with self._lock:
            self.remove(ids)
            self.add(embeddings, ids)

    def _engine_count(self) -> int:
        return self._count

    # -- persistence ---------------------------------------------------------------------
    def _save(self, directory: Path) -> dict[str, Any]:
        self._conn.call("flush", self._conn.client.flush, self.collection, collection=self.collection)
        self._temporary = False
        logger.info("saved index points at %s", self.location)
        info = {
            "collection": self.collection,
            "location": self._conn.target.manifest_entry(),
            "id_kind": self._kind,
            "fields": {"pk": self._pk, "vector": self._vector_field},
            "index": self._spec.as_dict(),
            "server_version": self._conn.server_version(),
        }
        # The engine's own file: where the data lives (checksummed by the core like any file).
        (directory / ENGINE_FILE).write_text(json.dumps(info, indent=2))
        return {**info, "file": ENGINE_FILE}

    def _close(self) -> None:
        try:
            if self._temporary:
                _drop_quietly(self._conn, self.collection)
        finally:
            self._conn.close()
