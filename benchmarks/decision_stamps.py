#!/usr/bin/env python
"""When each decision program ran: ``%globaltimer`` stamps in the table kernel and the carry scan, on a GPU.

The kernel timeline (``forward_timeline.py``) gives each kernel's start and end; it cannot say whether the carry
scan's programs started late, waited on the table kernel's flags, or ran slowly beside it. This builds an
instrumented copy of ``dla_fast`` in a temporary folder (the repository is not touched) whose table kernel stamps
each program's start and end and whose carry scan stamps its start and the end of each chunk step, runs the
forward at the kernel entry three times per variant, and prints for the last call:

- the table kernel's span and its programs' median duration;
- the carry scan's start (all its programs) and end (median and last row);
- the carry scan's chunk step (median) while the table kernel runs and after, in us and in its SM's cycles
  (``%clock64``), and their ratio, the SM's clock: a slower step at the same cycle count is a lower clock;
- the slack: a chunk's carry step minus that (row, chunk)'s table program end (small: the carry scan waits).

    python benchmarks/decision_stamps.py --out DIR [--config 2x16384] [--workload moderate] \\
        [--table-warps 8] [--table-maxnreg 128]

``--table-warps`` and ``--table-maxnreg`` (0: no cap) change the table kernel's launch in the copy (run 20 measured
both, docs/benchmarks.md). The copy's source is patched by exact text; if the kernels change, the patch fails
loudly and the anchors below need updating.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DECIDE = "dla_fast/ops/scalar_decay/chunk_fwd_decide.py"
LAUNCH = "dla_fast/ops/scalar_decay/chunk_fwd.py"

TIMER = '''@triton.jit
def gtimer():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def sm_cycles():
    return tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def stamp(ptr):
    tl.store(ptr, gtimer())
    tl.store(ptr + 1, sm_cycles())


@triton.jit
def first_hit_combine('''


def patches(table_warps: int, table_maxnreg: int) -> dict[str, list[tuple[str, str]]]:
    """(anchor, replacement) pairs per file of the copy."""
    cap = table_maxnreg or None
    return {DECIDE: [
        ("@triton.jit\ndef first_hit_combine(", TIMER),
        ("    PUBLISH: tl.constexpr,\n):", "    PUBLISH: tl.constexpr, tstamp_ptr,\n):"),
        ("    bh = tl.program_id(0) % BH\n",
         "    bh = tl.program_id(0) % BH\n    tl.store(tstamp_ptr + tl.program_id(0) * 2, gtimer())\n"),
        ('        tl.atomic_or(tflag_ptr + bh * tl.cdiv(NC, 32) + c // 32, 1 << (c % 32), sem="release")\n',
         '        tl.atomic_or(tflag_ptr + bh * tl.cdiv(NC, 32) + c // 32, 1 << (c % 32), sem="release")\n'
         "    tl.store(tstamp_ptr + tl.program_id(0) * 2 + 1, gtimer())\n"),
        ("    WAIT_TABLES: tl.constexpr,\n):", "    WAIT_TABLES: tl.constexpr, cstamp_ptr,\n):"),
        ("    N = (Dk * Dv).to(tl.float32)\n    emp =",
         "    N = (Dk * Dv).to(tl.float32)\n    stamp(cstamp_ptr + bh * (NC + 2) * 2)\n    emp ="),
        ("        tl.store(mask_ptr + bh * NC + c, mask)\n",
         "        tl.store(mask_ptr + bh * NC + c, mask)\n"
         "        stamp(cstamp_ptr + (bh * (NC + 2) + 1 + c) * 2)\n"),
    ], LAUNCH: [
        ("MAX_DIM = 256\n", "MAX_DIM = 256\nSTAMPS = {}\n"),
        ("    tables = (itab, anc, cvec, decay)\n",
         "    tables = (itab, anc, cvec, decay)\n"
         "    STAMPS['table'] = torch.zeros(NC * BH * 2, device=k.device, dtype=torch.int64)\n"
         "    STAMPS['carry'] = torch.zeros(BH * (NC + 2) * 2, device=k.device, dtype=torch.int64)\n"),
        ("PUBLISH=tflag is not None, num_warps=8, maxnreg=128 if cfg.lowp else None,",
         f"PUBLISH=tflag is not None, tstamp_ptr=STAMPS['table'], num_warps={table_warps}, "
         f"maxnreg={cap} if cfg.lowp else None,"),
        ("WAIT_TABLES=tflag is not None, num_warps=warps,",
         "WAIT_TABLES=tflag is not None, cstamp_ptr=STAMPS['carry'], num_warps=warps,"),
    ]}


def instrumented_copy(folder: str, table_warps: int, table_maxnreg: int) -> None:
    """``dla_fast`` and ``dla_ref`` copied into ``folder``, the copy's kernels stamped."""
    for package in ("dla_fast", "dla_ref"):
        shutil.copytree(os.path.join(REPO, package), os.path.join(folder, package))
    for rel, pairs in patches(table_warps, table_maxnreg).items():
        path = os.path.join(folder, rel)
        with open(path) as f:
            src = f.read()
        for anchor, replacement in pairs:
            if src.count(anchor) != 1:
                raise SystemExit(f"decision_stamps: anchor not found once in {rel}: {anchor!r}")
            src = src.replace(anchor, replacement)
        with open(path, "w") as f:
            f.write(src)


