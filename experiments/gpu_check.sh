#!/usr/bin/env bash
# The GPU check (`make gpu-check`): on a machine with CUDA, run the GPU-marked tests and the
# complex/surface benchmarks on the device in float32 and float64, then a wide grid network
# (experiment=grid_gpu's shape) fitted and extracted on the device against marching cubes, and write
# every table to $NSR_OUT (default experiments/out/). Record the figures in experiments/RESULTS.md.
#
#   make gpu-check                          # uses .venv
#   NSR_OUT=/tmp/gpu PY=python bash experiments/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${NSR_OUT:-experiments/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
status=0

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: torch sees no CUDA device here (torch $("$PY" -c 'import torch; print(torch.__version__)'))."
    echo "           Run it on a machine with an NVIDIA GPU and a CUDA build of torch."
    exit 2
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null;
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$OUT/gpu_device.txt"

echo "== GPU-marked tests (CPU vs CUDA: same polygons)"
"$PY" -m pytest -m gpu -q -rs tests 2>&1 | tee "$OUT/gpu_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

for dtype in float32 float64; do
    echo "== complex benchmark, cuda, $dtype"
    mkdir -p "$OUT/$dtype"
    NSR_OUT="$OUT/$dtype" "$PY" experiments/bench_complex.py --quick --device cuda --dtype "$dtype" \
        2>&1 | tee "$OUT/gpu_bench_complex_$dtype.md"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    echo "== surface benchmark, cuda, $dtype (exact track/surface vs marching cubes 256^3, 512^3)"
    NSR_OUT="$OUT/$dtype" "$PY" experiments/bench_surface.py --device cuda --dtype "$dtype" \
        --resolutions 256 512 2>&1 | tee "$OUT/gpu_bench_surface_$dtype.md"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
echo "== a wide grid network (experiment=grid_gpu's shape, a torus), cuda: exact modes vs marching cubes 256^3, 512^3"
"$PY" experiments/bench_wide_grid.py --device cuda --steps 600 --modes surface track --resolutions 256 512 \
    2>&1 | tee "$OUT/gpu_bench_wide_grid.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu-check: tables in $OUT (exit $status)"
exit $status
