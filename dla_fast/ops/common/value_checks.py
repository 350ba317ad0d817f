"""The forward's input value checks in one kernel: finite q, k, v, g, slot_weights (and beta), g <= 0 (and beta in
[0, 1]).

``dla_ref.validation.value_checks`` as torch ops is ~40 small ops per call (a reduction and a few elementwise
ops per tensor), each costing the host 10-40 us on the H200's host against a few us of GPU time (a host-bound
forward at few rows: docs/benchmarks.md run 20). Here: one zeroed word and one launch. Each program checks one
block of every tensor and sets the bit of a check it finds violated (``atomic_or``, only then); :func:`raise_flagged`
raises the first violated check in ``dla_ref``'s order, with its message. The scalar decay's forward reads the word
back with a host synchronisation of its own; the delta rule's, which has none, reads it through
:func:`checks_raised_later` when everything is queued, waiting for the check alone (run 45).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dla_ref.validation import BETA_RANGE_MESSAGE, G_POSITIVE_MESSAGE, finite_message

from .triton_utils import cached

CHECKED = ("q", "k", "v", "g", "slot_weights", "beta")  # bit i: CHECKED[i] has a NaN or an infinity
G_POSITIVE_BIT = len(CHECKED)  # then: some g > 0
BETA_RANGE_BIT = G_POSITIVE_BIT + 1  # then: some beta outside [0, 1]
BLOCK = 1024  # elements of each tensor per program: 8 per thread (4096 took 230 registers on sm_90)


@triton.jit
def _load_values(x_ptr, n, offs):
    """``x[offs]`` (0 past ``n``), 16-bit values widened to float32 (exactly) and wider ones as they are: a float64 g
    is judged as given. Triton 3.9's interpreter compares bfloat16 values as their unsigned bits (-0.5 > 0), so
    16-bit values are not compared in their own dtype."""
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    if x.dtype.primitive_bitwidth < 32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _flag_nonfinite(x_ptr, n, offs, flags_ptr, BIT: tl.constexpr):
    """Set bit BIT of the flags when ``x[offs]`` (masked to ``n``) holds a NaN or an infinity."""
    x = _load_values(x_ptr, n, offs)
    bad = (x != x) | (tl.abs(x) == float("inf"))
    if tl.max(bad.to(tl.int32), 0) > 0:
        tl.atomic_or(flags_ptr, 1 << BIT)


@triton.jit
def dla_check_values_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, b_ptr, flags_ptr, n_qk, n_v, n_g, n_w,
    BLOCK: tl.constexpr, GBIT: tl.constexpr, BETA: tl.constexpr, BBIT: tl.constexpr,
):
    """Program i: elements ``i*BLOCK .. (i+1)*BLOCK - 1`` of each (flat, contiguous) tensor that has them; ``BETA``:
    check ``b`` (``n_g`` elements, as g) too."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    _flag_nonfinite(q_ptr, n_qk, offs, flags_ptr, 0)
    _flag_nonfinite(k_ptr, n_qk, offs, flags_ptr, 1)
    _flag_nonfinite(v_ptr, n_v, offs, flags_ptr, 2)
    _flag_nonfinite(g_ptr, n_g, offs, flags_ptr, 3)
    _flag_nonfinite(w_ptr, n_w, offs, flags_ptr, 4)
    g = _load_values(g_ptr, n_g, offs)
    if tl.max((g > 0).to(tl.int32), 0) > 0:
        tl.atomic_or(flags_ptr, 1 << GBIT)
    if BETA:
        _flag_nonfinite(b_ptr, n_g, offs, flags_ptr, 5)
        b = _load_values(b_ptr, n_g, offs)
        if tl.max(((b < 0) | (b > 1)).to(tl.int32), 0) > 0:
            tl.atomic_or(flags_ptr, 1 << BBIT)


def launch_value_checks(q, k, v, g, slot_weights, beta=None, flags=None) -> torch.Tensor:
    """The checks' flags, a 1-element int64 tensor (0: every check passed), computed on the current stream: ``flags``
    (zeroed, a caller's) or made here. The inputs must be contiguous; ``beta`` (as g's shape) or None."""
    flags = torch.zeros(1, device=q.device, dtype=torch.int64) if flags is None else flags
    sizes = (q.numel(), v.numel(), g.numel(), slot_weights.numel())
    grid = (max(triton.cdiv(max(sizes), BLOCK), 1),)
    cached(dla_check_values_kernel)[grid](q, k, v, g, slot_weights, g if beta is None else beta, flags, *sizes,
                                          BLOCK=BLOCK, GBIT=G_POSITIVE_BIT, BETA=beta is not None,
                                          BBIT=BETA_RANGE_BIT, num_warps=4)
    return flags


def checks_raised_later(q, k, v, g, slot_weights, beta=None):
    """:func:`launch_value_checks` now; returns a function that raises the first violated check when called,
    waiting for the check alone, not for what the stream runs after it: the word is copied to pinned host memory
    behind the check kernel and an event recorded after the copy (on a CPU tensor it is read directly)."""
    flags = launch_value_checks(*(x if x is None else x.contiguous() for x in (q, k, v, g, slot_weights, beta)))
    if flags.device.type != "cuda":
        return lambda: raise_flagged(int(flags[0]))
    host = torch.empty(1, dtype=torch.int64, pin_memory=True)
    host.copy_(flags, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def raise_violated() -> None:
        copied.synchronize()
        raise_flagged(int(host[0]))

    return raise_violated


def raise_flagged(flags: int) -> None:
    """Raise ``ValueError`` for the first check whose bit is set in ``flags`` (read back), as
    ``dla_ref.validation.value_checks`` orders them."""
    for bit, name in enumerate(CHECKED):
        if flags >> bit & 1:
            raise ValueError(finite_message(name))
    if flags >> G_POSITIVE_BIT & 1:
        raise ValueError(G_POSITIVE_MESSAGE)
    if flags >> BETA_RANGE_BIT & 1:
        raise ValueError(BETA_RANGE_MESSAGE)
