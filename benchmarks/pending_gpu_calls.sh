#!/usr/bin/env bash
# The device calls that runs 53-55 prepared without a GPU (docs/performance.md "Run 53", "Run 54", "Run 55"), kept in the
# tree because a session's scratch does not outlive its machine. Run on a lent H200 through the device tool, with
# `.whl` (the wheels its README lists) and `scratch` carried; before the first call, here:
#
#     python benchmarks/forward_revision_ab.py --export da3db49 scratch/rev/r53pre   # main before run 53
#     python benchmarks/forward_revision_ab.py --export 6f43007 scratch/rev/r53      # run 53's main, before run 54
#
#     bash benchmarks/pending_gpu_calls.sh 0    # ~9 min, when one call is all a session may get: the new code's GPU
#                                               # tests, the output tables, the merge stage, a two-cell forward A/B
#     bash benchmarks/pending_gpu_calls.sh 1    # ~9 min: the merge stage bit for bit and timed, the forward A/B
#     bash benchmarks/pending_gpu_calls.sh 2    # ~8 min: the steady timeline, the merge probe, the GPU suite
#     bash benchmarks/pending_gpu_calls.sh 3    # ~6 min: the delta rule's branch-free float64 scores (run 54), its
#                                               # output tables' bf16 key products (run 55)
#
# Logs under $OUT; the lines to read are printed last. Record what they say in docs/benchmarks.md and
# docs/performance.md (card, date, prediction, outcome), and remove this script once measured.
set -uo pipefail
part=${1:?usage: pending_gpu_calls.sh 0|1|2|3}
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/gpu.txt"

if [ "$part" = 0 ]; then
    # Run 55: the shortest useful first call (every session of runs 53-55 found no GPU, or none that would start).
    timeout 280 python -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_delta_output_tables_f32.py \
        tests/test_delta_stage3.py -k "merge_kernel_matches or carry_guesses_change or float64 or delta_rule_decisions \
        or delta_rule_guesses or float32_output_tables or stage3" > "$out/tests_new.txt" 2>&1
    echo "tests rc=$?" >> "$out/tests_new.txt"
    timeout 50 python benchmarks/delta_table_kernel.py --cell 2x16384x64:moderate --variants 8x1 --f32 4p,4,8 \
        --out "$out" > "$out/tables64.txt" 2>&1
    timeout 80 python benchmarks/merge_bench.py --out "$out" > "$out/merge_bench.txt" 2>&1
    timeout 160 python benchmarks/forward_revision_ab.py 1x65536x64:moderate,8x4096x64:dense \
        --against scratch/rev/r53pre scratch/rev/r53 --checks --rounds 3 --warmup 2 --out "$out" > "$out/ab.txt" 2>&1
    grep -E "^FAILED|^ERROR|passed|failed|rc=" "$out/tests_new.txt" | tail -n 8
    tail -n 6 "$out/tables64.txt"
    tail -n 20 "$out/merge_bench.txt"
    grep -v -i warn "$out/ab.txt" | grep -v "^  kernel\|stages" | tail -n 25
elif [ "$part" = 1 ]; then
    # The merge kernel with its closing-slot tables (runs 53-54) bit for bit against merge_baseline.py and timed;
    # the forward against main before run 53 and before run 54 (predicted at (1, 65536) moderate: 3.86 ->
    # ~3.60-3.80 ms after run 53, ~-0.05-0.1 ms more after run 54; the other cells in "Run 53" and "Run 54").
    timeout 150 python benchmarks/merge_bench.py --out "$out" > "$out/merge_bench.txt" 2>&1
    timeout 400 python benchmarks/forward_revision_ab.py \
        1x65536x64:moderate,1x65536x64:sparse,1x65536x64:dense,2x16384x64:moderate,2x16384x64:sparse,8x4096x64:moderate,8x4096x64:dense \
        --against scratch/rev/r53pre scratch/rev/r53 --checks --rounds 5 --warmup 2 --out "$out" > "$out/ab.txt" 2>&1
    tail -n 25 "$out/merge_bench.txt"
    grep -v -i warn "$out/ab.txt" | grep -v "^  kernel\|stages"
elif [ "$part" = 2 ]; then
    # Where the forward's time goes now, the merge kernel beside the decision stages (run 52's probe, never run), and
    # the GPU suite in four processes (one process took > 6 min on a cold Triton cache).
    timeout 100 python benchmarks/forward_timeline.py --steady 1x65536x64:moderate,2x16384x64:moderate --out "$out" \
        > "$out/timeline.txt" 2>&1
    timeout 100 python benchmarks/merge_beside_decisions_probe.py 1x65536x64:moderate,2x16384x64:moderate \
        --out "$out" > "$out/probe.txt" 2>&1
    suite() { timeout 360 python -m pytest -m gpu -q -p no:cacheprovider "${@:2}" > "$out/suite_$1.txt" 2>&1
              echo "$1 rc=$?" >> "$out/suite_rc.txt"; }
    suite a properties/test_equivalence_torch.py &
    suite b properties/test_gradients.py &
    suite c tests/test_triton_kernels.py tests/test_delta_stage3.py &
    suite d tests/test_compile.py tests/test_fast_validation.py tests/test_layer.py tests/test_triton_launch.py &
    wait
    tail -n 30 "$out/timeline.txt"
    tail -n 12 "$out/probe.txt"
    cat "$out/suite_rc.txt"
    for f in "$out"/suite_?.txt; do echo "== $f"; tail -n 3 "$f"; done
elif [ "$part" = 3 ]; then
    # Run 54 (issue #12): the delta rule's scores without the float64 slow-path branches, checked bit for bit on the
    # GPU, then timed against them (predicted: the pair kernel -5 to -17 %, the forward at (2, 16384) -1 to -2.5 %).
    # Run 55: the float32 output tables with the keys' and queries' products in bf16 (predicted: the table kernel
    # 1.74 -> ~1.3-1.5 ms at (2, 16384, 16, 64); `4p` is the tf32x3 kernel before run 55).
    timeout 200 python -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_delta_output_tables_f32.py \
        -k "float64_division or without_float64_branches or delta_rule_decisions or delta_rule_guesses or float32_output" \
        > "$out/f64_tests.txt" 2>&1
    timeout 50 python benchmarks/delta_table_kernel.py --cell 2x16384x64:moderate --variants 8x1 --f32 4p,4,8 \
        --out "$out" > "$out/tables64.txt" 2>&1
    timeout 50 python benchmarks/delta_table_kernel.py --cell 8x4096x128:moderate --variants 8x1 --f32 4p,4,8 \
        --out "$out" > "$out/tables128.txt" 2>&1
    timeout 300 python benchmarks/delta_decisions_ab.py --cells 2x16384x64:moderate,1x65536x64:moderate \
        --variants chain_stream,plain_f64 --reps 5 --out "$out" > "$out/f64_ab.txt" 2>&1
    tail -n 5 "$out/f64_tests.txt"
    tail -n 20 "$out/f64_ab.txt"
    tail -n 6 "$out/tables64.txt"
    tail -n 6 "$out/tables128.txt"
fi
cat "$out/gpu.txt"
