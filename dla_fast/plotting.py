"""A picture of DLA's segmentation for one (batch, head) of a trace: ``plot_segmentation``.

Three panels on one time axis: the state information scores against ``tau`` (tokens that open a slot, merges);
the slot layout over time (for every time ``t``, which slot holds each earlier token ``s``: slots appear on the
diagonal when they open and end where they are merged into their older neighbour); the number of live slots
against the capacity. Needs matplotlib (``pip install matplotlib``), used through its Agg canvas (no display,
no pyplot state). ``dla-demo --plot PATH`` draws it for the reference walkthrough.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

import dla_ref

from .cache import Trace

SLOT_COLORS = 20  # the layout's colours (tab20), given to the slots in the order they open


@dataclass
class Segmentation:
    """One (batch, head) of a trace, replayed: per-token arrays ``[T]`` and the slots' lifetimes."""

    scores: np.ndarray
    starts: np.ndarray
    merged: np.ndarray
    slot_of: np.ndarray  # [len(times), len(tokens)]: at time t, the colour id of the slot holding token s; NaN: s > t
    times: np.ndarray  # the times (rows of slot_of): all T, or an even sample of ``resolution`` of them
    tokens: np.ndarray  # the tokens (columns of slot_of), likewise
    size: np.ndarray  # [T] live slots after each token
    lifetimes: list  # (first token, opened at, merged away at or None) of every slot opened in the trace


def _field(trace, name: str) -> np.ndarray:
    x = getattr(trace, name)
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"trace.{name}: expected shape [B, T, H], got {x.shape}")
    return x


def _sample(T: int, resolution: int) -> np.ndarray:
    return np.arange(T) if resolution >= T else np.unique(np.linspace(0, T - 1, resolution).round().astype(np.int64))


def replay(scores: np.ndarray, starts: np.ndarray, merged: np.ndarray, initial_size: int = 0,
           resolution: int = 1024) -> Segmentation:
    """Replay one (batch, head)'s ``[T]`` trace from a cache of ``initial_size`` slots (opened before it). The
    layout picture keeps at most ``resolution`` times and tokens (an even sample), so that long traces stay small."""
    T = len(scores)
    layout = [(-1, i % SLOT_COLORS) for i in range(initial_size)]  # (first token, colour) of live slots, oldest first
    lifetimes: dict[int, list] = {}
    times, tokens = _sample(T, resolution), _sample(T, resolution)
    slot_of = np.full((len(times), len(tokens)), np.nan)
    size = np.zeros(T, dtype=np.int64)
    opened, row = initial_size, 0
    for t in range(T):
        m = int(merged[t])
        if m >= 0:
            if m + 1 >= len(layout):
                raise ValueError(f"trace: token {t} merges the pair ({m}, {m + 1}) but only {len(layout)} slots are "
                                 "live; does the trace continue an initial cache? pass initial_size=")
            first, _ = layout.pop(m + 1)
            if first >= 0:
                lifetimes[first][2] = t
        if starts[t]:
            layout.append((t, opened % SLOT_COLORS))
            lifetimes[t] = [t, t, None]
            opened += 1
        size[t] = len(layout)
        if row < len(times) and times[row] == t:
            if layout:
                firsts = np.array([f for f, _ in layout])
                colours = np.array([c for _, c in layout], dtype=float)
                index = np.searchsorted(firsts, tokens, side="right") - 1
                slot_of[row] = np.where((index >= 0) & (tokens <= t), colours[np.maximum(index, 0)], np.nan)
            row += 1
    return Segmentation(scores, starts, merged, slot_of, times, tokens, size, [tuple(v) for v in lifetimes.values()])


def _check_args(trace, head, batch, tau, path, initial_size, capacity):
    if not isinstance(trace, (Trace, dla_ref.Trace)):
        raise ValueError(f"trace: expected a dla_fast.Trace or a dla_ref.Trace, got {type(trace).__name__}")
    fields = [_field(trace, name) for name in ("scores", "starts", "merged")]
    if len({f.shape for f in fields}) != 1:
        raise ValueError(f"trace: its fields' shapes differ: {[f.shape for f in fields]}")
    B, T, H = fields[0].shape
    for name, value, n in (("head", head, H), ("batch", batch, B)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < n:
            raise ValueError(f"{name}: expected an integer in [0, {n}), got {value!r}")
    if T == 0:
        raise ValueError("trace: expected at least one token, got T = 0")
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau: expected a finite real number (the threshold of the run), got {tau!r}") from None
    if not math.isfinite(tau):
        raise ValueError(f"tau: expected a finite real number (the threshold of the run), got {tau!r}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path: expected a file path (str or os.PathLike) or None, got {type(path).__name__}")
    if isinstance(initial_size, bool) or not isinstance(initial_size, (int, np.integer)) or initial_size < 0:
        raise ValueError(f"initial_size: expected a non-negative integer, got {initial_size!r}")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer))
                                 or capacity < 2):
        raise ValueError(f"capacity: expected None or an integer >= 2, got {capacity!r}")
    return [f[batch, :, head] for f in fields], tau


