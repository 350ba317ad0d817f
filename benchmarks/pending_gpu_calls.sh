#!/usr/bin/env bash
# The device call left from run 60 (docs/performance.md "Run 60": no GPU could be started that session), kept in the
# tree because a session's scratch does not outlive its machine. Run on a lent GPU through the device tool, with
# `.whl` (the wheels its README lists) carried:
#
#     python benchmarks/forward_revision_ab.py --export 8780e00 scratch/rev/r59   # here first: run 59's last tree
#     bash benchmarks/pending_gpu_calls.sh    # ~7 min: the grouped small-head fault against run 59's tree, then
#                                             # TritonSettings.output_blocks on the GPU: its tests, the forward at
#                                             # (1, 65536) with and without it, the GPU suite, a timeline
#
# (carry `scratch` too.) The fault first: in run 60's last minute of device time the grouped output kernel hit an
# illegal memory access at 32 features (H100, float32, grouped reads forced), which run 44 had passed on an H200 at
# that width; whether run 60's change (the kernels' `c_begin`, `OutputStage`) brought it is not known. Since run 60 a
# GPU takes the materialised reads below 64 features (`chunk_fwd.GROUPED_READS_MIN_GPU_DIM`); lift it if the fault
# is found and fixed.
#
# Logs under $OUT; the lines to read are printed. Record what they say in docs/benchmarks.md and docs/performance.md
# (card, date, prediction, outcome), make output_blocks the default if it wins, and remove this script once measured.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/gpu.txt"
cat "$out/gpu.txt"
timeout 240 python3 benchmarks/grouped_small_head_check.py --tree . --tree scratch/rev/r59 > "$out/grouped_check.txt" 2>&1
cat "$out/grouped_check.txt"
# The output stage by blocks bit for bit the whole-call one, on a GPU (streams, events, per-block read-backs).
timeout 150 python3 -m pytest -q -x tests/test_triton_kernels.py \
    -k "output_by_blocks or decisions_by_blocks or merge_after_the_deep_walk" > "$out/tests.txt" 2>&1
tail -n 1 "$out/tests.txt"
# Predicted: (1, 65536) moderate -10 to -17 %, dense 0 to -10 %, sparse unchanged (it takes the deeper guesses).
timeout 200 python3 benchmarks/forward_variants.py --out "$out" --configs 1x65536 --checks \
    --variants "whole=output_blocks:False,blocks=output_blocks:True" > "$out/variants.txt" 2>&1
tail -n 14 "$out/variants.txt"
# The GPU suite in four processes (docs/properties.md): the default path's launches changed too (c_begin, OutputStage).
i=0
for files in properties/test_equivalence_torch.py properties/test_gradients.py \
        "tests/test_triton_kernels.py tests/test_delta_stage3.py" \
        "tests/test_compile.py tests/test_fast_validation.py tests/test_layer.py tests/test_triton_launch.py"; do
    i=$((i + 1))
    timeout 170 python3 -m pytest -m gpu -q $files > "$out/suite_$i.txt" 2>&1 &
done
wait
for i in 1 2 3 4; do tail -n 1 "$out/suite_$i.txt"; done
timeout 40 python3 benchmarks/forward_timeline.py --out "$out" --config 1x65536 --workload moderate \
    --variants output_blocks > "$out/timeline.txt" 2>&1
grep -E "dla_(merge|chunkstate|hscan|survivor|read|bstate|output)|span" "$out/timeline.txt" | cut -c1-110 | tail -n 30
