"""Fixtures live in tests/support.py beside the helpers they use."""

pytest_plugins = ["tests.support"]
