#!/usr/bin/env python
"""How far the delta rule's stage 3 output (``chunk_fwd._states_and_outputs``) lies from its oracle (the torch stage,
``chunk_fwd_stage_torch``, which runs the forward's own slot walk one chunk a step) at one, two and four chunks a
walk step, per chunk of a four-chunk step and as a share of 2**-11 of the largest output: the tf32 rounding of the
walk's reads of 16-bit inputs (docs/performance.md "Run 51"). The case is ``tests/test_delta_stage3.py``'s bf16
walk-variant case at 32 features (a 40-token call fills the cache, then 256 tokens).

    python benchmarks/delta_walk_read_error.py                                  # on a GPU
    TRITON_INTERPRET=1 python benchmarks/delta_walk_read_error.py --emulate-tf32   # on the CPU

``--emulate-tf32`` (interpreter only): the interpreter's ``tl.dot`` cuts float32 operands to tf32's 10 mantissa
bits where a product asks for single-pass tf32, as sm_90's tensor cores read them, and the oracle runs with exact
products; without it the interpreter's products are float32 and the errors float32 rounding.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from delta_cases import delta_inputs, empty_cache  # noqa: E402

from dla_fast.ops.delta_rule import chunk_fwd  # noqa: E402
from dla_fast.ops.delta_rule.chunk_fwd_stage_torch import states_and_outputs_torch  # noqa: E402

B, T, H, D, K, PREFIX, TAU = 2, 256, 1, 32, 8, 40, 0.5


@contextlib.contextmanager
def tf32_products(on: bool):
    """Within: the interpreter's single-pass tf32 products take their float32 operands cut to tf32 (``on``)."""
    import triton.runtime.interpreter as interpreter

    plain = interpreter.InterpreterBuilder.create_dot

    def cut(handle):
        data = handle.data
        if data.dtype != np.float32:
            return handle
        return interpreter.TensorHandle((data.view(np.int32) & np.int32(-0x2000)).view(np.float32), handle.dtype)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if str(input_precision).upper().endswith("TF32"):  # (not TF32x3, not IEEE)
            a, b = cut(a), cut(b)
        return plain(self, a, b, d, input_precision, max_num_imprecise_acc)

    if on:
        interpreter.InterpreterBuilder.create_dot = create_dot
    try:
        yield
    finally:
        interpreter.InterpreterBuilder.create_dot = plain


def stage3_call(x_all):
    """The second call's stage-3 arguments (after a call that fills the cache), its slot states before the stage."""
    cache, caught = empty_cache(B, H, K, D), {}
    stage = chunk_fwd._states_and_outputs

    def grab(*args):
        caught.setdefault("args", args)
        caught.setdefault("slots", args[9].clone())
        return stage(*args)

    chunk_fwd.forward_delta_rule_triton(*[a[:, :PREFIX] for a in x_all], None, *cache, tau=TAU)
    chunk_fwd._states_and_outputs = grab
    try:
        chunk_fwd.forward_delta_rule_triton(*[a[:, PREFIX:] for a in x_all], None, *cache, tau=TAU)
    finally:
        chunk_fwd._states_and_outputs = stage
    return caught["args"][:9], caught["slots"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--emulate-tf32", action="store_true")
    args = ap.parse_args()
    if args.emulate_tf32 and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("delta_walk_read_error.py: --emulate-tf32 needs TRITON_INTERPRET=1")
    x_all = delta_inputs(B, PREFIX + T, H, D, K, torch.bfloat16, seed=T + K + 4, decay=0.99)
    stage_args, slots = stage3_call(x_all)
    oracle = states_and_outputs_torch(*stage_args, slots.clone())
    largest = oracle.abs().max().item()
    for steps in (1, 2, 4):
        with tf32_products(args.emulate_tf32):
            o = chunk_fwd._states_and_outputs(*stage_args, slots.clone(), None, steps)
        err = (o - oracle).abs()
        per_chunk = [f"{err[:, c * 64:(c + 1) * 64].max().item():.1e}" for c in range(4)]
        print(f"{steps} chunk(s) a step: largest error {err.max().item():.2e} = "
              f"{err.max().item() / largest * 2**11:.2f} x 2**-11 of the largest output ({largest:.3f}); "
              f"per chunk of the call's first four {per_chunk}")


if __name__ == "__main__":
    main()
