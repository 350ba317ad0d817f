#!/usr/bin/env python
"""How many chunks the scalar-decay carry scan decides with guesses up to D chunks deep (CPU, float64; issue #11).

Emulates ``chunk_fwd_decide``'s guessed carry scan at ``TritonSettings.carry_guess_depth`` = D: the guess kernel
(every chunk from the slot leaving the chunk before along its fresh path), the deep-guess kernel (a chunk after one
where that found no boundary, from the nearest chunk before with one, at most D back, grown through the chunks
between, if they stay boundary-free) and the walk's rule (``guess_holds``, on the true masks). Prints the chunks
the walk decides against the one-deep count and the best choice of depth (``carry_guesses.chain_chunks``).

    python benchmarks/carry_deep_guesses.py [T] [heads]        # ~1 min at 4096 tokens, 2 heads
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from carry_guesses import C, boundaries, chain_chunks  # noqa: E402
from gpu_bench import K_SLOTS, WORKLOADS, workload  # noqa: E402


def grow(k, v, a, c, P):
    """The slot P leaving chunk c, which it enters, if the chunk has no boundary."""
    for t in range(c * C, min(c * C + C, len(a))):
        P = a[t] * P + np.outer(k[t], v[t])
    return P


def chunk_starts(k, v, a, c, P):
    """Chunk c's starts when entered with P (None: a fresh slot at its first token), and the slot leaving it."""
    return boundaries(k, v, a, c * C, min(c * C + C, len(a)), P)


def deep_depths(k, v, a, depth: int, fresh_slot, first_masks):
    """Each chunk's guess depth as ``dla_carry_deep_guess_kernel`` sets it (1 where it takes none)."""
    NC = len(first_masks)
    depths = [1] * NC
    for c in range(2, NC):
        if first_masks[c - 1]:
            continue
        d = 2
        while not first_masks[c - d] and d < depth and c - d > 1:
            d += 1
        if c - d < 1 or not first_masks[c - d]:
            continue
        S = grow(k, v, a, c - d + 1, fresh_slot[c - d])
        clear = True
        for x in range(c - d + 2, c):
            clear = not chunk_starts(k, v, a, x, S)[0]
            if not clear:
                break
            S = grow(k, v, a, x, S)
        if clear:
            depths[c] = d
    return depths


def row_counts(k, v, a, depth: int):
    """``(chunks the walk decides, one deep, best depth choice, chunks)`` for one row."""
    NC = -(-len(a) // C)
    true, fresh, fresh_slot, P = [], [], [], None
    for c in range(NC):
        starts, P = chunk_starts(k, v, a, c, P)
        true.append(starts)
        f, R = chunk_starts(k, v, a, c, None)
        fresh.append(f)
        fresh_slot.append(R)
    first_masks = [None] + [chunk_starts(k, v, a, c, fresh_slot[c - 1])[0] for c in range(1, NC)]
    depths = deep_depths(k, v, a, depth, fresh_slot, first_masks)
    follows = [bool(true[x]) and true[x][-1] == fresh[x][-1] for x in range(NC)]
    walked = 1 + sum(not (follows[c - d] and not any(true[x] for x in range(c - d + 1, c)))
                     for c, d in enumerate(depths) if c > 0)
    flags = [(bool(true[x]), follows[x]) for x in range(NC)]
    return walked, chain_chunks(flags, 1), chain_chunks(flags, depth), NC


def main():
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    heads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    print(f"T = {T}, {heads} heads, 64 features, K = {K_SLOTS}, chunk {C} (float64)")
    print("| workload | depth | chunks the walk decides | one deep | best depth choice |")
    print("| --- | --- | --- | --- | --- |")
    for wname in ("sparse", "moderate"):
        _, k, v, g, _ = workload(1, T, heads, 64, 64, K_SLOTS, **WORKLOADS[wname], device="cpu", seed=11)
        k, v, a = k.double().numpy(), v.double().numpy(), np.exp(g.double().numpy())
        for depth in (2, 4, 8):
            w, one, best, n = np.sum([row_counts(k[0, :, h], v[0, :, h], a[0, :, h], depth) for h in range(heads)], 0)
            print(f"| {wname} | {depth} | {w} ({w / n:.1%}) | {one} ({one / n:.1%}) | {best} ({best / n:.1%}) |",
                  flush=True)


if __name__ == "__main__":
    main()
