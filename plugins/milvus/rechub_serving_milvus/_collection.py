"""One Milvus collection: its schema, its vector index, batched inserts, and the SDK's marks on it.

A collection the SDK creates has a primary key ``pk`` (INT64, or VARCHAR for
string ids: the external ids themselves) and one float vector field
``vector``, and carries *collection properties* that make it recognisable
later (``rechub-index milvus list``)::

    rechub.sdk        "rechub-serving-milvus"   (the mark: nothing without it is ever dropped by the SDK)
    rechub.owner      "<pid>@<host>"            the process that created it
    rechub.created    ISO 8601 time
    rechub.temporary  "true" until saved or kept; a temporary collection is dropped on close

Its default name is ``rechub_<16 hex digits>``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rechub_serving import BackendError, InvalidParameterError, Metric

from ._connection import Connection
from ._defaults import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_M,
    METRIC_OF,
    PK_FIELD,
    VARCHAR_MAX,
    VECTOR_FIELD,
    insert_batch_rows,
    milvus_metric,
    nlist_for,
)

__all__ = [
    "CollectionInfo",
    "IndexSpec",
    "check_name",
    "count_rows",
    "create_collection",
    "current_index",
    "describe_collection",
    "drop_quietly",
    "insert_rows",
    "is_sdk_collection",
    "literal",
    "load",
    "mark_kept",
    "new_name",
    "sdk_properties",
]

logger = logging.getLogger("rechub_serving.milvus")

SDK_MARK = "rechub-serving-milvus"
P_SDK, P_OWNER, P_CREATED, P_TEMPORARY = "rechub.sdk", "rechub.owner", "rechub.created", "rechub.temporary"
_LEGACY_NAME = re.compile(r"rechub_[0-9a-f]{16}")  # default names of rechub-serving-milvus 0.1


def check_name(value: str) -> str:
    """A valid Milvus collection name (the ``collection`` parameter's check)."""
    if not value or not (value[0].isalpha() or value[0] == "_") or not all(c.isalnum() or c == "_" for c in value):
        raise ValueError("a Milvus collection name starts with a letter or _ and holds only letters, digits and _")
    if len(value) > 255:
        raise ValueError("a Milvus collection name has at most 255 characters")
    return value


def new_name() -> str:
    return f"rechub_{uuid.uuid4().hex[:16]}"


def sdk_properties(temporary: bool) -> dict[str, str]:
    """The properties that mark a collection as the SDK's."""
    return {
        P_SDK: SDK_MARK,
        P_OWNER: f"{os.getpid()}@{socket.gethostname()}",
        P_CREATED: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        P_TEMPORARY: "true" if temporary else "false",
    }


def is_sdk_collection(name: str, description: Mapping[str, Any]) -> bool:
    """True for collections this SDK created: marked, or a 0.1 default name with the SDK's two fields."""
    if (description.get("properties") or {}).get(P_SDK) == SDK_MARK:
        return True
    fields = {f.get("name") for f in description.get("fields") or []}
    return bool(_LEGACY_NAME.fullmatch(name)) and fields == {PK_FIELD, VECTOR_FIELD}


def mark_kept(conn: Connection, name: str) -> None:
    """Record that a collection is no longer temporary (saved, or kept on request)."""
    try:
        conn.call(
            "alter_collection_properties",
            conn.client.alter_collection_properties,
            name,
            properties={P_TEMPORARY: "false"},
            collection=name,
        )
    except BackendError as exc:  # an old server without properties: the mark is informative only
        logger.debug("could not mark collection %r as kept: %s", name, exc)


@dataclass(frozen=True)
class CollectionInfo:
    """The fields of an existing collection that the SDK uses."""

    pk: str
    vector: str
    dim: int
    kind: str  # "int" or "str"

    @property
    def fields(self) -> tuple[str, str]:
        return self.pk, self.vector


def create_collection(conn: Connection, name: str, kind: str, dim: int, consistency: str, temporary: bool) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    if kind == "int":
        schema.add_field(PK_FIELD, DataType.INT64, is_primary=True)
    else:
        schema.add_field(PK_FIELD, DataType.VARCHAR, is_primary=True, max_length=VARCHAR_MAX)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    conn.call(
        "create_collection",
        conn.client.create_collection,
        name,
        schema=schema,
        consistency_level=consistency,
        properties=sdk_properties(temporary),
        collection=name,
    )
    logger.info("created collection %r on %s", name, conn.describe())


def describe_collection(conn: Connection, name: str) -> CollectionInfo:
    """Fields of an existing collection; a clear error when it is missing or unusable."""
    client = conn.client
    if not conn.call("has_collection", client.has_collection, name, collection=name):
        raise BackendError(
            f"collection {name!r} does not exist on {conn.describe()} (dropped, or another uri/path/db_name?)"
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
        raise BackendError(f"collection {name!r} on {conn.describe()} needs a primary key and a float vector field")
    return CollectionInfo(pk, vector, dim, kind)


def _index_description(conn: Connection, name: str, field: str) -> dict[str, Any] | None:
    client = conn.client
    names = conn.call("list_indexes", client.list_indexes, name, collection=name)
    for index_name in names or []:
        desc = conn.call("describe_index", client.describe_index, name, index_name, collection=name)
        if desc and desc.get("field_name", field) == field:
            return dict(desc)
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


def _wait_for_index(conn: Connection, name: str, field: str, timeout: float) -> dict[str, Any] | None:
    """The index description once every row is indexed (a server builds in the background).

    Loading before that serves the unindexed rows by brute force, and results
    change under the user's feet when the index arrives.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        desc = _index_description(conn, name, field)
        if desc is None or "state" not in desc:
            return desc  # an engine that builds synchronously
        state = str(desc.get("state", ""))
        if state.lower() == "failed":
            raise BackendError(f"{conn.describe()} failed to build the index of collection {name!r}: {desc}")
        pending = int(desc.get("pending_index_rows") or 0)
        if state.lower() == "finished" and not pending:
            return desc
        if time.monotonic() > deadline:
            raise BackendError(
                f"the index of collection {name!r} on {conn.describe()} was not built within {timeout:g}s "
                f"(state {state}, {pending} rows pending); pass a larger build_timeout="
            )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def current_index(conn: Connection, name: str, info: CollectionInfo) -> IndexSpec | None:
    """The vector index a collection has, if any."""
    desc = _index_description(conn, name, info.vector)
    if not desc:
        return None
    params = {k: v for k, v in _flat_params(desc).items() if k in ("nlist", "M", "efConstruction")}
    return IndexSpec(
        str(desc.get("index_type", "AUTOINDEX")).upper(), str(desc.get("metric_type", "L2")).upper(), params
    )


def load(conn: Connection, name: str, timeout: float | None = None) -> None:
    """Load a collection for search (reading or building its index: minutes for millions of vectors)."""
    conn.call("load", conn.client.load_collection, name, collection=name, timeout=timeout or conn.timeout)


def count_rows(conn: Connection, name: str) -> int:
    client = conn.client
    rows = conn.call(
        "count", client.query, name, filter="", output_fields=["count(*)"], consistency_level="Strong", collection=name
    )
    return int(rows[0]["count(*)"]) if rows else 0


def drop_quietly(conn: Connection, name: str, timeout: float | None = None) -> None:
    """Drop a collection; a failure is logged, never raised (closing must not fail)."""
    try:
        conn.client.drop_collection(name, timeout=min(timeout or conn.timeout, conn.timeout))
        logger.info("dropped collection %r on %s", name, conn.describe())
    except Exception as exc:
        logger.warning("could not drop collection %r on %s: %s", name, conn.describe(), conn.message(exc))


def _progress(total: int, enabled: bool | None, what: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    disable = None if enabled is None else not enabled  # None: tqdm hides itself without a terminal
    return tqdm(total=total, desc=what, unit="vec", disable=disable, leave=False)


def insert_rows(
    conn: Connection,
    name: str,
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    batch_size: int | None,
    progress: bool | None,
    fields: tuple[str, str] = (PK_FIELD, VECTOR_FIELD),
) -> None:
    """Insert in batches below the gRPC message limit."""
    pk, vector_field = fields
    kind = "int" if ids.dtype == np.int64 else "str"
    step = insert_batch_rows(vectors.shape[1], kind, batch_size)
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


def literal(value: Any) -> str:
    """A primary key as a Milvus filter literal."""
    return json.dumps(value) if isinstance(value, str) else str(int(value))


class IndexSpec:
    """The vector index of a collection: type, Milvus metric name and build parameters."""

    def __init__(self, index_type: str, metric: str, params: Mapping[str, Any]):
        self.index_type = index_type
        self.metric = metric
        self.params = dict(params)

    @classmethod
    def for_build(cls, config: Mapping[str, Any], metric: Metric, n: int) -> IndexSpec:
        kind = config["index_type"]
        params: dict[str, Any] = {}
        if kind == "IVF_FLAT":
            if config["nlist"] and config["nlist"] > max(n, 1):
                logger.info("nlist=%d exceeds the %d vectors; using nlist=%d", config["nlist"], n, max(n, 1))
            params["nlist"] = nlist_for(n, config["nlist"])
        elif kind == "HNSW":
            params["M"] = config["m"] or DEFAULT_M
            params["efConstruction"] = config["ef_construction"] or DEFAULT_EF_CONSTRUCTION
        return cls(kind, milvus_metric(metric), params)

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> IndexSpec:
        return cls(str(saved["index_type"]), str(saved["metric"]), dict(saved.get("params") or {}))

    def as_dict(self) -> dict[str, Any]:
        return {"index_type": self.index_type, "metric": self.metric, "params": dict(self.params)}

    @property
    def metric_enum(self) -> Metric:
        return METRIC_OF.get(self.metric, Metric.L2)

    @property
    def nlist(self) -> int:
        return int(self.params.get("nlist", 1))

    def create(self, conn: Connection, name: str, field: str = VECTOR_FIELD, timeout: float | None = None) -> None:
        """Build the index (within ``timeout`` seconds) and check that it is the one asked for."""
        client = conn.client
        index_params = client.prepare_index_params()
        index_params.add_index(
            field_name=field, index_type=self.index_type, metric_type=self.metric, params=self.params
        )
        if self.params:
            # pymilvus >= 2.5 sends build parameters as flat key/value pairs, older ones as one
            # JSON "params" entry; servers read both, milvus-lite only the JSON one. Send both.
            for param in index_params:
                param.get_index_configs()["params"] = dict(self.params)
        try:
            client.create_index(name, index_params, timeout=timeout or conn.timeout)
        except Exception as exc:
            text = str(exc).lower()
            if "already exist" in text:  # pymilvus retried a call whose connection dropped: check what exists
                self.verify(conn, name, _wait_for_index(conn, name, field, timeout or conn.timeout))
                return
            if "index" in text and ("type" in text or "support" in text or "invalid" in text):
                raise InvalidParameterError(
                    f"{conn.describe()} does not support index_type={self.index_type!r} with "
                    f"{self.params or 'default parameters'} ({conn.message(exc)}); choose another index_type"
                ) from None
            raise conn.error(f"create_index {self.index_type}", exc, name) from None
        self.verify(conn, name, _wait_for_index(conn, name, field, timeout or conn.timeout))

    def verify(self, conn: Connection, name: str, got: Mapping[str, Any] | None) -> None:
        """Check that the engine built what was asked (milvus-lite ignores what it does not know)."""
        if got is None:
            raise BackendError(f"{conn.describe()} reports no index on collection {name!r} after building one")
        if str(got.get("index_type", "")).upper() != self.index_type:
            raise InvalidParameterError(
                f"{conn.describe()} built index_type {got.get('index_type')!r} instead of "
                f"{self.index_type!r}; this engine does not support {self.index_type!r}, choose another index_type"
            )
        applied = _flat_params(got)
        ignored = {k: v for k, v in self.params.items() if str(applied.get(k)) != str(v)}
        if ignored:
            raise InvalidParameterError(
                f"{conn.describe()} ignored the {self.index_type} parameters {ignored} (it reports "
                f"{ {k: applied.get(k) for k in ignored} }); this engine does not support them"
            )
        logger.info("built %s index on collection %r", self.index_type, name)
