"""Check your own DLA implementation against the float64 reference (``dla_ref``), e.g. in your CI.

The equivalence harness (``docs/precision.md``) runs the reference on the same inputs, rounded to the
precision your implementation takes, and compares decisions and merges (exactly, except within the
reference's own margins, with exact ties held to the tie rules), scores, outputs and the final cache
(within tolerances derived from the arithmetic's unit roundoff)::

    import dla_fast.testing as dt

    # 1. An adapter: your implementation behind dla_ref.forward's signature (float64 NumPy in and out).
    adapter = dt.torch_adapter(my_forward, "bfloat16", cache_type=MyCache)   # a torch function, or
    adapter = dt.numpy_adapter("bfloat16")                                   # dla_fast itself

    # 2. A case: a mapping of the call's arguments, or one built from a printable Spec ...
    case = dict(q=q, k=k, v=v, g=g, slot_weights=w, tau=0.6)
    report = dt.check_equivalent(adapter, case, dtype="bfloat16")           # AssertionError on failure

    # 3. ... or many, drawn by Hypothesis (needs the `hypothesis` package: the strategies module is the
    #    only part of dla_fast.testing that imports it, and only when used)
    from hypothesis import given, example, strategies as st
    from dla_fast.testing.strategies import cases, TIE_CASES

    @given(case=cases(), dtype=st.sampled_from(["float32", "bfloat16"]))
    @example(case=TIE_CASES[0], dtype="float32")
    def test_my_forward_matches_the_reference(case, dtype):
        dt.check_equivalent(dt.torch_adapter(my_forward, dtype), case, dtype=dtype)

Modules: :mod:`~dla_fast.testing.harness` (``check_equivalent``, ``Policy``, ``Report``, the adapters'
base ``torch_adapter`` / ``reference_adapter``, input rounding), :mod:`~dla_fast.testing.adapters`
(``numpy_adapter``, ``forward_float64`` for ``dla_fast``), :mod:`~dla_fast.testing.margins`
(``reference_margins``), :mod:`~dla_fast.testing.strategies` (``Spec``, ``Case``, ``build``, ``specs``,
``cases`` and named tie cases; needs hypothesis), :mod:`~dla_fast.testing.interpreter_bounds` (``checked_memory``:
Triton kernels' loads and stores outside their arguments, refused under ``TRITON_INTERPRET=1``; imported by name
only). The names of the strategies module are also reachable here (``dla_fast.testing.cases``): they are imported
on first use.
"""

from __future__ import annotations

import importlib

from .adapters import forward_float64, in_pieces, numpy_adapter
from .harness import (
    UNIT_ROUNDOFF,
    Analysis,
    Divergence,
    Policy,
    Report,
    analyse,
    check_equivalent,
    dtype_name,
    reference_adapter,
    round_to,
    rounded_inputs,
    torch_adapter,
)
from .margins import reference_margins

# Imported on first use: the strategies module needs hypothesis, a test dependency.
_STRATEGIES = ("Spec", "Case", "build", "specs", "cases", "TIE_CASES")


def __getattr__(name: str):
    if name in _STRATEGIES or name == "strategies":
        module = importlib.import_module(".strategies", __name__)
        return module if name == "strategies" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "UNIT_ROUNDOFF", "Analysis", "Divergence", "Policy", "Report", "analyse", "check_equivalent", "dtype_name",
    "forward_float64", "in_pieces", "numpy_adapter", "reference_adapter", "reference_margins", "round_to",
    "rounded_inputs", "torch_adapter",
]  # (the strategies' names are left out of ``*``: it must not need hypothesis)
