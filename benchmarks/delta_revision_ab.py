#!/usr/bin/env python
"""The delta rule through the public API, this tree against another revision's, in one process: the forward and
a training step, their bits, times and largest kernels (the scalar-decay forward's tool, ``forward_revision_ab.py``,
exports the other revision and imports both packages).

    python benchmarks/forward_revision_ab.py --export REV DIR        # here: DIR/dla_fast as of git REV
    python benchmarks/delta_revision_ab.py CELLS --against DIR [--rounds 3] [--forward-only]   # GPU
    python benchmarks/delta_revision_ab.py CELLS --switch ops.delta_rule.chunk_torch_bwd.ONE_PASS_CHAINS_16BIT=True

CELLS: ``BxTxD:workload,...`` (``gpu_bench``'s configs and workloads; the delta inputs of ``delta_inputs``). Per
cell and revision: the forward's output and final slot states, and a training step's gradients, compared bit for
bit with this tree's; each timed in alternating rounds (medians); each kernel's GPU time in one call (CUPTI). Prints
the lines and writes them to ``delta_revision_ab_<card>_<date>.txt`` under ``--out``. ``--switch`` (repeatable): this
tree again with module attributes set during its calls (``MODULE.NAME=VALUE[,...]``, MODULE under ``dla_fast``,
VALUE a Python literal or ``torch.<dtype>``): the opt-in switches, measured without a copy of the tree.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delta_forward_kernels import kernel_totals  # noqa: E402
from forward_revision_ab import imported  # noqa: E402
from gpu_bench import TAU, WORKLOADS, alternating_ms, configs_named, delta_inputs, report_cells, warm_gpu  # noqa: E402

KERNEL_ROWS = 8


def differing(a: list, b: list) -> str:
    """``"bitwise equal"``, or how many elements of each pair of tensors differ."""
    counts = [int((x != y).sum()) for x, y in zip(a, b)]
    return "bitwise equal" if not any(counts) else f"differing elements {counts}"


def compare(label: str, calls: dict, results: dict, rounds: int) -> list[str]:
    """Lines for one kind of call (``calls``: revision -> function; ``results``: revision -> its tensors, with
    ``"this again"``: this tree's second call, so that a difference between revisions can be told from one between
    two calls of the same code, e.g. the slot weights' gradient summed by ``scatter_add_``'s atomics on CUDA)."""
    lines = [f"  {label} {n} against this: {differing(results['this'], results[n])}" for n in results if n != "this"]
    times = alternating_ms(calls, rounds, rep=20)
    ms = {n: statistics.median(t) for n, t in times.items()}
    lines += [f"  {label} {n}: {ms[n]:.3f} ms ({100 * (ms[n] / ms['this'] - 1):+.1f} % against this), rounds "
              f"{[round(t, 3) for t in times[n]]}" for n in calls]
    kernels = {n: kernel_totals(f) for n, f in calls.items()}
    lines += [f"  {label} kernel {k}: " + ", ".join(f"{n} {ks.get(k, 0.0):.1f}" for n, ks in kernels.items()) + " us"
              for k in list(kernels["this"])[:KERNEL_ROWS]]
    return lines


def twice(call, apis: dict) -> dict:
    """Each revision's results of ``call``, and this tree's a second time (``"this again"``)."""
    results = {n: call(a) for n, a in apis.items()}
    return {**results, "this again": call(apis["this"])}


def switched(api, settings: list):
    """``api`` called with the module attributes ``settings`` (``[(module, name, value)]``) set, each restored after
    the call; the call's result also carries them into its backward (``backward`` runs under them)."""

    @contextlib.contextmanager
    def applied():
        saved = [(m, n, getattr(m, n)) for m, n, _ in settings]
        for m, n, v in settings:
            setattr(m, n, v)
        try:
            yield
        finally:
            for m, n, v in saved:
                setattr(m, n, v)

    def call(*args, **kwargs):
        with applied():
            return api(*args, **kwargs)

    call.applied = applied
    return call


def switch_settings(spec: str, package: str) -> list:
    """``[(module, name, value)]`` of ``MODULE.NAME=VALUE[,...]``, MODULE under ``package`` (this tree's, as
    ``forward_revision_ab.imported`` renamed it); VALUE a Python literal (a tuple too: ``(8,8,1)``) or
    ``torch.<name>``."""
    import torch

    out = []
    for item in re.split(r",(?=[\w.]+=)", spec):  # (a value may hold commas: a tuple)
        target, value = item.split("=", 1)
        module, name = target.rsplit(".", 1)
        found = sys.modules.get(f"{package}.{module}")
        if found is None or not hasattr(found, name):
            raise SystemExit(f"delta_revision_ab: --switch {item}: no attribute {name} in dla_fast.{module}")
        out.append((found, name, getattr(torch, value[6:]) if value.startswith("torch.") else ast.literal_eval(value)))
    return out


def compare_cell(cell: str, apis: dict, rounds: int, backward: bool) -> list[str]:
    import torch

    cname, wname = cell.split(":")
    x = delta_inputs(*configs_named(cname)[0], WORKLOADS[wname])

    def forward(api):
        with torch.no_grad():
            o, cache = api(*x[:5], tau=TAU, beta=x[5], output_final_cache=True)[:2]
        return [o, cache.states]

    lines = [f"== {cell}"] + compare("forward", {n: lambda a=a: forward(a) for n, a in apis.items()},
                                     twice(forward, apis), rounds)
    if backward:
        leaves = [t.detach().clone().requires_grad_(True) for t in x]
        dO = torch.randn_like(x[2])

        def step(api):
            for t in leaves:
                t.grad = None
            with getattr(api, "applied", contextlib.nullcontext)():  # a switched tree's backward under its switches
                api(*leaves[:5], tau=TAU, beta=leaves[5], output_final_cache=False)[0].backward(dO)
            return [t.grad for t in leaves]

        lines += compare("fwd+bwd", {n: lambda a=a: step(a) for n, a in apis.items()},
                         twice(lambda a: [g.clone() for g in step(a)], apis), rounds)
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cells", help="BxTxD:workload,... (gpu_bench's configs and workloads)")
    ap.add_argument("--against", nargs="*", default=[], metavar="DIR", help="directories holding other dla_fast")
    ap.add_argument("--switch", action="append", default=[], metavar="MODULE.NAME=VALUE[,...]",
                    help="this tree again with these module attributes set (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("delta_revision_ab: needs a CUDA GPU (the Triton delta rule at benchmark sizes)")
    if not args.against and not args.switch:
        raise SystemExit("delta_revision_ab: give --against DIR or --switch SETTINGS")
    apis = imported(args.against, "dla_fast", "forward")
    for spec in args.switch:  # (this tree's modules are 0_dla_fast.* once imported)
        apis[f"this+{spec}"] = switched(apis["this"], switch_settings(spec, "0_dla_fast"))
    warm_gpu()
    others = [*args.against, *(f"this+{spec}" for spec in args.switch)]
    header = (f"the delta rule through dla_fast.forward, this tree against {', '.join(others)} (tau {TAU}, "
              f"{args.rounds} alternating rounds of 20 calls, medians)")
    report_cells("delta_revision_ab", header, args.cells,
                 lambda cell: compare_cell(cell, apis, args.rounds, not args.forward_only), args.out)


if __name__ == "__main__":
    main()
