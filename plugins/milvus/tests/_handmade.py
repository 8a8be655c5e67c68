"""Make a collection by hand with pymilvus, as another tool (or rechub-serving-milvus 0.1) would.

``python _handmade.py --path DB | --uri URI [--token T]  NAME [--pk pk --vector vector --n 30 --dim 8]``

Run as its own process: milvus-lite lets one process at a time hold a database.
"""

from __future__ import annotations

import argparse

import numpy as np
from pymilvus import DataType, MilvusClient


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--path")
    parser.add_argument("--uri")
    parser.add_argument("--token", default="")
    parser.add_argument("--pk", default="pk")
    parser.add_argument("--vector", default="vector")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--dim", type=int, default=8)
    args = parser.parse_args()
    client = MilvusClient(uri=args.uri, token=args.token) if args.uri else MilvusClient(uri=args.path)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(args.pk, DataType.INT64, is_primary=True)
    schema.add_field(args.vector, DataType.FLOAT_VECTOR, dim=args.dim)
    client.create_collection(args.name, schema=schema)
    vectors = np.random.default_rng(0).normal(size=(args.n, args.dim)).astype(np.float32)
    client.insert(args.name, [{args.pk: i, args.vector: v} for i, v in enumerate(vectors)])
    client.flush(args.name)
    index = client.prepare_index_params()
    index.add_index(field_name=args.vector, index_type="FLAT", metric_type="L2")
    client.create_index(args.name, index)
    client.close()


if __name__ == "__main__":
    main()
