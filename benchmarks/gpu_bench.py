#!/usr/bin/env python
"""GPU benchmark of the Triton DLA path, with its correctness checks, in one run.

    python benchmarks/gpu_bench.py [--out DIR] [--quick] [--configs 0,1] [--skip-correctness] [--skip-forward]
                                   [--skip-training] [--skip-delta] [--skip-step] [--fla-samples N] [--smoke]

(the delta rule alone: ``--skip-correctness --skip-forward --skip-training --skip-step``)

1. The card: name, measured device-to-device copy bandwidth (bytes read + written), bf16 matmul rate.
2. Correctness: forward and step against dla_ref (float64 on the rounded inputs) at small shapes, fp32
   and bf16; the T = 65,536 equivalence against references precomputed by ``benchmarks/gpu_reference.py``
   (in ``.gpuref/``, if present); run-to-run bitwise determinism.
3. Timings (median of ``triton.testing.do_bench``, bf16 inputs, K = 30, tau = 0.6): DLA forward on the
   sparse / moderate / dense workloads (each one's measured boundary rate reported), FLA
   ``chunk_simple_gla`` and ``chunk_log_linear_attn`` (ceil(log2 T) + 1 levels) and causal SDPA on the
   same q/k/v/g; peak memory; the decode step at B = 1 and 64 with a full 30-slot cache.
   The gated delta rule (issue #12): DLA-GDN (``dla_fast.forward`` with ``beta``) against FLA
   ``chunk_gated_delta_rule`` on the same q, k (unit), v, g, beta, forward and fwd+bwd, with peak memory.
   The baselines (FLA's three, SDPA; forward, fwd+bwd and peak memory): FLA's times vary between processes (at
   (2, 16384) on an H200 log-linear 4.75-6.04 ms, simple_gla 0.23-0.53 ms; FLA autotunes once per process, a likely
   cause, not checked), so with ``--fla-samples N`` (default 3) they are timed in N fresh processes, one after
   another, each timing the baselines of one config (forward: three; fwd+bwd: two; the delta rule: one per cell)
   (``gpu_bench.py --worker-json SPEC``: the same inputs, the same seed, built on the GPU; one JSON line back; a
   process that fails raises with its stderr). Each baseline key (``simple_gla_ms``, ``log_linear_ms``,
   ``sdpa_ms``, ``*_peak_gib``, ``fla_fwd_ms``, ...) holds the minimum over the processes, every DLA/baseline
   ratio being against the best configuration seen (conservative for DLA; peak memory is the same in every
   process in practice), and ``<key>_samples`` lists the N values. ``--fla-samples 1`` times each baseline once,
   in this process, as before (its ``<key>_samples`` holds that one value).
4. Raw JSON and a log under --out (default $OUT or .), a compact table printed last (the baselines' min-max over
   the processes on a line below each table).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dla_ref  # noqa: E402
from dla_fast.settings import DEFAULT_SETTINGS  # noqa: E402

CONFIGS = [(8, 4096, 16, 64, 64), (2, 16384, 16, 64, 64), (1, 65536, 16, 64, 64), (8, 4096, 16, 128, 128)]
DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1" else "cpu"
SMOKE = False  # --smoke: tiny correctness shapes on the CPU interpreter, to test this script itself
K_SLOTS = 30
TAU = 0.6
# Calibrated on the CPU with dla_ref (T = 1500, Dk = Dv = 64): boundary rates ~1.5 %, ~7 %, ~60 %.
WORKLOADS = {
    "sparse": dict(regime_length=80.0, jitter=0.2, decay=0.5),
    "moderate": dict(regime_length=12.0, jitter=0.3, decay=0.6),
    "dense": dict(regime_length=2.0, jitter=0.5, decay=0.5),
}


def workload(B, T, H, Dk, Dv, K, *, regime_length, jitter, decay, device=None, seed=0, dtype=torch.bfloat16,
             random_weights=False):
    """Tokens jittering around per-regime key/value directions (a new regime with probability
    1/regime_length per token); constant decay; read weights 0.7**j (or uniform random)."""
    device = device or DEV
    gen = torch.Generator(device=device).manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=gen, device=device)

    change = torch.rand(B, T, H, generator=gen, device=device) < 1.0 / regime_length
    change[:, 0] = True
    idx = torch.cumsum(change.long(), 1) - 1
    dk = torch.nn.functional.normalize(r(B, T, H, Dk), dim=-1)
    dv = torch.nn.functional.normalize(r(B, T, H, Dv), dim=-1)
    k = torch.gather(dk, 1, idx[..., None].expand(B, T, H, Dk)) + jitter * r(B, T, H, Dk) / Dk**0.5
    v = torch.gather(dv, 1, idx[..., None].expand(B, T, H, Dv)) + jitter * r(B, T, H, Dv) / Dv**0.5
    q = torch.nn.functional.normalize(r(B, T, H, Dk), dim=-1)
    g = torch.full((B, T, H), float(math.log(decay)), device=device)
    if random_weights:
        w = torch.rand(B, T, H, K, generator=gen, device=device)
    else:
        w = (0.7 ** torch.arange(K, device=device, dtype=torch.float32)).expand(B, T, H, K).contiguous()
    return q.to(dtype), k.to(dtype), v.to(dtype), g, w


def configs_named(names: str) -> list:
    """The configs named ``BxT`` (every head width) or ``BxTxD``, comma-separated (``all``: every config). A
    ``BxTxD`` that is not one of :data:`CONFIGS` names ``(B, T, 16, D, D)``."""
    if names == "all":
        return list(CONFIGS)
    found = []
    for name in names.split(","):
        named = [c for c in CONFIGS
                 if "x".join(map(str, (c[0], c[1]) + ((c[3],) if name.count("x") == 2 else ()))) == name]
        if not named and name.count("x") == 2:
            B, T, D = map(int, name.split("x"))
            named = [(B, T, 16, D, D)]
        found += named
    return found


def api_forward(q, k, v, g, w):
    """The forward through ``dla_fast.forward``, as issue #11 times it (its validation included), no final cache
    asked for: ``(o, None, None)``, differentiable when the inputs require grad."""
    import dla_fast

    return dla_fast.forward(q, k, v, g, w, tau=TAU, output_final_cache=False)


def fwd(*args, **kwargs):
    """The Triton forward's ``(o, cache, trace)`` (without its structure) at its kernel entry, without the public
    API's validation; imported on first use (CUDA)."""
    from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton

    return forward_scalar_decay_triton(*args, **kwargs)[:3]


def log(msg, fh=None):
    print(msg, flush=True)
    if fh is not None:
        fh.write(msg + "\n")
        fh.flush()


def report_cells(name: str, header: str, cells: str, check, out: str) -> None:
    """The lines ``check(cell)`` returns for each of ``cells`` (comma-separated), printed as they come and written
    after ``header`` (prefixed with the card and date) to ``<out>/<name>_<card>_<date>.txt``."""
    import torch

    card = torch.cuda.get_device_name()
    lines = [f"# {card}, {datetime.date.today()}: {header}"]
    print(lines[0], flush=True)
    for cell in cells.split(","):
        cell_lines = check(cell)
        print("\n".join(cell_lines), flush=True)
        lines += cell_lines
        torch.cuda.empty_cache()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}_{card.replace(' ', '_')}_{datetime.date.today()}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def cells_main(name: str, header, check, rounds: bool = True) -> None:
    """The command line of a per-cell GPU script ``name``: ``CELLS [--rounds N] [--out DIR]``, then
    ``report_cells(name, header(rounds), CELLS, check)``, where ``check(cell, rounds)`` (or ``check(cell)`` without
    ``rounds``) returns a cell's report lines."""
    ap = argparse.ArgumentParser()
    ap.add_argument("cells", help="BxTxD:workload,... (gpu_bench's configs and workloads)")
    if rounds:
        ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(f"{name}: needs a CUDA GPU (the Triton forward at benchmark sizes)")
    n = args.rounds if rounds else None
    report_cells(name, header(n), args.cells, (lambda cell: check(cell, n)) if rounds else check, args.out)


