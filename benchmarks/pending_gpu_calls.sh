#!/usr/bin/env bash
# The device calls that runs 49 and 50 prepared without a GPU (docs/performance.md "Run 49", "Run 50"), kept in the
# tree because a session's scratch does not outlive its machine. Run on a lent H200 through the device tool, with
# `.whl` (the wheels its README lists) and `scratch` carried; before the first call, here:
#
#     python benchmarks/forward_revision_ab.py --export 7e65a50 scratch/rev/r49pre    # main before run 49's merge work
#
#     bash benchmarks/pending_gpu_calls.sh 1    # ~8 min: run 50's composed walk checked on the GPU and timed
#     bash benchmarks/pending_gpu_calls.sh 2    # ~6 min: run 49's merge kernel against main before it
#     bash benchmarks/pending_gpu_calls.sh 3    # ~8 min: the GPU suite on this tree
#
# Logs under $OUT; the lines to read are printed last. Record what they say in docs/benchmarks.md and
# docs/performance.md (card, date, prediction, outcome), and remove the parts measured from this script.
set -uo pipefail
part=${1:?usage: pending_gpu_calls.sh 1|2|3}
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/gpu.txt"

if [ "$part" = 1 ]; then
    # Run 50: the walk's variants (composed steps, early loads, reads apart) against the torch stage on the GPU
    # (the interpreter ran them on the CPU), then timed (predicted at (2, 16384) moderate: the walk 7.62 -> ~6.1 ms
    # at two chunks a step, ~5.4 at four; with the reads apart at four, the walk and its reads ~4.2 ms).
    timeout 150 python -m pytest -q -x tests/test_delta_stage3.py > "$out/stage3_gpu.txt" 2>&1
    timeout 400 python benchmarks/delta_walk_steps_ab.py \
        2x16384x64:moderate,1x65536x64:moderate,8x4096x64:dense,8x4096x128:moderate --rounds 3 \
        > "$out/walk_steps.txt" 2>&1
    tail -n 3 "$out/stage3_gpu.txt"
    cat "$out/walk_steps.txt"
elif [ "$part" = 2 ]; then
    # Run 49: the merge kernel against main before it (predicted: (1, 65536) dense ~11.2 -> ~9.4 ms, (2, 16384)
    # dense 3.65 -> ~3.2, (8, 4096) dense 1.92 -> ~1.8, (1, 65536) moderate 4.24 -> ~3.9).
    timeout 240 python benchmarks/forward_revision_ab.py \
        1x65536x64:dense,1x65536x64:moderate,2x16384x64:dense,8x4096x64:dense --against scratch/rev/r49pre \
        --rounds 5 --out "$out" > "$out/revision_ab.txt" 2>&1
    timeout 120 python benchmarks/merge_bench.py --out "$out" > "$out/merge_bench.txt" 2>&1
    cat "$out/merge_bench.txt"
    tail -n 40 "$out/revision_ab.txt"
elif [ "$part" = 3 ]; then
    timeout 560 python -m pytest -q -m gpu properties tests -p no:cacheprovider > "$out/gpu_suite.txt" 2>&1
    tail -n 25 "$out/gpu_suite.txt"
fi
cat "$out/gpu.txt"
