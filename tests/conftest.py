"""Fixtures live in tests/support.py beside the helpers they use.

Hypothesis runs deterministically in CI (``CI=true``: the ``ci`` profile, derandomized,
no example database), so a CI run never fails on an example no one can replay; local
runs keep exploring new examples.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev")
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")

pytest_plugins = ["tests.support"]
