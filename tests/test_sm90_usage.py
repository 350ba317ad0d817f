"""``benchmarks/sm90_usage.py``'s programs per SM, from a build's registers and shared memory (sm_90's limits)."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
from sm90_usage import programs_per_sm  # noqa: E402


def test_programs_per_sm_follow_registers_shared_memory_and_threads():
    # run 63's output kernel at 64 features: 164 registers (168-capped) hold three 4-warp programs, 128 hold four
    assert programs_per_sm(dict(registers=164, stack=0, shared=40960), num_warps=4) == 3
    assert programs_per_sm(dict(registers=128, stack=0, shared=40960), num_warps=4) == 4
    # registers go by warps in units of 256: 129 registers take 136 a thread
    assert programs_per_sm(dict(registers=129, stack=0, shared=0), num_warps=4) == 3
    # shared memory (1 KB reserved a program) and the 2,048 threads an SM
    assert programs_per_sm(dict(registers=32, stack=0, shared=82 * 1024), num_warps=4) == 2
    assert programs_per_sm(dict(registers=32, stack=0, shared=0), num_warps=8) == 8
