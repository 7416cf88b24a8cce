"""Fixtures live in tests/support.py beside the helpers they use.

Hypothesis runs deterministically in CI (``CI=true``: the ``ci`` profile, derandomized,
no example database), so a CI run never fails on an example no one can replay; local
runs keep exploring new examples. Neither profile has a deadline: on a shared, loaded
machine one example can take several times its idle time, and a deadline turns that into
a failure that says nothing about the code.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")

pytest_plugins = ["tests.support"]
