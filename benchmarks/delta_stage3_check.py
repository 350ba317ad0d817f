"""GPU check of the delta rule's fused stage 3 (issue #12): the device forward with its stage-3 kernels
(``chunk_fwd._states_and_outputs``: WY tables read from the inputs in place, ``chunk_fwd_partition``, the slot-state
kernel) against the same forward with the pre-fusion torch stage (``chunk_fwd_stage_torch``), and the times of both.

    python benchmarks/delta_stage3_check.py --out benchmarks/results [--configs 2x16384,8x4096] [--reps 7]

Per config ``B x T`` (H = 16, Dk = Dv = 64, K = 30, tau = 0.6, bf16 q/k/v/beta as ``gpu_bench.py`` builds them: k
unit, beta = sigmoid(N(0, 1)); the moderate workload of ``benchmarks/workloads.py``):

1. correctness: ``forward_delta_rule_triton`` (empty cache, traced) both ways: the traces must be equal, the
   outputs (float32) and final slot states within 1e-5 relative (Frobenius) of each other;
2. time: ``dla_fast.forward(..., beta=...)`` (no final cache, as ``gpu_bench.py`` times it) with CUDA events around
   each call, median of ``--reps`` calls after two warm-ups, each way; and stage 3 alone, by CUDA events around
   ``_states_and_outputs`` inside those calls.

Needs a CUDA GPU (exits with a message otherwise). Prints a compact table last and writes the rows as JSON to
``--out``. About 1-2 minutes on an H200 (most of it compiling).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.workloads import WORKLOADS  # noqa: E402

H, D, K_SLOTS, TAU = 16, 64, 30, 0.6
TOLERANCE = 1e-5  # relative (Frobenius) difference of the outputs and of the final slot states


def delta_inputs(B, T, *, seed=11, dtype=torch.bfloat16):
    """``gpu_bench.workload`` + ``gpu_bench.delta_inputs`` on the moderate workload of ``benchmarks/workloads.py``
    (its mean regime length, jitter and decay; no minimum regime length): regimes of key/value directions with
    jitter, q random unit, k unit, constant decay, read weights 0.7^j, beta = sigmoid(N(0, 1)) in q's dtype."""
    wl = WORKLOADS["moderate"]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device="cuda")  # noqa: E731
    change = torch.rand(B, T, H, generator=gen, device="cuda") < 1.0 / wl["regime_length"]
    change[:, 0] = True
    idx = (torch.cumsum(change.long(), 1) - 1)[..., None].expand(B, T, H, D)
    dk, dv = (torch.nn.functional.normalize(r(B, T, H, D), dim=-1) for _ in range(2))
    k = torch.gather(dk, 1, idx) + wl["jitter"] * r(B, T, H, D) / D**0.5
    v = torch.gather(dv, 1, idx) + wl["jitter"] * r(B, T, H, D) / D**0.5
    q = torch.nn.functional.normalize(r(B, T, H, D), dim=-1)
    g = torch.full((B, T, H), math.log(wl["decay"]), device="cuda")
    w = (0.7 ** torch.arange(K_SLOTS, device="cuda", dtype=torch.float32)).expand(B, T, H, K_SLOTS).contiguous()
    k = torch.nn.functional.normalize(k, dim=-1)
    gen_b = torch.Generator(device="cuda").manual_seed(seed + 1)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen_b, device="cuda"))
    return q.to(dtype), k.to(dtype), v.to(dtype), g, w, beta.to(dtype)


@contextlib.contextmanager
def stage3(torch_stage: bool, times: list | None = None):
    """The forward's stage 3 as the kernels (or the pre-fusion torch stage), with CUDA events around each call
    appended to ``times`` as (start, end) pairs."""
    from dla_fast.ops.delta_rule import chunk_fwd
    from dla_fast.ops.delta_rule.chunk_fwd_stage_torch import states_and_outputs_torch

    saved = chunk_fwd._states_and_outputs
    run = states_and_outputs_torch if torch_stage else saved

    def timed(*args):
        args = args[:10] if torch_stage else args  # the torch stage keeps no checkpoints (none are asked here)
        if times is None:
            return run(*args)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = run(*args)
        end.record()
        times.append((start, end))
        return out

    chunk_fwd._states_and_outputs = timed
    try:
        yield
    finally:
        chunk_fwd._states_and_outputs = saved


