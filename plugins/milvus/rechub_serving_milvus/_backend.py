"""The ``milvus`` backend: parameters, build, load, and attaching to an existing collection.

Without ``uri`` an index lives in an embedded milvus-lite database: a private
one per index (see :mod:`._private`), or the user's own with ``path=``. With
``uri="http://host:19530"`` (plus ``token``, ``db_name``) it lives on a
Milvus server. The build inserts in batches below the gRPC message limit,
flushes, builds the index, loads, and only then searches, so queries never
scan unindexed segments.

What ``save`` writes depends on where the data lives: an embedded index
saves its own milvus-lite database (the collection's files) inside the saved
directory, so the directory can be copied, moved or deleted like any saved
index; a server index saves a pointer to its collection, which is kept.
Indexes saved by rechub-serving-milvus 0.1 (pointers into a shared
milvus-lite database) still open, with a note on how to convert them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rechub_serving import (
    Backend,
    BackendConfig,
    BackendError,
    Builder,
    Capabilities,
    DimensionMismatchError,
    EngineFiles,
    Indexer,
    IndexFormatError,
    InvalidParameterError,
)

from ._collection import (
    CollectionInfo,
    IndexSpec,
    check_name,
    count_rows,
    create_collection,
    current_index,
    describe_collection,
    insert_rows,
    load,
    new_name,
)
from ._connection import Connection, Target
from ._defaults import (
    INDEX_PARAMS,
    INDEX_TYPES,
    METRIC_OF,
    OWN_PARAMS,
    PK_FIELD,
    VECTOR_FIELD,
    build_timeout,
    milvus_metric,
    tune_values,
)
from ._engine import MilvusEngine
from ._host import LiteHost
from ._params import PARAMS
from ._private import DATA_DIR, PrivateDatabase, link_or_copy

__all__ = ["MilvusBackend", "open_collection"]

logger = logging.getLogger("rechub_serving.milvus")

CONVERT_HINT = "save it again (open_index(path).save(path)) or run `rechub-index milvus convert PATH`"


def _connect(target: Target, config: Mapping[str, Any], **kw: Any) -> Connection:
    return Connection(
        target, connect_timeout=config["connect_timeout"], timeout=config["timeout"], retries=config["retries"], **kw
    )


def _engine_options(config: Mapping[str, Any]) -> dict[str, Any]:
    return {"batch_size": config["batch_size"], "progress": config["progress"], "consistency": config["consistency"]}


class MilvusBackend(Backend):
    """Milvus: embedded milvus-lite by default, a Milvus server with ``uri=``."""

    name = "milvus"
    engine_distribution = "pymilvus"
    native_ids = True
    capabilities = Capabilities(exact=False, add=True, remove=True, native_filter=True, persist=True)
    params = PARAMS

    def capabilities_for(self, config: BackendConfig) -> Capabilities:
        exact = config["index_type"] == "FLAT"
        return Capabilities(exact=exact, add=True, remove=True, native_filter=True, persist=True)

    def check_config(self, config: BackendConfig) -> None:
        kind = config["index_type"]
        own = OWN_PARAMS.get(kind, ())
        for name in INDEX_PARAMS:
            if config[name] is not None and name not in own:
                owner = "IVF_FLAT" if name in OWN_PARAMS["IVF_FLAT"] else "HNSW"
                raise InvalidParameterError(
                    f"milvus: {name} applies to index_type={owner!r}, not {kind!r}; drop it or change index_type"
                )
        # nprobe > nlist is allowed: it visits every list (the same rule as the faiss plugin).
        target = Target.from_config(config)  # uri / path / db_name combinations
        if not target.is_server:
            LiteHost.prestart()  # seconds of imports in the host, overlapped with the caller's own work

    def tune_space(self, config: BackendConfig) -> Mapping[str, Sequence[Any]]:
        return tune_values(config["index_type"], config["nlist"])

    # -- build ---------------------------------------------------------------------------------
    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> MilvusEngine:
        assert ids is not None  # native_ids: the core passes the external ids
        target = Target.from_config(config)
        name = config["collection"] or new_name()
        kind = "int" if ids.dtype == np.int64 else "str"
        temporary = config["collection"] is None
        conn = _connect(target, config, purpose=f"temporary index (collection {name})")
        try:
            if not target.is_private and conn.call("has_collection", conn.client.has_collection, name, collection=name):
                raise BackendError(
                    f"collection {name!r} already exists on {conn.describe()}; attach to it with "
                    "rechub_serving_milvus.open_collection(), drop it, or choose another collection= name"
                )
            create_collection(conn, name, kind, vectors.shape[1], config["consistency"] or "Bounded", temporary)
        except BaseException as exc:
            conn.close(wait=not isinstance(exc, KeyboardInterrupt))
            raise
        spec = IndexSpec.for_build(config, config.metric, len(vectors))
        info = CollectionInfo(PK_FIELD, VECTOR_FIELD, vectors.shape[1], kind)
        next_id = int(ids.max()) + 1 if kind == "int" and len(ids) else None
        engine = MilvusEngine(
            conn, name, spec, info, len(vectors), temporary=True, next_id=next_id, **_engine_options(config)
        )
        try:
            insert_rows(conn, name, vectors, ids, batch_size=config["batch_size"], progress=config["progress"])
            conn.call("flush", conn.client.flush, name, collection=name)
            slow = build_timeout(config["build_timeout"], config["timeout"], len(vectors))
            spec.create(conn, name, timeout=slow)
            load(conn, name, slow)
        except BaseException as exc:
            # The collection is ours and half-built: dropped with its database, without waiting.
            if isinstance(exc, KeyboardInterrupt):
                logger.info("milvus build interrupted: removing collection %r on %s", name, conn.describe())
                engine.abandon()
            else:
                engine.close()
            raise
        if not temporary and not target.is_private:  # a named collection outlives the index
            engine.keep()
        return engine

    # -- load ------------------------------------------------------------------------------------
    def load(self, files: EngineFiles, config: BackendConfig) -> MilvusEngine:
        meta = files.meta
        name = meta.get("collection")
        if not isinstance(name, str) or not name:
            raise IndexFormatError("the manifest names no Milvus collection; the index is damaged")
        spec = _saved_spec(meta)
        if meta.get("layout") == "embedded":
            return self._load_embedded(files, config, name, spec)
        location = meta.get("location") or {}
        given = config.given
        if location.get("kind") == "lite" and not given.get("uri"):
            target = Target.lite(given.get("path") or location.get("path") or "")
            logger.warning(
                "%s was saved by rechub-serving-milvus 0.1 and points into the shared milvus-lite database %s "
                "(collection %r); %s to make it self-contained",
                _saved_path(files),
                target.path,
                name,
                CONVERT_HINT,
            )
        elif given.get("uri") or given.get("host") or given.get("path"):
            target = Target.from_config(config)
        else:
            target = Target.from_config({**config, "uri": location.get("uri"), "db_name": location.get("db_name")})
        if target.is_private:
            raise IndexFormatError("the manifest does not say where the Milvus collection is; the index is damaged")
        conn = _connect(target, config)
        try:
            return _attach(conn, name, spec, config, files.dim, meta.get("id_kind"), files.count)
        except BaseException:
            conn.close()
            raise

    def _load_embedded(self, files: EngineFiles, config: BackendConfig, name: str, spec: IndexSpec) -> MilvusEngine:
        given = {k: config.given[k] for k in ("uri", "host", "path") if config.given.get(k)}
        if given:  # the builder the index was built with, say: its location does not apply
            logger.info("%s holds its own milvus-lite database; %s ignored", _saved_path(files), ", ".join(given))
        private = PrivateDatabase(f"copy of the saved index {_saved_path(files)}")
        try:
            prefix = DATA_DIR + "/"
            for rel in files.names():
                if rel.startswith(prefix):
                    link_or_copy(files.path(rel), private.data_dir / rel[len(prefix) :])
            conn = _connect(Target(), config, private=private)
        except BaseException:
            private.release()
            raise
        try:
            return _attach(conn, name, spec, config, files.dim, files.meta.get("id_kind"), files.count)
        except BaseException:
            conn.close()
            raise


def _saved_path(files: EngineFiles) -> str:
    """The saved index's directory for messages (``files.directory`` reads through a pinned descriptor)."""
    return os.path.realpath(files.directory.parent)


