"""``dla-demo``: run the reference on a synthetic piecewise-stationary sequence and show what DLA does.

For each head it prints the boundary rate (and how the boundaries line up with the regime changes of
the synthetic data), the scores around every new slot, a text picture of the slot layout as it evolves
(slots are opened at boundaries and coarsened by merges), and the final cache (counts, information sums,
densities). The heads differ only in their decay, from a short memory to a stiff one, which is what
decides whether a single token can move the open state by ``tau`` (see ``dla_ref/synthetic.py``).

Run ``dla-demo --help`` (or ``python -m dla_ref.demo --help``) for the options.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from .reference import forward
from .synthetic import piecewise_stationary, regime_starts

SLOT_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def head_decays(H: int, low: float = 0.45, high: float = 0.6) -> np.ndarray:
    """The demo's per-head decays: evenly spread from ``low`` (short memory) to ``high`` (stiff)."""
    return np.array([0.5]) if H == 1 else np.linspace(low, high, H)


def slot_starts_over_time(starts: np.ndarray, merged: np.ndarray) -> list[list[int]]:
    """Replay the cache's structure from a trace: the first token of every live slot after each step.

    ``starts`` and ``merged`` are one (batch, head)'s ``[T]`` trace. A merge of the pair (i, i+1)
    removes the start of slot i+1; a new slot appends its token.
    """
    layout: list[int] = []
    history = []
    for t in range(len(starts)):
        if merged[t] >= 0:
            del layout[merged[t] + 1]
        if starts[t]:
            layout.append(t)
        history.append(list(layout))
    return history


def layout_row(slot_starts: Sequence[int], t: int, T: int, width: int) -> str:
    """One line of the layout picture: each character covers ``width`` tokens and shows the index of
    the slot (oldest = 0) that holds the first of them at time ``t``; tokens after ``t`` are blank."""
    chars = []
    for first in range(0, T, width):
        if first > t:
            chars.append(" ")
            continue
        index = int(np.searchsorted(slot_starts, first, side="right")) - 1
        chars.append(SLOT_CHARS[index] if index < len(SLOT_CHARS) else "#")
    return "".join(chars)


def marker_row(marks: np.ndarray, width: int, char: str) -> str:
    """``char`` where any of the ``width`` tokens under a character is marked, else ``.``."""
    T = len(marks)
    return "".join(char if marks[i : i + width].any() else "." for i in range(0, T, width))


def format_scores_around(scores: np.ndarray, t: int, regime_start: bool, before: int = 2, after: int = 1) -> str:
    """``t= 123 R  0.21  0.18 [0.81]  0.25``: the score of the new slot's token in brackets."""
    cells = []
    for s in range(t - before, t + after + 1):
        if s < 0 or s >= len(scores):
            cells.append("    .")
        elif s == t:
            cells.append(f"[{scores[s]:.2f}]")
        else:
            cells.append(f" {scores[s]:.2f}")
    return f"t={t:4d} {'R' if regime_start else ' '} " + " ".join(cells)


