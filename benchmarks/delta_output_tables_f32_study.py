"""float32-computed delta-rule output tables against float64 (CPU numerics study, issue #12, run 44).

Whether the output stage's WY tables (``wy_tables_triton``, float64 today, ~2.8 ms of the 16K forward on an H200)
could be computed in float32 (tf32x3 on a GPU) without losing the slot states' float32 accuracy.

Tables (attn, qt, kb = b*khd, Phi) per chunk, three ways:
  a: wy_tables in float64 (reference)
  b: a rounded to float32 (what the GPU path stores today)
  c: wy_tables called on float32 tensors (float32 matmuls + float32 triangular solve; proxy for tf32x3)
  c64g: as c, but the cumulative decays Gc (cumsum) and their exps in float64, rounded to float32 (a cheap fix
        for the float32 cumsum's error; the matmuls / solve stay float32)
Then a slot-state walk (K = 30, a new slot every 16 tokens, tokens land in the newest slot, the two oldest slots
merged (exact sum) when the cache is full), float64 with tables a as the reference, float32 with b / c / c64g.

Usage: python benchmarks/delta_output_tables_f32_study.py [T] [workloads,comma] [dtype: bf16|f32]
(a workload "name@decay" takes another per-token decay; "name!" beta = 1 and near-parallel keys). Results:
``benchmarks/results/delta_output_tables_f32_study_cpu_2026-12-04_run44_*.txt``, docs/performance.md "Run 44".
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench  # noqa: E402

from dla_fast.ops.delta_rule.wy_tables import wy_tables  # noqa: E402

torch.set_num_threads(2)
C, K, EVERY = 64, 30, 16
NAMES = ("attn", "qt", "kb", "Phi")


def inputs(wl_name, B, T, H, D, dtype):
    if "!" in wl_name:  # stress: beta = 1 (the largest the API takes) and near-parallel keys (jitter 0.02)
        wl_name = wl_name.split("!")[0]
        q, k, v, g, w, beta = inputs(wl_name.replace("sparse", "tight"), B, T, H, D, dtype)
        return q, k, v, g, w, torch.ones_like(beta)
    wl = dict(gpu_bench.WORKLOADS.get(wl_name.split("@")[0], dict(regime_length=80.0, jitter=0.02, decay=0.5)))
    if "@" in wl_name:  # stress: the workload with another per-token decay
        wl["decay"] = float(wl_name.split("@")[1])
    if dtype == "bf16":  # exactly gpu_bench.delta_inputs (bf16 q, k, v, beta; g float32)
        return gpu_bench.delta_inputs(B, T, H, D, D, wl, device="cpu")
    # float32 inputs: delta_inputs with dtype=float32
    seed = 11
    q, k, v, g, w = gpu_bench.workload(B, T, H, D, D, gpu_bench.K_SLOTS, **wl, device="cpu", seed=seed,
                                       dtype=torch.float32)
    k = torch.nn.functional.normalize(k, dim=-1)
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen))
    return q, k, v, g, w, beta


def chunked(x):
    """[B, T, H, *F] -> [R = B H, nb, C, *F]"""
    B, T, H = x.shape[:3]
    return x.transpose(1, 2).reshape(B * H, T // C, C, *x.shape[3:])


def tables(q, k, g, b, dt, g64=False):
    q, k, g, b = (x.to(dt) for x in (q, k, g, b))
    tab, sv = wy_tables(q, k, g, b, scores=False)
    out = dict(attn=tab["attn"], qt=tab["qt"], kb=b.unsqueeze(-1) * tab["khd"], Phi=tab["Phi"])
    if g64:  # recompute the decay factors from a float64 cumsum; the matrix parts stay as computed in float32
        Gc = g.double().cumsum(-1)
        GL = Gc[..., -1:]
        causal = torch.ones(C, C, dtype=torch.bool).tril()
        D = torch.exp((Gc.unsqueeze(-1) - Gc.unsqueeze(-2)).masked_fill(~causal, -torch.inf)).to(dt)
        M, T, Z = sv["M"], sv["T"], sv["Z"]
        out["attn"] = D * (M @ T)
        out["qt"] = torch.exp(Gc).to(dt).unsqueeze(-1) * (q - M @ Z)
        kh = T.transpose(-1, -2) @ k
        out["kb"] = b.unsqueeze(-1) * (torch.exp(GL - Gc).to(dt).unsqueeze(-1) * kh)
        Phi0 = torch.eye(k.shape[-1], dtype=dt) - k.transpose(-1, -2) @ Z
        out["Phi"] = torch.exp(GL).to(dt).unsqueeze(-1) * Phi0
    return out, sv


def relerr(x, ref, dims=None):
    """max |x - ref| / max |ref| (over dims, or all)."""
    e = (x.double() - ref).abs()
    if dims is None:
        return float(e.max() / ref.abs().max())
    return e.amax(dims) / ref.abs().amax(dims)


def walk(tab, v, b, dt, w):
    """One row's walk: tab[name] [nb, ...], v [T, Dv], b [T]. Returns (final states [K, Dk, Dv] with the live
    slots' ages, reads [nb, C, K, Dv] (qt @ S_i, start slots, 0 where none), o-proxy [T, Dv])."""
    nb, Dk, Dv = tab["Phi"].shape[0], tab["Phi"].shape[-1], v.shape[-1]
    S = torch.zeros(K, Dk, Dv, dtype=dt)
    live = []  # slot indices in order of opening (oldest first)
    free = list(range(K))
    reads = torch.zeros(nb, C, K, Dv, dtype=dt)
    o = torch.zeros(nb, C, Dv, dtype=dt)
    vv = v.to(dt).view(nb, C, Dv)
    bv = (b.to(dt).view(nb, C, 1) * vv)
    for c in range(nb):
        qt, kb, Phi, attn = (tab[n][c].to(dt) for n in ("qt", "kb", "Phi", "attn"))
        # reads of the start slots, weighted 0.7^rank (newest rank 0) for the o proxy
        Y = torch.einsum("td,kde->tke", qt, S)  # [C, K, Dv]
        reads[c] = Y
        for rank, j in enumerate(reversed(live)):
            o[c] += w[rank] * Y[:, j]
        o[c] += attn @ bv[c]  # intra-chunk proxy (all the chunk's tokens in one slot)
        # merges: make room for the slots this chunk opens
        opens = C // EVERY
        while len(live) + opens > K:
            a, bb = live[0], live[1]
            S[a] = S[a] + S[bb]
            S[bb] = 0
            live.pop(1)
            free.append(bb)
        # transition of every slot
        S = torch.einsum("de,kef->kdf", Phi, S)
        # tokens: each group of EVERY tokens opens a slot and lands there
        for grp in range(opens):
            j = free.pop(0)
            live.append(j)
            s = slice(grp * EVERY, (grp + 1) * EVERY)
            S[j] = S[j] + kb[s].T @ vv[c, s]
    return S, reads, o.view(-1, Dv), list(live)


