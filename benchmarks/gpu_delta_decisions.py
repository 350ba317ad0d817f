#!/usr/bin/env python
"""GPU check and timing of the delta rule's decisions: the token walk against a chunk at a time, in one run.

    python benchmarks/gpu_delta_decisions.py [--out DIR] [--chain-warps 8] [--smoke]

On each case (``gpu_bench``'s delta-rule inputs, bf16 and fp32, T = 4096 and 16384, the three workloads, D = 64
and 128) both ``chunk_fwd_decide.decide_delta_rule_triton`` (the token walk) and
``chunk_fwd_decide_wy.decide_delta_rule_wy`` (docs/delta-rule-chunked.md section 8) decide from an empty cache:

- correctness on the GPU: decisions that differ (with the walk's margin ``|I - tau|`` there), the largest score
  difference (relative, scores above 1e-6; and of the squares, see ``tests/test_triton_kernels.py``), the open
  slot after the call, the rows the guard sent back to the walk;
- the chunked path without its guesses (``guess=False``: every chunk on the chain): decisions, scores and open slot
  bit for bit those with them, and the share of guesses that held;
- time (median of ``triton.testing.do_bench``) of each, and of the chunked path's stages (CUDA events, one after
  another): the float64 WY tables (``wy_tables_triton``), the pair kernels, ``dla_delta_guess_kernel``,
  ``dla_delta_chain_kernel``;
- then the whole delta-rule forward (``chunk_fwd.forward_delta_rule_triton``) with each way of deciding.

Raw JSON and a log under --out (default $OUT or .), a compact table printed last. ``--smoke``: tiny shapes on
the CPU interpreter, to test this script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

CASES = [((2, 4096, 16, 64, 64), "moderate", "bf16"), ((2, 4096, 16, 64, 64), "moderate", "fp32"),
         ((2, 16384, 16, 64, 64), "sparse", "bf16"), ((2, 16384, 16, 64, 64), "moderate", "bf16"),
         ((2, 16384, 16, 64, 64), "dense", "bf16"), ((8, 4096, 16, 128, 128), "moderate", "bf16")]
SMOKE_CASES = [((1, 200, 2, 16, 16), "moderate", "fp32"), ((1, 130, 2, 32, 32), "dense", "bf16")]


class _Stages:
    """CUDA events around the chunked path's stages, summed over its blocks of chunks (ms)."""

    def __init__(self, wy, enabled: bool):
        self.wy, self.enabled, self.ms = wy, enabled, {"tables": 0.0, "pairs": 0.0, "guess": 0.0, "chain": 0.0}

    def _timed(self, name, fn):
        def run(*args, **kw):
            if not self.enabled:
                return fn(*args, **kw)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args, **kw)
            end.record()
            torch.cuda.synchronize()
            self.ms[name] += start.elapsed_time(end)
            return out
        return run

    KERNELS = (("dla_delta_pair_sums_kernel", "pairs"), ("dla_delta_pair_scores_kernel", "pairs"),  # summed
               ("dla_delta_pair_paths_kernel", "pairs"), ("dla_delta_guess_kernel", "guess"),
               ("dla_delta_chain_kernel", "chain"))

    def __enter__(self):
        wy = self.wy
        self.saved = {attr: getattr(wy, attr) for attr in ("score_tables_triton", *dict(self.KERNELS))}
        wy.score_tables_triton = self._timed("tables", wy.score_tables_triton)
        for attr, name in self.KERNELS:
            kernel = getattr(wy, attr)
            setattr(wy, attr, _Launcher(kernel, self._timed(name, lambda k, grid, *a, **kw: k[grid](*a, **kw))))
        return self

    def __exit__(self, *exc):
        for attr, fn in self.saved.items():
            setattr(self.wy, attr, fn)


class _Launcher:
    """``kernel[grid](...)`` routed through a timing wrapper."""

    def __init__(self, kernel, launch):
        self.kernel, self.launch = kernel, launch

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launch(self.kernel, grid, *args, **kw)


