"""The slot layout over time, derived independently of the implementation under test.

Two views, both small and written from the contract alone:

- :func:`replay` takes what a trace *claims* (``starts``, ``merged``, ``scores``) and rebuilds, step by
  step, which tokens every slot holds (its first token, its count, its information sum). Tokens of the
  initial cache are numbered ``-N0 .. -1`` (``N0`` = tokens it holds), so slot starts are token indices.
  A claim the contract makes impossible (a merge without a new slot, a merge into a cache that is not
  full, no merge into a full one, a merge index out of range, the first token of an empty cache not
  opening a slot) raises :class:`LayoutError` at the step where it happens.
- :func:`stepwise` streams the call one token at a time through ``initial_cache`` and returns the
  implementation's own cache after every step (and the concatenated trace), so that properties can look
  at the intermediate caches an implementation only returns at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dla_ref import Cache, Trace


class LayoutError(AssertionError):
    """A trace claims something the contract's cache cannot do."""


@dataclass(frozen=True)
class SlotView:
    start: int  # first token (negative: a token of the initial cache)
    count: int
    info: float  # the contract's Ibar, accumulated in the contract's order


@dataclass(frozen=True)
class StepView:
    t: int
    before: tuple  # SlotView's before token t, oldest first
    after: tuple  # ... and after it
    started: bool
    merged: int
    score: float


def initial_slots(cache: Cache | None, b: int, h: int) -> tuple:
    """The initial cache of (b, h) as SlotView's, its tokens numbered ``-N0 .. -1``."""
    if cache is None:
        return ()
    m = int(cache.size[b, h])
    counts = [int(c) for c in cache.counts[b, h, :m]]
    start = -sum(counts)
    out = []
    for i, c in enumerate(counts):
        out.append(SlotView(start, c, float(cache.info[b, h, i])))
        start += c
    return tuple(out)


def replay(trace, initial_cache: Cache | None, K: int, b: int, h: int) -> list[StepView]:
    """Rebuild the slot layout of (b, h) after every token from the trace's claims (see module doc)."""
    slots = list(initial_slots(initial_cache, b, h))
    steps = []
    T = trace.starts.shape[1]
    for t in range(T):
        before = tuple(slots)
        started = bool(trace.starts[b, t, h])
        merged = int(trace.merged[b, t, h])
        score = float(trace.scores[b, t, h])
        where = f"(b={b}, h={h}, t={t}, slots before={len(before)}, K={K}, started={started}, merged={merged})"
        if not slots and not started:
            raise LayoutError(f"the first token of an empty cache did not open a slot {where}")
        if merged != -1:
            if not started:
                raise LayoutError(f"a merge at a token that opened no slot {where}")
            if len(slots) != K:
                raise LayoutError(f"a merge into a cache that is not full {where}")
            if not 0 <= merged <= K - 2:
                raise LayoutError(f"merge index outside 0..K-2: not a pair of existing neighbours {where}")
            left, right = slots[merged], slots[merged + 1]
            slots[merged : merged + 2] = [SlotView(left.start, left.count + right.count, left.info + right.info)]
        elif started and len(slots) == K:
            raise LayoutError(f"a new slot in a full cache without a merge {where}")
        if started:
            slots.append(SlotView(t, 1, score))
        else:
            open_slot = slots[-1]
            slots[-1] = SlotView(open_slot.start, open_slot.count + 1, open_slot.info + score)
        if len(slots) > K:
            raise LayoutError(f"more than K slots {where}")
        steps.append(StepView(t, before, tuple(slots), started, merged, score))
    return steps


def starts_of(slots) -> tuple:
    return tuple(s.start for s in slots)


def cache_starts(cache: Cache, b: int, h: int, first: int) -> tuple:
    """Slot start positions of a cache whose oldest token is token ``first``."""
    m = int(cache.size[b, h])
    counts = cache.counts[b, h, :m].astype(np.int64)
    return tuple(int(first + c) for c in np.concatenate([[0], np.cumsum(counts)[:-1]])) if m else ()


@dataclass
class Stepwise:
    caches: list  # Cache after every token (index t), plus caches[-1] = the initial cache at index -1 via .initial
    initial: Cache | None
    trace: Trace
    outputs: np.ndarray


def stepwise(impl: Callable, case) -> Stepwise:
    """Run ``case`` one token at a time through ``initial_cache``; the cache after every token."""
    cache = None if case.initial_cache is None else case.initial_cache.copy()
    caches, outs, scores, starts, merged = [], [], [], [], []
    for t in range(case.T):
        part = case.time_slice(t, t + 1, cache)
        o, cache, trace = part.run(impl)
        caches.append(cache.copy())
        outs.append(np.asarray(o))
        scores.append(np.asarray(trace.scores))
        starts.append(np.asarray(trace.starts))
        merged.append(np.asarray(trace.merged))
    if case.T == 0:
        B, H = case.B, case.H
        return Stepwise([], case.initial_cache, Trace(np.zeros((B, 0, H)), np.zeros((B, 0, H), bool),
                                                     np.zeros((B, 0, H), np.int64)), np.zeros((B, 0, H, case.Dv)))
    trace = Trace(np.concatenate(scores, 1), np.concatenate(starts, 1), np.concatenate(merged, 1))
    return Stepwise(caches, case.initial_cache, trace, np.concatenate(outs, 1))
