#!/usr/bin/env bash
# The GPU checks of the torch backend, in one run (for a machine with a CUDA build of torch):
# the conformance suite and the torch tests on cuda, then the GPU benchmark at 100,000 and
# 1,000,000 x 64. Results go to $OUT (or /tmp/gpu-check). Needs torch, numpy, pluggy, typer,
# rich, pytest and hypothesis, nothing else: the plugin is used from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/plugins/torch" RECHUB_TORCH_DEVICE=cuda PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
"$PY" -m pytest -q -p no:cacheprovider -o addopts="" plugins/torch/tests 2>&1 | tee "$OUT/gpu-tests.log"
"$PY" benchmarks/bench_torch.py --device cuda --sizes 100000 1000000 --out "$OUT" 2>&1 | tee "$OUT/gpu-bench.log"
