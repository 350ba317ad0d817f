"""Triton helpers shared by the kernels: a program's tokens, masked tile loads, decays, exact-ish dots.

Layout conventions: inputs are ``[B, T, H, D]`` (FLA's), so token ``t`` of head ``h`` in batch ``b`` is the
flat row ``(b * T + t) * H + h`` and its features start at ``row * D``; per-row scalars (``g``) are
``[B, T, H]``; states are row-major ``Dk x Dv``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.runtime import JITFunction, driver

from ...backend import interpreting

try:  # Triton >= 3.4, whose `CompiledKernel[grid]` takes every parameter, as its JIT launcher passes them
    from triton import knobs
except ImportError:
    knobs = None

INT32_MAX = 2**31 - 1
FP64_DOT_K = 16  # dot_from_memory's reduction step: a step's float64 operands take a few registers a warp


def check_int32_offsets(**element_counts: int) -> None:
    """The kernels compute element offsets in 32-bit integers (program ids times strides): each buffer they index
    must hold at most ``INT32_MAX`` elements, or the offsets would wrap silently. ``ValueError`` naming the first
    buffer past it."""
    for name, count in element_counts.items():
        if count > INT32_MAX:
            raise ValueError(f"dla triton: {name} would hold {count:,} elements, past the kernels' 32-bit offsets "
                             f"({INT32_MAX:,}); split the batch or the heads into calls below it")


def launch_jit(kernel, grid, *args, **options):
    """``kernel[grid](*args, **options)`` through Triton's JIT launcher. ``args`` must be every parameter in
    order, constexprs included. Returns the ``CompiledKernel`` to relaunch with :func:`launch_compiled`, or None
    where that is not possible (the interpreter, Triton < 3.4).

    The JIT binds and specialises every argument on each call (~30 us of host time per launch on the H200's
    host, measured 2026-11-30: docs/benchmarks.md run 13), while a decode step's kernels take ~25 us of GPU
    time. A caller that knows the next launch specialises the same way (same dtypes and integer values, and
    pointers of the same 16-byte alignment unless the kernel opts out with ``do_not_specialize_on_alignment``)
    launches the compiled kernel directly.
    """
    compiled = kernel[grid](*args, **options)
    return compiled if knobs is not None and hasattr(compiled, "packed_metadata") else None


def launch_compiled(compiled, grid, stream: int, *args) -> None:
    """Launch a kernel :func:`launch_jit` returned on ``stream`` (see :func:`stream_getter`); ``grid`` has three
    entries, ``args`` are every parameter in order (pointers as tensors or integer addresses).

    The compiled kernel's own launcher, without the Python around it: while a launch hook is registered (a
    profiler such as proton) the launch goes through ``CompiledKernel[grid]``, which builds the hooks' metadata.
    """
    if _hooked(knobs.runtime.launch_enter_hook) or _hooked(knobs.runtime.launch_exit_hook):
        compiled[grid](*args, stream=stream)
        return
    compiled.run(*grid, stream, compiled.function, compiled.packed_metadata, None, None, None, *args)


class _CachedLauncher:
    """``kernel[grid](*args, **kwargs)`` that binds and specialises the arguments once per key (see :func:`cached`)."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.names = frozenset(kernel.arg_names)
        self.defaults = tuple((p.name, p.default) for p in kernel.params)
        self.constexpr = tuple(p.is_constexpr for p in kernel.params)
        self.compiled = {}
        self.stream = None  # the driver's stream getter, looked up at the first direct launch

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid, args, kwargs):
        # the host's time a launch is this function's (the forward at (1, 65536) launches 31 kernels a call): the
        # attributes it reads are the parameters' own, looked up once (run 62: 12.2 -> 10.3 us a launch on this CPU);
        # tensors and ints, the commonest arguments, specialised inline (run 63: ~-1 us a launch)
        values = list(args) + [kwargs.get(name, default) for name, default in self.defaults[len(args):]]
        options = tuple(sorted(item for item in kwargs.items() if item[0] not in self.names))
        device = torch.cuda.current_device()
        spec = tuple([(type(v), v) if const else _tensor_specialisation(v) if type(v) is torch.Tensor
                      else _int_specialisation(v) if type(v) is int else _specialisation(v)
                      for const, v in zip(self.constexpr, values)])
        key = (device, knobs.runtime.debug, options, spec)
        compiled = self.compiled.get(key)
        if compiled is None:
            compiled = launch_jit(self.kernel, grid, *args, **kwargs)
            if compiled is not None and not any(x is _UNKNOWN for x in spec):
                self.compiled[key] = compiled
            return
        if self.stream is None:
            self.stream = stream_getter()
        launch_compiled(compiled, tuple(grid) + (1,) * (3 - len(grid)), self.stream(device), *values)


