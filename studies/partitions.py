"""Partitions of a stream's past into contiguous slots, as the memory of a multi-state read sees them.

A *partition at time t* is an int64 array of segment starts, sorted, beginning with 0: the segments are
``[starts[i], starts[i + 1] - 1]`` and the last one ends at ``t``. Every function below that gives
partitions at several times takes ``times`` (sorted, increasing) and returns one array per time.

Policies:

- :func:`dla_trace` runs ``dla_fast.forward`` and :func:`partitions_from_trace` turns its trace (``starts``
  and ``merged``) into partitions: DLA exactly as implemented.
- :func:`replay_cache` replays any boundary decisions (with the scores that feed the densities) through a
  ``K``-slot cache whose merge rule is a function: :func:`density_merge` is DLA's rule (the study checks that
  the replay reproduces ``dla_fast``'s merges), :func:`oldest_merge` and :func:`smallest_merge` are fixed
  policies. A researcher's own rule is any ``rule(counts, info) -> i`` (fuse slots ``i`` and ``i + 1``).
- :func:`fenwick_partition`: log-linear attention's partition (Guo et al. 2025), capped at ``K`` slots.
- :func:`uniform_partition`: ``K`` contiguous chunks of (nearly) equal length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

import dla_fast

__all__ = [
    "MergeRule",
    "density_merge",
    "dla_trace",
    "fenwick_partition",
    "oldest_merge",
    "partitions_from_trace",
    "replay_cache",
    "segment_lengths",
    "smallest_merge",
    "uniform_partition",
    "wanted_times",
]

MergeRule = Callable[[np.ndarray, np.ndarray], int]


# ---------------------------------------------------------------------------------------------
# Fixed partitions
# ---------------------------------------------------------------------------------------------


def fenwick_partition(t: int, K: int | None = None) -> np.ndarray:
    """Log-linear attention's Fenwick partition of ``[0, t]``, capped at ``K`` slots.

    Token ``s < t`` is in the bucket of level ``l = msb(t xor s) + 1``: one bucket of ``2**b`` tokens per set
    bit ``b`` of ``t`` (the larger, the older), plus the token ``t`` alone, ``popcount(t) + 1 <= log2(t) + 2``
    buckets in all. With more than ``K`` buckets, the ``K - 1`` newest are kept and the older ones fused
    into one slot (``K=None``: no cap).
    """
    starts = [t]
    end, bit, rest = t, 0, t
    while rest:
        if rest & 1:
            end -= 1 << bit
            starts.append(end)
        rest >>= 1
        bit += 1
    starts = starts[::-1]  # oldest first; starts[0] == 0
    if K is not None and len(starts) > K:
        starts = [0] + starts[len(starts) - (K - 1) :]
    return np.asarray(starts, dtype=np.int64)


def uniform_partition(t: int, K: int) -> np.ndarray:
    """``[0, t]`` cut into ``min(K, t + 1)`` contiguous chunks whose lengths differ by at most one."""
    n = t + 1
    m = min(K, n)
    return (np.arange(m, dtype=np.int64) * n) // m


def segment_lengths(starts: np.ndarray, t: int) -> np.ndarray:
    """Token count of each segment of a partition at time ``t``."""
    return np.diff(np.append(starts, t + 1))


# ---------------------------------------------------------------------------------------------
# Merge rules: (counts, info) of the K live slots, oldest first -> index i of the pair (i, i + 1) to fuse
# ---------------------------------------------------------------------------------------------


def density_merge(counts: np.ndarray, info: np.ndarray) -> int:
    """DLA's rule: the lowest pair density ``(Ibar_i + Ibar_{i+1}) / (n_i + n_{i+1})``, ties to the oldest."""
    density = (info[:-1] + info[1:]) / (counts[:-1] + counts[1:])
    return int(np.argmin(density))  # argmin returns the first minimum: the oldest pair


def oldest_merge(counts: np.ndarray, info: np.ndarray) -> int:
    """A fixed policy: always fuse the two oldest slots (recent slots stay sharp, the past becomes one slot)."""
    return 0


def smallest_merge(counts: np.ndarray, info: np.ndarray) -> int:
    """A fixed policy: fuse the pair with the fewest tokens (keeps slot sizes balanced), ties to the oldest."""
    return int(np.argmin(counts[:-1] + counts[1:]))


