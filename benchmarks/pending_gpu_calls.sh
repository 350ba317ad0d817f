#!/usr/bin/env bash
# The device call left from run 61 (docs/performance.md "Run 61"), kept in the tree because a session's scratch does
# not outlive its machine. Run on a lent GPU through the device tool, with `.whl` (the wheels its README lists)
# carried:
#
#     bash benchmarks/pending_gpu_calls.sh    # ~7 min
#
# Run 61 found TritonSettings.output_blocks hanging the GPU at the second of two back-to-back calls ((1, 65536)
# moderate and dense, H100), and fixed by reading what is the likely cause (DecidedBlocks.in_use: buffers the walk
# and merge streams still read were freed, and the caching allocator handed their memory to the current stream's
# next allocations); since then a GPU refuses the setting (chunk_fwd.OUTPUT_BLOCKS_ON_GPU). This call says whether
# the fix holds (back-to-back calls, each in a subprocess with a watchdog) and, if it does, what the setting gains
# (predicted in run 60: (1, 65536) moderate -10 to -17 %, dense 0 to -10 %).
#
# The GPU suite (docs/properties.md, four processes, ~4 min) has not run on run 61's code (the refusal's GPU test
# among it): run it in a second call.
#
# Logs under $OUT; the lines to read are printed. Record them in docs/benchmarks.md and docs/performance.md (card,
# date, prediction, outcome); if the setting finishes and wins, lift the guard and make it the default; remove this
# script once measured.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$out/gpu.txt"
# 1. Does it still hang? Four subprocesses, ~40 s each when they finish, 60 s + the stack when one hangs.
timeout 330 python3 benchmarks/back_to_back_check.py --config 1x65536 --workloads moderate,dense --watchdog 60 \
    2>&1 | tee "$out/back_to_back.txt"
# 2. Only if no subprocess hung: the setting's GPU tests (bit for bit the whole-call output, the value checks' error
#    path, refused without the module flag; ~1 min), then both settings in one process, bitwise checks, alternating
#    rounds.
if ! grep -q "Timeout" "$out/back_to_back.txt"; then
    timeout 150 python3 -m pytest -q tests/test_triton_kernels.py -k "output_by_blocks or output_blocks_are_refused" \
        > "$out/tests.txt" 2>&1
    tail -n 3 "$out/tests.txt"
    timeout 240 python3 -c "
import runpy, sys
from dla_fast.ops.scalar_decay import chunk_fwd
chunk_fwd.OUTPUT_BLOCKS_ON_GPU = True
sys.argv = ['forward_variants.py', '--out', '$out', '--configs', '1x65536', '--workloads', 'moderate', '--checks',
            '--warmup', '1', '--variants', 'whole=output_blocks:False,blocks=output_blocks:True']
runpy.run_path('benchmarks/forward_variants.py', run_name='__main__')" > "$out/variants.txt" 2>&1
    tail -n 6 "$out/variants.txt"
fi