def _saved_spec(meta: Mapping[str, Any]) -> IndexSpec:
    index = meta.get("index")
    if not isinstance(index, Mapping) or not isinstance(index.get("index_type"), str):
        raise IndexFormatError("the manifest's engine entry has no Milvus index description; the index is damaged")
    return IndexSpec.from_dict(index)


def _attach(
    conn: Connection, name: str, spec: IndexSpec, config: BackendConfig, dim: int, id_kind: Any, count: int
) -> MilvusEngine:
    """The engine of a saved collection (``count`` vectors): checked against what was saved, indexed and loaded."""
    info = describe_collection(conn, name)
    if info.dim != dim:
        raise IndexFormatError(
            f"collection {name!r} on {conn.describe()} has dimension {info.dim}, the saved index says {dim}; "
            "it is not the collection that was saved, or the manifest was edited"
        )
    if id_kind and id_kind != info.kind:
        raise BackendError(
            f"collection {name!r} on {conn.describe()} has {info.kind} primary keys, the saved index has {id_kind} ids"
        )
    existing = current_index(conn, name, info)
    slow = build_timeout(config["build_timeout"], config["timeout"], count)
    if existing is None:
        conn.call("flush", conn.client.flush, name, collection=name)
        spec.create(conn, name, info.vector, slow)
    elif existing.metric != spec.metric:
        raise BackendError(
            f"collection {name!r} on {conn.describe()} is indexed with metric {existing.metric}, "
            f"the saved index uses {spec.metric}"
        )
    load(conn, name, slow)
    return MilvusEngine(conn, name, spec, info, count_rows(conn, name), temporary=False, **_engine_options(config))


