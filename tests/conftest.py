"""hypothesis settings profiles for the whole suite.

``ci``: fixed seeds, no example database, modest example counts (loaded when CI is set; it
replaces hypothesis's built-in ``ci`` profile). ``dev``: the default locally. ``thorough``:
exploration, 10x the examples, longer runs, with the example database on. Choose with
``KVSPEC_HYPOTHESIS_PROFILE=thorough pytest``. Tests that set their own example count use
``budget.scaled(n)``, which multiplies it by 10 under ``thorough``.
"""

from __future__ import annotations

from budget import PROFILE  # tests/budget.py: per-test budgets follow the profile too
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True, max_examples=60,
    stateful_step_count=40, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "dev", deadline=None, max_examples=100, stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", deadline=None, max_examples=1_000, stateful_step_count=100,
    suppress_health_check=[HealthCheck.too_slow])

settings.load_profile(PROFILE)
