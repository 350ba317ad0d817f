"""``benchmarks/delta_pair_launch_model.py``: a chunk's pieces by group of starts, and the list schedule."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from delta_pair_launch_model import C, makespan, pieces_per_group  # noqa: E402


def test_pieces_stop_at_each_groups_last_boundary():
    none = np.zeros(C, dtype=bool)
    assert pieces_per_group(none) == [8, 6, 4, 2]  # no boundary: every group to the row's end
    every = np.ones(C, dtype=bool)
    assert pieces_per_group(every) == [3, 3, 3, 2]  # to the piece of the group's last start's next token
    one = none.copy()
    one[20] = True  # group 0 (starts 0-15) closes at 20 (piece 2), the others run to the end
    assert pieces_per_group(one) == [3, 6, 4, 2]


def test_the_schedule_fills_free_slots_in_order():
    assert makespan([1.0] * 4, slots=2, sms=2) == 1.0
    assert makespan([3.0, 1.0, 1.0, 1.0, 1.0], slots=1, sms=2) == 4.0  # the long one holds its slot
    assert makespan([1.0, 1.0, 1.0, 1.0, 3.0], slots=1, sms=2) == 5.0  # last in order: it runs alone at the end