def _case(cfg, wl, dt, dev, args, bench):
    from gpu_bench import WORKLOADS, delta_inputs

    import dla_fast.ops.delta_rule.chunk_fwd_decide_wy as wy
    from dla_fast.ops.delta_rule.chunk_fwd_decide import decide_delta_rule_triton

    q, k, v, g, w, beta = delta_inputs(*cfg, WORKLOADS[wl], device=dev)
    if dt == "fp32":
        q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    size = torch.zeros(B, H, dtype=torch.int64, device=dev)
    chunked = lambda *a, **kw: wy.decide_delta_rule_wy(*a, chain_warps=args.chain_warps, **kw)  # noqa: E731
    unguessed = lambda *a, **kw: chunked(*a, guess=False, **kw)  # noqa: E731
    row = dict(cfg=cfg, workload=wl, dtype=dt)
    out = {}
    held = []  # per block, the share of its chunks whose guess for the next held (read outside the timings)
    real_first_wrong = wy._first_wrong
    for name, fn in (("tokens", decide_delta_rule_triton), ("chunks", chunked), ("unguessed", unguessed)):
        P = torch.zeros(B, H, Dk, Dv, device=dev, dtype=torch.float64)
        wy._first_wrong = lambda right: held.append(float(right[1:].float().mean())) or real_first_wrong(right)
        out[name] = (*fn(k, v, g, beta, open_states=P, size=size, tau=0.6), P)
        wy._first_wrong = real_first_wrong
        row[f"{name}_ms"] = bench(lambda: fn(k, v, g, beta, open_states=torch.zeros_like(P), size=size, tau=0.6))
    row.update(guesses_held=sum(held) / max(len(held), 1),
               unguessed_bitwise=all(torch.equal(a, b) for a, b in zip(out["chunks"], out["unguessed"])))
    (s1, st1, m1, P1), (s2, st2, m2, P2) = out["tokens"], out["chunks"]
    differ = st1 != st2
    big = s1.abs() > 1e-6
    walked = []
    real_walk = wy.walk_rows
    wy.walk_rows = lambda *a: walked.append(int((a[8] > 0).sum())) or real_walk(*a)
    with _Stages(wy, dev == "cuda") as stages:
        chunked(k, v, g, beta, open_states=torch.zeros_like(P1), size=size, tau=0.6)
    wy.walk_rows = real_walk
    row.update(rate=float(st1.float().mean()), differ=int(differ.sum()),
               differ_margin_max=float((s1[differ] - 0.6).abs().max()) if differ.any() else None,
               score_rel_max=float(((s1 - s2).abs() / s1.abs())[big].max()) if big.any() else 0.0,
               score_sq_abs_max=float((s1 ** 2 - s2 ** 2).abs().max()), masks_equal=bool(torch.equal(m1, m2)),
               open_slot_err=float((P1 - P2).abs().max()), rows_walked=walked[0], stages_ms=stages.ms)
    row.update(_forward(q, k, v, g, w, beta, bench))
    return row


def _forward(q, k, v, g, w, beta, bench):
    """The delta-rule device forward with each way of deciding: times and whether the traces agree."""
    from dla_fast.ops.delta_rule.chunk_fwd import forward_delta_rule_triton

    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], w.shape[-1]

    def run(decisions):
        i64 = dict(device=q.device, dtype=torch.int64)
        cache = (torch.zeros(B, H, K, Dk, Dv, device=q.device), torch.zeros(B, H, K, **i64),
                 torch.zeros(B, H, K, device=q.device, dtype=torch.float64), torch.zeros(B, H, **i64))
        return forward_delta_rule_triton(q, k, v, g, w, beta, None, *cache, tau=0.6, decisions=decisions)

    (o1, _, st1, mg1), (o2, _, st2, mg2) = run("tokens"), run("chunks")
    return dict(fwd_tokens_ms=bench(lambda: run("tokens")), fwd_chunks_ms=bench(lambda: run("chunks")),
                fwd_same_trace=bool(torch.equal(st1, st2) and torch.equal(mg1, mg2)),
                fwd_o_rel=float((o1.float() - o2.float()).abs().max() / o1.float().abs().max()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--chain-warps", type=int, default=8)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    dev = "cpu" if args.smoke else "cuda"
    if args.smoke:
        bench = lambda fn: (fn(), 0.0)[1]  # noqa: E731
    else:
        import triton.testing

        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
        bench = lambda fn: triton.testing.do_bench(fn, warmup=1, rep=300)  # noqa: E731
    rows = []
    for cfg, wl, dt in SMOKE_CASES if args.smoke else CASES:
        try:
            rows.append(_case(cfg, wl, dt, dev, args, bench))
        except Exception:  # one failing case must not lose the others' numbers
            traceback.print_exc()
            rows.append(dict(cfg=cfg, workload=wl, dtype=dt, error=traceback.format_exc(limit=3)))
        print(json.dumps(rows[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_delta_decisions.json"), "w") as f:
        json.dump(dict(device=None if args.smoke else torch.cuda.get_device_name(), args=vars(args), rows=rows), f,
                  indent=1)
    print("\n| B, T, H, D | workload | dtype | rate | differ | score rel | open slot | rows walked | tokens ms | "
          "chunks ms (tables / pairs / guess / chain) | unguessed ms (bitwise) | guesses held | "
          "forward tokens / chunks ms | same trace |")
    for r in rows:
        if "error" in r:
            print(f"| {tuple(r['cfg'][:4])} | {r['workload']} | {r['dtype']} | error: {r['error'].splitlines()[-1]} |")
            continue
        s = r["stages_ms"]
        print(f"| {tuple(r['cfg'][:4])} | {r['workload']} | {r['dtype']} | {r['rate']:.3f} | {r['differ']} | "
              f"{r['score_rel_max']:.1e} | {r['open_slot_err']:.1e} | {r['rows_walked']} | {r['tokens_ms']:.2f} | "
              f"{r['chunks_ms']:.2f} ({s['tables']:.2f} / {s['pairs']:.2f} / {s['guess']:.2f} / {s['chain']:.2f}) | "
              f"{r['unguessed_ms']:.2f} ({r['unguessed_bitwise']}) | {r['guesses_held']:.2f} | "
              f"{r['fwd_tokens_ms']:.2f} / {r['fwd_chunks_ms']:.2f} | {r['fwd_same_trace']} |")


if __name__ == "__main__":
    main()