def bench_ms(fn, rep=100):
    import triton

    return float(triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median"))


def warm_gpu(seconds: float = 3.0) -> None:
    """bf16 products for ``seconds``, so that the GPU's clocks are up before anything is timed: the H200s start a call
    at 345 MHz, and the first rounds of a comparison ran up to 20 % slow (run 48, call 3)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ a
        torch.cuda.synchronize()


def round_order(names: list, i: int) -> list:
    """The order of round ``i`` of alternating rounds: as given in even rounds, reversed in odd ones, so that no
    variant always runs first or after the same one (run 56: the variant listed first in every round of
    ``delta_decisions_ab.py`` took ~3 ms longer forwards, whichever it was)."""
    return list(names) if i % 2 == 0 else list(reversed(names))


def alternating_ms(calls: dict, rounds: int, rep: int = 40) -> dict[str, list[float]]:
    """Each of ``calls`` (name: function) timed by :func:`bench_ms` in ``rounds`` alternating rounds
    (``round_order``), in one process (the card's state shared between them): ``{name: [ms a round]}``."""
    times = {name: [] for name in calls}
    for i in range(rounds):
        for name in round_order(calls, i):
            times[name].append(bench_ms(calls[name], rep=rep))
    return times


def ms_text(ms: dict[str, float]) -> str:
    """Single times as ``"name t, name t ms"``."""
    return ", ".join(f"{n} {t:.3f}" for n, t in ms.items()) + " ms"


def medians_text(times: dict[str, list[float]]) -> str:
    """``alternating_ms``' rounds as ``"name median ms [rounds]"``, comma-separated."""
    return ", ".join(f"{n} {statistics.median(t):.3f} ms {[round(r, 3) for r in t]}" for n, t in times.items())


def wall_ms(fn):
    """Wall-clock ms of one call, synchronised on both sides (the host's work inside counts too)."""
    torch.cuda.synchronize()
    began = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - began) * 1e3


def peak_gib_and_ms(fn):
    """``(peak GiB above the memory live before, wall-clock ms)`` of one call of fn, peak statistics reset first."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    m0 = torch.cuda.memory_allocated()
    ms = wall_ms(fn)
    return (torch.cuda.max_memory_allocated() - m0) / 2**30, ms


# ---------------------------------------------------------------------------------------------------
# Correctness
# ---------------------------------------------------------------------------------------------------


def compare(o, cache, trace, ref, tau, *, o_idx=None):
    """Errors of a fast result against a float64 reference (o may be subsampled at token indices o_idx).

    A decision that differs from the reference changes everything after it in that (batch, head), so
    (b, h) pairs with a divergence are compared up to their first differing token only, and its margin
    |I_t - tau| in the reference is reported; the final cache is compared on the other pairs."""
    o_r, c_r, tr_r = ref
    starts = trace[1].cpu().numpy()
    same = starts == tr_r["starts"]  # [B, T, H]
    B, T, H = same.shape
    first = np.where(same.all(1), T, np.argmin(same, axis=1))  # [B, H] first differing token
    margin = np.abs(tr_r["scores"] - tau)
    diverged = first < T
    res = dict(
        decisions_equal=bool(same.all()), n_heads_diverged=int(diverged.sum()),
        first_diffs=[[int(b), int(first[b, h]), int(h)] for b, h in zip(*np.nonzero(diverged))][:5],
        margins_at_first_diff=[float(margin[b, first[b, h], h]) for b, h in zip(*np.nonzero(diverged))][:5],
        boundary_rate=float(tr_r["starts"].mean()),
    )
    upto = np.arange(T)[None, :, None] < first[:, None, :]  # [B, T, H]: before the first divergence
    sc = trace[0].cpu().numpy()
    res["score_max_abs_err"] = float(np.abs(sc - tr_r["scores"])[upto].max())
    res["merged_equal_before_divergence"] = bool((trace[2].cpu().numpy() == tr_r["merged"])[upto].all())
    ot = o.float().cpu().numpy()
    if o_idx is not None:
        ot, upto_o = ot[:, o_idx], upto[:, o_idx]
    else:
        upto_o = upto
    m = upto_o[..., None]
    res["o_rel_err"] = float(np.linalg.norm(np.where(m, ot - o_r, 0)) / np.linalg.norm(np.where(m, o_r, 0)))
    keep = ~diverged  # [B, H]
    if keep.any():
        res.update(
            counts_equal=bool((cache[1].cpu().numpy() == c_r["counts"])[keep].all()),
            size_equal=bool((cache[3].cpu().numpy() == c_r["size"])[keep].all()),
            info_max_abs_err=float(np.abs(cache[2].cpu().numpy() - c_r["info"])[keep].max()),
            states_rel_err=float(np.linalg.norm((cache[0].cpu().numpy() - c_r["states"])[keep])
                                 / np.linalg.norm(c_r["states"][keep])),
        )
    return res


def _ref(q, k, v, g, w, tau, **kw):
    o, c, tr = dla_ref.forward(*(x.double().cpu().numpy() for x in (q, k, v, g, w)), tau=tau, **kw)
    cache = dict(states=c.states, counts=c.counts, info=c.info, size=c.size)
    return o, cache, dict(scores=tr.scores, starts=tr.starts, merged=tr.merged)


def correctness(fh):
    from dla_fast.ops.scalar_decay.fused_recurrent import step_triton_

    out = {}
    for name, wl in [("moderate", WORKLOADS["moderate"]), ("dense", WORKLOADS["dense"])]:
        for dt in (torch.float32, torch.bfloat16):
            for D in ((64,) if SMOKE else (64, 128)):
                key = f"fwd_{name}_{str(dt)[6:]}_D{D}"
                try:
                    q, k, v, g, w = workload(1, 100 if SMOKE else 300, 2, D, D, 8, **wl, seed=1, dtype=dt,
                                             random_weights=True)
                    ref = _ref(q, k, v, g, w, TAU)
                    o, cache, tr = fwd(q, k, v, g, w, tau=TAU)
                    out[key] = compare(o, cache, tr, ref, TAU)
                except Exception as e:  # noqa: BLE001
                    out[key] = dict(error=repr(e)[:400])
                log(f"{key}: {out[key]}", fh)
        # streaming: two calls
        q, k, v, g, w = workload(1, 300, 2, 64, 64, 8, **wl, seed=2, dtype=torch.float32, random_weights=True)
        ref = _ref(q, k, v, g, w, TAU)
        o1, c1, t1 = fwd(*(x[:, :130] for x in (q, k, v, g, w)), tau=TAU)
        o2, c2, t2 = fwd(*(x[:, 130:] for x in (q, k, v, g, w)), tau=TAU, states=c1[0], counts=c1[1], info=c1[2],
                         size=c1[3])
        joined = tuple(torch.cat([a, b], 1) for a, b in zip(t1, t2))
        out[f"stream_{name}"] = compare(torch.cat([o1, o2], 1), c2, joined, ref, TAU)
        log(f"stream_{name}: {out[f'stream_{name}']}", fh)
    # decode step after a prefix, fp32 and bf16, K = 8 and a full cache
    for dt in (torch.float32, torch.bfloat16):
        q, k, v, g, w = workload(2, 201, 3, 64, 64, 8, **WORKLOADS["dense"], seed=3, dtype=dt, random_weights=True)
        ref_prefix = dla_ref.forward(*(x[:, :200].double().cpu().numpy() for x in (q, k, v, g, w)), tau=TAU)
        c = ref_prefix[1]
        o_r, c_r, tr_r = dla_ref.forward(*(x[:, 200:].double().cpu().numpy() for x in (q, k, v, g, w)), tau=TAU,
                                         initial_cache=c)
        tens = lambda a, t=torch.float32: torch.tensor(a, device=DEV, dtype=t)  # noqa: E731
        cn = (tens(c.states), tens(c.counts, torch.int64), tens(c.info), tens(c.size, torch.int64))
        o, tr = step_triton_(*(x[:, 200] for x in (q, k, v, g, w)), tau=TAU, states=cn[0], counts=cn[1],
                             info=cn[2], size=cn[3])  # in place
        res = dict(
            decisions_equal=bool((tr[1].cpu().numpy() == tr_r.starts[:, 0]).all()),
            merged_equal=bool((tr[2].cpu().numpy() == tr_r.merged[:, 0]).all()),
            score_max_abs_err=float(np.abs(tr[0].cpu().numpy() - tr_r.scores[:, 0]).max()),
            o_rel_err=float(np.linalg.norm(o.float().cpu().numpy() - o_r[:, 0]) / np.linalg.norm(o_r[:, 0])),
            states_rel_err=float(np.linalg.norm(cn[0].cpu().numpy() - c_r.states) / np.linalg.norm(c_r.states)),
            counts_equal=bool((cn[1].cpu().numpy() == c_r.counts).all()),
            n_merges=int((tr_r.merged[:, 0] >= 0).sum()),
        )
        out[f"step_{str(dt)[6:]}"] = res
        log(f"step_{str(dt)[6:]}: {res}", fh)
    # T = 65,536 against precomputed references
    refdir = os.path.join(ROOT, ".gpuref")
    for dname in ("float32", "bfloat16"):
        path = os.path.join(refdir, f"ref_T65536_{dname}.npz")
        if not os.path.exists(path) or SMOKE:
            log(f"big_{dname}: no reference at {path}", fh)
            continue
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        dt = getattr(torch, dname)
        q, k, v, g, w = workload(*meta["shape"], **meta["workload"], device="cpu", seed=meta["seed"], dtype=dt,
                                 random_weights=True)
        checksum = [float(x.double().sum()) for x in (q, k, v, g, w)]
        q, k, v, g, w = (x.to(DEV) for x in (q, k, v, g, w))
        o, cache, tr = fwd(q, k, v, g, w, tau=TAU)
        ref = (z["o_sub"], dict(states=z["states"], counts=z["counts"], info=z["info"], size=z["size"]),
               dict(scores=z["scores"], starts=z["starts"], merged=z["merged"]))
        res = compare(o, cache, tr, ref, TAU, o_idx=z["o_idx"])
        res["shape"] = meta["shape"]
        res["inputs_match_reference"] = bool(np.allclose(checksum, meta["checksum"], rtol=1e-9))
        out[f"big_{dname}"] = res
        log(f"big_{dname}: {res}", fh)
    # determinism
    q, k, v, g, w = workload(*((1, 130, 2) if SMOKE else (2, 16384, 16)), 64, 64, K_SLOTS, **WORKLOADS["moderate"],
                             seed=5)
    a = fwd(q, k, v, g, w, tau=TAU)
    b = fwd(q, k, v, g, w, tau=TAU)
    det = torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1])) and all(
        torch.equal(x, y) for x, y in zip(a[2], b[2]))
    out["bitwise_deterministic"] = bool(det)
    log(f"bitwise_deterministic (2,16384,16,64,64 moderate bf16): {det}", fh)
    return out


# ---------------------------------------------------------------------------------------------------
# Timings
# ---------------------------------------------------------------------------------------------------


def ceilings(fh):
    n = 1 << 28  # 1 GiB of fp32
    x = torch.empty(n, device="cuda")
    x.normal_()
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x))
    bw = 2 * n * 4 / (ms * 1e-3)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms2 = bench_ms(lambda: a @ b)
    fl = 2 * 8192**3 / (ms2 * 1e-3)
    x = y = a = b = None  # free the buffers before the cache is emptied
    torch.cuda.empty_cache()
    log(f"copy bandwidth {bw / 1e12:.3f} TB/s, bf16 matmul {fl / 1e12:.1f} TFLOP/s", fh)
    return bw, fl


def counts_forward(B, T, H, Dk, Dv, K, mean_live, C=64):
    """Counted FLOPs and bytes of the Triton forward (docs/triton.md)."""
    NC = math.ceil(T / C)
    BH = B * H
    olds = max(mean_live - 1, 0)
    per_chunk = (
        2 * C * C * (Dk + Dv) + 4 * C**3  # table: Gram + two C^3 table matmuls
        + 4 * C * Dk * Dv  # carry: k^T P v and the masked update
        + 2 * C * Dk * Dv  # prefix states
        + 2 * C * C * (Dk + Dv) + 2 * C * Dk * Dv  # output: intra-chunk attention + q^T H(c0-1)
        + olds * (2 * C * Dk * Dv + 2 * C * C * (Dk + Dv))  # output: each live old start
    )
    flops = BH * NC * per_chunk
    el = 2  # bf16 inputs
    io_min = B * T * H * ((2 * Dk + Dv) * el + 4 + 4 * K + Dv * el)  # q, k, v, g, lambda in; o out
    traffic = io_min + BH * NC * (
        (Dk + Dv) * el * 3  # k, v re-read by carry, prefix-state and output kernels
        + C * C * 4 + C * 4 * 8  # score table, orbit masks and per-token columns
        + Dk * Dv * 4 * (1 + 1 + olds)  # prefix states written, read for the chunk and per old start
        + olds * C * (Dk + Dv) * el  # the old starts' chunk tiles (mostly L2 hits)
    )
    return flops, io_min, traffic


def time_forward(cfg, fh, bw, fl, quick=False, samples=1, dla_samples=1):
    B, T, H, Dk, Dv = cfg
    rows = {}
    base = None
    for wname, wl in WORKLOADS.items():
        q, k, v, g, w = workload(B, T, H, Dk, Dv, K_SLOTS, **wl, seed=11)
        o, cache, tr = fwd(q, k, v, g, w, tau=TAU)  # compiles what the cell needs
        rate = float(tr[1].float().mean())
        del o, cache, tr
        prof = {}  # a warm call's stages: a first call's windows hold its compiles (run 40: "table" 417 ms)
        torch.cuda.synchronize()
        fwd(q, k, v, g, w, tau=TAU, profile=prof)
        peak, _ = peak_gib_and_ms(lambda: fwd(q, k, v, g, w, tau=TAU))
        ms = bench_ms(lambda: fwd(q, k, v, g, w, tau=TAU), rep=50 if quick else 100)
        api_ms = bench_ms(lambda: api_forward(q, k, v, g, w), rep=50 if quick else 100)
        sampled = {} if dla_samples == 1 else sample_baselines(("dla_api",), None, dict(cfg=list(cfg), wl=wl,
                                                                                         quick=quick), dla_samples)
        flops, io_min, traffic = counts_forward(B, T, H, Dk, Dv, K_SLOTS, prof.get("mean_live_at_chunk_start", K_SLOTS))
        floor_ms = max(flops / fl, io_min / bw) * 1e3
        rows[wname] = dict(
            ms=ms, api_ms=api_ms, boundary_rate=rate, peak_mem_gib=peak,
            stages_ms={kk: vv for kk, vv in prof.items() if kk.endswith("_ms")},
            mean_live=prof.get("mean_live_at_chunk_start"), flops=flops, io_min_bytes=io_min, traffic_bytes=traffic,
            tflops=flops / ms * 1e-9, floor_ms=floor_ms, roofline_fraction=floor_ms / ms, **sampled,
        )
        log(f"{cfg} {wname}: {ms:.3f} ms (through dla_fast.forward {api_ms:.3f}) rate {rate:.4f} peak {peak:.2f} GiB "
            f"stages {rows[wname]['stages_ms']} "
            f"{rows[wname]['tflops']:.1f} TFLOP/s floor {floor_ms:.3f} ms", fh)
        if wname == "moderate":
            base = (q, k, v, g)
        else:
            del q, k, v, g, w
    q, k, v, g = base
    res = dict(dla=rows)
    if cfg == (2, 16384, 16, 64, 64):
        w = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS["moderate"], seed=11)[4]
        variant = dataclasses.replace(DEFAULT_SETTINGS, pipeline=not DEFAULT_SETTINGS.pipeline)
        name = f"pipeline={variant.pipeline}"
        prof = {}
        fwd(q, k, v, g, w, tau=TAU, profile=prof, settings=variant)
        fwd(q, k, v, g, w, tau=TAU, profile=prof, settings=variant)
        res[name] = {kk: vv for kk, vv in prof.items() if kk.endswith("_ms")}
        res[name]["total_ms"] = bench_ms(lambda: fwd(q, k, v, g, w, tau=TAU, settings=variant))
        log(f"variant {name}: {res[name]}", fh)
    spec = dict(cfg=list(cfg), wl=WORKLOADS["moderate"], quick=quick)
    res.update(sample_baselines(("simple_gla", "log_linear", "sdpa"), (q, k, v, g), spec, samples))
    log(f"{cfg} baselines: { {kk: vv for kk, vv in res.items() if kk != 'dla'} }", fh)
    return res


def _dla_api(x, spec):
    """``dla_fast.forward``'s time on the inputs x (q, k, v, g, slot weights) in this process, after a warm-up call."""
    api_forward(*x)
    return dict(dla_api_ms=bench_ms(lambda: api_forward(*x), rep=50 if spec.get("quick") else 100))


def _forward_base(cfg, wl):
    """The forward baselines' q, k, v, g: the workload's (seed 11), as time_forward's DLA rows draw them."""
    return workload(*cfg, K_SLOTS, **wl, seed=11)[:4]


def _levels(T):
    """Log-linear attention's levels at length T."""
    return math.ceil(math.log2(T)) + 1


def _simple_gla(x, spec):
    from fla.ops.simple_gla import chunk_simple_gla

    q, k, v, g = x
    return dict(simple_gla_ms=bench_ms(lambda: chunk_simple_gla(q, k, v, g, scale=1.0)))


def _log_linear(x, spec):
    from fla.ops.log_linear_attn import chunk_log_linear_attn

    q, k, v, g = x
    B, T, H, _, _ = spec["cfg"]
    ls = torch.rand(B, T, H, _levels(T), device="cuda", dtype=q.dtype)
    return dict(log_linear_ms=bench_ms(lambda: chunk_log_linear_attn(q, k, v, g, ls, scale=1.0)),
                log_linear_levels=_levels(T))


def _sdpa(x, spec):
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in x[:3])
    return dict(sdpa_ms=bench_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)))


