"""The property tests' profiles: deterministic in CI, and never timed."""

import pytest
from hypothesis import settings


@pytest.mark.parametrize("name", ["ci", "dev"])
def test_no_profile_has_a_deadline(name: str) -> None:
    # A loaded CI machine runs an example several times slower than an idle one: a
    # deadline there fails the suite for the machine, not for the code.
    assert settings.get_profile(name).deadline is None


def test_ci_profile_is_derandomized_without_a_database() -> None:
    ci = settings.get_profile("ci")
    assert ci.derandomize
    assert ci.database is None
