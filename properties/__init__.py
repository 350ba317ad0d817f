"""The DLA property suite: Hypothesis properties of the contract, the equivalence harness, mutants.

- ``strategies``: what Hypothesis draws (a small printable :class:`~properties.strategies.Spec`) and how a
  spec becomes arrays (:func:`~properties.strategies.build`, a seeded generator), so every failure prints a
  case anyone can rerun: ``from properties.strategies import Spec, build; case = build(Spec(...))``.
- ``layout``: the slot layout over time, derived independently from a trace (starts, merged, scores).
- ``harness``: :func:`~properties.harness.check_equivalent`, the gate every fast path passes.
- ``float32_model``: a sequential float32 model of a fast path (used to measure and to test the harness).
- ``mutation``: deliberately wrong references and the table of the properties that kill them.
- ``test_*.py``: the properties, each parametrised over the implementation under test (fixture ``impl``).

Profiles (``conftest.py``): ``DLA_HYPOTHESIS_PROFILE=ci`` (default) or ``thorough``.
"""
