"""Hypothesis profiles and the implementation under test.

Profiles (registered here, once; chosen with ``DLA_HYPOTHESIS_PROFILE``, default ``ci``):

- ``ci``: deterministic (``derandomize=True``, no example database), a few dozen examples per property;
  the whole ``properties/`` directory runs in a few minutes on 2 cores.
- ``thorough``: random seeds, ``DLA_HYPOTHESIS_EXAMPLES`` examples per property (default 1000); the
  seed of a failing run is printed by Hypothesis and every falsifying case prints as ``build(Spec(...))``.
- ``mutation``: ``ci`` without shrinking, for the mutation check (a kill needs one counterexample).

Implementation under test: the fixture ``impl`` is ``dla_ref.forward`` by default. Set
``DLA_PROPERTIES_IMPL="package.module:function"`` (comma-separated for several) to run every property
against other float64 implementations with the reference's signature (NumPy in, NumPy out); fast paths in
lower precision go through ``properties.harness.check_equivalent`` instead.
"""

from __future__ import annotations

import importlib
import os

import pytest
from hypothesis import HealthCheck, Phase, settings

import dla_ref

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
          HealthCheck.function_scoped_fixture, HealthCheck.differing_executors]

CI_EXAMPLES = 100

settings.register_profile(
    "ci", max_examples=CI_EXAMPLES, derandomize=True, database=None, deadline=None,
    print_blob=True, suppress_health_check=_QUIET,
)
settings.register_profile(
    "thorough", max_examples=int(os.environ.get("DLA_HYPOTHESIS_EXAMPLES", "1000")), derandomize=False,
    database=None, deadline=None, print_blob=True, suppress_health_check=_QUIET,
)
settings.register_profile(
    "mutation", max_examples=CI_EXAMPLES, derandomize=True, database=None, deadline=None,
    suppress_health_check=_QUIET, phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False,
)

PROFILE = os.environ.get("DLA_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def implementations() -> dict:
    """``{"dla_ref": dla_ref.forward}`` plus those named in ``DLA_PROPERTIES_IMPL``."""
    impls = {"dla_ref": dla_ref.forward}
    for spec in filter(None, (s.strip() for s in os.environ.get("DLA_PROPERTIES_IMPL", "").split(","))):
        module, _, attr = spec.partition(":")
        impls[spec] = getattr(importlib.import_module(module), attr)
    return impls


_IMPLS = implementations()


@pytest.fixture(scope="session", params=list(_IMPLS), ids=list(_IMPLS))
def impl(request):
    """The implementation under test: a callable with ``dla_ref.forward``'s signature."""
    return _IMPLS[request.param]
