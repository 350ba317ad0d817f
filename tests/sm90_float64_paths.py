"""The float64 arithmetic of ptxas's fast paths for ``/`` and ``tl.sqrt`` and of their branch-free forms
(``triton_utils.div_f64``, ``sqrt_f64``, FAST), from sm_90 builds, no GPU needed:

    python tests/sm90_float64_paths.py

prints ``{"triton": version, "div": [ieee, fast], "sqrt": [ieee, fast]}``, each from ``fast_path``: the float64
instructions of the fast path in order and the integer constants around them. ``tests/test_triton_sm90_builds.py``
compares them: the same instructions on the same operands are the same bits.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from sm90_build import cubin_sass  # noqa: E402 (this file's folder is first on the path)
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from dla_fast.ops.common.triton_utils import div_f64, sqrt_f64  # noqa: E402

FLOAT64_OPS = ("MUFU", "DFMA", "DMUL", "DADD")


@triton.jit
def _division(a_ptr, b_ptr, o_ptr, FAST: tl.constexpr):
    i = tl.arange(0, 32)
    a = tl.load(a_ptr + i)
    b = tl.load(b_ptr + i)
    tl.store(o_ptr + i, div_f64(a, b, True) if FAST else a / b)


@triton.jit
def _constant_dividend(b_ptr, o_ptr, FAST: tl.constexpr):
    i = tl.arange(0, 32)
    b = tl.load(b_ptr + i)
    tl.store(o_ptr + i, div_f64(0.1, b, True) if FAST else 0.1 / b)


@triton.jit
def _root(x_ptr, o_ptr, FAST: tl.constexpr):
    i = tl.arange(0, 32)
    x = tl.load(x_ptr + i)
    tl.store(o_ptr + i, sqrt_f64(x, True) if FAST else tl.sqrt(x))


def build(fn, pointers: int, fast: bool):
    names = fn.arg_names
    signature = {name: "*fp64" for name in names[:pointers]} | {"FAST": "constexpr"}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs={(pointers,): fast}),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})


def sass(fn, pointers: int, fast: bool) -> str:
    return cubin_sass(build(fn, pointers, fast))


def ptx(fn, pointers: int, fast: bool) -> str:
    return build(fn, pointers, fast).asm["ptx"]


def constant_dividend_bits(listing: str) -> list:
    """The 64-bit constants the PTX moves into registers (``mov.b64 %rd, int``), as hex: ``_constant_dividend``'s
    0.1 must reach the inline PTX as float64 bits (0x3fb999999999999a), not float32 ones (run 56: a Python float
    arrived as 0x3dcccccd, 5e-315 as a float64)."""
    return [hex(int(x) % 2**64) for x in re.findall(r"mov\.b64\s+%rd\d+,\s*(-?\d+);", listing)]


def integer_constant(op: str, operands: list):
    """The 32-bit constant an instruction adds or materialises, as an unsigned int, or None: ``IMAD.MOV.U32 R, RZ,
    RZ, imm`` and ``MOV R, imm`` (a move), ``HFMA2.MMA R, -RZ, RZ, hi, lo`` (a move as two half floats), ``VIADD`` and
    ``IADD3`` with an immediate (an addition)."""
    def word(x):
        return int(x, 16) % 2**32 if "x" in x else int(x) % 2**32

    if op.startswith("HFMA2.MMA") and operands[1:3] == ["-RZ", "RZ"]:
        halves = [np.float16(float(h)).view(np.uint16) for h in operands[3:5]]
        return int(halves[0]) << 16 | int(halves[1])
    if op.startswith(("IMAD.MOV", "MOV", "VIADD", "IADD3")):
        immediates = [x for x in operands[1:] if re.match(r"^-?(0x[0-9a-f]+|\d+)$", x)]
        return word(immediates[0]) if immediates else None
    return None


def fast_path(listing: str) -> dict:
    """From the kernel's first instruction to the first branch or select after the first MUFU: the float64
    instructions in order, as ``opcode immediates`` (``"float64"``; registers and negations dropped: the branch-free
    forms name their operands in another order), and the 32-bit constants the others add or materialise
    (``"integers"``, sorted: the estimates' low words, the root's exponent adjustments, 0.375's high word)."""
    float64, integers, seen_mufu = [], [], False
    for line in listing.splitlines():
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s*(.*?)\s*;", line)
        if not m:
            continue
        text = re.sub(r"^@!?U?P\w+\s+", "", m.group(1))
        op = text.split()[0]
        if seen_mufu and op.startswith(("BRA", "FSEL", "SEL", "CALL")):
            break
        seen_mufu = seen_mufu or op.startswith("MUFU")
        operands = [x.strip() for x in text[len(op):].split(",")]
        if op.split(".")[0] in FLOAT64_OPS and seen_mufu:
            immediates = [x for x in (y.lstrip("-|").rstrip("|") for y in operands)
                          if not re.match(r"^(R|UR|P|PT|RZ)\d*(\.reuse)?$", x)]
            float64.append(" ".join([op] + immediates))
        elif (constant := integer_constant(op, operands)) is not None:
            integers.append(constant)
    return {"float64": float64, "integers": sorted(integers)}


if __name__ == "__main__":
    result = {"triton": triton.__version__}
    for name, fn, pointers in (("div", _division, 3), ("sqrt", _root, 2)):
        result[name] = [fast_path(sass(fn, pointers, fast)) for fast in (False, True)]
    result["constant dividend"] = constant_dividend_bits(ptx(_constant_dividend, 2, True))
    print(json.dumps(result))