# ---------------------------------------------------------------------------------------------------
# Training: forward + backward through the public API
# ---------------------------------------------------------------------------------------------------


def grad_leaves(*xs):
    """Copies of the inputs as leaves that require gradients."""
    return [x.detach().clone().requires_grad_(True) for x in xs]


def dla_fwd_bwd(q, k, v, g, w, dO):
    """One scalar-decay forward and backward through the public API."""
    api_forward(q, k, v, g, w)[0].backward(dO)


def grad_correctness(fh):
    """Triton gradients (public API on CUDA) against the float64 torch backward with the same partition
    (``dla_fast.ops.scalar_decay.chunk_torch_bwd.scalar_decay_backward``,
     itself checked against autograd of an independent
    implementation by the property suite), at B = 1, T = 4096, H = 4, D = 64, K = 30, moderate workload."""
    import dla_fast
    from dla_fast.ops.common.layout import rows as _rows
    from dla_fast.ops.common.structure import Structure
    from dla_fast.ops.scalar_decay.chunk_torch_bwd import scalar_decay_backward

    out = {}
    for dt in (torch.float32, torch.bfloat16):
        q, k, v, g, w = workload(1, 300 if SMOKE else 4096, 4, 64, 64, K_SLOTS, **WORKLOADS["moderate"], seed=21,
                                 dtype=dt, random_weights=True)
        g = g + 0.1 * torch.randn_like(g).clamp(max=0)
        q, k, v, g, w = grad_leaves(q, k, v, g, w)
        o, cache, trace = dla_fast.forward(q, k, v, g, w, tau=TAU, return_trace=True)
        dO = torch.randn_like(o)
        dS = torch.randn_like(cache.states) * (torch.arange(K_SLOTS, device=DEV) < cache.size[..., None]).view(
            *cache.size.shape, K_SLOTS, 1, 1)
        got = torch.autograd.grad((o.float() * dO.float()).sum() + (cache.states * dS).sum(), [q, k, v, g, w])
        rows = lambda x: _rows(x.detach(), torch.float64)  # noqa: E731  ([B*H, T, ...], the torch backward's)
        R = q.shape[0] * q.shape[2]
        st = Structure(rows(trace.starts).bool(), rows(trace.merged).long(), torch.zeros(R, dtype=torch.int64,
                       device=DEV), K_SLOTS)
        ref = scalar_decay_backward(rows(q), rows(k), rows(v), rows(g), rows(w),
                                    torch.zeros(R, K_SLOTS, 64, 64, dtype=torch.float64, device=DEV), st, rows(dO),
                                    dS.double().reshape(R, K_SLOTS, 64, 64))
        res = {}
        for name, a, b in zip(("q", "k", "v", "g", "slot_weights"), got, ref[:5]):
            a = rows(a)
            res[name] = float((a - b).norm() / b.norm())
        res["boundary_rate"] = float(trace.starts.float().mean())
        out[str(dt)[6:]] = res
        log(f"gradients {str(dt)[6:]} vs float64 torch backward (relative error norms): {res}", fh)
    return out