def describe_head(
    h: int,
    decay: float,
    scores: np.ndarray,
    starts: np.ndarray,
    merged: np.ndarray,
    changes: np.ndarray,
    counts: np.ndarray,
    info: np.ndarray,
    size: int,
    *,
    rows: int = 8,
    max_columns: int = 96,
    per_line: int = 3,
) -> list[str]:
    """The report for one (batch, head): every argument is that pair's slice of the trace / cache."""
    T = len(scores)
    n_starts, n_changes = int(starts.sum()), int(changes.sum())
    lines = [
        f"head {h}  (decay a = {decay:.3f})",
        f"  boundary rate: {n_starts} of {T} tokens open a slot ({100.0 * n_starts / max(T, 1):.1f}%), "
        f"{int((merged >= 0).sum())} of them merging first",
        f"  regime changes: {n_changes}, of which {int((starts & changes).sum())} open a slot; "
        f"{int((starts & ~changes).sum())} slots open inside a regime",
        "  scores around each new slot (t-2, t-1, [t], t+1; R: t begins a regime):",
    ]
    entries = [format_scores_around(scores, int(t), bool(changes[t])) for t in np.flatnonzero(starts)]
    for i in range(0, len(entries), per_line):
        lines.append("    " + "   ".join(entries[i : i + per_line]))
    missed = np.flatnonzero(changes & ~starts)
    if len(missed):
        shown = ", ".join(f"t={t} ({scores[t]:.2f})" for t in missed[:12])
        lines.append(f"  regime changes that did not open a slot (score): {shown}{' ...' if len(missed) > 12 else ''}")

    width = max(1, math.ceil(T / max_columns))
    history = slot_starts_over_time(starts, merged)
    lines.append(f"  slot layout over time (one character = {width} token{'s' if width > 1 else ''}; "
                 "digit = slot index, oldest 0):")
    lines.append(f"    regimes  {marker_row(changes, width, '|')}")
    lines.append(f"    new slot {marker_row(starts, width, '^')}")
    times = sorted({min(T - 1, round((r + 1) * T / rows) - 1) for r in range(rows)})
    for t in times:
        lines.append(f"    t={t:5d}  {layout_row(history[t], t, T, width)}".rstrip())

    lines.append("  final cache (oldest first):")
    lines.append("    slot  tokens        n      Ibar  density")
    final_starts = history[-1] if T else []
    for i in range(size):
        first = final_starts[i] if i < len(final_starts) else None
        last = (final_starts[i + 1] - 1) if i + 1 < len(final_starts) else T - 1
        span = f"{first:4d}-{last:<4d}" if first is not None else "   (earlier)"
        lines.append(f"    {i:4d}  {span}  {int(counts[i]):5d}  {info[i]:8.3f}  {info[i] / counts[i]:7.4f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dla-demo",
        description="Run the DLA reference (dla_ref, float64) on a synthetic piecewise-stationary sequence "
        "and print, per head, the boundary rate, the scores around each new slot, the slot layout over "
        "time and the final cache.",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data (default 0)")
    parser.add_argument("--T", type=int, default=512, help="sequence length (default 512)")
    parser.add_argument("--heads", type=int, default=4, help="heads; their decays spread from 0.45 to 0.6 (default 4)")
    parser.add_argument("--tau", type=float, default=0.6, help="boundary threshold (default 0.6, the paper's)")
    parser.add_argument("--capacity", type=int, default=8, help="cache capacity K, >= 2 (default 8)")
    parser.add_argument("--dim", type=int, default=16, help="Dk = Dv (default 16)")
    parser.add_argument("--regime-length", type=float, default=32.0, help="mean regime length in tokens (default 32)")
    parser.add_argument("--jitter", type=float, default=0.4, help="per-token noise around a regime (default 0.4)")
    args = parser.parse_args(argv)
    if args.T < 1 or args.heads < 1 or args.dim < 1:
        parser.error("--T, --heads and --dim must be at least 1")
    if args.capacity < 2:
        parser.error("--capacity must be at least 2")
    if args.regime_length < 8:
        parser.error("--regime-length must be at least 8 (the shortest regime)")

    decays = head_decays(args.heads)
    q, k, v, g, slot_weights, regimes = piecewise_stationary(
        1, args.T, args.heads, args.dim, args.dim, args.capacity,
        regime_length=args.regime_length, jitter=args.jitter, decay=decays, seed=args.seed, return_regimes=True,
    )  # fmt: skip
    began = time.perf_counter()
    o, cache, trace = forward(q, k, v, g, slot_weights, tau=args.tau)
    elapsed = time.perf_counter() - began
    changes = regime_starts(regimes)

    print(
        f"DLA reference (float64 NumPy, scalar decay) on a synthetic piecewise-stationary sequence, seed {args.seed}:\n"
        f"T = {args.T}, H = {args.heads}, Dk = Dv = {args.dim}, K = {args.capacity}, tau = {args.tau}, "
        f"mean regime length {args.regime_length:g}, jitter {args.jitter:g}; forward took {elapsed:.2f} s"
    )
    try:
        for h in range(args.heads):
            print()
            lines = describe_head(
                h, float(decays[h]),
                trace.scores[0, :, h], trace.starts[0, :, h], trace.merged[0, :, h], changes[0, :, h],
                cache.counts[0, h], cache.info[0, h], int(cache.size[0, h]),
            )  # fmt: skip
            print("\n".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `dla-demo | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