def _draw_scores(ax, seg: Segmentation, tau: float, regime_starts) -> None:
    t = np.arange(len(seg.scores))
    ax.plot(t, seg.scores, color="0.35", lw=0.8, label="score $I_t$")
    ax.axhline(tau, color="tab:red", ls="--", lw=1, label=f"tau = {tau:g}")
    opened = np.flatnonzero(seg.starts)
    ax.scatter(opened, seg.scores[opened], marker="^", s=28, color="tab:blue", zorder=3, label="opens a slot")
    merges = np.flatnonzero(seg.merged >= 0)
    ax.scatter(merges, seg.scores[merges], marker="x", s=30, color="tab:orange", zorder=4,
               label="merge first (cache full)")
    if regime_starts is not None:
        for r in np.flatnonzero(regime_starts):
            ax.axvline(r, color="tab:green", alpha=0.25, lw=0.8)
        ax.plot([], [], color="tab:green", alpha=0.5, label="regime change (data)")
    ax.set_ylabel("information score")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=7, ncol=5, frameon=False)


def _draw_layout(ax, seg: Segmentation) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    T = len(seg.scores)
    tab20 = list(colormaps["tab20"].colors)
    cmap = ListedColormap(tab20[0::2] + tab20[1::2]).with_extremes(bad="white")  # consecutive slots: other hues
    ax.imshow(np.ma.masked_invalid(seg.slot_of.T), origin="lower", aspect="auto", cmap=cmap, vmin=-0.5,
              vmax=SLOT_COLORS - 0.5, interpolation="nearest", extent=(-0.5, T - 0.5, -0.5, T - 0.5))
    # (with more than ``resolution`` tokens the image is an even sample of times and tokens; the lines are exact)
    for first, opened_at, merged_at in seg.lifetimes:
        end = T - 0.5 if merged_at is None else merged_at
        if first > 0:
            ax.plot([opened_at - 0.5, end], [first - 0.5, first - 0.5], color="black", lw=0.6)
        if merged_at is not None:
            ax.plot([merged_at], [first - 0.5], marker="x", color="black", ms=4)
    ax.plot([-0.5, T - 0.5], [-0.5, T - 0.5], color="0.5", lw=0.5)
    ax.set_ylabel("token s (in which slot)")
    ax.set_title("slot layout over time: at time t (x), the slot holding each token s <= t (colour); a line is a "
                 "slot's first token, x where it merges into its older neighbour", fontsize=8)


def _draw_size(ax, seg: Segmentation, capacity) -> None:
    from matplotlib.ticker import MaxNLocator

    t = np.arange(len(seg.scores))
    ax.step(t, seg.size, where="post", color="tab:blue", lw=1, label="live slots")
    if capacity is not None:
        ax.axhline(capacity, color="tab:red", ls="--", lw=1, label=f"capacity K = {capacity}")
    merges = np.flatnonzero(seg.merged >= 0)
    ax.scatter(merges, seg.size[merges], marker="x", s=20, color="tab:orange", zorder=3, label="merge")
    ax.set_ylabel("slots")
    ax.set_xlabel("token t")
    ax.set_ylim(0, max(int(seg.size.max()), capacity or 0) + 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right", fontsize=7, ncol=3, framealpha=0.9)


def plot_segmentation(trace, head: int = 0, batch: int = 0, *, tau: float, path=None, capacity: int | None = None,
                      initial_size: int = 0, regime_starts=None, title: str | None = None, dpi: int = 110):
    """Draw DLA's segmentation of one (batch, head) of ``trace``.

    Args:
        trace: a ``dla_fast.Trace`` or ``dla_ref.Trace`` (``[B, T, H]`` fields, T >= 1).
        head, batch: which (batch, head) to draw.
        tau: the threshold the run used (finite), drawn against the scores.
        path: save the figure there (any format matplotlib knows from the suffix, e.g. ``.png``) and return the
            path; None returns the ``matplotlib.figure.Figure``.
        capacity: the cache capacity K, drawn on the slot-count panel (None: not drawn).
        initial_size: slots live before the trace (a call that continued a cache); their tokens are not drawn.
        regime_starts: optional bool ``[T]`` marks (e.g. the synthetic data's regime changes) on the score panel.
        title: the figure's title (default: batch and head).

    Raises:
        ValueError: a bad argument (named first in the message).
        ImportError: matplotlib is not installed.
    """
    (scores, starts, merged), tau = _check_args(trace, head, batch, tau, path, initial_size, capacity)
    if regime_starts is not None:
        regime_starts = np.asarray(regime_starts, dtype=bool)
        if regime_starts.shape != scores.shape:
            raise ValueError(f"regime_starts: expected shape {scores.shape}, got {regime_starts.shape}")
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plot_segmentation needs matplotlib: pip install matplotlib") from error
    seg = replay(np.asarray(scores, dtype=np.float64), np.asarray(starts, dtype=bool),
                 np.asarray(merged, dtype=np.int64), int(initial_size))
    fig = Figure(figsize=(11, 8.5), dpi=dpi, layout="constrained")
    axes = fig.subplots(3, 1, sharex=True, height_ratios=[1.2, 2.2, 0.8])
    _draw_scores(axes[0], seg, tau, regime_starts)
    _draw_layout(axes[1], seg)
    _draw_size(axes[2], seg, capacity)
    n_open, n_merge = int(seg.starts.sum()), int((seg.merged >= 0).sum())
    fig.suptitle(title or f"DLA segmentation, batch {batch}, head {head}: {n_open} of {len(seg.scores)} tokens open "
                 f"a slot, {n_merge} merges", fontsize=10)
    if path is None:
        return fig
    fig.savefig(path)
    return path
