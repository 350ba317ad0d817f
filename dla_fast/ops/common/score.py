"""The state information score ``I_t``: one derivation, one implementation per backend (numba, torch, Triton).

Every path decides boundaries from three scalars of the open slot ``P`` (its state before step ``t``) and
the token's increment ``u = P' - a P`` (scalar decay: ``u = k v^T``; delta rule: ``u = beta k (v - a P^T k)^T``)::

    nP = ||P||^2,   x = <P, u>,   ss = ||u||^2,   a = exp(g),   N = Dk * Dv.

With the RMS normalisation ``n(X) = X / sqrt(||X||^2 / N + norm_eps)``, the score is
``I = ||n(P') - n(P)|| / (||n(P)|| + eps)``. Written with ``r = rms(P)``, ``r' = rms(P')`` and
``c = a / r' - 1 / r`` (so that ``n(P') - n(P) = c P + u / r'``), it is evaluated without subtracting
close numbers (docs/chunked-algorithm.md section 1, docs/precision.md sections 3 and 7)::

    r^2  = nP / N + norm_eps
    w    = 2 a x + ss                                   # ||P'||^2 - a^2 ||P||^2
    r'^2 = max((a^2 nP + w) / N + norm_eps, norm_eps)   # >= norm_eps exactly; the max guards the rounding
    c    = (expm1(2 g) norm_eps - w / N) / r / r' / (a r + r')
    D2   = max(c^2 nP + 2 c x / r' + ss / r'^2, 0)      # ||n(P') - n(P)||^2
    I    = sqrt(D2) / (sqrt(nP) / r + eps)

The divisions by ``r``, ``r'`` and ``a r + r'`` come one at a time (their product overflows float32 for
states of norm ~1e13). The floors (``norm_eps`` for ``r'^2``, ``0`` for ``D2``) are the same in every backend;
``tests/test_score.py`` compares the backends on near-zero, huge and cancelling inputs.
"""

from __future__ import annotations

from math import exp, expm1, sqrt

import torch

from .numba import njit

try:
    import triton
    import triton.language as tl
except ImportError:  # the Triton implementation exists only where Triton does
    triton = None
else:
    from .triton_utils import div_f64, sqrt_f64


@njit
def information_score_numba(nP, x, ss, g, numel, eps, norm_eps):
    """The score from float64 scalars (the torch path's numba scan)."""
    a = exp(g)
    r2 = nP / numel + norm_eps
    w = 2.0 * a * x + ss
    rp2 = max((a * a * nP + w) / numel + norm_eps, norm_eps)
    r = sqrt(r2)
    rp = sqrt(rp2)
    c = (expm1(2.0 * g) * norm_eps - w / numel) / r / rp / (a * r + rp)
    d2 = max(c * c * nP + 2.0 * c * x / rp + ss / rp2, 0.0)
    return sqrt(d2) / (sqrt(nP) / r + eps)


def information_score_torch(nP, x, ss, g, numel: int, eps: float, norm_eps: float) -> torch.Tensor:
    """The score from tensors (elementwise; float64 in the torch paths), same operations in the same order."""
    a = torch.exp(g)
    r2 = nP / numel + norm_eps
    w = 2.0 * a * x + ss
    rp2 = torch.clamp((a * a * nP + w) / numel + norm_eps, min=norm_eps)
    r = torch.sqrt(r2)
    rp = torch.sqrt(rp2)
    c = (torch.expm1(2.0 * g) * norm_eps - w / numel) / r / rp / (a * r + rp)
    d2 = torch.clamp(c * c * nP + 2.0 * c * x / rp + ss / rp2, min=0.0)
    return torch.sqrt(d2) / (torch.sqrt(nP) / r + eps)


def score_partials(nP, x, ss, g, dscores, numel: float, eps: float, norm_eps: float):
    """``dscores * (dI/dnP, dI/dx, dI/dss, dI/dg)`` (float64 ``[R, T]``), zero where ``dscores`` is 0.

    By autograd through :func:`information_score_torch` itself (no second copy of the formula to drift).
    Where the score's norms are 0 (a zero open state, or ``n(P)`` unchanged: score 0) the score is not
    differentiable and sqrt's derivative is infinite: the gradient is taken as 0 there.
    """
    decided = dscores != 0
    safe = lambda t, fill: torch.where(decided, t, torch.full_like(t, fill))  # noqa: E731
    leaves = [safe(nP, 1.0).requires_grad_(), safe(x, 0.0).requires_grad_(), safe(ss, 1.0).requires_grad_(),
              safe(g, 0.0).requires_grad_()]
    with torch.enable_grad():
        score = information_score_torch(*leaves, numel, eps, norm_eps)
        weights = torch.where(decided, dscores, torch.zeros_like(dscores))
        grads = torch.autograd.grad(score, leaves, grad_outputs=weights)
    return [torch.where(decided & torch.isfinite(t), t, torch.zeros_like(t)) for t in grads]


