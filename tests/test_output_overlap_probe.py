"""The probes of what could overlap in the scalar-decay forward, without a GPU, in one subprocess under the interpreter
(the interpreter is chosen when the kernels are defined; one process for both: CI's time):

- ``benchmarks/output_overlap_probe.py``: its output stage alone (the survivors known, no host synchronisation) gives
  the forward's ``o`` bit for bit, its grouped variant the same ``o`` to rounding, and its decisions-only forward runs;
- ``benchmarks/merge_beside_decisions_probe.py``: its merge kernel alone, not pipelined, on a first forward's
  decisions gives that forward's structure bit for bit, and its decisions-only forward runs."""

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
import merge_beside_decisions_probe as merge_probe
import output_overlap_probe as probe
from gpu_bench import workload, WORKLOADS
x = workload(1, 200, 2, 32, 32, 30, **WORKLOADS["moderate"], device="cpu", seed=3, dtype=torch.float32)
o, calls = probe.stage_calls(*x, dict(tau=0.6, final_cache=False, trace=False))
assert torch.equal(calls["output"](), o), "output stage"
assert calls["decide"]() is None and torch.equal(calls["forward"]()[0], o), "decisions"
# the old starts read by chunk add the same float32 terms in another order: 9.6e-7 of max |o| apart here
assert (calls["output_grouped"]() - o).abs().max() <= 1e-5 * o.abs().max(), "grouped output stage"

x = workload(1, 130, 1, 32, 32, 4, **WORKLOADS["dense"], device="cpu", seed=4, dtype=torch.float32)
calls = merge_probe.probe_calls(*x)
first, again = calls["structure"], calls["merge"]()
assert int((first.merged >= 0).sum()) > 0, "no merge in the case"
for name in ("death", "death0", "merged", "live", "livem", "fpos", "size", "counts", "info"):
    assert torch.equal(getattr(again, name), getattr(first, name)), "merge kernel alone: " + name
assert calls["decide"]() is None, "merge probe's decisions"
print("ok")
"""


def test_the_probes_stage_calls_give_the_forwards_results():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    child = CHILD.format(bench=str(ROOT / "benchmarks"))
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, cwd=str(ROOT),
                         timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