def wanted_times(times: Sequence[int], T: int) -> np.ndarray:
    """Bool ``[T]`` marking ``times``, which must be distinct, increasing and in ``[0, T)``."""
    times = np.asarray(times, dtype=np.int64)
    if times.size and (np.any(np.diff(times) <= 0) or times[0] < 0 or times[-1] >= T):
        raise ValueError(f"times: expected distinct increasing times in [0, {T}), got {times}")
    want = np.zeros(T, dtype=bool)
    want[times] = True
    return want


# ---------------------------------------------------------------------------------------------
# Replaying decisions through a K-slot cache
# ---------------------------------------------------------------------------------------------


def replay_cache(
    opens: np.ndarray, scores: np.ndarray, K: int, rule: MergeRule, times: Sequence[int]
) -> tuple[list[np.ndarray], int]:
    """Partitions at ``times`` of a ``K``-slot cache fed the decisions ``opens`` (bool ``[T]``).

    A token that opens a slot meets a full cache by first fusing the pair ``rule(counts, info)``; the scores
    ``[T]`` accumulate into the slots' ``info`` (DLA's ``Ibar``). Token 0 always opens a slot. The decisions
    of DLA do not depend on its merges (a score only looks at the open slot, which no merge touches), so
    DLA's own decisions can be replayed under any merge rule. Returns ``(partitions, number of merges)``.
    """
    want = wanted_times(times, len(opens))
    starts: list[int] = []
    counts: list[int] = []
    info: list[float] = []
    out, merges = [], 0
    for t in range(len(opens)):
        if opens[t] or not starts:
            if len(starts) == K:
                i = rule(np.asarray(counts, dtype=np.int64), np.asarray(info))
                counts[i] += counts.pop(i + 1)
                info[i] += info.pop(i + 1)
                del starts[i + 1]
                merges += 1
            starts.append(t)
            counts.append(1)
            info.append(float(scores[t]))
        else:
            counts[-1] += 1
            info[-1] += float(scores[t])
        if want[t]:
            out.append(np.asarray(starts, dtype=np.int64))
    return out, merges


# ---------------------------------------------------------------------------------------------
# DLA itself (dla_fast, float64 on the CPU)
# ---------------------------------------------------------------------------------------------


def dla_trace(
    k: np.ndarray, v: np.ndarray, g: np.ndarray, K: int, *, tau: float, boundaries: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``dla_fast.forward`` (float64, chunked CPU path) on one stream; return ``(opens, merged, scores)``.

    ``k`` ``[T, Dk]``, ``v`` ``[T, Dv]``, ``g`` ``[T]``; ``boundaries`` bool ``[T]`` forces the decisions
    (the scores are still computed and feed the densities). The queries and read weights do not affect the
    partition, so the keys stand in for the queries and the weights are ones.
    """
    T = k.shape[0]
    as_bthd = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[None, :, None]
    forced = None if boundaries is None else torch.from_numpy(np.asarray(boundaries, dtype=bool))[None, :, None]
    _, _, trace = dla_fast.forward(
        as_bthd(k), as_bthd(k), as_bthd(v), as_bthd(g), torch.ones(1, T, 1, K, dtype=torch.float64),
        tau=float(tau), boundaries=forced, return_trace=True, output_final_cache=False,
    )  # fmt: skip
    return (
        trace.starts[0, :, 0].numpy().copy(),
        trace.merged[0, :, 0].numpy().copy(),
        trace.scores[0, :, 0].numpy().astype(np.float64),
    )


def partitions_from_trace(opens: np.ndarray, merged: np.ndarray, times: Sequence[int]) -> list[np.ndarray]:
    """The partitions at ``times`` that a DLA trace implies (a merge of pair ``i`` removes start ``i + 1``)."""
    want = wanted_times(times, len(opens))
    starts: list[int] = []
    out = []
    for t in range(len(opens)):
        if opens[t]:
            if merged[t] >= 0:
                del starts[int(merged[t]) + 1]
            starts.append(t)
        if want[t]:
            out.append(np.asarray(starts, dtype=np.int64))
    return out
