#!/usr/bin/env python
"""The scalar-decay Triton forward of this tree against another revision's, in one process: bits and times.

A kernel change is timed against the code before it in the same process, where the card's state is shared (runs
39-41 did this with copies of an older ``dla_fast`` in scratch directories; this is that, kept). The other
revision's package is exported here (the GPU machines have no git history), carried with the tree, and imported
beside this tree's under other module names.

    python benchmarks/forward_revision_ab.py --export REV DIR       # here: DIR/dla_fast as of git REV
    python benchmarks/forward_revision_ab.py CELLS --against DIR [DIR ...] [--rounds 3] [--checks] [--out OUT]   # GPU

CELLS: ``BxTxD:workload,...`` (``gpu_bench``'s configs and workloads). Per cell: every other revision's outputs
(``o``, the final cache, the trace) compared bit for bit with this tree's, every forward timed at the kernel entry in
alternating rounds (medians), one stage profile of each, and each kernel's GPU time per call (CUPTI, ten calls; since
run 44). Writes ``forward_revision_ab_<card>_<date>.txt`` (the lines printed) under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward_timeline import profiled_kernels  # noqa: E402
from gpu_bench import (  # noqa: E402
    K_SLOTS,
    TAU,
    WORKLOADS,
    alternating_ms,
    configs_named,
    report_cells,
    warm_gpu,
    workload,
)

OUTPUTS = ("o", "states", "counts", "info", "size", "scores", "starts", "merged")
KERNEL_ROWS = 14  # kernels listed per cell
PACKAGE = "dla_fast"


def export(rev: str, dest: str) -> str:
    """``dest/dla_fast`` as of git revision ``rev`` of this repository; returns its path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(dest, exist_ok=True)
    archive = subprocess.run(["git", "-C", root, "archive", rev, PACKAGE], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return os.path.join(dest, PACKAGE)


def imported(other_dirs: list[str], module: str, attr: str) -> dict:
    """``{"this": this tree's MODULE.ATTR, DIR: the same of the package in DIR, ...}``. Each package is imported
    whole, then its modules move to ``<n>_dla_fast...`` in ``sys.modules`` with their ``__package__`` renamed, so
    that ``dla_fast`` can be imported again from the next directory and each package's imports inside functions
    (``from .ops... import``) still find its own modules."""
    out = {}
    for n, where in enumerate([None, *other_dirs]):
        if where is not None:
            sys.path.insert(0, os.path.abspath(where))
        try:
            fn = getattr(importlib.import_module(module), attr)
            import_whole(importlib.import_module(PACKAGE))
        finally:
            if where is not None:
                sys.path.pop(0)
        if any(fn is f for f in out.values()):
            raise SystemExit(f"revision A/B: {where} gave an already imported package again")
        out["this" if where is None else where] = fn
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            sys.modules[f"{n}_{name}"] = moved = sys.modules.pop(name)
            if getattr(moved, "__package__", None):
                moved.__package__ = f"{n}_{moved.__package__}"
    return out


def import_whole(package) -> None:
    """Every module of ``package`` imported (those needing an optional extra that is missing left out)."""
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        with contextlib.suppress(ImportError):
            importlib.import_module(info.name)


def forwards(other_dirs: list[str]) -> dict:
    """:func:`imported`'s ``forward_scalar_decay_triton`` of each revision."""
    return imported(other_dirs, f"{PACKAGE}.ops.scalar_decay.chunk_fwd", "forward_scalar_decay_triton")


def flat(result) -> list:
    """``(o, cache, trace)`` of the kernel entry as one list, in the order of ``OUTPUTS``."""
    o, cache, trace = result[:3]
    return [o, *cache, *trace]


def compare_cell(cell: str, fns: dict, rounds: int, check_values: bool = False) -> list[str]:
    """One cell's report lines: bits, times, stages. ``check_values``: the forwards check the inputs' values too, as
    ``dla_fast.forward`` does."""
    import torch

    cname, wname = cell.split(":")
    B, T, H, Dk, Dv = configs_named(cname)[0]
    x = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS[wname], seed=11)
    with torch.no_grad():
        out = {n: flat(f(*x, tau=TAU, check_values=check_values)) for n, f in fns.items()}
        lines = [f"== {cell}"]
        for n in fns:
            if n != "this":
                ndiff = {o: int((a != b).sum()) for o, a, b in zip(OUTPUTS, out["this"], out[n])}
                lines.append(f"  {n} against this: " + (f"differing elements {ndiff}" if any(ndiff.values())
                                                           else "bitwise equal"))
        ms = alternating_ms({n: lambda f=f: f(*x, tau=TAU, check_values=check_values) for n, f in fns.items()}, rounds)
        stages = {}
        for n, f in fns.items():
            p = {}
            f(*x, tau=TAU, check_values=check_values, profile=p)
            stages[n] = {k: round(v, 3) for k, v in p.items() if k.endswith("_ms")}
        kernels = {n: profiled_kernels(lambda f=f: f(*x, tau=TAU, check_values=check_values)) for n, f in fns.items()}
    med = {n: statistics.median(v) for n, v in ms.items()}
    lines += [f"  {n}: {med[n]:.3f} ms ({100 * (med[n] / med['this'] - 1):+.1f} % against this), rounds "
              f"{[round(t, 3) for t in ms[n]]}" for n in fns]
    lines += [f"  stages {n}: {st}" for n, st in stages.items()]
    return lines + kernel_lines(kernels)


def kernel_lines(kernels: dict) -> list[str]:
    """Per kernel (this tree's fourteen longest), its GPU time per call in each forward (``profiled_kernels``: ten calls
    under CUPTI), us: sharper than the stage windows, which are one call's and include the waits between kernels."""
    names = list(kernels["this"])[:KERNEL_ROWS]
    return [f"  kernel {name}: " + ", ".join(f"{n} {ks.get(name, 0.0):.1f}" for n, ks in kernels.items()) + " us"
            for name in names]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cells", nargs="?", help="BxTxD:workload,... (gpu_bench's configs and workloads)")
    ap.add_argument("--export", nargs=2, metavar=("REV", "DIR"), help="write DIR/dla_fast as of git REV and stop")
    ap.add_argument("--against", nargs="+", metavar="DIR", help="directories holding other revisions' dla_fast")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of GPU work before the first cell")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--checks", action="store_true", help="check the inputs' values too, as dla_fast.forward does")
    args = ap.parse_args()
    if args.export:
        print(export(*args.export))
        return
    if not (args.cells and args.against):
        ap.error("expected CELLS and --against DIR (or --export REV DIR)")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("forward_revision_ab: needs a CUDA GPU (the Triton forward at benchmark sizes)")
    fns = forwards(args.against)
    warm_gpu(args.warmup)
    header = (f"this tree's forward against {', '.join(args.against)} (kernel entry{', value checks' * args.checks}, "
              f"tau {TAU}, K {K_SLOTS}, {args.rounds} alternating rounds of 40 calls, medians)")
    report_cells("forward_revision_ab", header, args.cells,
                 lambda cell: compare_cell(cell, fns, args.rounds, args.checks), args.out)


if __name__ == "__main__":
    main()
