#!/usr/bin/env python
"""The delta rule's chunked decisions with their chain kernel on a stream of its own (the default on CUDA since run
30) against all of them on one stream, in one process: the forward and a training step through the public API
(``gpu_bench.py``'s delta cell: bf16, K = 30, unit keys), wall time (median of alternating runs), peak memory, and
the outputs compared bit for bit, the gradients by their largest difference beside that of two runs on one stream
(the backward's ``scatter_add_`` of the read weights' gradient runs on atomics: not bitwise repeatable).

    python benchmarks/delta_decisions_stream_ab.py [--cells 2x16384x64:moderate,1x65536x64:moderate] [--reps 7]
        [--out DIR]

Writes ``delta_decisions_stream_ab_<card>_<date>.json`` to DIR; the table is printed last.
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
from gpu_bench import WORKLOADS, _dla_gdn, _leaves, _peak_gib_and_ms, _wall_ms, configs_named, delta_inputs  # noqa: E402

from dla_fast.ops.delta_rule import chunk_fwd  # noqa: E402

original = chunk_fwd.decide_delta_rule_wy


def use(concurrent: bool) -> None:
    chunk_fwd.decide_delta_rule_wy = functools.partial(original, concurrent=concurrent)


def cell(cfg, wname: str, reps: int) -> dict:
    x = delta_inputs(*cfg, WORKLOADS[wname])
    dO = torch.randn_like(x[2])
    leaves = _leaves(*x)

    def forward():
        with torch.no_grad():
            return _dla_gdn(*x)[0]

    def train():
        for t in leaves:
            t.grad = None
        _dla_gdn(*leaves)[0].backward(dO)
        return [t.grad for t in leaves]

    row, outs = {}, {}
    for name, concurrent in (("one stream", False), ("chain stream", True)):
        use(concurrent)
        outs[name] = (forward(), *[g.clone() for g in train()])  # also the warm-up
        row[f"{name} fwd peak GiB"], _ = _peak_gib_and_ms(forward)
        row[f"{name} step peak GiB"], _ = _peak_gib_and_ms(train)
    times = {n: {"fwd": [], "step": []} for n in outs}
    for _ in range(reps):  # alternating, so that drift hits both alike
        for name, concurrent in (("one stream", False), ("chain stream", True)):
            use(concurrent)
            times[name]["fwd"].append(_wall_ms(forward))
            times[name]["step"].append(_wall_ms(train))
    use(True)
    for name in outs:
        row[f"{name} fwd ms"] = statistics.median(times[name]["fwd"])
        row[f"{name} step ms"] = statistics.median(times[name]["step"])
    use(False)
    again = [g.clone() for g in train()]
    use(True)
    row["outputs bitwise equal"] = torch.equal(outs["one stream"][0], outs["chain stream"][0])
    rel = lambda a, b: float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))  # noqa: E731
    row["grads max rel diff"] = max(rel(a, b) for a, b in zip(outs["chain stream"][1:], outs["one stream"][1:]))
    row["grads max rel diff, one stream twice"] = max(rel(a, b) for a, b in zip(again, outs["one stream"][1:]))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="2x16384x64:moderate,1x65536x64:moderate")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_decisions_stream_ab.py: needs a CUDA GPU")
    rows = []
    for spec in args.cells.split(","):
        name, wname = spec.split(":")
        row = dict(cell=spec, **cell(configs_named(name)[0], wname, args.reps))
        rows.append(row)
        print(row, flush=True)
    card = torch.cuda.get_device_name()
    name = f"delta_decisions_stream_ab_{card.replace(' ', '_')}_{datetime.date.today()}.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(dict(card=card, rows=rows), f, indent=1)
    print(f"{card}, {datetime.date.today()}: ms (median of {args.reps} alternating) and peak GiB")
    print("| cell | forward, one stream | chain stream | step, one stream | chain stream | fwd peak | step peak "
          "| o bitwise | grads: rel diff (one stream twice) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['cell']} | {r['one stream fwd ms']:.2f} | {r['chain stream fwd ms']:.2f} | "
              f"{r['one stream step ms']:.2f} | {r['chain stream step ms']:.2f} | "
              f"{r['one stream fwd peak GiB']:.2f} / {r['chain stream fwd peak GiB']:.2f} | "
              f"{r['one stream step peak GiB']:.2f} / {r['chain stream step peak GiB']:.2f} | "
              f"{r['outputs bitwise equal']} | "
              f"{r['grads max rel diff']:.1e} ({r['grads max rel diff, one stream twice']:.1e}) |")


if __name__ == "__main__":
    main()
