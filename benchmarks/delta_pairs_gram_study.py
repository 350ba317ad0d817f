#!/usr/bin/env python
"""CPU study for the delta rule's pair kernel (docs/performance.md, run 30): how far the Gram form of its two per-start
sums falls from the explicit one, in float64, against an 80-bit reference.

For a chunk, start p and token t > p the pair kernel forms ``Y = sum_{p <= s < t} akap[t, s] b_s v_s``, ``W = v_t -
a_t Y``, then ``X = b_t Y . W`` and ``SS = b_t^2 |k_t|^2 |W|^2`` (explicit). The Gram form needs no loop over p:
with ``G = V V^T`` and ``M[t, s] = akap[t, s] b_s``, ``Y . v_t = sum_{s >= p} M[t, s] G[s, t]`` and ``|Y|^2 =
sum_{s, s' >= p} M[t, s] M[t, s'] G[s, s']``, so ``X = b (Y.v - a |Y|^2)`` and ``SS = b^2 |k|^2 (|v|^2 - 2 a Y.v +
a^2 |Y|^2)``, which cancels where ``W`` is small (the rule erasing the state). Prints, per workload, the largest and
99.9th-percentile relative error of each form's ``SS`` and ``X`` (without their factors ``b_t^2 |k_t|^2`` and
``b_t``, which both forms share) against ``numpy.longdouble`` (64-bit mantissa on x86), the share of pairs off by
more than 1e-8 and 1e-6, and how often a guard on the cancellation of ``|W|^2``'s three terms (their sum's ratio to
their magnitudes' sum) would send a (chunk, row) to the token walk. Besides ``gpu_bench``'s three workloads,
``repeats``: the moderate one with every second token a copy of the one before (key and value), no decay and beta
``1 - erase`` (in the inputs' bf16: below ~2e-3 it rounds to 1), where the rule all but erases the slot (``W``
small).

    python benchmarks/delta_pairs_gram_study.py [--T 2048] [--H 2] [--D 64] [--erase 1e-3]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import WORKLOADS, delta_inputs  # noqa: E402

from dla_fast.ops.common.layout import chunks, rows  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables import wy_tables  # noqa: E402

C = 64


def sums_explicit(M, V, a, dtype):
    """``(Y . W, |W|^2)`` for every (p, t), ``[C (p), C (t)]``, by suffix sums of ``M[t, s] v_s``."""
    M, V, a = (x.astype(dtype) for x in (M, V, a))
    Z = M[:, :, None] * V[None, :, :]  # [t, s, d]
    Y = np.flip(np.cumsum(np.flip(Z, 1), 1), 1).transpose(1, 0, 2)  # Y[p, t] = sum_{s >= p} M[t, s] v_s
    W = V[None, :, :] - a[None, :, None] * Y
    return (Y * W).sum(-1), (W * W).sum(-1)


def sums_gram(M, V, a):
    """The same from ``G = V V^T`` (float64): ``Y . v_t`` by a suffix sum, ``|Y|^2`` by its suffix recursion; and
    the ratio of ``|W|^2`` so formed to its three terms' magnitudes (a guard: small where they cancel)."""
    G = V @ V.T
    E = M * G.T  # E[t, s] = M[t, s] G[s, t]
    Yv = np.flip(np.cumsum(np.flip(E, 1), 1), 1).T  # [p, t]
    U = M @ np.triu(G, 1).T  # U[t, p] = sum_{s' > p} M[t, s'] G[p, s']
    steps = M * (M * np.diag(G)[None, :] + 2.0 * U)  # [t, p]: N_p - N_{p+1}
    Y2 = np.flip(np.cumsum(np.flip(steps, 1), 1), 1).T  # [p, t]
    terms = (np.diag(G)[None, :], 2.0 * a[None, :] * Yv, a[None, :] ** 2 * Y2)
    W2 = terms[0] - terms[1] + terms[2]
    ratio = np.abs(W2) / np.maximum(terms[0] + np.abs(terms[1]) + terms[2], np.finfo(np.float64).tiny)
    return Yv - a[None, :] * Y2, W2, ratio


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--H", type=int, default=2)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--erase", type=float, default=1e-3, help="1 - beta in the repeats workload")
    args = ap.parse_args()
    pair = np.tril(np.ones((C, C), dtype=bool), -1).T  # [p, t]: t > p
    for wname in (*WORKLOADS, "repeats"):
        wl = WORKLOADS.get(wname, WORKLOADS["moderate"])
        q, k, v, g, w, beta = delta_inputs(1, args.T, args.H, args.D, args.D, wl, device="cpu")
        if wname == "repeats":
            k, v = k.clone(), v.clone()
            k[:, 1::2], v[:, 1::2] = k[:, ::2], v[:, ::2]
            beta, g = torch.full_like(beta, 1 - args.erase), torch.zeros_like(g)
        nC = args.T // C
        kc, vc, gc, bc = (chunks(rows(x, torch.float64), C, nC) for x in (k, v, g, beta))
        tab, _ = wy_tables(None, kc, gc, bc)
        errs = {n: [] for n in ("SS explicit", "SS gram", "X explicit", "X gram")}
        ratios = []  # per (chunk, row): the smallest guard ratio of its pairs
        for c in range(nC):
            for r in range(kc.shape[1]):
                M = (tab["akap"][c, r] * bc[c, r][None, :]).numpy()
                V, a = vc[c, r].numpy(), torch.exp(gc[c, r]).numpy()
                x_ref, ss_ref = sums_explicit(M, V, a, np.longdouble)
                x64, ss64 = sums_explicit(M, V, a, np.float64)
                xg, ssg, ratio = sums_gram(M, V, a)
                ratios.append(ratio[pair].min())
                scale_x = np.abs(x_ref).max()  # X's terms can cancel to 0: relative to the chunk's largest
                for n, got, ref, scale in (("SS explicit", ss64, ss_ref, np.abs(ss_ref)),
                                           ("SS gram", ssg, ss_ref, np.abs(ss_ref)),
                                           ("X explicit", x64, x_ref, scale_x), ("X gram", xg, x_ref, scale_x)):
                    e = np.abs(got - ref) / np.maximum(scale, np.finfo(np.float64).tiny)
                    errs[n].append(e[pair].astype(np.float64))
        print(f"{wname}: T = {args.T}, H = {args.H}, D = {args.D}")
        for n, e in errs.items():
            e = np.concatenate(e)
            print(f"  {n:12s} max {e.max():.1e}  p99.9 {np.quantile(e, 0.999):.1e}  > 1e-8: {(e > 1e-8).mean():.2%}"
                  f"  > 1e-6: {(e > 1e-6).mean():.2%}")
        r = np.array(ratios)
        print(f"  guard: the smallest ratio of a (chunk, row) {r.min():.1e}; (chunk, row)s below 1e-4: "
              f"{(r < 1e-4).mean():.1%}, below 1e-6: {(r < 1e-6).mean():.1%}")


if __name__ == "__main__":
    main()
