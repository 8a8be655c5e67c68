"""A process of the multi-process tests: builds or opens an embedded Milvus index and reports as JSON lines.

``python _child.py build --n 500 [--save PATH] [--path DB] [--collection NAME] [--hold]``
``python _child.py open PATH [--ready-dir DIR --peers N]``

Each prints ``{"event": ...}`` lines on stdout; ``--hold`` waits for a line on
stdin (or its end) before exiting, so a test can signal or kill it while it
holds an index open.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rechub_serving import builder_factory, open_index
from rechub_serving.testing import clustered_data


def emit(**message) -> None:
    print(json.dumps(message), flush=True)


def queries(dim: int) -> np.ndarray:
    return clustered_data(5, dim, seed=1, centres_seed=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("build", "open"))
    parser.add_argument("index", nargs="?")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save")
    parser.add_argument("--path")
    parser.add_argument("--uri")
    parser.add_argument("--collection")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--ready-dir")
    parser.add_argument("--peers", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "build":
        params = {k: v for k, v in (("path", args.path), ("uri", args.uri), ("collection", args.collection)) if v}
        items = clustered_data(args.n, args.dim, seed=args.seed)
        emit(event="building")
        index = builder_factory("milvus", **params).from_embeddings(items)
        from rechub_serving_milvus._host import LiteHost

        host = LiteHost._instance.pid if LiteHost._instance is not None else None
        found = index.query(queries(args.dim), 5).indices.tolist()
        if args.save:
            index.save(args.save)
        emit(event="built", ids=found, location=index.engine.location, host_pid=host)
    else:
        index = open_index(args.index)
        emit(event="opened", location=index.engine.location)
        if args.ready_dir:  # wait until every peer holds the index open
            Path(args.ready_dir, str(time.time_ns())).touch()
            deadline = time.monotonic() + 120
            while len(list(Path(args.ready_dir).iterdir())) < args.peers and time.monotonic() < deadline:
                time.sleep(0.05)
        emit(event="queried", ids=np.asarray(index.query(queries(index.dim), 5).indices).tolist())
    if args.hold:
        sys.stdin.readline()
    index.close()
    emit(event="closed")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # what a command line tool says
        sys.exit(130)
