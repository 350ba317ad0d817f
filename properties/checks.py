"""Assertions shared by several property modules (test modules import this, never each other)."""

from __future__ import annotations

import numpy as np

from properties import independent as ind

RTOL = 1e-12


def assert_same_call(case, one, pieces, what):
    """Same decisions and merges (exactly), same scores, outputs and final cache (to float64 rounding)."""
    (o1, c1, t1), (o2, c2, t2) = one, pieces
    assert (t1.starts == t2.starts).all(), (
        f"{what}: decisions differ at {np.argwhere(t1.starts != t2.starts)[:3].tolist()}")
    assert (t1.merged == t2.merged).all(), (
        f"{what}: merges differ at {np.argwhere(t1.merged != t2.merged)[:3].tolist()}")
    ind.assert_close(t2.scores, t1.scores, np.abs(t1.scores) + 1e-3, rtol=RTOL, what=f"{what}: scores")
    ind.assert_close(o2, o1, ind.output_scale(case)[..., None], rtol=RTOL, atol=1e-300, what=f"{what}: outputs")
    assert (c1.size == c2.size).all() and (c1.counts == c2.counts).all(), f"{what}: final cache structure differs"
    ind.assert_close(c2.info, c1.info, np.abs(c1.info) + 1e-300, rtol=RTOL, what=f"{what}: final Ibar")
    scale = ind.magnitude(case)[:, -1][:, :, None, None, None] if case.T else 1.0
    ind.assert_close(c2.states, c1.states, scale, rtol=RTOL, atol=1e-300, what=f"{what}: final states")
