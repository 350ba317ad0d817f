#!/usr/bin/env python
"""How often the scalar-decay carry scan could take a chunk's entry slot as guessed (CPU, issue #11's <= 4x
``chunk_simple_gla`` target at T >= 16K).

The carry scan walks each row's chunks in order, carrying the open slot P (``dla_carry_kernel``, ~3.3 us a chunk on
an H200: 0.85 ms of a (2, 16384) forward, 3.4 ms at 65536). A chunk's decisions depend on the P it is entered with
only up to its first boundary: from a boundary on, the open slot is the run since that token. So the slot that leaves
chunk j is ``run_j(L)``, L the chunk's last start, whatever entered it, as long as the chunk has a boundary and the
paths from the entered P and from a fresh slot at the chunk's first token share a boundary in it (then they agree from
there). The delta rule's decisions take their chunks this way (``dla_delta_guess_kernel``, docs/performance.md
"Run 33"): every chunk decided in parallel from the guess ``run_{j-1}(last_{j-1}(fresh))``, the serial chain then
recomputing only the chunks whose guess failed.

This counts, on ``gpu_bench``'s three workloads (float64 numpy, the reference's score, tau = 0.6, 64 features), per
row and chunk whether the guess for the next chunk holds: the last start from the true entry equals the last start
from a fresh slot at the chunk's first token (a chunk without a boundary fails: its slot carries P through). The
chain's work is one chunk per failed guess (and the first chunk); and the same with guesses 2 and 4 chunks deep
(``chain_chunks``: through boundary-free chunks; run 40).

    python benchmarks/carry_guesses.py [--T 16384] [--heads 2]        # ~1-2 min
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, TAU, WORKLOADS, workload  # noqa: E402

import dla_ref  # noqa: E402
from dla_ref.reference import information_score  # noqa: E402

C = 64
EPS = NORM_EPS = 1e-6


def boundaries(k, v, a, t0: int, t1: int, P):
    """The starts of tokens ``t0 .. t1 - 1`` of one row (``k [T, Dk]``, ``v [T, Dv]``, decays ``a [T]``) entered with
    open slot P (None: a fresh slot opens at t0), and the slot that leaves: ``(starts, P)``."""
    starts = []
    for t in range(t0, t1):
        s = np.outer(k[t], v[t])
        if P is None:
            opens = True
        else:
            P_next = a[t] * P + s
            opens = information_score(P, P_next, EPS, NORM_EPS) >= TAU
        if opens:
            starts.append(t)
            P = s
        else:
            P = P_next
    return starts, P


def row_flags(k, v, a):
    """Per chunk: ``(has a boundary, guess for the next chunk holds)`` along the true path."""
    T = len(a)
    flags, P = [], None
    for c0 in range(0, T, C):
        c1 = min(c0 + C, T)
        true_starts, P = boundaries(k, v, a, c0, c1, P)
        fresh_starts, _ = boundaries(k, v, a, c0, c1, None)
        flags.append((bool(true_starts), bool(true_starts) and true_starts[-1] == fresh_starts[-1]))
    return flags


def chain_chunks(flags, depth: int) -> int:
    """Chunks the serial chain decides when each chunk is also guessed up to ``depth`` chunks deep: chunk j's entry
    slot taken as the slot leaving the last chunk i < j with a boundary along its fresh path, decayed and grown
    through the boundary-free chunks between (depth j - i). That guess holds when chunk i's guess for the next held
    (``row_flags``) and j - i <= depth; the chain decides the others, and the first chunk."""
    chain, last = 1, None  # last: the last chunk with a boundary so far, and whether its guess holds
    for j in range(1, len(flags) + 1):
        has, holds = flags[j - 1]
        if has:
            last = (j - 1, holds)
        if j == len(flags):
            break
        if last is None or not last[1] or j - last[0] > depth:
            chain += 1
    return chain


def check_against_reference(k, v, a) -> None:
    """The path above is the reference's decisions (256 tokens of one row, dla_ref.forward)."""
    n = 256
    weights = np.ones((1, n, 1, K_SLOTS))
    q = np.zeros((1, n, 1, k.shape[1]))
    _, _, trace = dla_ref.forward(q, k[None, :n, None], v[None, :n, None], np.log(a)[None, :n, None], weights, tau=TAU)
    starts, _ = boundaries(k, v, a, 0, n, None)
    expected = np.flatnonzero(trace.starts[0, :, 0])
    assert list(expected) == starts, "the path's starts differ from dla_ref's"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=2)
    args = ap.parse_args()
    print(f"T = {args.T}, {args.heads} heads, 64 features, K = {K_SLOTS}, tau = {TAU}, chunk {C} (float64)")
    print("| workload | chunks | with a boundary | guess for the next chunk holds | chain chunks (failed guesses + 1) |"
          " longest run of held guesses | chain chunks, guesses 2 / 4 chunks deep |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for wname, kw in WORKLOADS.items():
        _, k, v, g, _ = workload(1, args.T, args.heads, 64, 64, K_SLOTS, **kw, device="cpu", seed=11)
        k, v, a = k.double().numpy(), v.double().numpy(), np.exp(g.double().numpy())
        check_against_reference(k[0, :, 0], v[0, :, 0], a[0, :, 0])
        rows = [row_flags(k[0, :, h], v[0, :, h], a[0, :, h]) for h in range(args.heads)]
        flags = [f for row in rows for f in row]
        n = len(flags)
        deep = [sum(chain_chunks(row, d) for row in rows) for d in (2, 4)]
        held = [f[1] for f in flags]
        longest = run = 0
        for ok in held:
            run = run + 1 if ok else 0
            longest = max(longest, run)
        print(f"| {wname} | {n} | {sum(f[0] for f in flags) / n:.1%} | {sum(held) / n:.1%} |"
              f" {n - sum(held) + args.heads} ({(n - sum(held) + args.heads) / n:.1%}) | {longest} |"
              f" {deep[0]} ({deep[0] / n:.1%}) / {deep[1]} ({deep[1] / n:.1%}) |", flush=True)


if __name__ == "__main__":
    main()
