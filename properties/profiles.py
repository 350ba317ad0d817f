"""The suite's Hypothesis profiles, registered once (pytest's ``conftest.py`` and the mutation check).

- ``ci`` (the default): deterministic (``derandomize=True``, no example database), ``CI_EXAMPLES`` examples
  per property; the whole ``properties/`` directory runs in a few minutes on 2 cores.
- ``thorough``: random seeds, 1000 examples per property, calls up to T = 48; the seed of a failing run
  is printed by Hypothesis and every falsifying case prints as ``build(Spec(...))``.
- ``mutation``: ``ci`` without shrinking, for the mutation check (a kill needs one counterexample).

``configure(profile, examples=, max_T=)`` registers them with ``examples`` per property (when given) and
sets the longest call drawn by ``dla_fast.testing.strategies`` (``max_T``, default 48 under ``thorough`` and
24 otherwise), then loads ``profile``. pytest calls it from the command-line options (``conftest.py``).
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
         HealthCheck.function_scoped_fixture, HealthCheck.differing_executors]

CI_EXAMPLES = 100
THOROUGH_EXAMPLES = 1000
MAX_T = {"thorough": 48}  # the longest call drawn per profile (others: 24)
DEFAULT = "ci"


def register(examples: int | None = None) -> None:
    """(Re-)register the three profiles; ``examples`` overrides every profile's examples per property."""
    settings.register_profile(
        "ci", max_examples=examples or CI_EXAMPLES, derandomize=True, database=None, deadline=None,
        print_blob=True, suppress_health_check=QUIET,
    )
    settings.register_profile(
        "thorough", max_examples=examples or THOROUGH_EXAMPLES, derandomize=False, database=None, deadline=None,
        print_blob=True, suppress_health_check=QUIET,
    )
    settings.register_profile(
        "mutation", max_examples=examples or CI_EXAMPLES, derandomize=True, database=None, deadline=None,
        suppress_health_check=QUIET, phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False,
    )


def configure(profile: str | None = None, *, examples: int | None = None, max_T: int | None = None) -> str:
    """Register the profiles, set the strategies' longest call, load ``profile`` (default ``ci``); its name."""
    from dla_fast.testing import strategies

    profile = profile or DEFAULT
    register(examples)
    strategies.MAX_T = max_T or MAX_T.get(profile, 24)
    settings.load_profile(profile)
    return profile


register()
