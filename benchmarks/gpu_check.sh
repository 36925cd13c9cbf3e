#!/usr/bin/env bash
# The one prepared script for the lent GPU machine (no package registry there), under 8 minutes:
#   here:   bash ../shared/tools/gpu-wheels.sh          # fills .whl/ (dask, zarr, pydantic, dask-cuda, ...)
#   device: bash benchmarks/gpu_check.sh                # with `.whl` carried; results under $OUT
# It also runs on a machine without a GPU (the GPU parts then measure the CPU at small sizes).
# Writes: gpu.txt (nvidia-smi), nvidia-smi.csv (utilisation every 0.5 s), pytest-gpu.txt,
#         gpu_throughput.txt/.json (benchmarks/gpu_throughput.py), summary.txt
set -uo pipefail
OUT=${OUT:-${1:-gpu-results}}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import dask, zarr, pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
start=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU"; } | tee "$OUT/gpu.txt"
sampler=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 500 > "$OUT/nvidia-smi.csv" &
  sampler=$!
fi
python3 -c "import pipeline.run, distributed, zarr" || { echo "the package does not import here" | tee "$OUT/summary.txt"; exit 1; }
if python3 -c "import pytest, hypothesis" 2>/dev/null; then
  timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_torch_clustering.py \
      tests/test_predict.py 2>&1 | tail -15 > "$OUT/pytest-gpu.txt"
else
  echo "pytest/hypothesis not installed here: GPU tests skipped (the benchmark below checks exactness)" > "$OUT/pytest-gpu.txt"
fi
timeout 300 python3 benchmarks/gpu_throughput.py --out "$OUT" 2>&1 | grep -v " INFO " | tee "$OUT/gpu_throughput.txt"
timeout 60 python3 benchmarks/clustering_backends.py --threads 1 --device "$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')" \
    2>&1 | tee "$OUT/clustering_backends.txt"
[ -n "$sampler" ] && kill "$sampler" 2>/dev/null
{ echo "seconds: $(( $(date +%s) - start ))"; cat "$OUT/gpu.txt"; tail -3 "$OUT/pytest-gpu.txt"; cat "$OUT/gpu_throughput.txt"; } > "$OUT/summary.txt"