def device_forward(x):
    """``forward_delta_rule_triton`` from an empty cache, as the API calls it: ``(o, states, trace)``."""
    from dla_fast.ops.delta_rule.chunk_fwd import forward_delta_rule_triton

    q, k, v, g, w, beta = x
    B, T, _, _ = q.shape
    i64 = dict(device="cuda", dtype=torch.int64)
    cache = (torch.zeros(B, H, K_SLOTS, D, D, device="cuda"), torch.zeros(B, H, K_SLOTS, **i64),
             torch.zeros(B, H, K_SLOTS, device="cuda", dtype=torch.float64), torch.zeros(B, H, **i64))
    o, scores, starts, merged = forward_delta_rule_triton(q, k, v, g, w, beta, None, *cache, tau=TAU)
    return o, cache[0], (starts, merged)


def relative(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def compare(x) -> dict:
    """The forward with the stage-3 kernels against the torch stage: trace equal, outputs and states close."""
    with stage3(False):
        o, states, trace = device_forward(x)
    with stage3(True):
        o_t, states_t, trace_t = device_forward(x)
    row = dict(trace_equal=all(torch.equal(a, b) for a, b in zip(trace, trace_t)),
               boundary_rate=float(trace[0].float().mean()), o_rel=relative(o, o_t),
               o_max_abs=float((o - o_t).abs().max()), states_rel=relative(states, states_t))
    row["ok"] = row["trace_equal"] and row["o_rel"] <= TOLERANCE and row["states_rel"] <= TOLERANCE
    return row


def timings(x, torch_stage: bool, reps: int) -> dict:
    """Median ms of ``dla_fast.forward`` and of its stage 3 (CUDA events), two warm-up calls first."""
    import dla_fast

    q, k, v, g, w, beta = x
    call = lambda: dla_fast.forward(q, k, v, g, w, tau=TAU, beta=beta, output_final_cache=False)  # noqa: E731
    pairs, fwd = [], []
    with torch.no_grad(), stage3(torch_stage, pairs):
        for _ in range(2):
            call()
        torch.cuda.synchronize()
        pairs.clear()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize()
            fwd.append(start.elapsed_time(end))
    stage = [a.elapsed_time(b) for a, b in pairs]
    return dict(fwd_ms=statistics.median(fwd), stage3_ms=statistics.median(stage), fwd_all_ms=fwd, stage3_all_ms=stage)


def run_config(B, T, reps) -> dict:
    x = delta_inputs(B, T)
    row = dict(config=f"({B}, {T}, {H}, {D})", **compare(x))
    for name, torch_stage in (("new", False), ("torch", True)):
        for key, val in timings(x, torch_stage, reps).items():
            row[f"{name}_{key}"] = val
    torch.cuda.empty_cache()
    return row


def table(rows) -> str:
    head = ("config | rate | fwd new ms | fwd torch-stage ms | stage3 new ms | stage3 torch ms | o rel | o max abs | "
            "states rel | trace | ok")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['config']} | {r['boundary_rate']:.3f} | {r['new_fwd_ms']:.2f} | {r['torch_fwd_ms']:.2f} | "
                     f"{r['new_stage3_ms']:.2f} | {r['torch_stage3_ms']:.2f} | {r['o_rel']:.1e} | "
                     f"{r['o_max_abs']:.1e} | {r['states_rel']:.1e} | {'equal' if r['trace_equal'] else 'DIFFER'} | "
                     f"{'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for the JSON results")
    ap.add_argument("--configs", default="2x16384,8x4096", help="comma-separated BxT (H = 16, D = 64)")
    ap.add_argument("--reps", type=int, default=7, help="timed calls per variant (median)")
    args = ap.parse_args()
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("delta_stage3_check: needs a CUDA GPU (none visible, or TRITON_INTERPRET=1); nothing was run")
    os.makedirs(args.out, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    rows = []
    for cfg in args.configs.split(","):
        B, T = (int(n) for n in cfg.lower().split("x"))
        rows.append(run_config(B, T, args.reps))
        print({k: v for k, v in rows[-1].items() if not k.endswith("all_ms")}, flush=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M")
    path = os.path.join(args.out, f"delta_stage3_check_{gpu.replace(' ', '_')}_{stamp}.json")
    with open(path, "w") as fh:
        json.dump(dict(gpu=gpu, torch=torch.__version__, rows=rows), fh, indent=1)
    print(f"wrote {path}")
    print(table(rows))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
