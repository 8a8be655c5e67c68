"""The torch backend: the conformance suite per storage type, and the tensor path.

``RECHUB_TORCH_DEVICE=cuda`` runs the same tests on a GPU (scripts/gpu_check.sh).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from rechub_serving_torch import TorchBackend

from rechub_serving import Builder, InvalidInputError, UnsupportedOperation, builder_factory
from rechub_serving.testing import BackendConformance, clustered_data, reference_topk

DEVICE = os.environ.get("RECHUB_TORCH_DEVICE", "cpu")


class TestTorchFloat32(BackendConformance):
    backend = TorchBackend  # the class itself: no entry point needed
    params = {"device": DEVICE}


class TestTorchInstalled(BackendConformance):
    """The same backend through its entry point, as users get it."""

    backend = "torch"
    params = {"device": DEVICE}
    metrics = ("cosine",)


class TestTorchSmallBlocks(BackendConformance):
    """Blocks of a few rows exercise the block merge."""

    backend = TorchBackend
    params = {"block_bytes": 4096, "device": DEVICE}
    metrics = ("l2", "cosine")


class TestTorchFloat16(BackendConformance):
    backend = TorchBackend
    params = {"dtype": "float16", "device": DEVICE}
    recall_floor = 0.9
    rtol = 2e-2
    atol = 5e-2


class TestTorchBfloat16(BackendConformance):
    backend = TorchBackend
    params = {"dtype": "bfloat16", "device": DEVICE}
    recall_floor = 0.8
    rtol = 5e-2
    atol = 3e-1


def _index(metric="l2", **params):
    items = clustered_data(500, 16, seed=0)
    return items, Builder(TorchBackend, metric=metric, device=DEVICE, **params).from_embeddings(items)


def test_tensors_on_the_device_stay_there_without_copies():
    items, index = _index()
    seen = {}
    search = index.engine.search

    def spy(queries, k, params, exclude):
        seen["query"] = queries
        return search(queries, k, params, exclude)

    index.engine.search = spy
    q = torch.from_numpy(clustered_data(4, 16, seed=1, centres_seed=0)).to(DEVICE)
    res = index.query(q, 5)
    assert isinstance(seen["query"], torch.Tensor) and seen["query"].data_ptr() == q.data_ptr()
    assert isinstance(res.indices, torch.Tensor) and res.indices.device == q.device
    assert res.indices.dtype == torch.int64 and res.distances.dtype == torch.float32
    truth, _ = reference_topk(items, q.cpu().numpy(), 5, "l2")
    assert np.array_equal(res.indices.cpu().numpy(), truth)
    index.close()


def test_tensor_path_checks_like_the_numpy_path():
    _, index = _index("cosine")
    for bad in (torch.zeros(2, 16), torch.full((1, 16), float("nan")), torch.zeros(2, 15), torch.zeros(0, 16)):
        with pytest.raises(InvalidInputError):
            index.query(bad.to(DEVICE), 3)
    res = index.query(torch.ones(16, dtype=torch.float64, device=DEVICE), 3, exclude=[[0, 1, 2]])
    assert res.indices.shape == (1, 3) and not set(res.indices[0].tolist()) & {0, 1, 2}
    index.close()


def test_half_precision_costs_little_recall():
    items = clustered_data(5000, 32, seed=0)
    queries = clustered_data(200, 32, seed=1, centres_seed=0)
    truth, _ = reference_topk(items, queries, 10, "cosine")
    for dtype, floor in (("float16", 0.99), ("bfloat16", 0.95)):
        with Builder(TorchBackend, metric="cosine", dtype=dtype, device=DEVICE).from_embeddings(items) as index:
            found = index.query(queries, 10).indices
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
            assert recall >= floor, (dtype, recall)


def test_unavailable_device_is_refused_with_a_clear_message():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(UnsupportedOperation, match="not available"):
        Builder(TorchBackend, device="cuda")
    with pytest.raises(Exception, match="torch device"):
        Builder(TorchBackend, device="gpu0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_round_trip(tmp_path):
    items = clustered_data(2000, 16, seed=0)
    with builder_factory("torch", device="cuda", metric="ip").from_embeddings(items) as index:
        q = torch.from_numpy(items[:5]).cuda()
        res = index.query(q, 10)
        assert res.indices.is_cuda and res.distances.is_cuda
        index.save(tmp_path / "idx")
    with builder_factory("torch", device="cuda").from_index_file(tmp_path / "idx") as loaded:
        assert loaded.query(q, 10).indices.tolist() == res.indices.tolist()


def test_registering_the_plugin_does_not_import_torch():
    """Any builder_factory call loads every plugin: torch (1.8 s, ~200 MiB) waits until a torch index is used."""
    import subprocess
    import sys

    code = (
        "import sys, rechub_serving as rs\n"
        "rs.builder_factory('numpy')\n"
        "assert 'torch' in [b.name for b in rs.list_backends()]\n"
        "print('torch' in sys.modules)\n"
        "rs.builder_factory('torch')\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