def peak_and_ms(fn, quick):
    """``(ms, peak GiB)`` of a fwd+bwd fn, after one untimed call (which allocates the leaves' .grad)."""
    fn()
    peak, _ = peak_gib_and_ms(fn)
    return bench_ms(fn, rep=20 if quick else 50), peak


def time_training(cfg, fh, quick=False, samples=1):
    """Forward + backward time and peak memory: DLA (public API, Triton fwd and bwd), FLA log-linear, SDPA."""
    from dla_fast.ops.scalar_decay.chunk_bwd import backward_scalar_decay_triton  # noqa: F401  (import cost outside timing)

    B, T, H, Dk, Dv = cfg
    res = dict(dla={})
    rep = 20 if quick else 50
    for wname, wl in WORKLOADS.items():
        q, k, v, g, w = grad_leaves(*workload(B, T, H, Dk, Dv, K_SLOTS, **wl, seed=11))
        dO = torch.randn(B, T, H, Dv, device=DEV, dtype=q.dtype)
        fn = lambda: dla_fwd_bwd(q, k, v, g, w, dO)  # noqa: E731
        ms, peak = peak_and_ms(fn, quick)
        prof, bwd_ms = _backward_profile(q, k, v, g, w, dO)
        with torch.no_grad():
            fwd_ms = bench_ms(lambda: api_forward(q, k, v, g, w), rep=rep)
        res["dla"][wname] = dict(ms=ms, peak_mem_gib=peak, backward_stages_ms=prof, forward_ms=fwd_ms,
                                 backward_kernels_ms=bwd_ms)
        log(f"{cfg} {wname} fwd+bwd: {ms:.3f} ms (forward alone {fwd_ms:.3f}, backward alone {bwd_ms:.3f}) peak "
            f"{peak:.2f} GiB backward stages {prof}", fh)
        if wname != "moderate":
            del q, k, v, g, w, dO
        else:
            base = (q, k, v, g, dO)
    spec = dict(cfg=list(cfg), wl=WORKLOADS["moderate"], quick=quick)
    res.update(sample_baselines(("log_linear_fwd_bwd", "sdpa_fwd_bwd"), base, spec, samples))
    log(f"{cfg} fwd+bwd baselines: { {kk: vv for kk, vv in res.items() if kk != 'dla'} }", fh)
    return res


def _training_base(cfg, wl):
    """The fwd+bwd baselines' q, k, v, g (leaves: the workload's, seed 11) and dO, as time_training draws them."""
    q, k, v, g, _ = grad_leaves(*workload(*cfg, K_SLOTS, **wl, seed=11))
    return q, k, v, g, torch.randn(*cfg[:3], cfg[4], device=DEV, dtype=q.dtype)


