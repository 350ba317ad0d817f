"""The DLA property suite: Hypothesis properties of the contract, the equivalence harness's tests, mutants.

The harness and the strategies are public, in :mod:`dla_fast.testing` (``check_equivalent``; ``Spec``,
``build``, ``cases`` in ``dla_fast.testing.strategies``). This package holds the tests and test-only helpers:

- ``test_*.py``: the properties, each parametrised over the implementation under test (``impl``, from
  ``conftest.py``), and the tests of the harness, the gradients and the mutation check. No test module
  imports another.
- ``registry``: registers each property once, for pytest and the mutation check (it imports no test module).
- ``layout``: the slot layout over time, derived independently from a trace (starts, merged, scores).
- ``independent``: the contract's formulas restated without ``dla_ref.reference``.
- ``checks``: assertions several property modules share; ``gradient_oracle``: the per-token torch oracle of
  the gradient tests.
- ``float32_model``: a sequential float32 model of a fast path (used to measure and to test the harness).
- ``mutation``: deliberately wrong implementations and the table of the properties that kill them.
- ``profiles``: the Hypothesis profiles ``ci`` (default), ``thorough``, ``mutation``.

Options (``conftest.py``): ``--hypothesis-profile=thorough``, ``--dla-examples=N``, ``--dla-max-t=N``,
``--dla-impl=module:function``.
"""
