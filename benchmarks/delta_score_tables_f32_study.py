#!/usr/bin/env python
"""Would float32 score tables (products + triangular solve in float32, cumulative log decays in float64 rounded to
float32 just before exp) keep decide_delta_rule_wy's scores within 1e-5 relative of the float64 tables' scores?
(Issue #12, run 46: a helper's study, checked here; results in docs/performance.md "Run 46".)

CPU, Triton interpreter. The float64 tables are the real ``score_tables_triton``; the float32 ones an emulation in
torch (``f32_score_tables``), monkeypatched into ``chunk_fwd_decide_wy.score_tables_triton``. One decide call takes
70-80 s at T = 2048 on two cores, ~300 s at 8192.

    TRITON_INTERPRET=1 DLA_FAST_BACKEND=triton python benchmarks/delta_score_tables_f32_study.py check
    ... delta_score_tables_f32_study.py one CASE T VARIANT [forced]   (saves $OUT/...pt; VARIANT f64 =
        score_tables_triton)
    ... f32_score_tables.py report T CASES VARIANTS
        cases: comma list of  sparse|moderate|dense|stress|stress01  with suffix :bf16 (default) or :f32
        variants: comma list of  f32 (A-form, fp32 products, Gc f64; the default) | f32gc32 (Gc cumsum in float32)
                  | f32T (T = (I + diag(b) Gs)^-1 then Gs T, as wy_tables) | tf32x3 (the products as three tf32
                  passes, as the float32 kernel's tl.dot(input_precision="tf32x3"))
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DLA_FAST_BACKEND", "triton")

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)
import gpu_bench  # noqa: E402
from gpu_bench import TAU, WORKLOADS  # noqa: E402

from dla_fast.ops.delta_rule import chunk_fwd_decide_wy as mod  # noqa: E402

torch.set_num_threads(2)
F64_TABLES = mod.score_tables_triton
WALK = mod.walk_rows


# ----------------------------------------------------------------------------------------------- the emulation
def _tf32(x):
    """Round float32 to tf32 (10 explicit mantissa bits), to nearest, ties away (cvt.rna.tf32.f32)."""
    i = x.contiguous().view(torch.int32)
    return ((i + 0x1000) & ~0x1FFF).view(torch.float32)


def _dot_tf32x3(a, b):
    """a @ b as three tf32 passes (hi*hi + hi*lo + lo*hi; each tf32 product exact in float32), float32 sums."""
    ah, bh = _tf32(a), _tf32(b)
    al, bl = _tf32(a - ah), _tf32(b - bh)
    return ah @ bl + al @ bh + ah @ bh


def f32_score_tables(k_b, g_b, b_b, num_warps=4, *, dt=torch.float32, gc_dt=torch.float64, form="A",
                     dot="ieee"):
    """``score_tables_triton``'s ``(akapT, ktT, khd, phiT)`` (float64, chunk-major ``[nb, R, ...]``) computed as a
    float32 kernel would: k, b in ``dt``; ``Gc = cumsum(g)`` in ``gc_dt`` (float64: the recipe), every decay
    ``exp`` of a (float64) difference rounded to ``dt`` first; the products (``dot``: "ieee" plain ``dt``
    matmuls, "tf32x3" three tf32 passes) and the triangular solve in ``dt``. ``form``: "A" solves ``(I + Gs
    diag(b)) A = Gs`` for ``A = Gs T`` (the kernels' form), "T" solves for ``T`` then ``A = Gs T``
    (``wy_tables``)."""
    mm = _dot_tf32x3 if dot == "tf32x3" else torch.matmul
    C, Dk = k_b.shape[-2:]
    k = k_b.to(dt)
    b = b_b.to(dt)
    Gc = g_b.to(gc_dt).cumsum(-1).to(torch.float64)
    Gp = torch.nn.functional.pad(Gc[..., :-1], (1, 0))
    GL = Gc[..., -1:]
    ex = lambda x: torch.exp(x.to(dt))  # noqa: E731  (x: a float64 log decay or difference)
    strict = torch.ones(C, C, dtype=torch.bool, device=k.device).tril(-1)
    Gs = mm(k, k.transpose(-1, -2)) * strict
    eye = torch.eye(C, dtype=dt, device=k.device)
    if form == "A":
        A = torch.linalg.solve_triangular(eye + Gs * b.unsqueeze(-2), Gs, upper=False, unitriangular=True)
    else:
        T = torch.linalg.solve_triangular(eye + b.unsqueeze(-1) * Gs, eye.expand_as(Gs), upper=False,
                                          unitriangular=True)
        A = mm(Gs, T)
    Dp = ex((Gp.unsqueeze(-1) - Gc.unsqueeze(-2)).masked_fill(~strict, 0.0)) * strict
    akap = Dp * A
    bK = b.unsqueeze(-1) * k
    KM = k - mm(A, bK)
    kt = ex(Gp).unsqueeze(-1) * KM
    khd = ex(GL - Gc).unsqueeze(-1) * (k - mm(A.transpose(-1, -2), bK))
    Z = b.unsqueeze(-1) * KM
    phi = ex(GL).unsqueeze(-1) * (torch.eye(Dk, dtype=dt, device=k.device) - mm(k.transpose(-1, -2), Z))
    f64 = lambda x: x.to(torch.float64).contiguous()  # noqa: E731
    return f64(akap.transpose(-1, -2)), f64(kt.transpose(-1, -2)), f64(khd), f64(phi.transpose(-1, -2))


def mixed_tables(k_b, g_b, b_b, num_warps=4, *, only=(), a64=False):
    """Attribution: the float32 tables for the names in ``only`` (of akap, kt, khd, phi), float64 for the rest;
    ``a64``: instead, every table float32 but from ``A = Gs T`` solved in float64 (then rounded to float32)."""
    if a64:
        return _f32_from_a64(k_b, g_b, b_b)
    t64 = f32_score_tables(k_b, g_b, b_b, dt=torch.float64)
    t32 = f32_score_tables(k_b, g_b, b_b)
    return tuple(b if n in only else a for n, a, b in zip(("akap", "kt", "khd", "phi"), t64, t32))


def _f32_from_a64(k_b, g_b, b_b):
    """f32_score_tables with A from float64 (the solve's share of the error removed)."""
    C, Dk = k_b.shape[-2:]
    k64 = k_b.double()
    strict = torch.ones(C, C, dtype=torch.bool).tril(-1)
    Gs64 = (k64 @ k64.transpose(-1, -2)) * strict
    A = torch.linalg.solve_triangular(torch.eye(C, dtype=torch.float64) + Gs64 * b_b.double().unsqueeze(-2), Gs64,
                                      upper=False, unitriangular=True).float()
    k, b = k_b.float(), b_b.float()
    Gc = g_b.double().cumsum(-1)
    Gp = torch.nn.functional.pad(Gc[..., :-1], (1, 0))
    GL = Gc[..., -1:]
    ex = lambda x: torch.exp(x.float())  # noqa: E731
    akap = ex((Gp.unsqueeze(-1) - Gc.unsqueeze(-2)).masked_fill(~strict, 0.0)) * strict * A
    bK = b.unsqueeze(-1) * k
    KM = k - A @ bK
    kt = ex(Gp).unsqueeze(-1) * KM
    khd = ex(GL - Gc).unsqueeze(-1) * (k - A.transpose(-1, -2) @ bK)
    phi = ex(GL).unsqueeze(-1) * (torch.eye(Dk) - k.transpose(-1, -2) @ (b.unsqueeze(-1) * KM))
    f64 = lambda x: x.double().contiguous()  # noqa: E731
    return f64(akap.transpose(-1, -2)), f64(kt.transpose(-1, -2)), f64(khd), f64(phi.transpose(-1, -2))


MIXED = {"only_akap": dict(only=("akap",)), "only_kt": dict(only=("kt",)), "only_khd": dict(only=("khd",)),
         "only_phi": dict(only=("phi",)), "a64": dict(a64=True)}

VARIANTS = {
    "f32": dict(),
    "f32gc32": dict(gc_dt=torch.float32),
    "f32T": dict(form="T"),
    "tf32x3": dict(dot="tf32x3"),
    "f64emu": dict(dt=torch.float64),
}


def variant_fn(name):
    if name == "r32":  # the float64 tables rounded to float32: the floor of any float32-stored table
        return lambda k_b, g_b, b_b, num_warps=4: tuple(x.float().double() for x in F64_TABLES(k_b, g_b, b_b))
    if name in MIXED:
        return lambda k_b, g_b, b_b, num_warps=4: mixed_tables(k_b, g_b, b_b, num_warps, **MIXED[name])
    kw = VARIANTS[name]
    return lambda k_b, g_b, b_b, num_warps=4: f32_score_tables(k_b, g_b, b_b, num_warps, **kw)


# ------------------------------------------------------------------------------------------------------ inputs
def inputs(case, B, T, H, D):
    """(k, v, g, beta) of a case ``name[:bf16|:f32]``."""
    name, _, dt = case.partition(":")
    dt = dt or "bf16"
    if name.startswith("stress"):  # strong decay around log(0.5) (or 0.1), near-parallel keys, beta in [0.95, 1]
        decay = 0.1 if name == "stress01" else 0.5
        wl = dict(regime_length=80.0, jitter=0.02, decay=decay)
    else:
        wl = WORKLOADS[name]
    if dt == "bf16":
        q, k, v, g, w, beta = gpu_bench.delta_inputs(B, T, H, D, D, wl, device="cpu")
    else:  # delta_inputs with float32 q, k, v, beta
        q, k, v, g, w = gpu_bench.workload(B, T, H, D, D, gpu_bench.K_SLOTS, **wl, device="cpu", seed=11,
                                           dtype=torch.float32)
        k = torch.nn.functional.normalize(k, dim=-1)
        gen = torch.Generator(device="cpu").manual_seed(12)
        beta = torch.sigmoid(torch.randn(B, T, H, generator=gen))
    if name.startswith("stress"):
        gen = torch.Generator(device="cpu").manual_seed(13)
        g = (g + 0.1 * torch.randn(g.shape, generator=gen)).clamp(max=0.0)  # around log(decay), as regimes()
        beta = (1.0 - 0.05 * torch.rand(beta.shape, generator=gen)).to(beta.dtype)
    return k, v, g, beta


# ------------------------------------------------------------------------------------------------- the checks
def check(nb=2, R=3, C=64, Dk=64):
    """The emulation in float64 against score_tables_triton (interpreter), on real chunks and random ones."""
    k, v, g, beta = inputs("dense", 1, nb * C, R, Dk)
    from dla_fast.ops.common.layout import chunk_major
    cases = {"dense bf16": tuple(chunk_major(x, C, nb, torch.float64) for x in (k, g, beta))}
    k, v, g, beta = inputs("stress", 1, nb * C, R, Dk)
    cases["stress bf16"] = tuple(chunk_major(x, C, nb, torch.float64) for x in (k, g, beta))
    gen = torch.Generator().manual_seed(5)
    kr = torch.nn.functional.normalize(torch.randn(nb, R, C, Dk, generator=gen, dtype=torch.float64), dim=-1)
    cases["random f64"] = (kr, -torch.rand(nb, R, C, generator=gen, dtype=torch.float64),
                           torch.rand(nb, R, C, generator=gen, dtype=torch.float64))
    names = ("akapT", "ktT", "khd", "phiT")
    for cname, (kc, gc, bc) in cases.items():
        t0 = time.time()
        ref = F64_TABLES(kc, gc, bc)
        t1 = time.time()
        for var in ("f64emu", "f32", "f32gc32", "f32T", "tf32x3"):
            emu = variant_fn(var)(kc, gc, bc)
            errs = []
            for n, a, e in zip(names, ref, emu):
                assert a.shape == e.shape and e.dtype == torch.float64, (n, a.shape, e.shape)
                errs.append(f"{n} {float((e - a).abs().max() / a.abs().max()):.1e}")
            print(f"check {cname:11s} {var:7s} vs score_tables_triton (max|d|/max|ref|): {'  '.join(errs)}"
                  + (f"   [triton interp {t1 - t0:.1f}s]" if var == "f64emu" else ""), flush=True)


def decide(k, v, g, beta, tables, boundaries=None):
    """decide_delta_rule_wy from an empty cache with ``tables`` as score_tables_triton: (scores [R, T] float64,
    starts [R, T] bool, masks [R, nC], walked rows [R] bool (the token walk redid them: the tables unused))."""
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    walked = {}

    def spy(*a, **kw):
        walked["rows"] = a[8] > 0  # row_tokens * flag
        return WALK(*a, **kw)

    mod.score_tables_triton, mod.walk_rows = tables, spy
    try:
        P = torch.zeros(B, H, Dk, Dv, dtype=torch.float64)
        s, st, m = mod.decide_delta_rule_wy(k, v, g, beta, open_states=P, size=torch.zeros(B, H, dtype=torch.int32),
                                            tau=TAU, boundaries=boundaries)
    finally:
        mod.score_tables_triton, mod.walk_rows = F64_TABLES, WALK
    rows = lambda x: x.transpose(1, 2).reshape(B * H, T)  # noqa: E731
    return rows(s), rows(st), m, walked["rows"]


def score_errors(s, ref):
    d = (s - ref).abs()
    big = ref.abs() > 1e-3 * ref.abs().max()
    per = d / ref.abs().clamp(min=1e-300)
    return float(d.max() / ref.abs().max()), float(per[big].max()), float(per[ref.abs() > 0].max())


OUT = os.environ.get("OUT", ".")


def _path(case, T, var, forced):
    return os.path.join(OUT, f"{case.replace(':', '_')}_T{T}_{var}{'_forced' if forced else ''}.pt")


def one(case, T, var, forced=False, B=1, H=2, D=64):
    """One decide_delta_rule_wy run saved to $OUT: tables ``var`` ("f64": score_tables_triton), decisions free or
    forced to the f64 run's starts (then the score error is the tables' alone, no diverged slot history)."""
    os.makedirs(OUT, exist_ok=True)
    k, v, g, beta = inputs(case, B, T, H, D)
    bnd = None
    if forced:
        st64 = torch.load(_path(case, T, "f64", False))["starts"]
        bnd = st64.view(B, H, T).transpose(1, 2).contiguous()
    t0 = time.time()
    s, st, m, w = decide(k, v, g, beta, F64_TABLES if var == "f64" else variant_fn(var), boundaries=bnd)
    sec = time.time() - t0
    torch.save(dict(scores=s, starts=st, masks=m, walked=w, sec=sec), _path(case, T, var, forced))
    print(f"{case} T={T} {var}{' forced' if forced else ''}: {sec:.0f}s", flush=True)


def report(T, cases, variants):
    print(f"(B,T,H,D)=(1,{T},2,64) tau={TAU}; score errors vs the float64 tables' scores: max|ds|/max|s|; "
          "max |ds|/|s| over |s| > 1e-3 max|s| (all s != 0)", flush=True)
    for case in cases:
        ld = lambda var, forced=False: torch.load(_path(case, T, var, forced))  # noqa: E731
        a = ld("f64")
        s64, st64 = a["scores"], a["starts"]
        mg = (s64 - TAU).abs()
        print(f"\n== {case}: f64 tables: {int(st64.sum())} starts / {st64.numel()} tokens "
              f"({100 * float(st64.float().mean()):.1f}%), walked rows {a['walked'].tolist()}, scores in "
              f"[{float(s64.min()):.3g}, {float(s64.max()):.3g}], min |s - tau| {float(mg.min()):.2e}  "
              f"[{a['sec']:.0f}s]", flush=True)
        for var in variants:
            if not os.path.exists(_path(case, T, var, False)):
                continue
            b = ld(var)
            s32, st32 = b["scores"], b["starts"]
            diff = st32 != st64
            fp = _path(case, T, var, True)
            forced = torch.load(fp)["scores"] if os.path.exists(fp) else (s32 if not diff.any() else None)
            e = score_errors(s32, s64)
            line = (f"   {var:7s}: free: max|ds|/max|s| {e[0]:.2e}, per-token {e[1]:.2e} ({e[2]:.2e}); "
                    f"walked rows {b['walked'].tolist()}; starts differ at {int(diff.sum())} tokens, masks equal "
                    f"{bool(torch.equal(b['masks'], a['masks']))}  [{b['sec']:.0f}s]")
            if forced is not None:
                f = score_errors(forced, s64)
                flips = (forced >= TAU) != (s64 >= TAU)
                line += (f"\n            forced (same starts): max|ds|/max|s| {f[0]:.2e}, per-token {f[1]:.2e} "
                         f"({f[2]:.2e}); side-of-tau flips {int(flips.sum())}")
            print(line, flush=True)
            for r, t in diff.nonzero().tolist()[:8]:
                df = "" if forced is None else f", forced {abs(float(forced[r, t] - s64[r, t])):.2e}"
                print(f"      row {r} t {t}: f64 score {float(s64[r, t]):.9f} (margin {float(mg[r, t]):.2e}), "
                      f"start f64 {bool(st64[r, t])} / {var} {bool(st32[r, t])}; |ds| free "
                      f"{abs(float(s32[r, t] - s64[r, t])):.2e}{df}", flush=True)
            if forced is not None:
                idx = mg.flatten().argsort()[:3]
                dd = (forced - s64).abs().flatten()
                print("      closest to tau: " + "; ".join(f"margin {float(mg.flatten()[i]):.1e} |ds| "
                                                         f"{float(dd[i]):.1e}" for i in idx), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check()
    elif sys.argv[1] == "one":  # one CASE T VARIANT [forced]
        one(sys.argv[2], int(sys.argv[3]), sys.argv[4], len(sys.argv) > 5 and sys.argv[5] == "forced")
    else:  # report T CASES VARIANTS
        report(int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4].split(","))
