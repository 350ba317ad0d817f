"""The reference's own decision and merge margins: how close a case comes to a tie.

A fast path's test can use them to pick cases whose decisions cannot flip at its precision (or, with
:func:`dla_fast.testing.check_equivalent`, let the harness judge the flips instead).
"""

from __future__ import annotations

import numpy as np

import dla_ref


def reference_margins(trace, tau: float, initial_cache: dla_ref.Cache | None = None, boundaries=None):
    """The reference's own margins: ``(decision, density)``.

    ``decision``: the smallest ``|I_t - tau|`` over tokens whose decision the score took (not forced by
    an empty cache or by ``boundaries``); ``inf`` if none. ``density``: the smallest relative gap, over
    all merges, between the lowest pair density and the next lowest; ``inf`` if no merge.
    """
    scores, starts = np.asarray(trace.scores), np.asarray(trace.starts)
    B, T, H = scores.shape
    decision, density = np.inf, np.inf
    for b in range(B):
        for h in range(H):
            slots = []
            if initial_cache is not None:
                m = int(initial_cache.size[b, h])
                slots = [[int(initial_cache.counts[b, h, i]), float(initial_cache.info[b, h, i])] for i in range(m)]
            K = None if initial_cache is None else initial_cache.counts.shape[-1]
            for t in range(T):
                I = float(scores[b, t, h])
                if slots and boundaries is None:
                    decision = min(decision, abs(I - tau))
                if starts[b, t, h]:
                    if K is not None and len(slots) == K or (np.asarray(trace.merged)[b, t, h] >= 0):
                        d = sorted((slots[i][1] + slots[i + 1][1]) / (slots[i][0] + slots[i + 1][0])
                                   for i in range(len(slots) - 1))
                        if len(d) > 1:
                            density = min(density, (d[1] - d[0]) / max(abs(d[1]), 1e-300))
                        i = int(np.asarray(trace.merged)[b, t, h])
                        slots[i : i + 2] = [[slots[i][0] + slots[i + 1][0], slots[i][1] + slots[i + 1][1]]]
                    slots.append([1, I])
                else:
                    slots[-1][0] += 1
                    slots[-1][1] += I
    return decision, density


__all__ = ["reference_margins"]
