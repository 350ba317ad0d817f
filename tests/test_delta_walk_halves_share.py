"""``benchmarks/delta_walk_halves_share.py``: the slots replayed from a trace, each step's tokens' slots at its end."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
from delta_walk_halves_share import lower_shares  # noqa: E402


def test_the_lower_half_is_counted_from_the_slots_at_each_step_end():
    # K = 4: tokens 0-1 slot 0, 2, 3, 4 open slots 1-3, 5 opens one after fusing pair (0, 1), 6-7 join it. Step 0
    # (tokens 0-3) ends with slots [0 1] [2] [3]; step 1 (4-7) with [0 1 2] [3] [4] [5 6 7]: by sub-chunks of two,
    # the lowest slots are 0, 1 | 2, 3.
    starts = np.array([1, 0, 1, 1, 1, 1, 0, 0], dtype=bool)
    merged = np.array([-1, -1, -1, -1, -1, 0, -1, -1])
    assert lower_shares(starts, merged, K=4, half=2, step=4, sub=2) == (2, 4)
    assert lower_shares(starts, merged, K=4, half=3, step=4, sub=2) == (3, 4)
    # steps of 8 tokens: all of them read at the end, slots [0 1 2] [3] [4] [5 6 7]: lowest 0, 0 | 2, 3
    assert lower_shares(starts, merged, K=4, half=2, step=8, sub=2) == (2, 4)
    assert lower_shares(starts, merged, K=4, half=3, step=8, sub=2) == (3, 4)
