"""The ``milvus`` backend's parameter schema: names, aliases (torch-rechub's among them), defaults, bounds.

Every integer is bounded here, so an out-of-range value is the library's
error, never an engine overflow. Runtime options (where the data lives,
timeouts) are not build parameters of a saved index; ``token`` is a secret.
"""

from __future__ import annotations

from rechub_serving import Param

from ._collection import check_name
from ._defaults import INDEX_TYPES

__all__ = ["PARAMS"]

PARAMS = (
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
        "IVF_FLAT clusters visited per query (default max(16, nlist/8); above nlist: every list)",
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
        "Milvus consistency level of searches (default: Strong for the first search after a build, attach, add or "
        "remove, so writes are always visible; Bounded otherwise, which skips the server's wait for the next time tick)",
        aliases=("consistency_level",),
        choices=("Strong", "Session", "Bounded", "Eventually"),
    ),
    Param(
        "collection",
        str,
        None,
        "collection name (default: a unique temporary rechub_<hex>, dropped on close unless saved)",
        aliases=("collection_name", "name"),
        runtime=True,
        check=check_name,
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
        "your own milvus-lite database (a directory ending in .db); default: a private database per index",
        runtime=True,
    ),
    Param(
        "batch_size",
        int,
        None,
        "rows per insert request (default: as many as fit in 16 MiB)",
        minimum=1,
        maximum=1 << 24,
        runtime=True,
    ),
    Param(
        "connect_timeout",
        float,
        10.0,
        "seconds one connection attempt may take",
        minimum=0.1,
        maximum=3600,
        runtime=True,
    ),
    Param("timeout", float, 60.0, "seconds any one request may take", minimum=0.1, maximum=86400, runtime=True),
    Param(
        "build_timeout",
        float,
        None,
        "seconds an index build or load may take (default: timeout + 1 s per 1,000 vectors)",
        minimum=0.1,
        maximum=7 * 86400,
        runtime=True,
    ),
    Param(
        "retries", int, 3, "extra connection attempts, with exponential back-off", minimum=0, maximum=10, runtime=True
    ),
    Param("progress", bool, None, "progress bar for long builds (default: when stderr is a terminal)", runtime=True),
)
