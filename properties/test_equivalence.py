"""The gate as a property: ``impl`` passes the equivalence harness at float64 (``docs/precision.md``).

With the default ``impl`` (``dla_ref.forward``) this checks that the harness passes the reference itself on
every drawn case and on the exact ties; with ``--dla-impl`` it judges a float64 implementation the way every
fast path is judged (``dla_fast.testing.check_equivalent`` and nothing else). The mutation check runs its
fast-path mutants (the merge argmin with ``<=``, the threshold with ``>``: tie rules broken where both paths
compute the tied values bit for bit) against this property alone.
"""

from __future__ import annotations

from dla_fast.testing import check_equivalent
from dla_fast.testing.strategies import DELTA_BETA_ONE, DELTA_BETA_ZERO, TIE_CASES, cases
from properties.registry import prop


@prop(cases(), examples=[*TIE_CASES, DELTA_BETA_ZERO, DELTA_BETA_ONE], gate=True)
def test_is_equivalent_to_the_reference_at_float64(impl, case):
    check_equivalent(impl, case, dtype="float64")