if triton is not None:

    @triton.jit
    def expm1_triton(x):
        """expm1 for x <= 0 in float32 (Kahan's trick: exact at small |x|, no cancellation)."""
        u = tl.exp(x)
        lu = tl.log(u)
        r = tl.where(u == 1.0, x, (u - 1.0) * x / tl.where(lu == 0.0, 1.0, lu))
        return tl.where(u == 0.0, -1.0, r)

    @triton.jit
    def information_score_triton(nP, x, ss, g, N, eps, norm_eps, RSQRT: tl.constexpr = False):
        """The score from float32 tensors of any shape (the Triton kernels); ``RSQRT``: the pair tables' form
        (:func:`information_score_from_decay_triton`)."""
        return information_score_from_decay_triton(nP, x, ss, tl.exp(g), expm1_triton(2.0 * g), N, eps, norm_eps,
                                                   RSQRT=RSQRT)

    @triton.jit
    def information_score_from_decay_triton(nP, x, ss, a, em1, N, eps, norm_eps, RSQRT: tl.constexpr = False,
                                            FAST_F64: tl.constexpr = False):
        """The score with the decay's two terms given: ``a = exp(g)``, ``em1 = expm1(2 g)`` (the carry scan reads
        them from its table instead of computing them in its sequential loop). ``RSQRT`` (the pair tables, 64 x 64
        scores a chunk): the norms' reciprocals by reciprocal square roots and the norms as ``r^2 / r``, two MUFU.RSQ
        and two products in place of two square roots and two divisions (~10 instructions fewer a score on sm_90);
        as accurate (``rsqrt.approx`` ~1 ulp, ``sqrt.approx`` then ``div.full`` ~3), a few ulps apart. ``FAST_F64``
        (float64 operands on a GPU, inside ``score_fast_f64``'s ranges): the divisions and square roots without
        their slow-path branches (``div_f64``, ``sqrt_f64``), the same float64 values."""
        # Four divisions per score instead of ten (the pair tables score 64 x 64 pairs a chunk; the carry scan's
        # chain waits on each): 1 / N once, the norms' reciprocals once each, then products.
        inv_n = 1.0 / N
        r2 = nP * inv_n + norm_eps
        w = 2.0 * a * x + ss
        rp2 = tl.maximum((a * a * nP + w) * inv_n + norm_eps, norm_eps)
        if RSQRT:
            inv_r = tl.math.rsqrt(r2)
            inv_rp = tl.math.rsqrt(rp2)
            r = r2 * inv_r
            rp = rp2 * inv_rp
        else:
            r = sqrt_f64(r2, FAST_F64)
            rp = sqrt_f64(rp2, FAST_F64)
            inv_r = div_f64(1.0, r, FAST_F64)
            inv_rp = div_f64(1.0, rp, FAST_F64)
        c = div_f64((em1 * norm_eps - w * inv_n) * (inv_r * inv_rp), a * r + rp, FAST_F64)
        d2 = tl.maximum(c * c * nP + 2.0 * c * x * inv_rp + ss * (inv_rp * inv_rp), 0.0)
        return div_f64(sqrt_f64(d2, FAST_F64), sqrt_f64(nP, FAST_F64) * inv_r + eps, FAST_F64)

    @triton.jit
    def delta_rule_increment(P, k, v, a):
        """The delta rule's increment against the open slot ``P`` (a ``[Dk, Dv-block]`` tile, float64):
        ``(y, y.w, w.w)`` with ``y = P^T k`` and ``w = v - a y`` over the block's columns. Then ``x = b y.w`` and
        ``ss = b^2 |k|^2 w.w`` (summed over the blocks), and ``u = b k w^T``. ``y`` reduces over Dk only."""
        y = tl.sum(P * k[:, None], 0)
        w = v - a * y
        return y, tl.sum(y * w, 0), tl.sum(w * w, 0)

    @triton.jit
    def _score_elementwise_kernel(np_ptr, x_ptr, ss_ptr, g_ptr, out_ptr, n, N, eps, norm_eps, BLOCK: tl.constexpr,
                                  RSQRT: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        nP = tl.load(np_ptr + i, mask=m, other=1.0)
        x = tl.load(x_ptr + i, mask=m, other=0.0)
        ss = tl.load(ss_ptr + i, mask=m, other=0.0)
        g = tl.load(g_ptr + i, mask=m, other=0.0)
        tl.store(out_ptr + i, information_score_triton(nP, x, ss, g, N, eps, norm_eps, RSQRT=RSQRT), mask=m)


def information_score_triton_elementwise(nP, x, ss, g, numel: int, eps: float, norm_eps: float, *,
                                         table: bool = False) -> torch.Tensor:
    """The Triton implementation over float32 tensors (1-D, one device): to compare the backends in tests.
    ``table``: the pair tables' form (``RSQRT``) instead of the shared one."""
    if triton is None:
        raise RuntimeError("information_score_triton_elementwise: Triton is not installed")
    nP, x, ss, g = (t.to(torch.float32).contiguous() for t in (nP, x, ss, g))
    out = torch.empty_like(nP)
    BLOCK = 128
    _score_elementwise_kernel[(triton.cdiv(nP.numel(), BLOCK),)](nP, x, ss, g, out, nP.numel(), float(numel),
                                                                float(eps), float(norm_eps), BLOCK=BLOCK,
                                                                RSQRT=table)
    return out