def main():
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    wls = sys.argv[2].split(",") if len(sys.argv) > 2 else list(gpu_bench.WORKLOADS)
    dtype = sys.argv[3] if len(sys.argv) > 3 else "bf16"
    B, H, D = 1, 2, 64
    print(f"(B,T,H,D)=({B},{T},{H},{D}) C={C} K={K} inputs={dtype}; errors = max|err|/max|ref|")
    for name in wls:
        t0 = time.time()
        q, k, v, g, w, beta = inputs(name, B, T, H, D, dtype)
        qc, kc, gc, bc, vc = (chunked(x) for x in (q, k, g, beta, v))
        a, sv = tables(qc, kc, gc, bc, torch.float64)
        variants = dict(b={n: a[n].float() for n in NAMES}, c=tables(qc, kc, gc, bc, torch.float32)[0],
                        c64g=tables(qc, kc, gc, bc, torch.float32, g64=True)[0])
        # conditioning: max |T| entry, cond_2(L), per chunk
        Tm = sv["T"].abs().amax((-1, -2))
        Toff = torch.tril(sv["T"], -1).abs().amax((-1, -2))
        k64 = kc.double()
        Lm = torch.eye(C, dtype=torch.float64) + bc.double().unsqueeze(-1) * torch.tril(k64 @ k64.transpose(-1, -2), -1)
        cond = torch.linalg.cond(Lm)
        phin = torch.linalg.matrix_norm(a["Phi"] / torch.exp(gc.double().sum(-1))[..., None, None], ord=2)
        print(f"\n== {name} (decay {math.exp(float(g[0, 0, 0])):.3g})  max|T| {float(Tm.max()):.3g} "
              f"(max off-diag {float(Toff.max()):.3g}), max cond2(I+bGs) {float(cond.max()):.3g}, "
              f"max ||Phi0||_2 {float(phin.max()):.4f}")
        for var, tb in variants.items():
            per_chunk = {n: relerr(tb[n], a[n], dims=tuple(range(2, a[n].dim()))) for n in NAMES}
            line = "  ".join(f"{n} {relerr(tb[n], a[n]):.2e} (worst chunk {float(per_chunk[n].max()):.2e})"
                             for n in NAMES)
            print(f"  tables {var:5s}: {line}")
        # worst chunk of c vs |T|
        pc = relerr(variants["c"]["Phi"], a["Phi"], dims=(2, 3))
        kbw = relerr(variants["c"]["kb"], a["kb"], dims=(2, 3))
        i = int(kbw.argmax())
        print(f"  c: worst kb chunk (row {i // kbw.shape[1]}, chunk {i % kbw.shape[1]}): "
              f"err {float(kbw.flatten()[i]):.2e}"
              f", its max|T| {float(Tm.flatten()[i]):.3g}; corr(log err_kb, log max|T|) "
              f"{float(torch.corrcoef(torch.stack([kbw.flatten().log(), Tm.flatten().log()]))[0, 1]):.2f}; "
              f"Phi worst chunk {float(pc.max()):.2e}")
        wv = 0.7 ** torch.arange(K, dtype=torch.float64)
        for r in range(B * H):
            ref = walk({n: a[n][r] for n in NAMES}, vc[r].double(), bc[r].double(), torch.float64, wv)
            Smax = float(ref[0].abs().max())
            out = []
            for var, tb in variants.items():
                S, Y, o, live = walk({n: tb[n][r] for n in NAMES}, vc[r], bc[r], torch.float32, wv.float())
                es = (S.double() - ref[0]).abs()
                slot_scale = ref[0].abs().amax((1, 2))
                sig = slot_scale > 1e-6 * Smax  # slots not decayed to nothing (float32 underflow below)
                per_slot = es.amax((1, 2))[sig] / slot_scale[sig]
                eY = float((Y.double() - ref[1]).abs().max() / ref[1].abs().max())
                eo = float((o.double() - ref[2]).abs().max() / ref[2].abs().max())
                eon = float(torch.linalg.norm(o.double() - ref[2]) / torch.linalg.norm(ref[2]))
                esn = float(torch.linalg.norm(S.double() - ref[0]) / torch.linalg.norm(ref[0]))
                out.append(f"{var}: S {float(es.max()) / Smax:.2e} (norm {esn:.2e}; "
                           f"worst slot {float(per_slot.max()):.2e}"
                           f" over {int(sig.sum())} slots) reads {eY:.2e} o {eo:.2e} (norm {eon:.2e})")
            print(f"  walk row {r} (max|S| {Smax:.3g}): " + " | ".join(out))
        print(f"  [{time.time() - t0:.1f}s]")


if __name__ == "__main__":
    main()
