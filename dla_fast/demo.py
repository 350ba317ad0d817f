"""The main job: the reference walkthrough (``dla_ref.demo``), then ``dla_fast`` against ``dla_ref``.

``dla-demo`` / ``python -m dla_fast.demo``. The comparison runs a larger synthetic sequence through the
float64 reference and through ``dla_fast`` (float32 on the CPU; bfloat16 and float32 on a GPU when one is
present) and prints the largest output error, how many decisions agree and the speed-up. ``--plot PATH`` also
saves a picture of one head's segmentation in the walkthrough (``dla_fast.plotting.plot_segmentation``; needs
matplotlib).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

import dla_ref
from dla_ref import demo as reference_demo
from dla_ref.synthetic import piecewise_stationary, regime_starts

from .api import forward


def _say(message: str) -> None:
    print(message, flush=True)


def _timed(fn, repeats: int = 1):
    """Run ``fn`` ``repeats`` times (after one warm-up when repeating); return its result and the best time."""
    result, best = None, float("inf")
    for _ in range(repeats + (repeats > 1)):
        began = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return result, best


def compare(T: int, heads: int, dim: int, capacity: int, tau: float, seed: int) -> None:
    """Print dla_fast against dla_ref on one synthetic sequence (moderate boundary rate)."""
    q, k, v, g, w = piecewise_stationary(1, T, heads, dim, dim, capacity, regime_length=16, jitter=0.5, seed=seed)
    _say(
        f"\nComparison: dla_fast against dla_ref on B = 1, T = {T}, H = {heads}, Dk = Dv = {dim}, K = {capacity}, "
        f"tau = {tau} (synthetic, seed {seed})"
    )
    ref_o = np.empty((1, T, heads, dim))
    ref_starts = np.empty((1, T, heads), dtype=bool)
    began = time.perf_counter()
    for h in range(heads):  # one head at a time, to show progress: the reference takes a few seconds
        o_h, _, trace_h = dla_ref.forward(*(x[:, :, h : h + 1] for x in (q, k, v, g, w)), tau=tau)
        ref_o[:, :, h : h + 1], ref_starts[:, :, h : h + 1] = o_h, trace_h.starts
        _say(f"  dla_ref (float64 NumPy): head {h + 1}/{heads} done, {time.perf_counter() - began:.1f} s")
    ref_time = time.perf_counter() - began
    _say(f"  dla_ref: {ref_time:.2f} s, boundary rate {ref_starts.mean():.1%}")

    runs = [("cpu", torch.float32)]
    if torch.cuda.is_available():
        runs += [("cuda", torch.float32), ("cuda", torch.bfloat16)]
    else:
        _say("  (no CUDA device: the GPU rows are skipped)")
    _say(f"  {'device':<8}{'dtype':<10}{'time':>10}{'speed-up':>10}{'decisions agreed':>20}"
         f"{'max |o - ref| / max |ref|':>28}")
    for device, dtype in runs:
        args = [torch.as_tensor(x, dtype=dtype, device=device) for x in (q, k, v, g, w)]
        (o, _, trace), seconds = _timed(lambda args=args: forward(*args, tau=tau, return_trace=True), repeats=3)
        starts = trace.starts.cpu().numpy()
        agreed = (starts == ref_starts).mean()
        # Outputs are compared on the heads whose decisions all agree (elsewhere the partitions differ).
        same = (starts == ref_starts).all(axis=(0, 1))
        diff = np.abs(o.double().cpu().numpy() - ref_o)[:, :, same]
        err = diff.max() / np.abs(ref_o[:, :, same]).max() if same.any() else float("nan")
        _say(f"  {device:<8}{str(dtype).split('.')[-1]:<10}{seconds * 1e3:>8.1f}ms{ref_time / seconds:>9.0f}x"
             f"{agreed:>20.4%}{err:>28.2e}")
    _say("  (decisions may differ only where the reference's margin |I_t - tau| is tiny: docs/precision.md)")


def walkthrough_options(rest: Sequence[str]) -> argparse.Namespace:
    """The reference walkthrough's options that decide its data and run: the names and defaults of
    ``dla_ref.demo.main``'s parser (which has already checked them)."""
    parser = argparse.ArgumentParser(add_help=False)
    for name, kind, default in (("--seed", int, 0), ("--T", int, 512), ("--heads", int, 4), ("--tau", float, 0.6),
                                ("--capacity", int, 8), ("--dim", int, 16), ("--regime-length", float, 32.0),
                                ("--jitter", float, 0.4)):
        parser.add_argument(name, type=kind, default=default)
    return parser.parse_known_args(list(rest))[0]


def plot_walkthrough(path: str, head: int, opts: argparse.Namespace) -> None:
    """Save the segmentation picture of ``head`` of the walkthrough's run (the same data, the reference)."""
    from .plotting import plot_segmentation

    decays = reference_demo.head_decays(opts.heads)
    *inputs, regimes = piecewise_stationary(
        1, opts.T, opts.heads, opts.dim, opts.dim, opts.capacity,
        regime_length=opts.regime_length, jitter=opts.jitter, decay=decays, seed=opts.seed, return_regimes=True,
    )  # fmt: skip
    _, _, trace = dla_ref.forward(*(x[:, :, head : head + 1] for x in inputs), tau=opts.tau)  # heads are independent
    title = (f"dla-demo walkthrough, head {head} (decay a = {decays[head]:.3f}): T = {opts.T}, K = {opts.capacity}, "
             f"tau = {opts.tau:g}, seed {opts.seed}; {int(trace.starts.sum())} slots opened, "
             f"{int((trace.merged >= 0).sum())} merges")
    plot_segmentation(trace, head=0, tau=opts.tau, path=path, capacity=opts.capacity,
                      regime_starts=regime_starts(regimes)[0, :, head], title=title)
    _say(f"\nSaved the segmentation of head {head} to {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--compare-T", type=int, default=2048, help="sequence length of the comparison (default 2048)")
    parser.add_argument("--no-compare", action="store_true", help="only the reference walkthrough")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="save a picture of one head's segmentation in the walkthrough (e.g. seg.png; matplotlib)")
    parser.add_argument("--plot-head", type=int, default=0, help="the head --plot draws (default 0)")
    own, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        parser.print_help()
        print("\nThe reference walkthrough's options:")
    status = reference_demo.main(rest)
    if status:
        return status
    if own.plot is not None:
        opts = walkthrough_options(rest)
        if not 0 <= own.plot_head < opts.heads:
            parser.error(f"--plot-head must be in [0, {opts.heads}) (the walkthrough's heads)")
        plot_walkthrough(own.plot, own.plot_head, opts)
    if own.no_compare:
        return status
    torch.manual_seed(0)
    compare(own.compare_T, heads=4, dim=64, capacity=30, tau=0.6, seed=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
