"""Property-based fuzzing of ``Indexer.query`` on every installed backend.

Whatever the input (shapes, dtypes, NaN/inf, extreme magnitudes, k, exclude
shapes, per-call parameters, torch tensors), ``query`` either returns a
result that honours the contract or raises the library's own error, and the
index answers exactly as before afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rechub_serving as rs
from rechub_serving.evaluation import clustered_data

DIM = 8
N = 60
IDS = np.arange(1000, 1000 + N, dtype=np.int64)
# Fast local engines; the others are fuzzed in their plugins' own tests if they want.
CANDIDATES = {
    "numpy": {},
    "faiss": {"index_type": "HNSW"},
    "annoy": {"n_trees": 5},
    "hnswlib": {},
    "voyager": {},
    "usearch": {},
    "torch": {},
}


def _installed() -> list[str]:
    names = {b.name for b in rs.list_backends()}
    return [name for name in CANDIDATES if name in names]


@pytest.fixture(scope="module", params=_installed())
def index(request):
    items = clustered_data(N, DIM, seed=3)
    with rs.builder_factory(request.param, metric="l2", **CANDIDATES[request.param]).from_embeddings(
        items, ids=IDS
    ) as idx:
        yield idx


def _vectors(draw: Any) -> Any:
    kind = draw(
        st.sampled_from(
            ["vector", "batch", "list", "int", "float64", "float16", "noncontig", "wrongdim", "3d", "empty",
             "nan", "inf", "huge", "tiny", "zero", "bool", "str", "complex", "scalar", "ragged", "torch", "none"]
        )
    )  # fmt: skip
    n = draw(st.integers(1, 4))
    base = np.asarray(draw(st.lists(st.floats(-3, 3, width=32), min_size=n * DIM, max_size=n * DIM)), np.float32)
    batch = base.reshape(n, DIM)
    if kind == "vector":
        return batch[0].copy()
    if kind == "batch":
        return batch
    if kind == "list":
        return batch.tolist()
    if kind == "int":
        return batch.astype(np.int32)
    if kind == "float64":
        return batch.astype(np.float64)
    if kind == "float16":
        return batch.astype(np.float16)
    if kind == "noncontig":
        return np.asfortranarray(np.repeat(batch, 2, axis=0))[::2]
    if kind == "wrongdim":
        return np.zeros((n, DIM + draw(st.sampled_from([-1, 1, 5]))), np.float32)
    if kind == "3d":
        return batch.reshape(1, n, DIM)
    if kind == "empty":
        return np.zeros((0, DIM), np.float32)
    if kind in ("nan", "inf"):
        batch[draw(st.integers(0, n - 1)), draw(st.integers(0, DIM - 1))] = np.nan if kind == "nan" else -np.inf
        return batch
    if kind == "huge":
        with np.errstate(over="ignore"):
            return batch * np.float32(draw(st.sampled_from([1e18, 1e19, 1e20, 3e38])))
    if kind == "tiny":
        return batch * np.float32(1e-30)
    if kind == "zero":
        return np.zeros((n, DIM), np.float32)
    if kind == "bool":
        return batch > 0
    if kind == "str":
        return np.array([["a"] * DIM])
    if kind == "complex":
        return batch.astype(np.complex64)
    if kind == "scalar":
        return 1.5
    if kind == "ragged":
        return [[1.0] * DIM, [1.0] * (DIM - 1)]
    if kind == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(batch).to(draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16])))
    return None


KS = [1, 3, N, N + 4, 0, -1, 2**63, 10**12, 2**20 + 1, 1.5, True, None, "3", np.int64(5), np.uint8(2)]
EXCLUDES = [
    None,
    [],
    [[]],
    1003,
    "1003",
    [1003, 1004],
    [[1003], [1004, 1005]],
    [[1003]] * 4,
    [None, [1001]],
    [["a", "b"]],
    [[1.5]],
    [[True]],
    [[[1003]]],
    [1003.0],
    {1003},
    np.array([[1003, 1004]]),
]


def _params(index: rs.Indexer, draw: Any) -> dict[str, Any]:
    search = [p for p in index.builder.schema() if p.search]
    choice = draw(st.sampled_from(["none", "valid", "huge", "negative", "unknown", "build", "wrongtype"]))
    if choice == "none" or (not search and choice in ("valid", "huge", "negative", "wrongtype")):
        return {}
    if choice == "unknown":
        return {"no_such_parameter": 1}
    if choice == "build":
        return {"metric": "ip"}
    param = draw(st.sampled_from(search))
    value = {"valid": param.default if param.default is not None else 16, "huge": 2**63, "negative": -1}.get(
        choice, "x"
    )
    if choice == "valid" and param.type is int and param.minimum is not None:
        value = max(int(param.minimum), 8 if param.default is None else int(param.default))
    return {param.name: value}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_query_returns_a_valid_result_or_the_library_error(index, data):
    probe = clustered_data(3, DIM, seed=9)
    before = np.asarray(index.query(probe, 5).indices)
    queries = _vectors(data.draw)
    k = data.draw(st.sampled_from(KS))
    exclude = data.draw(st.sampled_from(EXCLUDES))
    params = _params(index, data.draw)
    try:
        result = index.query(queries, k, exclude=exclude, **params)
    except rs.RechubError:
        pass
    else:
        _check(result, k, exclude)
    np.testing.assert_array_equal(np.asarray(index.query(probe, 5).indices), before)
    assert len(index) == N


def _check(result: rs.QueryResult, k: Any, exclude: Any) -> None:
    ids = np.asarray(result.indices.cpu() if hasattr(result.indices, "cpu") else result.indices)
    dist = np.asarray(result.distances.float().cpu() if hasattr(result.distances, "cpu") else result.distances)
    assert ids.ndim == 2 and ids.shape == dist.shape and ids.shape[1] == int(k)
    assert ids.dtype == np.int64 and dist.dtype == np.float32
    valid = np.isfinite(dist)
    assert set(ids[valid].tolist()) <= set(IDS.tolist()), "a result id is not in the index"
    assert (ids[~valid] == -1).all() and (dist[~valid] == np.inf).all(), "padding is id -1 with +inf"
    with np.errstate(invalid="ignore"):
        steps = np.diff(np.where(valid, dist, np.inf), axis=1)
    assert (steps[np.isfinite(steps)] >= -1e-3).all(), "best first"
    for row in ids:
        real = row[row >= 0].tolist()
        assert len(real) == len(set(real)), "an id twice in one row"
    banned = _flatten(exclude)
    if banned is not None and len(ids) == 1:
        assert not banned & set(ids[0].tolist()), "an excluded id came back"


def _flatten(exclude: Any) -> set[int] | None:
    if exclude is None:
        return None
    values = (
        np.asarray(exclude, dtype=object).ravel().tolist() if not isinstance(exclude, (int, str, set)) else [exclude]
    )
    if isinstance(exclude, set):
        values = list(exclude)
    out: set[int] = set()
    for v in values:
        if isinstance(v, list):
            out |= {x for x in v if isinstance(x, int)}
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.add(int(v))
    return out