def measure(config: str, workload_name: str, out: str) -> None:
    """Run in the process that imports the instrumented copy."""
    import dataclasses

    import torch

    # The instrumented copy first: gpu_bench puts the repository at the front of sys.path.
    import dla_fast.ops.scalar_decay.chunk_fwd as cf
    from dla_fast.settings import DEFAULT_SETTINGS

    if not hasattr(cf, "STAMPS"):
        raise SystemExit(f"decision_stamps: imported {cf.__file__}, not the instrumented copy")
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from gpu_bench import K_SLOTS, TAU, WORKLOADS, configs_named, workload

    def pct(x, p):
        return float(torch.quantile(x.double(), p))

    variants = {"default": DEFAULT_SETTINGS,
                "serial": dataclasses.replace(DEFAULT_SETTINGS, table_overlap=False, pipeline=False),
                "overlap_only": dataclasses.replace(DEFAULT_SETTINGS, pipeline=False)}
    for cfg in configs_named(config):
        B, T, H, Dk, Dv = cfg
        BH, NC = B * H, -(-T // 64)
        inputs = workload(*cfg, K_SLOTS, **WORKLOADS[workload_name], seed=11)
        for name, settings in variants.items():
            for _ in range(3):
                cf.forward_scalar_decay_triton(*inputs, tau=TAU, settings=settings)
            torch.cuda.synchronize()
            table = cf.STAMPS["table"].view(NC, BH, 2).cpu().double()
            carry_both = cf.STAMPS["carry"].view(BH, NC + 2, 2).cpu().double()
            carry, cycles = carry_both[..., 0], carry_both[:, 1:NC + 1, 1]
            t0 = table[..., 0].min()
            table, carry = (table - t0) / 1e3, (carry - t0) / 1e3
            table_end = float(table[..., 1].max())
            steps_at = carry[:, 1:NC + 1]
            steps = steps_at[:, 1:] - steps_at[:, :-1]
            step_cycles = cycles[:, 1:] - cycles[:, :-1]  # one program's SM: its own clock
            mhz = step_cycles / steps  # cycles per us
            during = steps_at[:, 1:] <= table_end
            slack = steps_at - table[..., 1].T
            line = (f"== {cfg} {workload_name} {name}: table 0-{table_end:.0f} us (program median "
                    f"{pct(table[..., 1] - table[..., 0], 0.5):.1f} us); carry start {pct(carry[:, 0], 0.5):.0f} us, "
                    f"end median {pct(steps_at[:, -1], 0.5):.0f} last {float(steps_at[:, -1].max()):.0f} us")
            def step_stats(sel):
                return (f"{pct(steps[sel], 0.5):.2f} us = {pct(step_cycles[sel], 0.5):.0f} cycles at "
                        f"{pct(mhz[sel], 0.5):.0f} MHz")

            if during.any():
                line += f"; step during the table {step_stats(during)}"
                if (~during).any():
                    line += f", after {step_stats(~during)}"
            else:
                line += f"; step {step_stats(torch.ones_like(during))} (p90 {pct(steps, 0.9):.2f} us)"
            line += f"; slack p10 {pct(slack, 0.1):.1f} us"
            print(line)
            torch.save(dict(table=table, carry=carry), os.path.join(out, f"stamps_{'x'.join(map(str, cfg))}_{name}.pt"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--config", default="2x16384", help="BxT or BxTxD of gpu_bench's configs")
    ap.add_argument("--workload", default="moderate")
    ap.add_argument("--table-warps", type=int, default=8)
    ap.add_argument("--table-maxnreg", type=int, default=128, help="0: no register cap")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # inside the instrumented copy
    args = ap.parse_args()
    if args.measure:
        measure(args.config, args.workload, args.out)
        return
    with tempfile.TemporaryDirectory() as folder:
        instrumented_copy(folder, args.table_warps, args.table_maxnreg)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([folder, os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, os.path.abspath(__file__), "--measure", "--out", args.out, "--config", args.config,
               "--workload", args.workload]
        subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
    main()
