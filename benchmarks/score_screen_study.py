#!/usr/bin/env python
"""CPU study: can a float32 evaluation of the delta rule's information score screen the pair kernel's decisions?

The pair kernel (``chunk_fwd_decide_wy``) scores every (start p, token t > p) pair of a chunk in float64 from float64
``nP, x, ss, a = exp(g), em1 = expm1(2 g)`` (``score.information_score_from_decay_triton``) and decides
``score >= tau``. Here the same formula runs on float32-rounded inputs in float32 (numpy; ``ieee``: correctly
rounded; ``gpu``: fused multiply-adds, every square root and division off by a random -2..2 ulps), and ``bound``
gives an a-priori ``delta >= |score32 - score64|`` in float32 from the float32 evaluation's own intermediates
(derivation: scratch/score_screen_study.md). Where ``|score32 - tau| > delta`` the float32 decision is float64's;
elsewhere the pair, and its [16 starts, 8 tokens] tile, would take the float64 formula.

Sets: ``gpu_bench``'s delta workloads (bf16 inputs, one batch, ``--heads`` heads, Dk = Dv = ``--dim``; the slot
opened at each in-chunk start followed in float64, ``nP`` by the kernel's recursion), ``repeats`` (every second token
a copy, no decay, beta = 1: the rule erases the slot) and adversarial draws (cancelling ``w = 2 a x + ss`` or
``a^2 nP + w``, tiny ``nP``, scores moved onto tau). Columns: pairs; the worst ``|score32 - score64| / delta`` per
variant; the share within ``delta`` of tau of all pairs, of the pairs a decision reads (``p < t <= next[p]``) and of
the kernel's tiles; the median delta near tau; the smallest ``|score32 - tau| / delta``; pairs below GUARD.

    python benchmarks/score_screen_study.py [--tokens 8192] [--heads 2] [--dim 64] [--seed 11] [--draws 200000]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, delta_inputs  # noqa: E402

from dla_fast.ops.common.score import information_score_torch  # noqa: E402

C, G, PW, GUARD = 64, 16, 8, 1e-4  # chunk, the pair kernel's tile (starts x tokens), chunk_fwd_decide_wy.GUARD
EPS = NORM_EPS = 1e-6
F32, F64 = np.float32, np.float64
U = 2.0 ** -24  # float32 unit roundoff
V = 5 * U  # a square root, reciprocal or division: 0.5 ulp rounding + 2 ulps of an approximate instruction
ETA = 2.0 ** -149  # absolute error of a product that underflows (float32's subnormal spacing)
SAFETY, CAP = 2.0, 1e-2  # delta = SAFETY x first-order bound; relative allowances above CAP: no screen (inf)


def _perturb(y, rng, ulps):
    """``y`` (float32) moved by a random integer number of ulps in [-ulps, ulps] where finite and nonzero."""
    if not ulps:
        return y
    k = rng.integers(-ulps, ulps + 1, y.shape).astype(np.int32)
    moved = (y.view(np.int32) + k).view(F32)
    return np.where(np.isfinite(y) & (y != 0), moved, y)


def score(nP, x, ss, a, em1, N, dt=F64, rng=None, ulps=0, fma=False):
    """The kernel's score formula (``information_score_from_decay_triton``, the division form) in ``dt``; returns
    ``(score, intermediates)``. ``fma``: contracted multiply-adds (one rounding each, emulated in float64)."""
    domain = _domain(nP, x, ss, a, em1)
    nP, x, ss, a, em1 = (np.asarray(v, F64).astype(dt) for v in (nP, x, ss, a, em1))
    eps, ne, inv_n = dt(EPS), dt(NORM_EPS), dt(1.0) / dt(N)

    def mad(p, q, s):
        return (p.astype(F64) * q + s).astype(dt) if fma else p * q + s

    def op(y):
        return _perturb(y, rng, ulps)

    r2 = mad(nP, inv_n, ne)
    w = mad(dt(2.0) * a, x, ss)
    rp2 = np.maximum(mad(mad(a * a, nP, w), inv_n, ne), ne)
    r, rp = op(np.sqrt(r2)), op(np.sqrt(rp2))
    inv_r, inv_rp = op(dt(1.0) / r), op(dt(1.0) / rp)
    den = mad(a, r, rp)
    c = op(mad(em1, ne, -(w * inv_n)) * (inv_r * inv_rp) / den)
    d2 = np.maximum(mad(c * c, nP, mad(dt(2.0) * c * x, inv_rp, ss * (inv_rp * inv_rp))), dt(0.0))
    sd = op(np.sqrt(d2))
    den2 = mad(op(np.sqrt(nP)), inv_r, eps)
    s = op(sd / den2)
    return s, dict(nP=nP, x=x, ss=ss, a=a, em1=em1, inv_n=inv_n, ne=ne, rp2=rp2, inv_r=inv_r, inv_rp=inv_rp,
                   den=den, c=c, d2=d2, sd=sd, den2=den2, s=s, domain=domain)


def bound(q):
    """``delta >= |score32 - score64|`` from the float32 evaluation's intermediates ``q``, in float32 (NumPy 2 keeps
    Python constants weak). Absolute errors ``e_*``, relative ones ``k_*`` (scratch/score_screen_study.md section 2);
    inf where not screenable."""
    nP, x, ss, a, em1, inv_n, ne, rp2, inv_r, inv_rp, den, c, d2, sd, den2, s = (q[n] for n in (
        "nP", "x", "ss", "a", "em1", "inv_n", "ne", "rp2", "inv_r", "inv_rp", "den", "c", "d2", "sd", "den2", "s"))
    ax2, ac, u = np.abs(2 * a * x), np.abs(c), U
    k_r = 1.5 * u + V  # r2 = nP / N + ne: 3u, then the square root
    k_ir = k_r + V
    k_rp2 = (u * (7 * (a * a * nP + ax2 + ss) * inv_n + 2 * rp2) + ETA * (nP + 1) * inv_n) / rp2
    k_irp = 0.5 * k_rp2 + 2 * V
    e_num = u * (4 * np.abs(em1) * ne + 6 * (ax2 + ss) * inv_n) + 2 * ETA
    k_den = k_r + k_irp - V + 3 * u
    e_c = e_num * (inv_r * inv_rp / den) + ac * (k_ir + k_irp + k_den + 2 * u + V) + ETA * (1 / den + 1)
    T1, T2, T3 = c * c * nP, np.abs(2 * c * x * inv_rp), ss * (inv_rp * inv_rp)
    e_d2 = (nP * e_c * (2 * ac + e_c) + 2 * np.abs(x) * inv_rp * e_c + 5 * u * T1 + (5 * u + k_irp) * T2
            + (5 * u + 2 * k_irp) * T3 + ETA * (nP + inv_rp + ss + 3))
    re = np.sqrt(e_d2)  # |sqrt(d2) - sd| <= e / (sd + sqrt(d2 - e)) <= e / (2 sd - sqrt(e)), and <= sqrt(e)
    e_sd = e_d2 / np.maximum(re, 2 * sd - re) + V * sd
    delta = SAFETY * (e_sd / den2 + s * (3.5 * u + 2 * V + k_ir) + ETA)
    ok = (np.maximum(k_rp2, k_den) <= CAP) & np.isfinite(delta) & np.isfinite(s) & q["domain"]
    return np.where(ok, delta, np.float32(np.inf))


def _domain(nP, x, ss, a, em1):
    """The float64 inputs a float32 screen takes: each 0 or in [FLT_MIN, 2^60) in magnitude, a > 0."""
    ok = a >= np.finfo(F32).tiny
    for m in (nP, x, ss, em1):
        ok &= (m == 0) | ((np.abs(m) >= np.finfo(F32).tiny) & (np.abs(m) < 2.0 ** 60))
    return ok


def chunk_pairs(k, v, g, b):
    """Per (row-chunk, p, t): ``nP, x, ss`` of the slot opened at start p, scored at token t > p, float64 torch
    tensors ``[R, C, C]`` (NaN where t <= p). Inputs ``[R, C, D]`` / ``[R, C]`` float64. The slots ``S [p, R, D,
    D]`` are updated in place: ``S <- a S + b k w^T`` with ``w = v - a S^T k``."""
    R, _, D = k.shape
    S = torch.zeros(C, R, D, D, dtype=torch.float64)
    nP = torch.zeros(C, R, dtype=torch.float64)
    out = torch.full((3, R, C, C), float("nan"), dtype=torch.float64)
    a = torch.exp(g)
    for t in range(C):
        kt, vt, at, bt = k[:, t], v[:, t], a[:, t], b[:, t]
        if t:
            St = S[:t].view(t * R, D, D)
            kk = kt.expand(t, R, D).reshape(t * R, 1, D)
            y = torch.bmm(kk, St).view(t, R, D)
            w = vt - at[:, None] * y
            x, ss = bt * (y * w).sum(-1), bt * bt * (kt * kt).sum(-1) * (w * w).sum(-1)
            out[:, :, :t, t] = torch.stack((nP[:t], x, ss)).transpose(1, 2)
            nP[:t] = at * at * nP[:t] + 2 * at * x + ss
            St.mul_(at.repeat(t)[:, None, None]).baddbmm_(bt.repeat(t)[:, None, None] * kk.transpose(1, 2),
                                                         w.reshape(t * R, 1, D))
        S[t] = (bt[:, None] * kt)[:, :, None] * vt[:, None, :]
        nP[t] = bt * bt * (kt * kt).sum(-1) * (vt * vt).sum(-1)
    return out


def workload_set(name, T, H, D, seed):
    """The pairs of one workload: ``(nP, x, ss, g)`` float64 ``[R, C, C]`` (g broadcast over starts)."""
    q, k, v, g, w, beta = delta_inputs(1, T, H, D, D, WORKLOADS.get(name, WORKLOADS["moderate"]), seed=seed,
                                       device="cpu")
    if name == "repeats":
        k, v = k.clone(), v.clone()
        k[:, 1::2], v[:, 1::2] = k[:, ::2], v[:, ::2]
        beta, g = torch.ones_like(beta), torch.zeros_like(g)
    rc = lambda t: t.movedim(2, 1).reshape(H * (T // C), C, *t.shape[3:]).to(torch.float64)  # noqa: E731
    nP, x, ss = chunk_pairs(rc(k), rc(v), rc(g), rc(beta))
    return nP, x, ss, rc(g)[:, None, :].expand_as(nP)


def adversarial(n, rng):
    """Draws ``(nP, x, ss, g, N)`` (float64): generic, ``w`` cancelling, ``a^2 nP + w`` cancelling, each a quarter,
    and a quarter of generic ones scaled (``u -> s u``) by bisection onto tau, then moved by 1e-9..1e-3."""
    m = n // 4
    lu = lambda lo, hi, k=m: 10.0 ** rng.uniform(lo, hi, k)  # noqa: E731
    nP, ss = lu(-10, 6, 4 * m), lu(-10, 6, 4 * m)
    g = -lu(-7, 1, 4 * m)
    a = np.exp(g)
    cos = rng.uniform(-1, 1, 4 * m)
    tiny = lu(-9, -1) * rng.choice([-1, 1], m)
    s1 = slice(m, 2 * m)  # w = 2 a x + ss ~ 0: |u| = 2 a |P| |cos|
    cos[s1] = -rng.uniform(0, 1, m)
    ss[s1] = 4 * a[s1] ** 2 * nP[s1] * cos[s1] ** 2 * (1 + tiny)
    s2 = slice(2 * m, 3 * m)  # u ~ -a P: a^2 nP + 2 a x + ss ~ 0
    ss[s2] = a[s2] ** 2 * nP[s2] * (1 + tiny) ** 2
    cos[s2] = -(1 - lu(-12, -1))
    N = rng.choice([4096.0, 16384.0], 4 * m)
    x = cos * np.sqrt(nP * ss)
    s3 = slice(3 * m, 4 * m)
    scale = _onto_tau(nP[s3], x[s3], ss[s3], a[s3], np.expm1(2 * g[s3]), N[s3]) * (1 + lu(-9, -3) * np.sign(tiny))
    x[s3], ss[s3] = x[s3] * scale, ss[s3] * scale ** 2
    return nP, x, ss, g, N


def _onto_tau(nP, x, ss, a, em1, N):
    """Per draw, the scale s (log bisection in [1e-6, 1e6]) with score(nP, s x, s^2 ss) at tau (1 where none)."""
    lo, hi = np.full(nP.shape, -6.0), np.full(nP.shape, 6.0)
    f = lambda e: score(nP, 10 ** e * x, 10.0 ** (2 * e) * ss, a, em1, N)[0] - TAU  # noqa: E731
    flo, fhi = f(lo), f(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = (f(mid) < 0) == (fhi > flo)
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(np.sign(flo) != np.sign(fhi), 10 ** lo, 1.0)


def study(nP, x, ss, g, N, rng):
    """Scores and bounds of a set: ``s64, (s32, delta) ieee, (s32, delta) gpu``, float64 arrays of the input's
    shape (each variant's bound from its own intermediates)."""
    a, em1 = np.exp(g), np.expm1(2 * g)
    s64 = score(nP, x, ss, a, em1, N)[0]
    out = [s64]
    for kw in (dict(), dict(rng=rng, ulps=2, fma=True)):
        s32, q = score(nP, x, ss, a, em1, N, dt=F32, **kw)
        out.append((s32.astype(F64), bound(q).astype(F64)))
    return out


def tiles(need, s64):
    """The kernel's [G, PW] tiles (``_group_boundaries``): a group of starts runs pieces from its first start's to
    the one holding its last boundary. Returns (tiles needing float64, tiles scored) among read pairs."""
    t = np.arange(C)
    nxt = np.where((s64 >= TAU) & (t[None, None, :] > t[None, :, None]), t, C).min(-1)  # [R, p]
    read = (t[None, None, :] > t[None, :, None]) & (t[None, None, :] <= nxt[..., None])
    need_t = (need & read).reshape(-1, C // G, G, C // PW, PW).any((2, 4))
    last = np.minimum(nxt.reshape(-1, C // G, G).max(-1), C - 1) // PW  # [R, group]
    j = np.arange(C // PW)
    first = (np.arange(C // G) * G + 1) // PW
    scored = (j[None, None, :] >= first[None, :, None]) & (j[None, None, :] <= last[..., None])
    return (need_t & scored).sum(), scored.sum(), read


def report(name, s64, ieee, gpu, ratio, tile=None):
    pair = np.isfinite(s64)
    worst = [np.max(np.abs(s - s64)[pair] / d[pair], initial=0.0) for s, d in (ieee, gpu)]
    s32, delta = ieee
    need = np.abs(s32 - TAU) <= delta
    nt, st, read = tile or (0, 0, pair)
    cols = [name, f"{pair.sum():>8d}", f"{worst[0]:.3f}", f"{worst[1]:.3f}", f"{need[pair].mean():.2e}",
            f"{need[read].mean():.2e}" if tile else "-", f"{nt / st:.2e}" if tile else "-"]
    near = pair & (np.abs(s64 - TAU) < 0.05)
    margin = (np.abs(s32 - TAU) / delta)[read]
    cols += [f"{np.median(delta[near]) if near.any() else np.nan:.1e}", f"{margin.min():.2g}",
             f"{(ratio[pair] < GUARD).mean():.1e}"]
    print(" | ".join(cols))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--draws", type=int, default=200_000, help="adversarial draws (0: none)")
    ap.add_argument("--sets", default="sparse,moderate,dense,repeats", help="workloads (comma list)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    np.seterr(all="ignore")
    print("set | pairs | worst err/delta ieee | gpu | share |s32-tau|<=delta: all pairs | read pairs | tiles | "
          "median delta (|s-tau|<.05) | min |s32-tau|/delta (read) | ratio<GUARD")
    N = float(args.dim * args.dim)
    for name in [n for n in args.sets.split(",") if n]:
        nP, x, ss, g = (t.numpy() for t in workload_set(name, args.tokens, args.heads, args.dim, args.seed))
        res = study(nP, x, ss, g, N, rng)
        ref = information_score_torch(*(torch.from_numpy(np.nan_to_num(t)) for t in (nP, x, ss, g)), int(N),
                                      EPS, NORM_EPS).numpy()
        assert np.allclose(res[0][np.isfinite(nP)], ref[np.isfinite(nP)], rtol=1e-12, atol=1e-12), name
        need = np.abs(res[1][0] - TAU) <= res[1][1]
        report(name, *res, _ratio(nP, x, ss, g), tile=tiles(need, res[0]))
    if args.draws:
        nP, x, ss, g, N = adversarial(args.draws, rng)
        report("adversarial", *study(nP, x, ss, g, N, rng), _ratio(nP, x, ss, g))


def _ratio(nP, x, ss, g):
    """The norm recursion's ratio grown / (a^2 nP + |2 a x| + ss) (chunk_fwd_decide_wy._scores)."""
    a = np.exp(g)
    return (a * a * nP + 2 * a * x + ss) / np.maximum(a * a * nP + np.abs(2 * a * x) + ss, 1e-300)


if __name__ == "__main__":
    main()
