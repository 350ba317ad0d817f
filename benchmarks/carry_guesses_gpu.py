#!/usr/bin/env python
"""The carry scan's guessed chunks on a GPU (issue #11, runs 39-40): ``TritonSettings(carry_guesses=True)`` against
the plain carry scan, bit for bit and in time, through the kernel entry.

Per cell (``BxTxD:workload`` of ``gpu_bench``'s configs and workloads): every output compared bit for bit (``o``, the
final cache's four tensors, the trace's scores, starts and merges), and where the scores differ, which chunks hold
them and whether the chunk before has a start (run 40: every differing chunk followed one without); then both
variants timed in alternating rounds in this one process (median of the rounds), and their stage profiles.

    python benchmarks/carry_guesses_gpu.py 2x16384x64:moderate,1x65536x64:moderate,2x16384x64:sparse \
        [--rounds 3] [--out DIR]

Writes ``carry_guesses_gpu_<card>_<date>.txt`` (the lines printed) under ``--out``.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, TAU, WORKLOADS, bench_ms, cells_main, configs_named, workload  # noqa: E402

from dla_fast.settings import DEFAULT_SETTINGS  # noqa: E402

OUTPUTS = ("o", "states", "counts", "info", "size", "scores", "starts", "merged")
VARIANTS = {"plain": dataclasses.replace(DEFAULT_SETTINGS, carry_guesses=False),
            "guessed": dataclasses.replace(DEFAULT_SETTINGS, carry_guesses=True)}


def flat_outputs(result) -> list[torch.Tensor]:
    """``(o, cache, trace)`` of the kernel entry as one list, in the order of ``OUTPUTS``."""
    o, cache, trace = result[:3]
    return [o, *cache, *trace]


def differing_chunks(scores, other, starts, chunk: int = 64) -> list[dict]:
    """Where two ``[B, T, H]`` score tensors differ: one entry per (row = b * H + h, chunk) with the differing
    positions in the chunk, the largest difference, and the starts (``starts``, bool ``[B, T, H]``) in the chunk and
    the chunk before."""
    B, T, H = scores.shape
    rows = lambda x: x.permute(0, 2, 1).reshape(B * H, T)  # noqa: E731
    a, b, st = rows(scores), rows(other), rows(starts)
    found = {}
    for r, t in (a != b).nonzero().tolist():
        found.setdefault((r, t // chunk), []).append(t % chunk)
    out = []
    for (r, c), where in sorted(found.items()):
        span = slice(c * chunk, min((c + 1) * chunk, T))
        before = slice(max(c - 1, 0) * chunk, c * chunk)
        out.append(dict(row=r, chunk=c, positions=where, max_abs=float((a[r, span] - b[r, span]).abs().max()),
                        starts=st[r, span].nonzero().flatten().tolist(),
                        starts_before=int(st[r, before].sum()) if c > 0 else None))
    return out


def check_cell(cell: str, rounds: int) -> list[str]:
    """One cell's report lines: the bits, then the times and stages."""
    from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton as fwd

    cname, wname = cell.split(":")
    B, T, H, Dk, Dv = configs_named(cname)[0]
    q, k, v, g, w = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS[wname], seed=11)
    with torch.no_grad():
        out = {n: flat_outputs(fwd(q, k, v, g, w, tau=TAU, settings=s)) for n, s in VARIANTS.items()}
        ndiff = {name: int((a != b).sum()) for name, a, b in zip(OUTPUTS, out["plain"], out["guessed"])}
        lines = [f"== {cell}: differing elements {ndiff}" if any(ndiff.values()) else f"== {cell}: bitwise equal"]
        chunks = differing_chunks(out["plain"][5], out["guessed"][5], out["plain"][6])
        if chunks:
            after_none = sum(ch["starts_before"] == 0 for ch in chunks)
            lines.append(f"  scores differ in {len(chunks)} (row, chunk)s, {after_none} of them after a chunk without"
                         f" a start; largest |difference| {max(ch['max_abs'] for ch in chunks):.3e}")
            lines += [f"  {ch}" for ch in chunks[:6]]
        stages, ms = {}, {n: [] for n in VARIANTS}
        for n, s in VARIANTS.items():
            p = {}
            fwd(q, k, v, g, w, tau=TAU, settings=s, profile=p)  # the first profiled call may hold a compile
            p = {}
            fwd(q, k, v, g, w, tau=TAU, settings=s, profile=p)
            stages[n] = {key: round(val, 3) for key, val in p.items() if key.endswith("_ms")}
        for _ in range(rounds):
            for n, s in VARIANTS.items():
                ms[n].append(bench_ms(lambda s=s: fwd(q, k, v, g, w, tau=TAU, settings=s), rep=40))
    med = {n: statistics.median(x) for n, x in ms.items()}
    lines.append(f"  plain {med['plain']:.3f} ms, guessed {med['guessed']:.3f} ms "
                 f"({100 * (med['guessed'] / med['plain'] - 1):+.1f} %); rounds "
                 f"{ {n: [round(x, 3) for x in m] for n, m in ms.items()} }")
    lines += [f"  stages {n}: {st}" for n, st in stages.items()]
    return lines


def main():
    cells_main("carry_guesses_gpu", lambda rounds: f"carry_guesses against the plain carry scan (kernel entry, tau "
               f"{TAU}, K {K_SLOTS}, {rounds} alternating rounds of 40 calls, medians)", check_cell)


if __name__ == "__main__":
    main()