def _log_linear_fwd_bwd(x, spec):
    from fla.ops.log_linear_attn import chunk_log_linear_attn

    q, k, v, g, dO = x
    B, T, H, _, _ = spec["cfg"]
    ls = torch.rand(B, T, H, _levels(T), device="cuda", dtype=q.dtype).requires_grad_(True)

    def loglin():
        out = chunk_log_linear_attn(q, k, v, g, ls, scale=1.0)
        (out[0] if isinstance(out, tuple) else out).backward(dO)

    ms, peak = peak_and_ms(loglin, spec["quick"])
    return dict(log_linear_ms=ms, log_linear_peak_gib=peak)


def _sdpa_fwd_bwd(x, spec):
    qt, kt, vt = grad_leaves(*(t.transpose(1, 2).contiguous() for t in x[:3]))
    dOt = x[4].transpose(1, 2).contiguous()

    def sdpa():
        torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True).backward(dOt)

    ms, peak = peak_and_ms(sdpa, spec["quick"])
    return dict(sdpa_ms=ms, sdpa_peak_gib=peak)


def _backward_profile(q, k, v, g, w, dO):
    """Stage times of the Triton backward alone (ms), from the kept structure of one forward."""
    o, _, _ = api_forward(q, k, v, g, w)
    from dla_fast.ops.scalar_decay.chunk_bwd import backward_scalar_decay_triton

    prof = {}
    kept = o.grad_fn.record.structure.triton  # the autograd context of DLAFunction
    size0 = torch.zeros(q.shape[0] * q.shape[2], dtype=torch.int64, device=q.device)
    args = (q.detach(), k.detach(), v.detach(), g.detach(), w.detach(), None, size0, kept, dO, None)
    with torch.no_grad():
        backward_scalar_decay_triton(*args, profile=prof)
        backward_scalar_decay_triton(*args, profile=prof)
        ms = bench_ms(lambda: backward_scalar_decay_triton(*args), rep=50)
    stages = {kk: round(vv, 3) for kk, vv in prof.items() if kk.endswith("_ms")}
    stages["surviving_starts"] = prof.get("surviving_starts")  # the size of dB and B (8 KiB each at D = 64, bf16)
    return stages, ms


# ---------------------------------------------------------------------------------------------------
# The gated delta rule (issue #12): DLA-GDN against FLA's chunk_gated_delta_rule
# ---------------------------------------------------------------------------------------------------

def delta_inputs(B, T, H, Dk, Dv, wl, *, seed=11, device=None):
    """The scalar-decay rows' q, v, g and slot weights (same workload, same seed), k L2-normalised over the head
    dim (as FLA's GDN layer normalises it before the kernel), and beta = sigmoid(N(0, 1)) in q's dtype, drawn
    from a generator of its own so that q, k, v, g do not depend on it."""
    device = device or DEV
    q, k, v, g, w = workload(B, T, H, Dk, Dv, K_SLOTS, **wl, device=device, seed=seed)
    k = torch.nn.functional.normalize(k.float(), dim=-1).to(q.dtype)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen, device=device)).to(q.dtype)
    return q, k, v, g, w, beta


def dla_gdn(q, k, v, g, w, beta, **kw):
    """One delta-rule forward through the public API, without a final cache (FLA is asked for no final state: both
    return o alone)."""
    import dla_fast

    return dla_fast.forward(q, k, v, g, w, tau=TAU, beta=beta, output_final_cache=False, **kw)


def _fla_gdn(q, k, v, g, beta):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    # scale=1.0: DLA uses q as given (FLA's default is Dk**-0.5); k is unit already, so no l2norm in the kernel.
    out = chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0, output_final_state=False, use_qk_l2norm_in_kernel=False)
    return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def fla_guard_lifted():
    """fla-core 0.6.0 refuses its gated backward on Hopper with Triton >= 3.4 and < 3.7.1 (its #640: wrong
    results), and its fixes (Triton 3.7.1, tilelang) do not fit the lent H200s (docs/benchmarks.md run 19).
    With the guard lifted its kernels run as they are: a time only, recorded as ``*_unchecked``; nothing of
    their results is used or compared."""
    import fla.ops.common.chunk_o as chunk_o

    saved = chunk_o.TRITON_ABOVE_3_7_1
    chunk_o.TRITON_ABOVE_3_7_1 = True  # the module global the guard reads at call time
    try:
        yield
    finally:
        chunk_o.TRITON_ABOVE_3_7_1 = saved


def capped_ms(fn, once_ms, cap_ms):
    """Median ms of fn (one call took once_ms), spending about cap_ms on fn, the two untimed calls before included.
    ``do_bench`` makes at least 8 calls whatever its ``rep`` (five of them only to estimate), so a call slower than
    cap_ms / 12 is timed instead by a few synchronised calls: at 100+ ms a call needs neither L2 flushes nor many
    repetitions."""
    if 12 * once_ms <= cap_ms:
        return bench_ms(fn)
    calls = max(1, min(5, int(cap_ms / once_ms) - 2))  # the warm-up and the peak call were spent already
    return statistics.median(wall_ms(fn) for _ in range(calls))


def _measure(row, name, fn, cap_ms):
    """``row[name + '_ms']`` and ``row[name + '_peak_gib']`` of fn, or ``row[name + '_note']``: the error it raised
    (FLA missing, its backward refusing this Triton on Hopper, out of memory)."""
    try:
        fn()  # compiles and autotunes outside the measurements (and allocates the leaves' .grad for fwd+bwd)
        row[f"{name}_peak_gib"], once = peak_gib_and_ms(fn)
        row[f"{name}_ms"] = capped_ms(fn, once, cap_ms)
    except Exception as e:  # noqa: BLE001
        row[f"{name}_note"] = repr(e)[:300]
    torch.cuda.empty_cache()


def _ratios(row):
    """Adds DLA-GDN / FLA time ratios where both ran (``fwd_bwd_unchecked``: against FLA's unchecked fwd+bwd)."""
    for stage in ("fwd", "fwd_bwd", "fwd_bwd_unchecked"):
        dla = stage.replace("_unchecked", "")
        if f"dla_{dla}_ms" in row and f"fla_{stage}_ms" in row:
            row[f"{stage}_dla_over_fla"] = row[f"dla_{dla}_ms"] / row[f"fla_{stage}_ms"]
    return row


def _fla_gdn_fwd(x, spec):
    q, k, v, g, _, beta = x
    row = {}
    with torch.no_grad():
        _measure(row, "fla_fwd", lambda: _fla_gdn(q, k, v, g, beta), spec["cap_ms"])
    return row


def _delta_grad_base(cfg, wl):
    """FLA's fwd+bwd inputs: delta_inputs' six as leaves, and dO, as time_delta_cell draws them."""
    leaves = grad_leaves(*delta_inputs(*cfg, wl))
    return (*leaves, torch.randn_like(leaves[2]))


def _fla_gdn_fwd_bwd(x, spec):
    """FLA's fwd+bwd; where it refuses this Triton on Hopper (3.7.1 in its error), its time with the guard lifted."""
    q, k, v, g, _, beta, dO = x
    row = {}
    _measure(row, "fla_fwd_bwd", lambda: _fla_gdn(q, k, v, g, beta).backward(dO), spec["cap_ms"])
    if "3.7.1" in row.get("fla_fwd_bwd_note", ""):  # refused on this Triton: its time alone, guard lifted
        with fla_guard_lifted():
            _measure(row, "fla_fwd_bwd_unchecked", lambda: _fla_gdn(q, k, v, g, beta).backward(dO), spec["cap_ms"])
    return row


def _dla_gdn_fwd(x, spec):
    """DLA-GDN's forward through ``dla_fast.forward`` in this process (a ``--dla-samples`` worker's measurement):
    ``dla_gdn_fwd_ms`` and its peak, as ``time_delta_cell`` measures ``dla_fwd``."""
    row = {}
    with torch.no_grad():
        _measure(row, "dla_gdn_fwd", lambda: dla_gdn(*x), spec["cap_ms"])
    return row


