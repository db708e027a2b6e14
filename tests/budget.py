"""Example budgets that follow the hypothesis profile (tests/conftest.py).

A test with its own ``max_examples`` overrides the loaded profile, so tests that size their
budget write ``scaled(n)``: n under the ``ci`` and ``dev`` profiles, 10 n under ``thorough``.
"""

from __future__ import annotations

import os

#: the profile conftest.py loads
PROFILE = os.environ.get("KVSPEC_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
_SCALE = {"ci": 1, "dev": 1, "thorough": 10}


def scaled(n: int) -> int:
    """``n`` examples times the profile's scale (unknown profiles: 1)."""
    return n * _SCALE.get(PROFILE, 1)
