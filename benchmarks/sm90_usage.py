#!/usr/bin/env python
"""A kernel's sm_90 resources (registers, stack, shared memory) and programs per SM, built on the CPU from a recorded
launch with its constexprs, argument types and launch options overridden: how a GPU launch would build.

    python benchmarks/sm90_usage.py LAUNCH.jsonl KERNEL [NAME=VALUE ...] [--types NAME=TYPE,...]
                                    [--options num_warps=4,maxnreg=128 ...]

The launch record is ``conftest``'s (``DLA_TEST_LAUNCH_LOG=FILE TRITON_INTERPRET=1 pytest ...``); the interpreter
takes float32 paths, so a 16-bit GPU launch is the record with ``LOWP=True`` and its 16-bit pointers' types set,
e.g. run 63's output kernel at 64 features::

    python benchmarks/sm90_usage.py /tmp/launch.jsonl dla_output_kernel BK=64 BV=64 KP=32 G=1 LOWP=True \\
        PREC="'tf32x3'" --types q_ptr=*bf16,k_ptr=*bf16,v_ptr=*bf16,o_ptr=*bf16,bst_ptr=*bf16 \\
        --options num_warps=4,maxnreg=168 --options num_warps=4,maxnreg=128

A value given for a runtime argument (``Dk=64``) builds it as a constant, as if the kernel declared it
``tl.constexpr``: what a kernel would gain from it before it is changed (run 68: the delta walk's ``K``, ``Dk``,
``Dv``).

Builds with the Triton first on the path (``PYTHONPATH=.ci/triton-gpu`` for the GPU machines' 3.6).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sass_loop_model import recorded_launch  # noqa: E402

REGISTERS_PER_SM, SHARED_PER_SM = 65536, 228 * 1024  # sm_90


def resources(kernel) -> dict:
    """Registers and stack a thread (``cuobjdump -res-usage``) and shared memory a program (bytes)."""
    import sm90_build  # (tests/, on the path from main)

    out = sm90_build.cuobjdump(kernel, "-res-usage")
    fields = dict(item.split(":") for item in next(line for line in out.splitlines() if "REG:" in line).split())
    return dict(registers=int(fields["REG"]), stack=int(fields["STACK"]), shared=kernel.metadata.shared)


def mma_shapes(kernel) -> list[str]:
    """The tensor-core layouts of the kernel's products (TTGIR ``#ttg.nvidia_mma``): ``version warpsPerCTA
    instrShape`` each (run 77: the tables' adjoint went wrong on an H100 exactly where its tf32 ``wgmma`` instructions
    were 16 columns wide)."""
    found = re.findall(r"#ttg\.nvidia_mma<\{versionMajor = (\d+), versionMinor = \d+, warpsPerCTA = (\[[\d, ]+\])"
                       r"(?:, instrShape = (\[[\d, ]+\]))?", kernel.asm["ttgir"])
    return sorted({f"v{major} {warps} {shape}".strip() for major, warps, shape in found})


def programs_per_sm(usage: dict, num_warps: int) -> int:
    """Programs an SM holds by registers (allocated per warp in units of 256) and by shared memory (1 KB reserved a
    program)."""
    per_warp = -(-usage["registers"] * 32 // 256) * 256
    by_registers = REGISTERS_PER_SM // (per_warp * num_warps)
    by_shared = SHARED_PER_SM // (usage["shared"] + 1024) if usage["shared"] else by_registers
    return min(by_registers, by_shared, 2048 // (32 * num_warps))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("launches")
    ap.add_argument("kernel")
    ap.add_argument("overrides", nargs="*", help="constexpr NAME=VALUE (Python literals)")
    ap.add_argument("--types", default="", help="NAME=TYPE,... (e.g. q_ptr=*bf16)")
    ap.add_argument("--options", action="append", default=[], help="num_warps=4,maxnreg=128 (one build each)")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:0] = [root, os.path.join(root, "tests")]
    import sm90_build

    launch = recorded_launch(args.launches, args.kernel,
                             {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.overrides)})
    for name in launch["constexprs"]:  # an argument given a value is built as a constant (what-if, run 68)
        launch["types"].pop(name, None)
    launch["types"].update(dict(item.split("=", 1) for item in filter(None, args.types.split(","))))
    for text in args.options or [""]:
        options = {k: int(v) for k, v in (o.split("=", 1) for o in filter(None, text.split(",")))}
        options = {**launch["options"], **options}
        kernel = sm90_build.build(dict(launch, options=options))
        usage = resources(kernel)
        print(f"{args.kernel} {options}: {usage['registers']} registers, {usage['stack']} B of stack, "
              f"{usage['shared']} B of shared memory; {programs_per_sm(usage, options.get('num_warps', 4))} "
              f"programs an SM; MMA layouts {mma_shapes(kernel)}")


if __name__ == "__main__":
    main()
