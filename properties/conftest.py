"""The suite's command-line options, its Hypothesis profile and the implementation under test.

Profiles (``properties/profiles.py``), chosen with Hypothesis's own option ``--hypothesis-profile=NAME``:
``ci`` (the default), ``thorough`` or ``mutation``. The suite adds:

- ``--dla-examples=N``: N examples per property (the profile's own number otherwise: ci 100, thorough 1000);
- ``--dla-max-t=N``: the longest call drawn (default 24; 48 under ``thorough``);
- ``--dla-impl=package.module:function`` (repeatable, or comma-separated): run every property of the
  contract against that float64 implementation too (``dla_ref.forward``'s signature, NumPy in, NumPy out;
  e.g. ``dla_fast.testing:forward_float64``). The fixture ``impl`` is ``dla_ref.forward`` plus these. Fast
  paths in lower precision go through ``dla_fast.testing.check_equivalent`` instead.

These options exist when pytest starts in (or is given) ``properties/``, as the README's ``pytest`` does.
"""

from __future__ import annotations

import importlib

import pytest

import dla_ref
from properties import profiles

profiles.configure()  # the defaults, until pytest_configure reads the options


def pytest_addoption(parser):
    group = parser.getgroup("dla", "DLA property suite (properties/)")
    group.addoption("--dla-impl", action="append", default=[], metavar="MODULE:FUNCTION",
                    help="also run every property against this float64 implementation with dla_ref.forward's "
                         "signature (repeatable; comma-separated lists too)")
    group.addoption("--dla-examples", type=int, default=None, metavar="N",
                    help="examples per property (default: the Hypothesis profile's, ci 100, thorough 1000)")
    group.addoption("--dla-max-t", type=int, default=None, metavar="N",
                    help="the longest call the strategies draw (default 24; 48 under the thorough profile)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Before Hypothesis's own pytest_configure, which loads --hypothesis-profile (already registered anew here).
    profiles.configure(config.getoption("hypothesis_profile", None), examples=config.getoption("dla_examples", None),
                       max_T=config.getoption("dla_max_t", None))


def implementations(config) -> dict:
    """``{"dla_ref": dla_ref.forward}`` plus those named by ``--dla-impl``."""
    impls = {"dla_ref": dla_ref.forward}
    for option in config.getoption("dla_impl", None) or []:
        for spec in filter(None, (s.strip() for s in option.split(","))):
            module, _, attr = spec.partition(":")
            impls[spec] = getattr(importlib.import_module(module), attr)
    return impls


def pytest_generate_tests(metafunc):
    """The implementation under test, ``impl``: a callable with ``dla_ref.forward``'s signature."""
    if "impl" in metafunc.fixturenames:
        impls = implementations(metafunc.config)
        metafunc.parametrize("impl", list(impls.values()), ids=list(impls), scope="session")