def best_dla_forward(row):
    """``dla_fwd_ms`` as the best of this process's and the fresh processes' (``dla_gdn_fwd_ms``, their minimum),
    this process's kept as ``dla_fwd_here_ms``: run 74's bench read the moderate forward at 16K 4 ms above the A/Bs'
    12.3 ms, which no step of its measurement reproduced alone in a process (run 75)."""
    if "dla_fwd_ms" in row and "dla_gdn_fwd_ms" in row:
        row["dla_fwd_here_ms"] = row["dla_fwd_ms"]
        row["dla_fwd_ms"] = min(row["dla_fwd_ms"], row["dla_gdn_fwd_ms"])
    return row


def time_delta_cell(cfg, wl, cap_ms, samples=1, dla_samples=1):
    """One (config, workload) cell: DLA-GDN (public API with beta) and FLA on the same q, k, v, g, beta; forward
    without grad, then fwd+bwd of <dO, o> into every input; each with its peak memory. The boundary rate comes
    from one untimed traced call. ``dla_samples`` > 1: the forward timed in that many fresh processes too, the best
    taken (``best_dla_forward``)."""
    q, k, v, g, w, beta = x = delta_inputs(*cfg, wl)
    spec = dict(cfg=list(cfg), wl=wl, cap_ms=cap_ms)
    row = {}
    with torch.no_grad():
        try:
            row["boundary_rate"] = float(dla_gdn(q, k, v, g, w, beta, return_trace=True)[2].starts.float().mean())
        except Exception as e:  # noqa: BLE001  (the forward's own measurement records it again, or succeeds)
            row["boundary_rate_note"] = repr(e)[:300]
        _measure(row, "dla_fwd", lambda: dla_gdn(q, k, v, g, w, beta), cap_ms)
    if dla_samples > 1:
        row.update(sample_baselines(("dla_gdn_fwd",), x, spec, dla_samples))
        best_dla_forward(row)
    row.update(sample_baselines(("fla_gdn_fwd",), x, spec, samples))
    leaves = grad_leaves(*x)  # shared; each warm-up call allocates .grad before any peak is measured
    dO = torch.randn_like(v)
    _measure(row, "dla_fwd_bwd", lambda: dla_gdn(*leaves)[0].backward(dO), cap_ms)  # no numba needed (no tau grad)
    row.update(sample_baselines(("fla_gdn_fwd_bwd",), (*leaves, dO), spec, samples))
    return _ratios(row)


def time_delta(cfg, fh, quick=False, samples=1, dla_samples=1):
    """The delta-rule cells of one config, every workload; a cell that fails records its traceback."""
    rows = {}
    for wname, wl in WORKLOADS.items():
        try:
            rows[wname] = time_delta_cell(cfg, wl, cap_ms=1000.0 if quick else 2000.0, samples=samples,
                                          dla_samples=dla_samples)
        except Exception:  # noqa: BLE001
            rows[wname] = dict(error=traceback.format_exc())
        log(f"{cfg} {wname} delta rule: {rows[wname]}", fh)
        torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------------
# The baselines, each timed in --fla-samples fresh processes (their times vary between processes)
# ---------------------------------------------------------------------------------------------------

# name: (the inputs a worker builds from (cfg, wl), the measurement (inputs, spec) -> row keys, the key an exception
# of the measurement is recorded under, or None: it propagates). The measurements record as the code did in-process.
BASELINES = {
    "simple_gla": (_forward_base, _simple_gla, "simple_gla_error"),
    "log_linear": (_forward_base, _log_linear, "log_linear_error"),
    "sdpa": (_forward_base, _sdpa, None),
    "log_linear_fwd_bwd": (_training_base, _log_linear_fwd_bwd, "log_linear_error"),
    "sdpa_fwd_bwd": (_training_base, _sdpa_fwd_bwd, None),
    "fla_gdn_fwd": (lambda cfg, wl: delta_inputs(*cfg, wl), _fla_gdn_fwd, None),  # _measure records FLA's errors
    "fla_gdn_fwd_bwd": (_delta_grad_base, _fla_gdn_fwd_bwd, None),
    "dla_gdn_fwd": (lambda cfg, wl: delta_inputs(*cfg, wl), _dla_gdn_fwd, None),  # (--dla-samples)
    # and DLA's own forward through the API, in --dla-samples fresh processes (the 4096 cells' times moved 20-40 %
    # between two calls on one machine, run 39: the ratios then take the best process, as the baselines' do)
    "dla_api": (lambda cfg, wl: workload(*cfg, K_SLOTS, **wl, seed=11), _dla_api, None),
}
SAMPLED = ("_ms", "_peak_gib")  # the keys that become the minimum over the processes, their samples beside them


def measure_baseline(name, x, spec):
    """Baseline name's row keys, measured in this process on the inputs x."""
    _, measure, error_key = BASELINES[name]
    if error_key is None:
        return measure(x, spec)
    try:
        return measure(x, spec)
    except Exception as e:  # noqa: BLE001
        return {error_key: repr(e)[:300]}


def sample_baselines(names, x, spec, samples, command=None):
    """The row keys of the baselines ``names`` (measured in this order, on the same inputs): with samples == 1
    measured here on x (as before --fla-samples); else measured in ``samples`` fresh processes one after another
    (each measures them all), each building its inputs from spec (``cfg``, ``wl``; ``quick``, ``cap_ms`` as its
    measurement reads them); merged by merge_samples."""
    if samples == 1:
        return merge_samples([measure_baselines(names, x, spec)])
    torch.cuda.empty_cache()  # the workers share the card with this process
    return merge_samples([run_worker(dict(spec, baselines=list(names)), command) for _ in range(samples)])


def measure_baselines(names, x, spec):
    """The row keys of the baselines ``names``, measured in this process on the inputs x."""
    row = {}
    for name in names:
        row.update(measure_baseline(name, x, spec))
    return row


def merge_samples(rows):
    """One row from the processes' rows: each time and peak (a key ending in SAMPLED) is the minimum over the
    processes that measured it (FLA's best configuration found: the DLA/baseline ratios are conservative for DLA;
    peak memory is the same in every process in practice), every value under ``<key>_samples``; other keys (errors,
    notes, levels) as the first process that has them gave them."""
    row = {}
    for one in rows:
        for key, value in one.items():
            if key.endswith(SAMPLED):
                row.setdefault(f"{key}_samples", []).append(value)
            else:
                row.setdefault(key, value)
    row.update({key[: -len("_samples")]: min(v) for key, v in list(row.items()) if key.endswith("_samples")})
    return row


