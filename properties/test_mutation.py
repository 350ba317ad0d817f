"""Every deliberately wrong implementation is killed, in the ci settings.

Reference mutants by at least one property of the contract; fast-path-style mutants (a tie rule broken
where both paths compute the tied values bit for bit) by the equivalence harness alone, at an exact tie,
both with the ``@example`` cases and from the drawn cases alone.
The full table (every killing property per mutant): ``python -m properties.mutation``.
"""

from __future__ import annotations

import pytest

from properties.mutation import FAST_MUTANTS, MUTANTS, kill_table


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_mutant_is_killed(mutant):
    table = kill_table([mutant], first_only=True)
    assert table[mutant], f"mutant {mutant!r} ({MUTANTS[mutant][0]}) survived every property"


@pytest.mark.parametrize("drawn_only", [False, True], ids=["with examples", "drawn cases alone"])
@pytest.mark.parametrize("mutant", list(FAST_MUTANTS))
def test_fast_path_mutant_fails_the_harness_at_an_exact_tie(mutant, drawn_only):
    table = kill_table([mutant], first_only=True, drawn_only=drawn_only)
    assert table[mutant], f"fast-path mutant {mutant!r} ({FAST_MUTANTS[mutant][0]}) passed the harness"
    (prop, failure), = table[mutant]
    assert prop == "test_is_equivalent_to_the_reference_at_float64"
    assert "an exact tie" in failure, failure
