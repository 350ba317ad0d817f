#!/usr/bin/env python
"""The delta rule's ways of deciding, in one process: the forward and a training step through the public API
(``gpu_bench.py``'s delta cell: bf16, K = 30, unit keys) with each variant, wall time (median of alternating runs),
peak memory, the outputs compared bit for bit with the first variant's and the gradients by their largest
difference, beside that of the first variant run twice (the backward's ``scatter_add_`` of the read weights'
gradient runs on atomics: not bitwise repeatable). Variants:

- ``chain_stream``: the chunked decisions with their chain kernel on a stream of its own (the default on CUDA since
  run 30, where ``auto_decisions`` picks the chunks);
- ``one_stream``: the chunked decisions all on one stream (``decide_delta_rule_wy(concurrent=False)``);
- ``unguessed``: the chunked decisions on their stream without guesses (``guess=False``: every chunk decided on the
  chain, as before run 33); ``guess_all_registers``: the guess kernel without its register cap; ``four_warps``,
  ``four_warps_capped``: the chain and guess kernels on four warps (they must match), the guess's registers uncapped
  or capped;
- ``tokens`` / ``chunks``: the token walk / the chunked decisions (on their stream) whatever ``auto_decisions`` says;
- ``plain_f64``: the scores' float64 divisions and square roots with ptxas's slow-path branches
  (``fast_f64=False``; the default takes them branch-free since run 54).

    python benchmarks/delta_decisions_ab.py [--cells 2x16384x64:moderate,1x65536x64:moderate]
        [--variants one_stream,chain_stream] [--reps 7] [--out DIR]

Writes ``delta_decisions_ab_<card>_<date>.json`` to DIR; the table is printed last.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import (  # noqa: E402
    WORKLOADS,
    configs_named,
    delta_inputs,
    dla_gdn,
    grad_leaves,
    peak_gib_and_ms,
    round_order,
    wall_ms,
)

from dla_fast.ops.delta_rule import chunk_fwd  # noqa: E402

ORIGINAL = (chunk_fwd.decide_delta_rule_wy, chunk_fwd.auto_decisions)
VARIANTS = {  # name: (decisions forced, or None for auto_decisions; decide_delta_rule_wy's arguments)
    "chain_stream": (None, {}), "one_stream": (None, dict(concurrent=False)), "unguessed": (None, dict(guess=False)),
    "guess_all_registers": (None, dict(guess_maxnreg=None)),
    "four_warps": (None, dict(chain_warps=4, guess_maxnreg=None)), "four_warps_capped": (None, dict(chain_warps=4)),
    "tokens": ("tokens", {}), "chunks": ("chunks", {}), "plain_f64": (None, dict(fast_f64=False)),
}


def use(name: str) -> None:
    forced, kwargs = VARIANTS[name]
    chunk_fwd.decide_delta_rule_wy = functools.partial(ORIGINAL[0], **kwargs)
    chunk_fwd.auto_decisions = ORIGINAL[1] if forced is None else (lambda *a: forced)


def cell(cfg, wname: str, names: list, reps: int) -> dict:
    x = delta_inputs(*cfg, WORKLOADS[wname])
    dO = torch.randn_like(x[2])
    leaves = grad_leaves(*x)

    def forward():
        with torch.no_grad():
            return dla_gdn(*x)[0]

    def train():
        for t in leaves:
            t.grad = None
        dla_gdn(*leaves)[0].backward(dO)
        return [t.grad.clone() for t in leaves]

    row, outs = {}, {}
    for name in names:
        use(name)
        outs[name] = (forward(), *train())  # also the warm-up
        row[f"{name} fwd peak GiB"], _ = peak_gib_and_ms(forward)
        row[f"{name} step peak GiB"], _ = peak_gib_and_ms(train)
    times = {n: {"fwd": [], "step": []} for n in names}
    for i in range(reps):  # alternating, so that drift hits all alike
        for name in round_order(names, i):
            use(name)
            times[name]["fwd"].append(wall_ms(forward))
            times[name]["step"].append(wall_ms(train))
    first = names[0]
    use(first)
    again = train()
    use("chain_stream")
    rel = lambda a, b: float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))  # noqa: E731
    row[f"{first} grads rel diff run twice"] = max(rel(a, b) for a, b in zip(again, outs[first][1:]))
    for name in names:
        row[f"{name} fwd ms"] = statistics.median(times[name]["fwd"])
        row[f"{name} step ms"] = statistics.median(times[name]["step"])
        row[f"{name} o bitwise"] = torch.equal(outs[name][0], outs[first][0])
        row[f"{name} grads rel diff"] = max(rel(a, b) for a, b in zip(outs[name][1:], outs[first][1:]))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="2x16384x64:moderate,1x65536x64:moderate")
    ap.add_argument("--variants", default="one_stream,chain_stream")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_decisions_ab.py: needs a CUDA GPU")
    names = args.variants.split(",")
    rows = []
    for spec in args.cells.split(","):
        name, wname = spec.split(":")
        row = dict(cell=spec, **cell(configs_named(name)[0], wname, names, args.reps))
        rows.append(row)
        print(row, flush=True)
    card = torch.cuda.get_device_name()
    path = os.path.join(args.out, f"delta_decisions_ab_{card.replace(' ', '_')}_{datetime.date.today()}.json")
    with open(path, "w") as f:
        json.dump(dict(card=card, variants=names, rows=rows), f, indent=1)
    print(f"{card}, {datetime.date.today()}: ms (median of {args.reps} alternating), peak GiB; o and gradients against "
          f"{names[0]}'s (its own gradients run twice in brackets)")
    print("| cell | variant | forward ms | step ms | peak GiB fwd / step | o bitwise | grads rel diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        for n in names:
            spread = f" ({r[f'{names[0]} grads rel diff run twice']:.1e})" if n == names[0] else ""
            print(f"| {r['cell']} | {n} | {r[f'{n} fwd ms']:.2f} | {r[f'{n} step ms']:.2f} | "
                  f"{r[f'{n} fwd peak GiB']:.2f} / {r[f'{n} step peak GiB']:.2f} | {r[f'{n} o bitwise']} | "
                  f"{r[f'{n} grads rel diff']:.1e}{spread} |")


if __name__ == "__main__":
    main()
