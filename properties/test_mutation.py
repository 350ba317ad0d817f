"""Every deliberately wrong reference is killed by at least one property, in the ci settings.

The full table (every killing property per mutant): ``python -m properties.mutation``.
"""

from __future__ import annotations

import pytest

from properties.mutation import MUTANTS, kill_table


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_mutant_is_killed(mutant):
    table = kill_table([mutant], first_only=True)
    assert table[mutant], f"mutant {mutant!r} ({MUTANTS[mutant][0]}) survived every property"
