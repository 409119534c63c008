#!/usr/bin/env bash
# Runs on a GPU machine, from the repository root, what `cargo xtask gpu-bundle` built:
# nas-ops's CUDA tests (kernels against the CPU ones and against finite differences on
# the GPU), then one DARTS search step and one training step, candle-nas against PyTorch,
# both on the GPU. Logs go to $OUT (the device tool's output folder) when it is set.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-/tmp/gpu-bundle-out}"
mkdir -p "$out"

# candle loads libcuda, libcublas and libcurand when it opens the device: the driver's,
# and the CUDA libraries that the machine's Python packages carry.
libs="$(python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for f in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)"
export LD_LIBRARY_PATH="${libs}:/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"

status=0
echo "== nas-ops CUDA tests"
"$here/nas_ops_tests" cuda_tests --test-threads 1 2>&1 | tee "$out/cuda_tests.log" || status=1

# Each run is capped at 90 s so that the whole script fits a session's device time.
echo "== DARTS search step (first order, C=16, 8 layers, batch 64) and training step (C=36, 20 layers, batch 96)"
for spec in "first 16 8 64 3" "train 36 20 96 3"; do
    # shellcheck disable=SC2086
    NAS_DEVICE=cuda timeout 90 "$here/bench_step" $spec 2>&1 | tee -a "$out/bench.jsonl" || status=1
    # shellcheck disable=SC2086
    NAS_DEVICE=cuda timeout 90 python3 "$here/darts_step.py" $spec 2>&1 | tee -a "$out/bench.jsonl" || status=1
done
echo "== DARTS recurrent search step (first order, the paper's search preset: batch 256, bptt 35, 300 units, 10,000 words)"
NAS_DEVICE=cuda timeout 90 "$here/bench_lm_step" first 256 35 300 10000 3 2>&1 | tee -a "$out/bench.jsonl" || status=1
NAS_DEVICE=cuda timeout 90 python3 "$here/darts_rnn_step.py" first 256 35 300 10000 3 2>&1 | tee -a "$out/bench.jsonl" || status=1
exit $status