def _specialisation(value):
    """What Triton's JIT specialises a runtime argument on, or finer: a tensor's dtype and 16-byte alignment, an
    integer's range and whether it is 1 or a multiple of 16 (also for ``do_not_specialize`` ones: finer keys only
    cost a compilation lookup more), a bool's or None's value, a float's type; ``_UNKNOWN`` for anything else
    (such a launch always goes through the JIT)."""
    if isinstance(value, torch.Tensor):
        return _tensor_specialisation(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _int_specialisation(value)
    if isinstance(value, float):
        return float
    return _UNKNOWN


def _tensor_specialisation(value):
    return value.dtype, value.data_ptr() % 16 == 0


def _int_specialisation(value):
    return int, value == 1, value % 16 == 0, -(2**31) <= value < 2**31, 0 <= value < 2**64


_UNKNOWN = object()
_LAUNCHERS = {}


def cached(kernel):
    """``cached(kernel)[grid](*args, **kwargs)`` launches like ``kernel[grid](*args, **kwargs)`` with less host time.

    Triton's JIT binds and specialises every argument on each launch (33-52 us a launch of the scalar-decay
    forward's kernels on the H200's host; a four-argument kernel 12.5 us through the JIT, 6.2 through the compiled
    kernel's own launcher: docs/benchmarks.md run 35). So the compiled kernel is kept per key (the device, the launch
    options, the constexprs' types and values and each runtime argument's :func:`_specialisation`, at least as fine
    as Triton's) and relaunched directly. The first launch of a key, the interpreter and Triton < 3.4 go through the
    JIT. Launch hooks (profilers) are honoured (:func:`launch_compiled`)."""
    if knobs is None or not isinstance(kernel, JITFunction):  # the interpreter's kernels are not (nor compiled)
        return kernel
    launcher = _LAUNCHERS.get(kernel)
    if launcher is None:
        launcher = _LAUNCHERS[kernel] = _CachedLauncher(kernel)
    return launcher


def float64_on(device, values) -> torch.Tensor:
    """``values`` (Python numbers) as a float64 tensor on ``device`` for a kernel to read (Triton passes a Python float
    as float32), without a host synchronisation: ``torch.tensor(values, device="cuda")`` copies from pageable memory
    and then waits for everything queued on the stream, so that inside a forward the GPU drains and idles while the
    host goes on. A copy from pinned memory is queued instead. While a CUDA graph is being captured the plain
    tensor (which refuses to be captured) rather than a copy from a host buffer the graph would read at replay."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return torch.tensor(values, device=device, dtype=torch.float64)
    return torch.tensor(values, dtype=torch.float64, pin_memory=True).to(device, non_blocking=True)


def zeroed(device, *specs) -> list[torch.Tensor]:
    """Zero-filled tensors of the given ``(shape, dtype)`` specs, views into one allocation filled by one kernel,
    each at a 16-byte boundary (as Triton's launches specialise addresses): a forward's small zeroed buffers cost the
    host one launch instead of one each (at 128 rows the host sets the scalar-decay forward's pace: run 52)."""
    sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in specs]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + -(-size // 16) * 16)
    buffer = torch.zeros(max(starts[-1], 1), device=device, dtype=torch.uint8)
    return [buffer[at:at + size].view(dtype).view(shape) for (shape, dtype), at, size in zip(specs, starts, sizes)]


def values_on_host(values: torch.Tensor) -> torch.Tensor:
    """``values`` copied to the host once the work queued before them on the current stream is done: a copy to
    pinned memory and a wait on its event, not on the whole device."""
    return values_on_host_later(values)()


def values_on_host_later(values: torch.Tensor):
    """A function returning ``values`` as they are once the work queued so far on the current stream is done: the
    copy (to pinned memory) is queued now, the host waits for it only when the function is called, so that it may
    queue more work first."""
    if not values.is_cuda:
        host = values.clone()
        return lambda: host
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    copied = torch.cuda.current_stream(values.device).record_event()

    def wait():
        copied.synchronize()
        return host

    return wait


def stream_besides_current(device, priority: int = 0) -> torch.cuda.Stream:
    """A stream from torch's pool for work to run beside the current stream: never the current stream itself. The
    pool hands its streams out in turn, so a caller that runs on a pool stream would otherwise get its own stream
    back in one draw of 32, and the work meant to run beside it would queue behind it instead (run 48: the merge
    simulation behind the carry walk, +7 % at (1, 65536) moderate for such a call)."""
    current = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device=device, priority=priority)
    while stream == current:
        stream = torch.cuda.Stream(device=device, priority=priority)
    return stream


def stream_getter():
    """The active driver's function from a device index to the handle of its current stream, as Triton's
    launchers take it (looked up once: a hot loop calls it per launch)."""
    return driver.active.get_current_stream


def _hooked(hook) -> bool:
    return hook is not None and (not isinstance(hook, knobs.HookChain) or bool(hook.calls))


def next_pow2(x: int) -> int:
    """The smallest power of two ``>= x`` (1 for ``x <= 1``)."""
    return 1 << max(0, (int(x) - 1).bit_length())


def block_sizes(Dk: int, Dv: int):
    """``(BK, BVF, BV)``: the padded key width, the padded value width, and the Dv block of one program."""
    BK, BVF = max(next_pow2(Dk), 16), max(next_pow2(Dv), 16)
    return BK, BVF, min(BVF, 64)


@triton.jit
def chunk_tokens(bh, c, T, H, C: tl.constexpr):
    """Program (bh, chunk c) -> ``(b, h, t_idx, tok, valid, row)``: the chunk's positions, their token
    indices, which exist (``tok < T``), and each token's flat row in ``[B, T, H]``."""
    b = bh // H
    h = bh % H
    t_idx = tl.arange(0, C)
    tok = c * C + t_idx
    return b, h, t_idx, tok, tok < T, (b * T + tok) * H + h


@triton.jit
def load_rows(ptr, row, valid, cols, D):
    """The tile ``x[row, cols]`` of a ``[B, T, H, D]`` tensor; 0 for invalid tokens and ``cols >= D``."""
    return tl.load(ptr + row[:, None] * D + cols[None, :], mask=valid[:, None] & (cols[None, :] < D), other=0.0)


@triton.jit
def load_scalars(ptr, row, valid):
    """``x[row]`` of a ``[B, T, H]`` tensor in float32 (the log decays); 0 for invalid tokens."""
    return tl.load(ptr + row, mask=valid, other=0.0).to(tl.float32)


@triton.jit
def load_state(ptr, kd, vd, Dk, Dv):
    """The block ``(kd, vd)`` of the row-major ``Dk x Dv`` state at ``ptr``; 0 outside."""
    return tl.load(ptr + kd[:, None] * Dv + vd[None, :], mask=(kd[:, None] < Dk) & (vd[None, :] < Dv), other=0.0)


@triton.jit
def store_state(ptr, x, kd, vd, Dk, Dv):
    """Store the block ``(kd, vd)`` of the row-major ``Dk x Dv`` state at ``ptr``."""
    mask = (kd[:, None] < Dk) & (vd[None, :] < Dv)
    tl.store(ptr + kd[:, None] * Dv + vd[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def mask_bits(mask, t_idx):
    """The chunk's boundary bitmask (int64) as a bool vector over its positions."""
    return ((mask >> t_idx.to(tl.int64)) & 1) != 0


# ``bfind.u64`` on two 32-bit halves, branch-free: the highest set bit's index, -1 for 0 (ptxas lowers a 64-bit
# ``bfind`` to branches on sm_90).
BFIND_U64 = tl.constexpr("""{
    .reg .b32 lo, hi, a, b;
    .reg .pred p;
    mov.b64 {lo, hi}, $1;
    bfind.u32 a, hi;
    bfind.u32 b, lo;
    add.u32 a, a, 32;
    setp.ne.u32 p, hi, 0;
    selp.b32 $0, a, b, p;
    }""")


@triton.jit
def prefetch_lines(ptrs, ON: tl.constexpr = False):
    """Ask the SM's L1 for the cache lines at ``ptrs`` (a tensor of pointers, one line each) without waiting for them
    (``prefetch.global.L1``, a hint), so that a later load of them finds them near. ON (a GPU, not the interpreter;
    else this does nothing). Returns int32 zeros shaped like ``ptrs``."""
    if ON:
        return tl.inline_asm_elementwise("prefetch.global.L1 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                         is_pure=False, pack=1)
    return tl.zeros(ptrs.shape, dtype=tl.int32)


@triton.jit
def bit_count(x, POPC: tl.constexpr = False):
    """The number of set bits of ``x`` (int64) as int32. POPC (a GPU, not the interpreter): one ``popc.b64``."""
    if POPC:
        return tl.inline_asm_elementwise("popc.b64 $0, $1;", "=r,l", [x], dtype=tl.int32, is_pure=True, pack=1)
    return tl.sum(((x >> tl.arange(0, 64).to(tl.int64)) & 1).to(tl.int32), 0)


@triton.jit
def bit_index(low, BFIND: tl.constexpr = False):
    """The index of the single set bit of ``low`` (int64), by its float64 exponent (0 gives -1023). BFIND (a GPU,
    not the interpreter): ``BFIND_U64`` instead (the same index; 0 gives -1)."""
    if BFIND:
        return tl.inline_asm_elementwise(BFIND_U64, "=r,l", [low], dtype=tl.int32, is_pure=True, pack=1)
    return (((low.to(tl.float64).to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023).to(tl.int32)


@triton.jit
def highest_bit_index(x, BFIND: tl.constexpr = False):
    """The index of the highest set bit of ``x`` (int64, any bit pattern), -1 for 0: each 32-bit half is exact
    in float64, so its exponent is the index (a 63-bit value converted whole could round up). BFIND (a GPU, not
    the interpreter): ``BFIND_U64``, the same index in 6 instructions instead of ~20."""
    if BFIND:
        return tl.inline_asm_elementwise(BFIND_U64, "=r,l", [x], dtype=tl.int32, is_pure=True, pack=1)
    hi = (x >> 32) & 0xFFFFFFFF
    lo = x & 0xFFFFFFFF
    msb_hi = ((hi.to(tl.float64).to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023 + 32
    msb_lo = ((lo.to(tl.float64).to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023
    return tl.where(x == 0, -1, tl.where(hi > 0, msb_hi, msb_lo)).to(tl.int32)


@triton.jit
def div2_rn(a0, a1, b, FAST: tl.constexpr):
    """``(a0 / b, a1 / b)`` in float64 for dividends ``a >= 0`` (sums of float32 scores: 0 or >= 2**-149) and a
    divisor ``b``, a count in ``[1, 2**53]``. FAST (on a GPU): the instructions of the fast path that ptxas
    emits for ``div.rn.f64`` (MUFU.RCP64H with low word 1 and two Newton steps for 1/b, which depend on b
    alone and so are shared; then per dividend the quotient and one FMA correction), without the branch to
    the slow path. That branch is taken only for a dividend below 2**-972 in magnitude (so for 0 here) or a quotient
    outside [2**-1021, 2**1017) (never here); otherwise ``div.rn.f64`` returns exactly the fast-path value, so the
    quotients are the same float64 (an exact 0 may differ in sign, which the argmin ignores). ptxas merges this sequence
    with a ``/`` of the same operands into one (seen in the sm_90 SASS): they are the same instructions.
    Branch-free, ptxas can overlap it with the argmin; with the branches it serialises the divisions."""
    if FAST:
        # Inline PTX takes its operands as they come: a Python float would arrive as float32 bits in the 64-bit
        # register (1.0 as 5.3e-315). ``x - 0.0`` is ``x`` for every float64, -0 included.
        zero = tl.zeros_like(b).to(tl.float64)
        return tl.inline_asm_elementwise(
            """{
            .reg .f64 r, e, nb, q0, q1, e0, e1;
            .reg .b32 lo, hi;
            rcp.approx.ftz.f64 r, $3;
            neg.f64 nb, $3;
            mov.b64 {lo, hi}, r;
            mov.b64 r, {1, hi};
            fma.rn.f64 e, nb, r, 0d3FF0000000000000;
            fma.rn.f64 e, e, e, e;
            fma.rn.f64 r, r, e, r;
            fma.rn.f64 e, nb, r, 0d3FF0000000000000;
            fma.rn.f64 r, r, e, r;
            mul.rn.f64 q0, $2, r;
            mul.rn.f64 q1, $4, r;
            fma.rn.f64 e0, nb, q0, $2;
            fma.rn.f64 e1, nb, q1, $4;
            fma.rn.f64 $0, r, e0, q0;
            fma.rn.f64 $1, r, e1, q1;
            }""", "=d,=d,d,d,d", [a0 - zero, b - zero, a1 - zero], dtype=(tl.float64, tl.float64), is_pure=True,
            pack=1)
    else:
        return a0 / b, a1 / b


@triton.jit
def div_rn(a, b, FAST: tl.constexpr):
    """``a / b`` by ``div2_rn``'s sequence (ptxas drops the unused second quotient): exactly ``a / b`` for any
    operands with which ``div.rn.f64`` takes its fast path (``div2_rn``), whatever their signs."""
    return div2_rn(a, a, b, FAST)[0]


# Float64 division and square root without ptxas's slow-path branches, for the delta rule's scores (issue #12). The
# slow paths are calls behind a reconvergence barrier (BSSY / BSYNC) after every ``div.rn.f64`` and ``sqrt.rn.f64``;
# the decisions' pair kernel scores four (start, token) pairs a lane with nine of them each, and the barriers keep the
# four chains from overlapping. The sequences below are ptxas's fast paths instruction for instruction (sm_90 SASS,
# Triton 3.6; ``div_rn``'s and, for the root, MUFU.RSQ64H with the low word ``hi(x) - 0x3500000``, then the same DMUL
# / DFMA chain), so they return what ``/`` and ``tl.sqrt`` return wherever ptxas takes its fast path: a quotient of
# magnitude in [2**-1021, 2**1017) and a radicand in [2**-970, inf), and (selected here) an exact zero.
# ``score_fast_f64`` says when a call's scores stay inside those ranges.


# The data's scale for ``score_fast_f64``: float64 sums of products of 16- or 32-bit inputs are 0 or at least ~1e-90
# in magnitude and at most ~1e170; with ``eps`` and ``norm_eps`` in these bounds every quotient and radicand of a
# score stays far inside ptxas's fast-path ranges (2**-972 and up for a dividend, 2**-970 for a radicand).
SCORE_GUARD_RANGE = (2.0**-200, 2.0**200)


def score_fast_f64(eps: float, norm_eps: float, *inputs) -> bool:
    """Whether float64 scores may take ``div_f64`` / ``sqrt_f64``'s branch-free forms: on a GPU (not under the
    interpreter), with no float64 input (whose values could be of any scale) and both guards in
    ``SCORE_GUARD_RANGE``."""
    lo, hi = SCORE_GUARD_RANGE
    return (all(x is None or (x.device.type == "cuda" and x.dtype != torch.float64) for x in inputs)
            and not interpreting() and lo <= eps <= hi and lo <= norm_eps <= hi)


@triton.jit
def div_f64(a, b, FAST: tl.constexpr):
    """``a / b`` in float64 for a divisor ``b > 0``. FAST (a GPU): ``div_rn``'s sequence, with a zero dividend
    returned as it is (the sequence gives +0 for -0)."""
    if FAST:
        return tl.where(a == 0.0, a, div_rn(a, b, FAST))
    return a / b


@triton.jit
def sqrt_f64(x, FAST: tl.constexpr):
    """``sqrt(x)`` in float64 for ``x >= 0``. FAST (a GPU): ptxas's fast path of ``sqrt.rn.f64`` without the branch
    to its slow path (a zero radicand, which the fast path would turn into NaN, is returned as it is)."""
    if FAST:  # (a float32 radicand would reach the PTX as 32 bits: made float64 first, as ``div2_rn``'s operands)
        return tl.inline_asm_elementwise(
            """{
            .reg .b32 xl, xh, yl, yh, hl, hh;
            .reg .f64 y, t, e, h, s, r, hy, nx, ns;
            .reg .pred z;
            mov.b64 {xl, xh}, $1;
            rsqrt.approx.ftz.f64 y, $1;
            mov.b64 {yl, yh}, y;
            add.u32 yl, xh, 0xfcb00000;
            mov.b64 y, {yl, yh};
            mul.rn.f64 t, y, y;
            neg.f64 nx, $1;
            fma.rn.f64 e, nx, t, 0d3FF0000000000000;
            fma.rn.f64 h, e, 0d3FD8000000000000, 0d3FE0000000000000;
            mul.rn.f64 t, y, e;
            fma.rn.f64 y, h, t, y;
            mul.rn.f64 s, $1, y;
            mov.b64 {hl, hh}, y;
            add.u32 hh, hh, 0xfff00000;
            mov.b64 hy, {hl, hh};
            neg.f64 ns, s;
            fma.rn.f64 r, ns, s, $1;
            fma.rn.f64 s, r, hy, s;
            setp.eq.f64 z, $1, 0d0000000000000000;
            selp.f64 $0, $1, s, z;
            }""", "=d,d", [x.to(tl.float64)], dtype=tl.float64, is_pure=True, pack=1)
    return tl.sqrt(x)


@triton.jit
def decay_to_end(g):
    """``(exp(sum of g after s through the chunk end) per token s, exp(sum of the chunk's g))`` in float32,
    from float64 sums and exps: the weights that build states, where strong decay (|G| ~ 10-40) would lose
    ~|G| * 2^-24 relative accuracy in float32 exponents."""
    g64 = g.to(tl.float64)
    G = tl.cumsum(g64, 0)
    Gl = tl.sum(g64, 0)
    return tl.exp(Gl - G).to(tl.float32), tl.exp(Gl).to(tl.float32)


@triton.jit
def decay_scan_combine(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2) for the recurrence z <- a z + b (an associative scan's combine)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def split3(x):
    """x (fp32) = hi + mid + lo, three bf16 parts (~24 significant bits): a bf16 operand times these in three
    bf16 tensor-core dots is as accurate as an fp32 product, with fewer registers than tf32x3."""
    hi = x.to(tl.bfloat16)
    r = x - hi.to(tl.float32)
    mid = r.to(tl.bfloat16)
    lo = (r - mid.to(tl.float32)).to(tl.bfloat16)
    return hi, mid, lo


def bf16_exact_products(split16: bool | None, **operands: torch.Tensor) -> bool:
    """Whether a kernel's products take these operands as they are, exact, in bf16 products (``split3`` on the other
    side; the delta rule's output tables and partition kernel, run 55): ``split16`` as given, which True allows only
    for bf16 operands; None: where they are all bf16, on a GPU (Triton's interpreter multiplies bf16 operands wrongly,
    so it takes the float32 products)."""
    bf16 = all(x.dtype == torch.bfloat16 for x in operands.values())
    if split16 is None:
        return bf16 and not interpreting()
    if split16 and not bf16:
        raise ValueError("split16=True needs bf16 " + ", ".join(operands) + ", got "
                         + ", ".join(str(x.dtype) for x in operands.values()))
    return split16


@triton.jit
def dot_split(a16, b32):
    """a16 (bf16, exact) @ b32 (fp32) at fp32 accuracy by splitting b."""
    hi, mid, lo = split3(b32)
    acc = tl.dot(a16, hi)
    acc = tl.dot(a16, mid, acc)
    return tl.dot(a16, lo, acc)


@triton.jit
def dot_split_t(a32, b16):
    """a32^T (fp32, split) @ b16 (bf16, exact) at fp32 accuracy."""
    hi, mid, lo = split3(a32)
    return dot_split_parts_t(hi, mid, lo, b16)


@triton.jit
def dot_split_parts_t(hi, mid, lo, b16):
    """(hi + mid + lo)^T @ b16 from the three bf16 parts of an fp32 operand (``split3``), hi first."""
    acc = tl.dot(tl.trans(hi), b16)
    acc = tl.dot(tl.trans(mid), b16, acc)
    return tl.dot(tl.trans(lo), b16, acc)


@triton.jit
def dot_state_update(kw, vc, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """``kw^T v`` (fp32 ``[C, BK]`` weighted keys, ``[C, BV]`` values): the chunk's contribution to a state;
    bf16 values with the keys split in three (SPLIT), else fp32 dots at PREC."""
    if SPLIT:
        return dot_split_t(kw, vc)
    else:
        return tl.dot(tl.trans(kw), vc.to(tl.float32), input_precision=PREC)


@triton.jit
def qdot(qc, qf, Hm, LOWP: tl.constexpr, PREC: tl.constexpr):
    """q^T H for a ``[C, Dk]`` query tile and an fp32 ``[Dk, BV]`` state: 16-bit operands for 16-bit inputs
    (as FLA does), else fp32 at PREC."""
    if LOWP:
        return tl.dot(qc, Hm.to(qc.dtype))
    else:
        return tl.dot(qf, Hm, input_precision=PREC)


@triton.jit
def dot_nt(a, b, LOWP: tl.constexpr, PREC: tl.constexpr):
    """a @ b^T: 16-bit operands for 16-bit inputs (b cast to a's dtype), else fp32 at PREC."""
    if LOWP:
        return tl.dot(a, tl.trans(b.to(a.dtype)))
    else:
        return tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision=PREC)


@triton.jit
def dot_nn(a, b, LOWP: tl.constexpr, PREC: tl.constexpr, dtype: tl.constexpr):
    """a @ b: for 16-bit inputs both operands in ``dtype`` (fp32 accumulation), else fp32 at PREC."""
    if LOWP:
        return tl.dot(a.to(dtype), b.to(dtype))
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)


@triton.jit
def dot_from_memory(a_ptr, sa_m, sa_k, b_ptr, sb_k, sb_n, scale_ptr, m_lim, k_lim, n_lim,
                    BM: tl.constexpr, BN: tl.constexpr, BKD: tl.constexpr, SCALED: tl.constexpr,
                    STAGES: tl.constexpr):
    """``sum_k a[m, k] (scale[k]) b[k, n]`` (float64 ``[BM, BN]``) with both operands read from strided memory (any
    float dtype, multiplied in float64), ``BKD`` of the reduction at a time (``STAGES`` loads in flight). A float64
    ``tl.dot`` operand held whole in registers takes 128 registers a warp at 64 x 64 and spills; read from memory, a
    step's takes a few."""
    return dot_from_memory_as(a_ptr, sa_m, sa_k, b_ptr, sb_k, sb_n, scale_ptr, m_lim, k_lim, n_lim, BM, BN, BKD,
                              SCALED, STAGES, "float64")


@triton.jit
def dot_from_memory_as(a_ptr, sa_m, sa_k, b_ptr, sb_k, sb_n, scale_ptr, m_lim, k_lim, n_lim,
                       BM: tl.constexpr, BN: tl.constexpr, BKD: tl.constexpr, SCALED: tl.constexpr,
                       STAGES: tl.constexpr, OPD: tl.constexpr):
    """:func:`dot_from_memory` with the operands rounded to ``OPD`` before their product: ``"float64"`` (summed in
    float64), ``"bfloat16"``, ``"float16"`` or ``"tf32"`` (summed in float32, as FLA's kernels multiply)."""
    ACC: tl.constexpr = tl.float64 if OPD == "float64" else tl.float32
    m = tl.arange(0, BM)
    n = tl.arange(0, BN)
    acc = tl.zeros([BM, BN], dtype=ACC)
    for k0 in tl.range(0, k_lim, BKD, num_stages=STAGES):
        kk = k0 + tl.arange(0, BKD)
        a = tl.load(a_ptr + m[:, None] * sa_m + kk[None, :] * sa_k, mask=(m[:, None] < m_lim) & (kk[None, :] < k_lim),
                    other=0.0).to(ACC)
        b = tl.load(b_ptr + kk[:, None] * sb_k + n[None, :] * sb_n, mask=(kk[:, None] < k_lim) & (n[None, :] < n_lim),
                    other=0.0).to(ACC)
        if SCALED:
            b = b * tl.load(scale_ptr + kk, mask=kk < k_lim, other=0.0).to(ACC)[:, None]
        if OPD == "bfloat16":
            acc += tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
        elif OPD == "float16":
            acc += tl.dot(a.to(tl.float16), b.to(tl.float16))
        elif OPD == "tf32":
            acc += tl.dot(a, b, input_precision="tf32")
        else:
            acc += tl.dot(a, b)
    return acc
