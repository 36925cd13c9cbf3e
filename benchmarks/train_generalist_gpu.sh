#!/usr/bin/env bash
# Train the generalist (configs/train_generalist.yaml) on one H100/H200 and compare it with the bundled
# model on every look, in under 10 minutes with the install of the carried wheels. Prepare on the CPU
# machine, then run through the device tool with `.whl` carried:
#   bash ../shared/tools/gpu-wheels.sh                          # fills .whl/ (dask, zarr, pydantic, ...)
#   run(command="bash benchmarks/train_generalist_gpu.sh", carry=[".whl"], timeout_s=600)
# Writes $OUT/generalist.pt (+ .best.pt), $OUT/train.log, $OUT/looks.md; copy the checkpoint to
# pipeline/data/demo.pt only when looks.md shows it at least as good as `demo` on every volume.
set -euo pipefail
OUT=${OUT:-runs/generalist}
mkdir -p "$OUT"
t0=$SECONDS
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
echo "install: $((SECONDS - t0)) s"
python3 -m pipeline -q train configs/train_generalist.yaml --overwrite --set out="$OUT/generalist.pt" \
  --set workers="$(( $(nproc) > 4 ? $(nproc) - 4 : 1 ))" 2>&1 | tee "$OUT/train.log"
echo "trained: $((SECONDS - t0)) s"
python3 benchmarks/looks.py demo "$OUT/generalist.pt" 2>/dev/null | tee "$OUT/looks.md"
echo "done: $((SECONDS - t0)) s"
