"""The ``torch`` backend: exact top-k by blocked matrix product and ``topk`` on a torch device.

The vectors live on the builder's ``device`` (``cpu``, ``cuda``, ``cuda:1``...)
in ``float32``, ``float16`` or ``bfloat16``. A query is scored against one
block of items at a time (at most ``block_bytes`` of scores), each block is
reduced with ``topk`` and merged into the running top-k, so memory is bounded
by the block size. Queries that are tensors on the device stay there and the
results come back there (the core's tensor path); numpy queries are copied
to the device and the results back.

Half-precision storage halves (float16, bfloat16) the memory and, on a GPU,
the time; scores are accumulated in float32 but the stored vectors are
rounded, so results are approximate: docs/backends/torch.md has the recall
each costs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rechub_serving import (
    Backend,
    BackendConfig,
    Capabilities,
    EngineFiles,
    InvalidParameterError,
    Param,
    UnsupportedOperation,
)

if TYPE_CHECKING:
    from ._engine import TorchEngine

__all__ = ["DTYPE_NAMES", "TorchBackend"]

#: Storage dtypes (torch is imported only when an index is built, loaded or checked: see _engine).
DTYPE_NAMES = ("float32", "float16", "bfloat16")


def _device(value: str) -> str:
    from ._engine import check_device

    return check_device(value)[0]  # ValueError: not a torch device


class TorchBackend(Backend):
    """Exact (float32) or half-precision brute force with torch, on the CPU or a GPU."""

    name = "torch"
    engine_distribution = "torch"
    capabilities = Capabilities(exact=True, add=True, remove=True, native_filter=True, persist=True, gpu=True)
    params = (
        Param("device", str, "cpu", "torch device: cpu, cuda, cuda:1 ...", runtime=True, check=_device),
        Param("dtype", str, "float32", "storage: float32 (exact), float16 or bfloat16", choices=DTYPE_NAMES),
        Param(
            "block_bytes",
            int,
            256 << 20,
            "memory budget of one score block, in bytes",
            minimum=4096,
            maximum=1 << 40,
            search=True,
        ),
    )

    def check_config(self, config: BackendConfig) -> None:
        from ._engine import check_device

        _, kind, available, here = check_device(config["device"])
        if not available:
            raise UnsupportedOperation(
                f"torch: device={config['device']!r} is not available here ({here}); "
                "use device='cpu' or install a CUDA build of torch"
            )
        if kind not in ("cpu", "cuda"):
            raise InvalidParameterError(f"torch: device={config['device']!r}: only cpu and cuda devices are supported")

    def capabilities_for(self, config: BackendConfig) -> Capabilities:
        exact = config["dtype"] == "float32"
        return Capabilities(exact=exact, add=True, remove=True, native_filter=True, persist=True, gpu=True)

    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> TorchEngine:
        from ._engine import build_engine

        return build_engine(vectors, config["device"], config["dtype"], config.metric)

    def load(self, files: EngineFiles, config: BackendConfig) -> TorchEngine:
        from ._engine import load_engine

        return load_engine(files, config["device"], config.metric)
