#!/usr/bin/env bash
# One prepared script for a machine with CUDA GPUs (e.g. the lent device machine):
# installs the gpu extra, runs the GPU tests (local-cuda, GPU exactness) and the prediction benchmark.
#   bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
OUT=${1:-gpu-results}
mkdir -p "$OUT"
python -m pip install --quiet -e ".[test,gpu]" 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/pytest-gpu.txt"
python benchmarks/predict_efficiency.py --shape 64 256 256 --write 32 128 128 2>&1 | grep -v INFO | tee "$OUT/predict_efficiency.txt"
