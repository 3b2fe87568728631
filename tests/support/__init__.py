"""Helpers shared by the test suite (imported as `support`: tests/ is on sys.path via conftest)."""
