"""The mock upstream (``mock-upstream``), a stand-in for Aleacc, that verifies every request
as Aleacc is documented to, and the demo that drives a player through the gateway to it."""