def open_collection(name: str | None = None, *, builder: Builder | None = None, **params: Any) -> Indexer:
    """Attach to an existing collection on a server (``uri=``) or in your milvus-lite database (``path=``).

    ``builder`` (a milvus builder) or ``params`` configure the connection;
    ``name`` defaults to the builder's ``collection=``. The collection needs
    one primary key (int64 or varchar) and one float vector field. An index
    on it decides the metric and index type (a ``metric=`` given must agree);
    without one, an index is built from the builder's parameters. The
    collection is never dropped on close.
    """
    if builder is None:
        builder = Builder(MilvusBackend, **params)
    elif params:
        raise InvalidParameterError("open_collection(): give either builder= or parameters, not both")
    if builder.name != MilvusBackend.name:
        raise InvalidParameterError(f"open_collection() needs a milvus builder, not {builder.name!r}")
    config = builder.config
    name = name or config["collection"]
    if not name:
        raise InvalidParameterError("milvus: open_collection() needs a collection name (argument or collection=)")
    try:
        check_name(name)
    except ValueError as exc:
        raise InvalidParameterError(f"milvus: collection {name!r}: {exc}") from None
    target = Target.from_config(config)
    if target.is_private:
        raise InvalidParameterError(
            "milvus: open_collection() attaches to a collection on a server (uri=) or in your own milvus-lite "
            "database (path=); an embedded index without them has a private database that nothing else uses"
        )
    conn = _connect(target, config)
    try:
        info = describe_collection(conn, name)
        if config.dim is not None and config.dim != info.dim:
            raise DimensionMismatchError(
                f"collection {name!r} on {conn.describe()} has dimension {info.dim}, not dim={config.dim}"
            )
        spec = current_index(conn, name, info)
        rows = count_rows(conn, name)
        slow = build_timeout(config["build_timeout"], config["timeout"], rows)
        if spec is not None:
            builder = _builder_for(builder, spec, name, conn)
        else:
            spec = IndexSpec.for_build(config, config.metric, rows)
            conn.call("flush", conn.client.flush, name, collection=name)
            spec.create(conn, name, info.vector, slow)
        load(conn, name, slow)
        engine = MilvusEngine(
            conn, name, spec, info, count_rows(conn, name), temporary=False, **_engine_options(builder.config)
        )
    except BaseException:
        conn.close()
        raise
    return builder.from_engine(engine)


def _builder_for(builder: Builder, spec: IndexSpec, name: str, conn: Connection) -> Builder:
    """A builder configured as an existing collection's index (metric, type, build parameters)."""
    metric = METRIC_OF.get(spec.metric)
    if metric is None:
        raise BackendError(f"collection {name!r} uses metric {spec.metric}, which rechub-serving does not map")
    given = builder.given_params
    if "metric" in given and milvus_metric(builder.metric) != spec.metric:
        raise InvalidParameterError(
            f"collection {name!r} on {conn.describe()} is indexed with metric {metric.value}, "
            f"not {builder.metric.value}; omit metric= to use the collection's"
        )
    index_type = spec.index_type if spec.index_type in INDEX_TYPES else "AUTOINDEX"
    settings = {k: v for k, v in given.items() if k not in ("index_type", "nlist", "m", "ef_construction")}
    from_index = {
        "nlist": spec.params.get("nlist"),
        "m": spec.params.get("M"),
        "ef_construction": spec.params.get("efConstruction"),
    }
    settings.update({k: int(v) for k, v in from_index.items() if v is not None})
    settings.update(index_type=index_type, metric=metric.value)
    own = OWN_PARAMS.get(index_type, ())
    settings = {k: v for k, v in settings.items() if k not in INDEX_PARAMS or k in own}
    return Builder(MilvusBackend, **settings)
