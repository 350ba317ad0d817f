#!/usr/bin/env bash
# The device calls left from runs 53-56 (docs/performance.md "Run 56"), kept in the tree because a session's scratch
# does not outlive its machine. Run on a lent GPU through the device tool, with `.whl` (the wheels its README lists)
# and `scratch` carried; before the first call, here:
#
#     python benchmarks/forward_revision_ab.py --export da3db49 scratch/rev/r53pre   # main before run 53
#     python benchmarks/forward_revision_ab.py --export 6f43007 scratch/rev/r53      # run 53's main, before run 54
#
#     bash benchmarks/pending_gpu_calls.sh 1    # ~8 min: the forward against both trees at seven cells (run 54's
#                                               # merge change: +2 % at (1, 65536) moderate in run 56, one call)
#     bash benchmarks/pending_gpu_calls.sh 2    # ~5 min: the steady timeline, the 128-feature cells of gpu_bench
#     bash benchmarks/pending_gpu_calls.sh 3    # ~6 min: run 56's decisions' tables from bf16 products: GPU tests,
#                                               # the table kernel by key block, the forward A/B, all its kernels
#
# In the order 3, 2, 1 where a session gets fewer calls than that (3 may make a default; 1 only settles a +-2 %).
# Logs under $OUT; the lines to read are printed last. Record what they say in docs/benchmarks.md and
# docs/performance.md (card, date, prediction, outcome), and remove this script once measured.
set -uo pipefail
part=${1:?usage: pending_gpu_calls.sh 1|2|3}
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/gpu.txt"

if [ "$part" = 1 ]; then
    # Runs 53-54's merge kernel in the forward against main before run 53 and before run 54 (run 56, H100, at
    # (1, 65536) moderate: 4.005 -> 3.866 -> 3.940 ms; the merge kernel 1,337 -> 1,103 -> 1,127 us).
    timeout 450 python benchmarks/forward_revision_ab.py \
        1x65536x64:moderate,1x65536x64:sparse,1x65536x64:dense,2x16384x64:moderate,2x16384x64:sparse,8x4096x64:moderate,8x4096x64:dense \
        --against scratch/rev/r53pre scratch/rev/r53 --checks --rounds 5 --warmup 2 --out "$out" > "$out/ab.txt" 2>&1
    grep -v -i warn "$out/ab.txt" | grep -v "^  kernel\|stages"
elif [ "$part" = 2 ]; then
    # Where the forward's time goes now; the 128-feature cells run 56's bench did not reach.
    timeout 100 python benchmarks/forward_timeline.py --steady 1x65536x64:moderate,2x16384x64:moderate --out "$out" \
        > "$out/timeline.txt" 2>&1
    timeout 180 python benchmarks/gpu_bench.py --skip-correctness --skip-training --skip-delta --skip-step \
        --configs 3 --out "$out" > "$out/bench128.txt" 2>&1
    tail -n 30 "$out/timeline.txt"
    grep -v -i warn "$out/bench128.txt" | tail -n 8
elif [ "$part" = 3 ]; then
    # Run 56 (issue #12): the decisions' khd and Phi from bf16 products (decide_delta_rule_wy(tables16=True), off by
    # default). Predicted on the H100: the decisions' table kernel 2.44 -> ~1.6-2.0 ms at (2, 16384, 16, 64)
    # moderate; the forward -0.4 to -0.8 ms where that kernel is on its critical path.
    timeout 150 python -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py \
        -k "bf16_product_tables or score_tables_from_bf16 or table_kernel_matches" > "$out/tables16_tests.txt" 2>&1
    echo "tests rc=$?" >> "$out/tables16_tests.txt"
    timeout 60 python benchmarks/delta_table_kernel.py --cell 2x16384x64:moderate --variants 4x1 --tables16 16,32,64 \
        --out "$out" > "$out/tables16_kernel.txt" 2>&1
    timeout 150 python benchmarks/delta_decisions_ab.py --cells 2x16384x64:moderate,1x65536x64:moderate \
        --variants chain_stream,tables16 --reps 4 --out "$out" > "$out/tables16_ab.txt" 2>&1
    timeout 60 python benchmarks/delta_forward_kernels.py --cells 2x16384x64:moderate --out "$out" \
        > "$out/delta_kernels.txt" 2>&1
    grep -E "^FAILED|^ERROR|passed|failed|rc=" "$out/tables16_tests.txt" | tail -n 8
    tail -n 8 "$out/tables16_kernel.txt"
    tail -n 6 "$out/tables16_ab.txt"
    tail -n 20 "$out/delta_kernels.txt"
fi
cat "$out/gpu.txt"