def run_worker(spec, command=None):
    """The row of one fresh process, ``gpu_bench.py --worker-json SPEC`` (or ``command + [SPEC]``): the last line
    of its stdout, as JSON. A process that fails, or prints no JSON, raises with its stderr."""
    cmd = (command or [sys.executable, os.path.abspath(__file__), "--worker-json"]) + [json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        with contextlib.suppress(ValueError):
            return json.loads(lines[-1])
    raise RuntimeError(f"baseline worker {spec} failed (exit status {done.returncode}); stdout:\n"
                       f"{done.stdout[-2000:]}\nstderr:\n{done.stderr[-8000:]}")


def worker(spec_json):
    """``--worker-json``: the spec's baselines, measured on the inputs this process builds; one JSON line."""
    spec = json.loads(spec_json)
    names = spec["baselines"]
    build = BASELINES[names[0]][0]  # the baselines of one call site share their inputs
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the row alone
        row = measure_baselines(names, build(tuple(spec["cfg"]), spec["wl"]), spec)
    print(json.dumps(row), flush=True)


# ---------------------------------------------------------------------------------------------------
# The decode step
# ---------------------------------------------------------------------------------------------------


def _decode_inputs(B, D, H=16, K=K_SLOTS):
    """A full K-slot cache (checked: as dla_fast builds them) and one bf16 token per row."""
    import dla_fast

    counts = torch.randint(1, 50, (B, H, K), device="cuda")
    cache = dla_fast.Cache(0.1 * torch.randn(B, H, K, D, D, device="cuda"), counts,
                           torch.rand(B, H, K, device="cuda") * counts, torch.full((B, H), K, device="cuda"),
                           checked=True)
    q, k, v = (torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    return cache, (q, k, v, torch.full((B, H), -0.1, device="cuda"), torch.rand(B, H, K, device="cuda"))


def _host_loop_us(fn, n=200, rounds=3):
    """``(loop, host)``: wall-clock microseconds per call of ``fn`` over n back-to-back calls (what a decode loop
    sees), and the host's part of it (the same calls timed before the final synchronisation), medians of
    ``rounds`` (the host's speed varies from round to round)."""
    loops, hosts = [], []
    for _ in range(rounds):
        fn()
        torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(n):
            fn()
        hosts.append((time.perf_counter() - began) / n * 1e6)
        torch.cuda.synchronize()
        loops.append((time.perf_counter() - began) / n * 1e6)
    return statistics.median(loops), statistics.median(hosts)


def time_step(fh, bw):
    """Decode at H = 16, K = 30, a full cache, tau = 0 (every token opens a slot: a merge at every step):
    the in-place kernels alone (launched through Triton's JIT each call, and through the compiled kernels as
    ``dla_fast.step`` launches them), the public ``dla_fast.step``, and ``dla_fast.step`` replayed from a CUDA
    graph (the GPU time). Each as ``do_bench`` times it and as a loop of back-to-back calls, with the host's part
    of that loop (``*_host_us``: above the graph's time, the host decides)."""
    import dla_fast
    from dla_fast.ops.scalar_decay.fused_recurrent import step_triton_

    out = {}
    for B in (1, 64):
        for D in (64, 128):
            cache, token = _decode_inputs(B, D)
            c = dict(states=cache.states, counts=cache.counts, info=cache.info, size=cache.size)
            kernels = lambda: step_triton_(*token, tau=0.0, **c)  # noqa: E731
            scratch = {}
            compiled = lambda: step_triton_(*token, tau=0.0, **c, scratch=scratch, fresh_trace=False)  # noqa: E731
            api = lambda: dla_fast.step(*token, cache, tau=0.0)  # noqa: E731
            api()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                api()
            nbytes = 2 * B * 16 * K_SLOTS * D * D * 4
            row = dict(bytes=nbytes)
            runs = (("kernels", kernels), ("compiled", compiled), ("api", api), ("graph", graph.replay))
            for name, fn in runs:
                row[f"{name}_us"] = bench_ms(fn) * 1e3
                row[f"{name}_loop_us"], row[f"{name}_host_us"] = _host_loop_us(fn)
                row[f"{name}_fraction_of_copy"] = nbytes / (row[f"{name}_loop_us"] * 1e-6) / bw
            row.update(ms=row["api_loop_us"] * 1e-3, bandwidth=nbytes / (row["api_loop_us"] * 1e-6),
                       fraction_of_copy=row["api_fraction_of_copy"])
            out[f"B{B}_D{D}"] = row
            log(f"step B={B} D={D}: " + ", ".join(f"{n} {row[f'{n}_us']:.1f} us (loop {row[f'{n}_loop_us']:.1f} us, "
                                                  f"{row[f'{n}_fraction_of_copy']:.2f} of copy)"
                                                  for n, _ in runs), fh)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument("--configs", default="all")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--skip-delta", action="store_true")
    ap.add_argument("--skip-step", action="store_true")
    ap.add_argument("--fla-samples", type=int, default=3, metavar="N",
                    help="time each baseline (FLA, SDPA) in N fresh processes and report the minimum, the N samples "
                         "beside it (default 3); 1: once, in this process")
    ap.add_argument("--dla-samples", type=int, default=1, metavar="N",
                    help="also time dla_fast.forward in N fresh processes per forward cell and workload (scalar decay "
                         "and the delta rule); the ratios then take the best of them and this process's (default 1: "
                         "this process only)")
    ap.add_argument("--worker-json", help=argparse.SUPPRESS)  # a worker: its baselines in this process (run_worker)
    args = ap.parse_args()
    if args.fla_samples < 1 or args.dla_samples < 1:
        ap.error("--fla-samples and --dla-samples must be at least 1")
    if args.worker_json:
        worker(args.worker_json)
        return
    os.makedirs(args.out, exist_ok=True)
    if args.smoke:
        with open(os.path.join(args.out, "gpu_bench_smoke.log"), "w") as fh:
            smoke(fh)
        return
    with open(os.path.join(args.out, "gpu_bench.log"), "w") as fh:
        run(args, fh)


def smoke(fh):
    """Tiny correctness shapes (the CPU interpreter can run them) and the table on made-up timings."""
    global SMOKE
    SMOKE = True
    res = dict(card="cpu-interpreter", date="-", copy_bandwidth=1e12, bf16_matmul_flops=1e15,
               correctness=correctness(fh))
    res["forward"] = {"(1, 64, 1, 16, 16)": dict(simple_gla_ms=1.0, log_linear_ms=2.0, sdpa_ms=3.0, dla={"x": dict(
        ms=1.0, boundary_rate=0.1, roofline_fraction=counts_forward(1, 64, 1, 16, 16, 30, 20.0)[0] / 1e15)})}
    res["step"] = {"B1_D64": dict(ms=0.01, bandwidth=1e12, fraction_of_copy=1.0)}
    res["delta_rule"] = {"(1, 64, 1, 16, 16)": {"x": _ratios(dict(
        boundary_rate=0.1, dla_fwd_ms=2.0, dla_fwd_peak_gib=0.1, fla_fwd_ms=1.0, fla_fwd_peak_gib=0.05,
        dla_fwd_bwd_note="made up", fla_fwd_bwd_note="RuntimeError('made up')")), "y": dict(error="made up")}}
    log(table(res), fh)


def run(args, fh):
    """Ceilings, correctness, forward and fwd+bwd timings against the baselines, the decode step; JSON + table."""
    import triton

    card = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    res = dict(card=card, date=date, torch=torch.__version__, triton=triton.__version__, K=K_SLOTS, tau=TAU,
               workloads=WORKLOADS, settings=dataclasses.asdict(DEFAULT_SETTINGS), fla_samples=args.fla_samples,
               dla_samples=args.dla_samples)
    try:
        import fla

        res["fla"] = fla.__version__
    except Exception:  # noqa: BLE001
        res["fla"] = None
    log(f"{card} torch {torch.__version__} triton {triton.__version__} fla {res['fla']}", fh)
    bw, fl = ceilings(fh)
    res.update(copy_bandwidth=bw, bf16_matmul_flops=fl)
    t0 = time.time()
    if not args.skip_correctness:
        try:
            res["correctness"] = correctness(fh)
        except Exception:  # noqa: BLE001
            res["correctness_error"] = traceback.format_exc()
            log(res["correctness_error"], fh)
    log(f"correctness took {time.time() - t0:.0f} s", fh)
    cfgs = CONFIGS if args.configs == "all" else [CONFIGS[int(i)] for i in args.configs.split(",")]
    res["forward"] = {}
    for cfg in ([] if args.skip_forward else cfgs):
        try:
            res["forward"][str(cfg)] = time_forward(cfg, fh, bw, fl, args.quick, args.fla_samples,
                                                    args.dla_samples)
        except Exception:  # noqa: BLE001
            res["forward"][str(cfg)] = dict(error=traceback.format_exc())
            log(res["forward"][str(cfg)]["error"], fh)
        torch.cuda.empty_cache()
    if not args.skip_correctness:
        try:
            res["grad_correctness"] = grad_correctness(fh)
        except Exception:  # noqa: BLE001
            res["grad_correctness_error"] = traceback.format_exc()
            log(res["grad_correctness_error"], fh)
    res["training"] = {}
    if not args.skip_training:
        for cfg in cfgs:
            try:
                res["training"][str(cfg)] = time_training(cfg, fh, args.quick, args.fla_samples)
            except Exception:  # noqa: BLE001
                res["training"][str(cfg)] = dict(error=traceback.format_exc())
                log(res["training"][str(cfg)]["error"], fh)
            torch.cuda.empty_cache()
    res["delta_rule"] = {}
    for cfg in ([] if args.skip_delta else cfgs):
        res["delta_rule"][str(cfg)] = time_delta(cfg, fh, args.quick, args.fla_samples, args.dla_samples)
    if not args.skip_step:
        try:
            res["step"] = time_step(fh, bw)
        except Exception:  # noqa: BLE001
            res["step_error"] = traceback.format_exc()
            log(res["step_error"], fh)
    tag = card.replace(" ", "_").replace("/", "_")
    with open(os.path.join(args.out, f"gpu_bench_{tag}_{date}.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    log(table(res), fh)


def table(res):
    best = f"; baselines: the best of {res['fla_samples']} processes" if res.get("fla_samples", 1) > 1 else ""
    if res.get("dla_samples", 1) > 1:
        best += f"; dla_fast.forward: the best of this process and {res['dla_samples']} more"
    lines = [f"== {res['card']} {res['date']}: copy {res['copy_bandwidth'] / 1e12:.2f} TB/s, "
             f"bf16 {res['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s; times ms (median){best}"]
    if res.get("forward"):
        lines.append("config | workload rate | dla (dla_fast.forward) | dla kernel entry | simple_gla | log_lin | "
                     "sdpa | loglin/dla | dla/sgla | sdpa/dla | roofline (kernel entry)")
    for cfg, r in res.get("forward", {}).items():
        if "dla" not in r:
            lines.append(f"{cfg} | ERROR")
            continue
        sg, ll, sd = r.get("simple_gla_ms", float("nan")), r.get("log_linear_ms", float("nan")), r["sdpa_ms"]
        for wn, d in r["dla"].items():
            # the ratios use it (the issue times dla_fast.forward), the best process's if sampled
            api = min(d.get("api_ms", float("nan")), d.get("dla_api_ms", float("inf")))
            lines.append(f"{cfg} | {wn} {d['boundary_rate']:.3f} | {api:.3f} | {d['ms']:.3f} | {sg:.3f} | {ll:.3f} | "
                         f"{sd:.3f} | {ll / api:.2f}x | {api / sg:.2f}x | {sd / api:.2f}x | "
                         f"{d['roofline_fraction']:.3f}")
    lines += spread_lines(res.get("forward", {}).items())
    lines += spread_lines((f"{cfg} {wn}", d) for cfg, r in res.get("forward", {}).items()
                          for wn, d in r.get("dla", {}).items())
    if res.get("training"):
        lines.append("fwd+bwd | workload | dla ms | log_lin ms | sdpa ms | dla/loglin (#11: <= 0.5 at T >= 16K, "
                     "<= 1 at 4096) | sdpa/dla | peak GiB dla / loglin / sdpa")
    for cfg, r in res.get("training", {}).items():
        if "dla" not in r:
            lines.append(f"{cfg} | ERROR")
            continue
        ll, sd = r.get("log_linear_ms", float("nan")), r["sdpa_ms"]
        for wn, d in r["dla"].items():
            lines.append(f"{cfg} | {wn} | {d['ms']:.3f} | {ll:.3f} | {sd:.3f} | {d['ms'] / ll:.2f} | "
                         f"{sd / d['ms']:.2f}x | "
                         f"{d['peak_mem_gib']:.2f} / {r.get('log_linear_peak_gib', float('nan')):.2f} / "
                         f"{r['sdpa_peak_gib']:.2f}")
    lines += spread_lines(res.get("training", {}).items())
    lines += delta_table(res.get("delta_rule", {}))
    if res.get("grad_correctness"):
        lines.append(f"gradients vs float64: {res['grad_correctness']}")
    for kk, d in res.get("step", {}).items():
        if "kernels_us" not in d:
            continue
        host = f"; host {d['api_host_us']:.1f} us" if "api_host_us" in d else ""
        lines.append(f"step {kk} | kernels {d['kernels_loop_us']:.1f} us | api {d['api_loop_us']:.1f} us "
                     f"({d['api_loop_us'] / d['graph_loop_us']:.2f}x the graph{host}) | "
                     f"graph {d['graph_loop_us']:.1f} us | api {d['api_fraction_of_copy']:.2f} / "
                     f"graph {d['graph_fraction_of_copy']:.2f} of copy")
    c = res.get("correctness", {})
    ok = [kk for kk, vv in c.items() if isinstance(vv, dict) and vv.get("decisions_equal")]
    bad = {kk: vv.get("margins_at_first_diff") for kk, vv in c.items()
           if isinstance(vv, dict) and not vv.get("decisions_equal")}
    if c:  # not with --skip-correctness
        lines.append(f"correctness: decisions equal in {len(ok)} checks; "
                     f"differ (margins |I-tau| at the first difference) in "
                     f"{bad}; deterministic {c.get('bitwise_deterministic')}")
    return "\n".join(lines)


def delta_table(delta):
    """The delta-rule rows (ms, ratio, peak GiB for forward and fwd+bwd); a measurement that did not run shows
    ``n/a [i]``, with note i (its error or why it was skipped) printed once below the rows."""
    if not delta:
        return []
    lines = ["delta rule | workload rate | dla-gdn fwd | fla gdn fwd | dla/fla | peak GiB dla / fla | "
             "dla-gdn fwd+bwd | fla gdn fwd+bwd | dla/fla | peak GiB dla / fla | fla fwd+bwd unchecked | dla/fla"]
    notes = []
    for cfg, rows in delta.items():
        for wn, r in rows.items():
            if "error" in r:
                lines.append(f"{cfg} | {wn} ERROR")
                continue
            rate = f"{r['boundary_rate']:.3f}" if "boundary_rate" in r else "-"
            cells = [cfg, f"{wn} {rate}"]
            for stage in ("fwd", "fwd_bwd"):
                ratio = r.get(f"{stage}_dla_over_fla")
                cells += [_delta_cell(r, f"dla_{stage}", notes), _delta_cell(r, f"fla_{stage}", notes),
                          "-" if ratio is None else f"{ratio:.2f}x",
                          " / ".join(_gib(r.get(f"{who}_{stage}_peak_gib")) for who in ("dla", "fla"))]
            ratio = r.get("fwd_bwd_unchecked_dla_over_fla")
            cells += [_delta_cell(r, "fla_fwd_bwd_unchecked", notes), "-" if ratio is None else f"{ratio:.2f}x"]
            lines.append(" | ".join(cells))
    lines += [f"  [{i}] {note}" for i, note in enumerate(notes)]
    return lines + spread_lines((f"{cfg} {wn}", r) for cfg, rows in delta.items() for wn, r in rows.items())


def spread_lines(rows):
    """Below a table (which shows the min): the min-max (ms) of each baseline time measured in several processes,
    a line per ``(label, row)`` that has one."""
    lines = []
    for label, row in rows:
        spans = [(key[: -len("_ms_samples")], s) for key, s in row.items()
                 if key.endswith("_ms_samples") and len(s) > 1]
        if spans:
            lines.append(f"  {label}: min-max of {len(spans[0][1])} processes (ms): "
                         + ", ".join(f"{name} {min(s):.3f}-{max(s):.3f}" for name, s in spans))
    return lines


def _delta_cell(row, name, notes):
    """A measurement's ms, or ``n/a [i]`` with its note added to notes (once)."""
    if f"{name}_ms" in row:
        return f"{row[f'{name}_ms']:.3f}"
    note = row.get(f"{name}_note", "not measured")
    if note not in notes:
        notes.append(note)
    return f"n/a [{notes.index(note)}]"


def _gib(x):
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    main()
