"""``benchmarks/output_overlap_probe.py`` without a GPU: its output stage alone (the survivors known, no host
synchronisation) gives the forward's ``o`` bit for bit, its grouped variant the same ``o`` to rounding, and its
decisions-only forward runs (under the interpreter, in a subprocess: the interpreter is chosen when the kernels are
defined)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")
ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = """
import sys, torch
sys.path.insert(0, {bench!r})
import output_overlap_probe as probe
from gpu_bench import workload, WORKLOADS
x = workload(1, 200, 2, 32, 32, 30, **WORKLOADS["moderate"], device="cpu", seed=3, dtype=torch.float32)
o, calls = probe.stage_calls(*x, dict(tau=0.6, final_cache=False, trace=False))
assert torch.equal(calls["output"](), o)
assert calls["decide"]() is None and torch.equal(calls["forward"]()[0], o)
# the old starts read by chunk add the same float32 terms in another order: 9.6e-7 of max |o| apart here
assert (calls["output_grouped"]() - o).abs().max() <= 1e-5 * o.abs().max()
print("ok")
"""


def test_output_stage_alone_gives_the_forwards_o():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    child = CHILD.format(bench=str(ROOT / "benchmarks"))
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, cwd=str(ROOT),
                         timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
