#!/usr/bin/env python
"""One delta-rule training step (forward and backward through ``dla_fast.forward``, ``gpu_bench``'s delta cells: bf16,
K = 30, unit keys) with the ``dla_fast`` of a given source tree, for A/Bs between revisions in separate processes: its
time (the lower of two ``do_bench`` medians), its peak memory above what was allocated before it, and its gradients
(``dO`` from a seeded generator) saved for ``--compare``. A tree of another revision: ``git archive REV dla_fast
dla_ref | tar -x -C DIR``. Run 46 timed its backward changes this way (processes in the order base, new, base, new).

    python benchmarks/delta_step_tree.py TREE TAG [--cells 2x16384x64:moderate,...] [--grads-only] [--out DIR]
    python benchmarks/delta_step_tree.py --compare NEW.pt BASE.pt

Writes ``delta_step_grads_TAG.pt`` to DIR (``--compare`` prints, per cell, each gradient's largest difference over
the base's largest entry, or "equal").
"""

from __future__ import annotations

import argparse
import os
import sys


def compare(new_path: str, base_path: str) -> None:
    import torch

    new, base = torch.load(new_path), torch.load(base_path)
    for cell, grads in new.items():
        diffs = ["equal" if torch.equal(a, b) else f"{((a - b).abs().max() / b.abs().max()).item():.1e}"
                 for a, b in zip((g.float() for g in grads), (g.float() for g in base[cell]))]
        print(f"{cell}: gradients of q, k, v, g, slot_weights, beta, new against base: {diffs}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tree", nargs="?")
    ap.add_argument("tag", nargs="?")
    ap.add_argument("--cells", default="2x16384x64:moderate,8x4096x64:moderate")
    ap.add_argument("--grads-only", action="store_true")
    ap.add_argument("--compare", nargs=2, metavar=("NEW", "BASE"))
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    tree = os.path.abspath(args.tree)
    sys.path.insert(0, tree)
    import dla_fast  # the tree's, imported before gpu_bench puts this checkout first on the path

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    from gpu_bench import TAU, WORKLOADS, bench_ms, configs_named, delta_inputs, peak_gib_and_ms

    if not dla_fast.__file__.startswith(tree):
        raise SystemExit(f"delta_step_tree.py: dla_fast came from {dla_fast.__file__}, not {tree}")
    saved = {}
    for spec in args.cells.split(","):
        name, workload = spec.split(":")
        x = [t.detach().requires_grad_() for t in delta_inputs(*configs_named(name)[0], WORKLOADS[workload])]

        def forward():
            o = dla_fast.forward(*x[:5], tau=TAU, beta=x[5], output_final_cache=False)
            return o[0] if isinstance(o, tuple) else o

        with torch.no_grad():
            o = forward()
        gen = torch.Generator(device=o.device).manual_seed(5)
        dO = torch.randn(o.shape, generator=gen, device=o.device).to(o.dtype)

        def step():
            for t in x:
                t.grad = None
            forward().backward(dO)

        step()
        saved[spec] = [t.grad.clone() for t in x]
        if args.grads_only:
            continue
        peak, _ = peak_gib_and_ms(step)
        ms = [bench_ms(step, rep=400) for _ in range(2)]
        print(f"{torch.cuda.get_device_name()}, {args.tag} {spec}: fwd+bwd {min(ms):.2f} ms {[round(m, 2) for m in ms]}"
              f" peak {peak:.2f} GiB", flush=True)
    torch.save(saved, os.path.join(args.out, f"delta_step_grads_{args.tag}.pt"))


if __name__ == "__main__":
    main()
