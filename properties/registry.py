"""Properties are registered once, so that pytest and the mutation check run the very same code.

A property is a function ``prop(impl, case)`` (``impl`` has ``dla_ref.forward``'s signature) that raises
``AssertionError`` when ``impl`` breaks the contract on ``case``. :func:`prop` registers it with its
strategy and its deliberately constructed examples, and returns the Hypothesis test that pytest collects
(``impl`` then comes from ``conftest.py``). :func:`hypothesis_test` builds a fresh Hypothesis test of the
same property for any implementation and any settings (the mutation check).

A property registered with ``gate=True`` judges ``impl`` as a fast path is judged: through the equivalence
harness (``dla_fast.testing.check_equivalent``) alone. The mutation check runs its fast-path mutants
against these.

This module imports no property module: a property module registers its properties when it is imported
(by pytest, or by the mutation check, which imports the ones it runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st


@dataclass
class Property:
    name: str
    fn: Callable
    strategy: st.SearchStrategy
    examples: list = field(default_factory=list)
    gate: bool = False


REGISTRY: dict[str, Property] = {}


def prop(strategy: st.SearchStrategy, examples=(), *, gate: bool = False):
    """Register ``fn(impl, case)`` as a property over ``case`` drawn from ``strategy``."""

    def deco(fn):
        REGISTRY[fn.__name__] = Property(fn.__name__, fn, strategy, list(examples), gate)
        test = given(case=strategy)(fn)
        for ex in reversed(list(examples)):
            test = example(case=ex)(test)
        return test

    return deco


def hypothesis_test(p: Property, impl: Callable, settings_: settings) -> Callable[[], None]:
    """A zero-argument Hypothesis test of property ``p`` for ``impl`` under ``settings_``."""

    def inner(case):
        p.fn(impl, case)

    inner.__name__ = inner.__qualname__ = p.name
    test = given(case=p.strategy)(settings_(inner))
    for ex in reversed(p.examples):
        test = example(case=ex)(test)
    return test
