#!/usr/bin/env python
"""The delta decisions' pair sums in a Gram form, against the pair kernel's form, in float64 on the CPU (issue #12:
a lead for fewer float64 passes, not used by any path).

The pair kernel (``chunk_fwd_decide_wy.dla_delta_pairs_kernel``) forms, for every start p and later token t of a
chunk, ``Y_p(t) = sum_{p <= s < t} akap[t, s] u_s`` (``u_s = b_s v_s``) and ``W = v_t - a_t Y_p(t)``, then

    X[p, t] = b_t Y.W        SS[p, t] = b_t^2 |k_t|^2 |W|^2

with float64 FMAs, one start at a time (``C^2 Dv / 2`` products a chunk, one warp; 2.0 ms of the forward at (2,
16384, 16, 64)). The same two tables follow from three ``C x C`` products and reverse cumulative sums over p,
without any ``[C, C, Dv]`` term, tensor-core work:

    G = U V^T,  H = U U^T,  B = (H o strict_upper) akap^T           (B[p, t] = sum_{s' > p} H[p, s'] akap[t, s'])
    Y.v   = revcumsum_p(alpha o G)                                  (alpha[s, t] = akap[t, s])
    |Y|^2 = revcumsum_p(alpha o (alpha diag(H) + 2 B))
    X = b_t (Y.v - a_t |Y|^2),   SS = b_t^2 |k_t|^2 (|v_t|^2 - 2 a_t Y.v + a_t^2 |Y|^2)

The expansions are differences, so each is exact only relative to its terms' magnitudes; a score reads X and SS
through ``w = 2 a X + SS`` and beside ``a^2 nP``, so an error small against those terms is what counts. This script
measures, per workload, both forms' difference relative to each table's terms (and SS's to itself: it is positive),
and the smallest ratio of a value to its terms (how much the expansion cancels).

    python benchmarks/delta_pair_gram_accuracy.py [--shape 1x2048x4x64] [--workloads sparse,moderate,dense]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import WORKLOADS, delta_inputs  # noqa: E402

from dla_fast.ops.delta_rule.wy_tables import wy_tables  # noqa: E402

CHUNK = 64


def _reverse_cumsum(x: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """``out[p] = sum_{p' >= p} x[p']`` along ``dim`` (the starts)."""
    return x.flip(dim).cumsum(dim).flip(dim)


def pair_sums_direct(akap, v, a, b, kk):
    """``(X, SS)`` ``[..., C (p), C (t)]`` as the pair kernel forms them (``W`` explicit)."""
    u = b[..., None] * v
    Y = _reverse_cumsum(akap.transpose(-1, -2)[..., None] * u[..., :, None, :], -3)  # [.., p, t, Dv]
    W = v[..., None, :, :] - a[..., None, :, None] * Y
    return b[..., None, :] * (Y * W).sum(-1), (b * b * kk)[..., None, :] * (W * W).sum(-1)


def pair_sums_gram(akap, v, a, b, kk):
    """``(X, SS, X's terms, SS's terms)`` from the Gram form (module docstring)."""
    u = b[..., None] * v
    alpha = akap.transpose(-1, -2)
    H = u @ u.transpose(-1, -2)
    strict_upper = torch.ones(H.shape[-2:], dtype=H.dtype).triu(1)
    B = (H * strict_upper) @ akap.transpose(-1, -2)
    yv = _reverse_cumsum(alpha * (u @ v.transpose(-1, -2)))
    yy = _reverse_cumsum(alpha * (alpha * torch.diagonal(H, dim1=-2, dim2=-1)[..., :, None] + 2 * B))
    vv, at, bt, kt = (v * v).sum(-1)[..., None, :], a[..., None, :], b[..., None, :], (b * b * kk)[..., None, :]
    X = bt * (yv - at * yy)
    SS = kt * (vv - 2 * at * yv + at * at * yy)
    return X, SS, bt * (yv.abs() + at * yy), kt * (vv + 2 * at * yv.abs() + at * at * yy)


def chunks(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, ...]`` -> ``[B H, T / C, C, ...]`` float64."""
    B, T, H = x.shape[:3]
    return x.double().transpose(1, 2).reshape(B * H, T // CHUNK, CHUNK, *x.shape[3:])


def compare(shape: tuple, workload: str) -> str:
    q, k, v, g, w, beta = delta_inputs(*shape, WORKLOADS[workload], device="cpu")
    kc, vc, gc, bc = (chunks(x) for x in (k, v, g, beta))
    akap = wy_tables(None, kc, gc, bc, scores=True)[0]["akap"]
    args = (akap, vc, gc.exp(), bc, (kc * kc).sum(-1))
    X, SS = pair_sums_direct(*args)
    X2, SS2, x_terms, ss_terms = pair_sums_gram(*args)
    pairs = torch.ones(CHUNK, CHUNK, dtype=torch.bool).triu(1)  # p < t
    tiny = torch.finfo(torch.float64).tiny

    def rel(d, scale):
        return (d.abs() / scale.clamp_min(tiny))[..., pairs]

    return (f"{workload} {shape}: X differs by at most {rel(X - X2, x_terms).max():.1e} of its terms, "
            f"SS by {rel(SS - SS2, ss_terms).max():.1e} of its terms "
            f"({rel(SS - SS2, SS).max():.1e} of itself); smallest value / terms: X {rel(X, x_terms).min():.1e}, "
            f"SS {rel(SS, ss_terms).min():.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1x2048x4x64", help="BxTxHxD (T a multiple of 64)")
    ap.add_argument("--workloads", default="sparse,moderate,dense")
    args = ap.parse_args()
    B, T, H, D = map(int, args.shape.split("x"))
    for workload in args.workloads.split(","):
        print(compare((B, T, H, D, D), workload))


if __name__ == "__main__":
    main()
